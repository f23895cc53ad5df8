"""The attack x epsilon engine: one attack on chosen rows of a batch whose rows carry
their own epsilon, and each row's outcome, all on the device.

>>> out = attack_rows(model, xs, ys, eps_per_row, "apgd_ce", rows=still_correct)
>>> correct, excess, bad = read_back(out.correct, out.excess, out.nonfinite)

The robustness audit (:mod:`cascade_adv.evaluation.audit`) sequences its attacks on top
of it: it stacks a batch once per epsilon (epsilon-major, one eps per row), runs each
attack on the rows still classified correctly and reads the outcome back once per
attack x batch.  docs/design.md, "Robustness audit".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cascade_adv import attacks as attack_registry
from cascade_adv.attacks.core import check_images
from cascade_adv.attacks.registry import AttackSpec
from cascade_adv.errors import AttackError, InvalidArgument

__all__ = ["BALL_TOLERANCE", "RowOutcome", "attack_rows", "check_audit_eps", "check_inputs",
           "read_back"]

#: An adversarial image may leave its eps ball (or [0, 1]) by float rounding only
#: (units of [0, 1]).
BALL_TOLERANCE = 1e-6


@dataclass
class RowOutcome:
    """What one attack did to the rows it ran on, on the device (nothing read back).

    ``rows`` indexes the batch given to :func:`attack_rows`; ``x_adv`` and ``logits``
    follow it.  ``correct``: top-1 prediction still the label.  ``excess``: how far the
    farthest pixel lies outside its row's eps ball or [0, 1] (0 when every image is
    inside).  ``nonfinite``: rows with inf / NaN logits.
    """

    rows: torch.Tensor
    x_adv: torch.Tensor
    logits: torch.Tensor
    correct: torch.Tensor
    excess: torch.Tensor
    nonfinite: torch.Tensor


def attack_rows(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    attack: AttackSpec | str,
    *,
    rows: torch.Tensor | None = None,
    options: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    fuse: bool = True,
) -> RowOutcome:
    """Run ``attack`` on the ``rows`` of a batch and return each row's outcome.

    ``x`` are images in [0, 1] (``[M, C, H, W]``), ``y`` their labels, ``eps`` one
    epsilon per row (pixel units, ``[M]``, checked by the caller: they are used where
    they lie, without host read-backs), ``rows`` an index tensor into the batch (all
    rows when ``None``).  ``fuse``: the attack and the prediction run on the model's
    inference network with BatchNorm folded into the convolutions
    (:func:`cascade_adv.attacks.fusion`).  Nothing is read back to the host: the
    outcome's tensors stay on the device for the caller to reduce.
    """
    spec = attack if isinstance(attack, AttackSpec) else attack_registry.get(attack)
    if rows is None:
        rows = torch.arange(x.shape[0], device=x.device)
    xs, ys, es = x[rows], y[rows], eps[rows]
    if len(rows) == 0:  # nothing to attack
        none = torch.zeros((), dtype=torch.int64, device=x.device)
        return RowOutcome(rows, xs, xs.new_zeros((0, 0)),
                          torch.ones_like(ys, dtype=torch.bool), none.double(), none)
    with attack_registry.fusion(fuse), attack_registry.trusted():
        x_adv = spec.fn(model, xs, ys, es, generator=generator, **(options or {})).detach()
        with attack_registry.inference_mode(model):
            net = attack_registry.attack_network(model)
        logits = attack_registry.predict(model, x_adv, net)
    if logits.dtype in (torch.bfloat16, torch.float16):  # autocast: compare in float32
        logits = logits.float()
    eps01 = (es.to(device=xs.device, dtype=torch.float64) / 255.0).view(-1, *[1] * (x.dim() - 1))
    wide = x_adv.double()
    excess = torch.maximum(((wide - xs.double()).abs() - eps01).amax(),
                           torch.maximum(-wide, wide - 1.0).amax()).clamp_min(0.0)
    return RowOutcome(rows, x_adv, logits, logits.argmax(dim=1) == ys, excess,
                      (~torch.isfinite(logits).all(dim=1)).sum())


def read_back(correct: torch.Tensor, excess: torch.Tensor,
               nonfinite: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """The one device -> host read-back of a pass: per-row correctness, the largest
    excess over the eps ball and the count of non-finite rows."""
    host = torch.cat([correct.to(torch.float64), excess.to(torch.float64).view(1),
                      nonfinite.to(torch.float64).view(1)]).cpu()
    return host[:-2].bool(), float(host[-2]), int(host[-1])


# --- the checks before any work (the audit's and the diagnostics') ----------------------


def check_audit_eps(eps: Any, name: str = "eps") -> list[float]:
    """The audit's epsilons: numbers in (0, 255] (pixel units), duplicates dropped.
    Raises :class:`AttackError` (one line); eps 0 is refused because the clean accuracy
    is always measured."""
    one = isinstance(eps, (int, float)) or (isinstance(eps, torch.Tensor) and eps.dim() == 0)
    items = [eps] if one else eps
    try:
        values = [float(v) for v in items]
    except (TypeError, ValueError):
        return attack_registry.validate_eps(eps, name)  # its one line for a non-number
    bad = next((v for v in values if not 0.0 < v <= 255.0), None)  # NaN too
    if bad is not None:
        raise AttackError(f"{name}={bad:g} is outside (0, 255]; give {name} in pixel units of "
                          "(0, 255], e.g. 16,32 (eps 0 is not needed: the audit measures the "
                          "clean accuracy anyway)")
    return attack_registry.validate_eps(values, name, required=True)


def check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  prepare: Callable[[torch.Tensor], torch.Tensor] | None) -> int:
    """The images, labels and model output, before any work; returns the model's number
    of classes (from one forward pass of the first image)."""
    if not isinstance(model, nn.Module):
        raise InvalidArgument(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.dim() < 2:
        raise InvalidArgument("x must be an image tensor [N, C, H, W] and y a label tensor "
                              "[N]; convert your data with torch.as_tensor")
    if x.shape[0] == 0:
        raise InvalidArgument("x holds no image; audit at least one")
    if prepare is None:
        first = x[:1]
        check_images(x, y)
    else:
        first = prepare(x[:1])
        check_images(first, y[:1])
        if y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise InvalidArgument(f"labels must have shape [{x.shape[0]}], got {list(y.shape)}")
    logits = attack_registry.predict(model, first.to(attack_registry.model_device(model)))
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise InvalidArgument("the model must return logits [N, classes] for images "
                              f"[N, C, H, W], got {getattr(logits, 'shape', type(logits))}")
    classes = int(logits.shape[1])
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= classes:
        raise InvalidArgument(f"labels span {low}..{high} but the model predicts {classes} "
                              "classes; give labels in 0..classes-1")
    return classes
