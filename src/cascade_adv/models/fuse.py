"""An exact inference network for attacks: BatchNorm folded into the convolution before it.

During an attack the network runs in inference mode, where a BatchNorm layer is a fixed
per-channel affine map.  Following a convolution it folds into that convolution's
weights (exact algebra; float rounding only)::

    BN(conv(x)) = conv(x; w * s, (b - mean) * s + beta),   s = gamma / sqrt(var + eps)

so each conv -> BN pair costs one convolution instead of a convolution and a BatchNorm
pass.  :func:`inference_network` finds the pairs by tracing the model with
:mod:`torch.fx` (so it works for this package's ResNet and Inception v3 and for any
user ``nn.Module`` whose conv -> BN pairs the tracer can see), and returns a
:class:`torch.fx.GraphModule` that shares every module and tensor with the original:
nothing is copied, and the folded weights are recomputed whenever the convolution's
or the BatchNorm's tensors change (their version counters), i.e. once per optimizer
step during training.  A model that cannot be traced, or has no pair to fold, is used
as it is, with one log line.  docs/performance.md gives the measured speed and the
agreement with the unfused network.
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch import fx, nn

from cascade_adv.models.layout import preferred_layout

log = logging.getLogger(__name__)

#: the BatchNorm that can follow each convolution
_PAIRS = {nn.Conv1d: nn.BatchNorm1d, nn.Conv2d: nn.BatchNorm2d, nn.Conv3d: nn.BatchNorm3d}
_BN = tuple(_PAIRS.values())


class FoldedConv(nn.Module):
    """``bn(conv(x))`` as one convolution whose weights are folded from both modules'
    current tensors (refolded when any of them changes).  If ``bn`` is in training mode
    it runs the two modules as they are."""

    def __init__(self, conv: nn.Module, bn: nn.Module, channels_last: bool = False):
        super().__init__()
        self.conv, self.bn = conv, bn
        self.channels_last = channels_last and isinstance(conv, nn.Conv2d)
        self._key: tuple | None = None
        self._weight: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None

    def _tensors(self) -> tuple:
        c, b = self.conv, self.bn
        return (c.weight, c.bias, b.weight, b.bias, b.running_mean, b.running_var)

    @torch.no_grad()
    def _fold(self) -> None:
        conv, bn = self.conv, self.bn
        w = conv.weight
        exact = torch.float32 if w.device.type == "mps" else torch.float64
        with torch.autocast(w.device.type, enabled=False):
            scale = torch.rsqrt(bn.running_var.to(exact) + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.to(exact)
            shift = -bn.running_mean.to(exact) * scale
            if conv.bias is not None:
                shift = shift + conv.bias.to(exact) * scale
            if bn.bias is not None:
                shift = shift + bn.bias.to(exact)
            weight = (w.to(exact) * scale.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype)
        if self.channels_last:
            weight = weight.contiguous(memory_format=torch.channels_last)
        self._weight, self._bias = weight, shift.to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn.training:
            return self.bn(self.conv(x))
        key = tuple(None if t is None else (t._version, t.data_ptr()) for t in self._tensors())
        if key != self._key:
            self._fold()
            self._key = key
        return self.conv._conv_forward(x, self._weight, self._bias)


class _ChannelsLast(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:160]


def fold_batchnorm(model: nn.Module, channels_last: bool = False) -> fx.GraphModule | None:
    """A traced copy of ``model``'s graph with every conv -> BN pair (the convolution's
    output feeding only that BatchNorm, which keeps running statistics) replaced by a
    :class:`FoldedConv`; ``None`` (and one log line) if the model cannot be traced or
    has no such pair.  Trace in inference mode: branches on ``self.training`` are
    fixed at trace time.  ``channels_last`` stores the folded 2-D weights and the input
    NHWC."""
    name = type(model).__name__
    if not any(isinstance(m, _BN) and m.track_running_stats for m in model.modules()):
        return None  # nothing to fold: not even traced
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: use the model unfused
        log.info("cascade_adv: %s cannot be traced (%s); attacks use it unfused", name,
                 _first_line(exc))
        return None
    modules = dict(gm.named_modules())
    pairs = []
    for node in gm.graph.nodes:
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, _BN) or len(node.args) != 1 or node.kwargs:
            continue
        prev = node.args[0]
        conv = modules.get(prev.target) if isinstance(prev, fx.Node) and \
            prev.op == "call_module" else None
        if (type(conv) in _PAIRS and isinstance(bn, _PAIRS[type(conv)]) and len(prev.users) == 1
                and bn.track_running_stats and bn.running_mean is not None
                and conv.out_channels == bn.num_features):
            pairs.append((prev, node, conv, bn))
    if not pairs:
        log.info("cascade_adv: %s has no convolution -> BatchNorm pair to fold; attacks use "
                 "it unfused", name)
        return None
    for i, (conv_node, bn_node, conv, bn) in enumerate(pairs):
        target = f"_folded_{i}"
        gm.add_module(target, FoldedConv(conv, bn, channels_last))
        with gm.graph.inserting_after(conv_node):
            folded = gm.graph.call_module(target, conv_node.args, conv_node.kwargs)
        bn_node.replace_all_uses_with(folded)
        gm.graph.erase_node(bn_node)
        gm.graph.erase_node(conv_node)
    if channels_last:
        gm.add_module("_to_channels_last", _ChannelsLast())
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                with gm.graph.inserting_after(node):
                    nhwc = gm.graph.call_module("_to_channels_last", (node,))
                node.replace_all_uses_with(nhwc, delete_user_cb=lambda user, new=nhwc: user is not new)
                break
    gm.graph.lint()
    gm.recompile()
    return gm


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _identity(model: nn.Module) -> tuple:
    """Which tensor objects the model holds: a fused network built for other objects
    (after ``model.to(...)`` replaced its buffers, say) is rebuilt."""
    return tuple(id(t) for t in model.parameters()) + tuple(id(t) for t in model.buffers())


#: per model, the layout chosen for each (image shape, dtype, thread count)
_AUTO: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def auto_layout(model: nn.Module, sample: torch.Tensor | None) -> bool:
    """Whether ``model``'s folded network should be NHWC for inputs like ``sample``
    (:func:`~cascade_adv.models.layout.preferred_layout`; contiguous where nothing folds:
    the layout is then the model's own), remembered per model.  Call it with the model
    in inference mode."""
    if sample is None or sample.device.type != "cpu":
        return preferred_layout(model, sample, None)
    known = _AUTO.setdefault(model, {})
    shape = (tuple(sample.shape[1:]), sample.dtype, torch.get_num_threads())
    if shape not in known:
        known[shape] = (inference_network(model, False) is not model and preferred_layout(
            model, sample, lambda cl: inference_network(model, cl)))
    return known[shape]


def inference_network(model: nn.Module, channels_last: bool | None = None,
                      sample: torch.Tensor | None = None) -> nn.Module:
    """The network attacks should run: ``model`` with BatchNorm folded into its
    convolutions (:func:`fold_batchnorm`), built once per model and reused while the
    model holds the same tensors, or ``model`` itself where nothing can be folded.
    Call it with the model in inference mode.  ``channels_last=None`` picks the layout
    for inputs like ``sample``: NHWC on CUDA, on a CPU the one measured faster here
    (:mod:`cascade_adv.models.layout`), contiguous without a sample."""
    first = next(iter(model.parameters()), None)
    if first is None:
        return model
    if channels_last is None:
        channels_last = auto_layout(model, sample)
    ident = (_identity(model), channels_last)
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == ident:
        return hit[1] if hit[1] is not None else model
    fused = fold_batchnorm(model, channels_last)
    _CACHE[model] = (ident, fused)
    return fused if fused is not None else model
