"""A compiled forward pass for the attacks that never take a gradient (Square).

``torch.compile`` with inductor's *freezing* treats the weights as constants: it folds
BatchNorm into the convolutions, packs the weights once for oneDNN and fuses the
pointwise work into the convolutions' epilogues.  On a 2-core CPU that makes one forward
pass of ResNet-20 on 24x24x3 1.1-1.6x faster than the folded eager network the attacks
run otherwise, and Square as a whole 1.4x (docs/performance.md, "How fast can Square
get?").  It costs a compile of 10-60 s per model and process, so it is opt-in
(``attacks.compiled()``).

The network is compiled for any batch size (Square's batch shrinks as images break; a
single image runs as a batch of two) and only ever called without gradients, where
freezing applies.  Freezing reads the weights once: the compiled graph answers for the
tensors it was built from.  Another set of tensors (``model.to(...)``, a new model) is
compiled again, but a weight changed in place would leave the compiled graph stale, and
compiling again would not help (dynamo reuses a graph whose guards still pass), so
:func:`frozen_network` answers ``None`` for such a model and the caller runs its eager
network.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable

import torch
from torch import nn

log = logging.getLogger(__name__)

#: model -> (its tensors' identities and versions when compiled, the compiled forward)
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _state(model: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The identities and version counters of ``model``'s tensors."""
    ts = [*model.parameters(), *model.buffers()]
    return tuple(id(t) for t in ts), tuple(t._version for t in ts)


def frozen_network(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``model``'s forward compiled with inductor's freezing, for calls without gradients
    in inference mode; built once per model (the compile runs at the first call) and
    reused while the model holds the same, unchanged tensors.  ``None`` once a weight
    was changed in place after the compile (the compiled constants would be stale)."""
    ids, versions = _state(model)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == (ids, versions):
        return hit[1]
    if hit is not None and hit[0][0] == ids:
        log.info("the model's weights changed after its compile: its eager network runs")
        return None
    compiled = torch.compile(model, dynamic=True)

    def forward(x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor

        with inductor.patch(freezing=True), torch.no_grad():
            if x.shape[0] == 1:  # a batch of one would be compiled again (dynamo
                return compiled(torch.cat([x, x]))[:1]  # specialises sizes 0 and 1)
            return compiled(x)

    _CACHE[model] = ((ids, versions), forward)
    return forward
