"""The attack x epsilon engine: every evaluation and analysis that attacks a batch at
several epsilons runs its attacks and its predictions here.

>>> for part in attack_eps(model, x, y, [2, 4, 8], "iter_fgsm", fuse=True, max_rows=1000):
...     logits = predict(model, part.x_adv, fuse=True)      # rows: eps-major, part.eps
>>> out = attack_rows(model, xs, ys, eps_per_row, "apgd_ce", rows=still_correct)
>>> correct, excess, bad = read_back(out.correct, out.excess, out.nonfinite)

One engine, in steps that its users compose (docs/design.md, "The attack x epsilon
engine"):

* :func:`image_batches`: a dataset's images, batch by batch, as the model's inputs on
  its device (:func:`prepare_images`);
* :func:`stack`: a batch repeated once per epsilon, epsilon-major, one eps per row;
* :func:`attack_eps`: one attack at every eps of a batch, stacked, at most
  ``max_rows`` rows per attack call (:func:`cascade_adv.evaluation.evaluate_whitebox`,
  :func:`cascade_adv.analysis.softmax_argument`,
  :func:`cascade_adv.analysis.gradient_correlation`);
* :func:`attack_rows`: one attack on chosen rows of a stacked batch, with each row's
  outcome (the robustness audit, :mod:`cascade_adv.evaluation.audit`, and its
  diagnostics);
* :func:`predict` and :func:`input_gradient`: the logits and the input gradient, on
  the network the attacks ran on (or the model as it is);
* :func:`read_back`: the one device -> host read-back of a pass.

Nothing here reads ambient state: fusion (BatchNorm folded into the convolutions), the
autocast precision (a :class:`~cascade_adv.speed.Speed`), the options and the random
generator are arguments.  The attack core still reads fusion and trusted epsilons from
context variables (:func:`cascade_adv.attacks.fusion`); every engine function sets them
from its arguments for exactly the duration of its call, whatever an outer block set.
Nothing is read back to the host inside the loops: outcomes stay on the device until
the caller's one read-back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cascade_adv import attacks as attack_registry
from cascade_adv.attacks.core import check_images
from cascade_adv.attacks.core import input_gradient as input_gradient_core
from cascade_adv.attacks.registry import AttackSpec
from cascade_adv.data.transforms import center_crop, to_float
from cascade_adv.errors import AttackError, CascadeAdvError, InvalidArgument
from cascade_adv.speed import Speed, prepare_input

__all__ = ["BALL_TOLERANCE", "RowOutcome", "Stacked", "attack_eps", "attack_rows",
           "check_audit_eps", "check_inputs", "image_batches", "input_gradient", "network", "nonfinite_rows",
           "predict", "prepare_images", "read_back", "seeded_generator", "stack"]

#: An adversarial image may leave its eps ball (or [0, 1]) by float rounding only
#: (units of [0, 1]).
BALL_TOLERANCE = 1e-6


# --- explicit state --------------------------------------------------------------------


@contextlib.contextmanager
def _explicit(fuse: bool, speed: Speed | None, device: torch.device) -> Iterator[None]:
    """The attack core's context set from the arguments, for the block only: fusion,
    trusted (pre-validated) epsilons and the autocast of ``speed`` - off for float32
    (``None``), also inside an outer autocast."""
    if speed is not None and speed.dtype is not None:
        cast = speed.autocast()
    elif torch.amp.is_autocast_available(device.type):
        cast = torch.autocast(device.type, enabled=False)
    else:
        cast = contextlib.nullcontext()
    pinned = (attack_registry.layout(speed.attack_layout)
              if speed is not None and speed.attack_layout is not None
              else contextlib.nullcontext())
    with attack_registry.fusion(fuse), attack_registry.trusted(), cast, pinned:
        yield


def network(model: nn.Module, fuse: bool, x: torch.Tensor | None = None) -> nn.Module:
    """The network the attacks run on for inputs like ``x``: ``model``'s inference
    network with BatchNorm folded into the convolutions when ``fuse`` (cached), else
    ``model`` itself."""
    with attack_registry.fusion(fuse), attack_registry.inference_mode(model):
        return attack_registry.attack_network(model, x)


def predict(model: nn.Module, x: torch.Tensor, *, fuse: bool = True,
            speed: Speed | None = None) -> torch.Tensor:
    """Logits of ``x`` on :func:`network` ``(model, fuse)``, in inference mode, without
    gradients, under the autocast of ``speed`` (float32 when ``None``).  Returned as the
    model gives them (bf16 under autocast): callers that compare them cast."""
    with _explicit(fuse, speed, x.device):
        return attack_registry.predict(model, x, network(model, fuse, x))


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], *,
                   fuse: bool = True, speed: Speed | None = None) -> torch.Tensor:
    """The input gradient of ``objective(logits, y)`` (summed over the batch, so per
    example its own gradient) on :func:`network` ``(model, fuse)`` in inference mode,
    under the autocast of ``speed`` (float32 when ``None``); the logits reach
    ``objective`` in float32."""
    with _explicit(fuse, speed, x.device), attack_registry.inference_mode(model):
        grad, _ = input_gradient_core(network(model, fuse, x), x, y, objective)
    return grad


def nonfinite_rows(logits: torch.Tensor) -> torch.Tensor:
    """How many rows of ``logits`` hold an inf or NaN (an int64 0-d tensor, on the device)."""
    return (~torch.isfinite(logits).all(dim=1)).sum()


def seeded_generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``: every random draw of an
    evaluation comes from one of these, never from the global generator."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


# --- the batches and their stacking -------------------------------------------------------


def prepare_images(model: nn.Module, images_uint8: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, C, H, W]`` dataset images -> float ``[0, 1]`` model inputs.

    Images larger than ``model.config.input_size`` are center-cropped to it (the
    CIFAR-10 test protocol of N18 section 3.3: 32x32 images, 24x24 center crop for
    a model trained on random 24x24 crops); images of the model's size are only
    converted.  Smaller images, or a channel mismatch, raise :class:`CascadeAdvError`.
    Models without a ``config`` attribute (a user's own ``nn.Module``) get the
    converted images unchanged.
    """
    if not isinstance(images_uint8, torch.Tensor) or images_uint8.dtype != torch.uint8 \
            or images_uint8.dim() != 4:
        got = (f"{images_uint8.dtype} {list(images_uint8.shape)}"
               if isinstance(images_uint8, torch.Tensor) else type(images_uint8).__name__)
        raise CascadeAdvError(
            f"prepare_images expects uint8 images [N, C, H, W] (an ImageDataset's images), "
            f"got {got}"
        )
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "input_size", None)
    channels = getattr(cfg, "in_channels", None)
    if size is None or channels is None:
        return to_float(images_uint8)
    _, c, h, w = (int(s) for s in images_uint8.shape)
    if c != channels or h < size or w < size:
        raise CascadeAdvError(
            f"dataset images are {c}x{h}x{w} (CxHxW) but the model expects "
            f"{channels}x{size}x{size}; evaluate on a dataset with {channels}-channel images "
            f"of at least {size}x{size}, or use a model built for {c}x{h}x{w} inputs"
        )
    if h != size or w != size:
        images_uint8 = center_crop(images_uint8, size)
    return to_float(images_uint8)


def image_batches(model: nn.Module, dataset: Any, batch_size: int, device: torch.device,
                  speed: Speed | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` of ``dataset`` (an ImageDataset), ``batch_size`` at a time, in
    order, on ``device``: the images as ``model``'s inputs (:func:`prepare_images`, in
    the memory format of ``speed``)."""
    images, labels = dataset.images, dataset.labels
    for start in range(0, int(images.shape[0]), batch_size):
        xb = images[start:start + batch_size].to(device, non_blocking=True)
        yb = labels[start:start + batch_size].to(device, non_blocking=True)
        x = prepare_images(model, xb)
        yield (x if speed is None else prepare_input(x, speed)), yb


def stack(x: torch.Tensor, y: torch.Tensor,
          eps: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch ``x`` (``[b, ...]``) and its labels repeated once per epsilon,
    epsilon-major (rows ``i * b .. (i + 1) * b`` carry ``eps[i]``), and the eps of every
    row: a float64 CPU tensor ``[len(eps) * b]`` (exact pixel units, for step counts)."""
    g, b = len(eps), x.shape[0]
    xs = x.repeat(g, *[1] * (x.dim() - 1)) if g > 1 else x
    ys = y.repeat(g) if g > 1 else y
    return xs, ys, torch.tensor(list(eps), dtype=torch.float64).repeat_interleave(b)


# --- attacks ---------------------------------------------------------------------------


def _spec(attack: AttackSpec | str) -> AttackSpec:
    return attack if isinstance(attack, AttackSpec) else attack_registry.get(attack)


@dataclass
class Stacked:
    """One attack call of :func:`attack_eps`: the epsilons ``eps`` (positions ``first``..
    of the list given), the stacked clean images ``x`` and labels ``y`` (epsilon-major,
    ``b`` images per eps) and the adversarial images ``x_adv``, on the device."""

    first: int
    eps: list[float]
    x: torch.Tensor
    y: torch.Tensor
    x_adv: torch.Tensor

    @property
    def b(self) -> int:
        return self.x.shape[0] // len(self.eps)

    def per_eps(self, t: torch.Tensor) -> torch.Tensor:
        """A per-row tensor ``[len(eps) * b, ...]`` viewed ``[len(eps), b, ...]``."""
        return t.view(len(self.eps), self.b, *t.shape[1:])


def attack_eps(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    attack: AttackSpec | str,
    *,
    options: Mapping[str, Any] | None = None,
    generator: torch.Generator | None = None,
    fuse: bool = True,
    speed: Speed | None = None,
    max_rows: int | None = None,
) -> Iterator[Stacked]:
    """``attack`` on the batch ``x`` (``[b, ...]`` in [0, 1], labels ``y``) at every
    epsilon of ``eps`` (pixel units, checked by the caller): the batch :func:`stack` ed
    once per eps, at most ``max_rows`` rows per attack call (whole epsilons, never fewer
    than one; ``None``: every eps in one call).  Yields each call's :class:`Stacked`, in
    the order of ``eps``; nothing is read back.

    A per-example eps lets iterative attacks run each row's own step count, so a stacked
    call gives what separate per-eps calls give.  ``options``: the attack's keyword
    options; ``generator``: its random draws (shared by the calls, in order); ``fuse`` and
    ``speed``: the network and the autocast it runs on (see :func:`predict`).
    """
    spec = _spec(attack)
    b = x.shape[0]
    per_call = len(eps) if max_rows is None else max(1, int(max_rows) // b)
    for first in range(0, len(eps), per_call):
        group = [float(e) for e in eps[first:first + per_call]]
        xs, ys, es = stack(x, y, group)
        with _explicit(fuse, speed, x.device):
            x_adv = spec.fn(model, xs, ys, es, generator=generator, **(options or {}))
        yield Stacked(first, group, xs, ys, x_adv.detach())


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
    speed: Speed | None = None,
) -> RowOutcome:
    """Run ``attack`` on the ``rows`` of a batch and return each row's outcome.

    ``x`` are images in [0, 1] (``[M, C, H, W]``), ``y`` their labels, ``eps`` one
    epsilon per row (pixel units, ``[M]``, checked by the caller: they are used where
    they lie, without host read-backs), ``rows`` an index tensor into the batch (all
    rows when ``None``).  ``fuse`` and ``speed``: the attack and the prediction run on
    the model's inference network with BatchNorm folded into the convolutions, under
    the autocast of ``speed`` (:func:`predict`).  Nothing is read back to the host: the
    outcome's tensors stay on the device for the caller to reduce.
    """
    spec = _spec(attack)
    if rows is None:
        rows = torch.arange(x.shape[0], device=x.device)
    xs, ys, es = x[rows], y[rows], eps[rows]
    if len(rows) == 0:  # nothing to attack
        none = torch.zeros((), dtype=torch.int64, device=x.device)
        return RowOutcome(rows, xs, xs.new_zeros((0, 0)),
                          torch.ones_like(ys, dtype=torch.bool), none.double(), none)
    with _explicit(fuse, speed, x.device):
        x_adv = spec.fn(model, xs, ys, es, generator=generator, **(options or {})).detach()
    logits = predict(model, x_adv, fuse=fuse, speed=speed)
    if logits.dtype in (torch.bfloat16, torch.float16):  # autocast: compare in float32
        logits = logits.float()
    eps01 = (es.to(device=xs.device, dtype=torch.float64) / 255.0).view(-1, *[1] * (x.dim() - 1))
    wide = x_adv.double()
    excess = torch.maximum(((wide - xs.double()).abs() - eps01).amax(),
                           torch.maximum(-wide, wide - 1.0).amax()).clamp_min(0.0)
    return RowOutcome(rows, x_adv, logits, logits.argmax(dim=1) == ys, excess,
                      nonfinite_rows(logits))


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
