"""The one gradient / projection core shared by every attack.

Conventions (K17 section 2.1, N18 section 2 and footnote 3):

* images are float tensors in [0, 1], shape ``[N, C, H, W]``; the model owns its
  normalisation, so clipping happens in image space;
* ``eps`` and ``alpha`` are given in pixel units of [0, 255], as a number or a
  tensor of shape ``[N]`` (one epsilon per example), and divided by 255 here;
* every adversarial image lies in ``[max(0, x - eps/255), min(1, x + eps/255)]``
  (``Clip_{X, eps}`` of K17 followed by clipping to the valid image range);
* the model runs in inference mode during an attack (BatchNorm uses its running
  statistics and does not update them, dropout is off) and its modes are restored
  afterwards;
* gradients are taken with :func:`torch.autograd.grad` with respect to the input
  only, so no weight gradient is computed or accumulated;
* under bf16 autocast (:mod:`cascade_adv.speed`) the logits are cast to float32
  before the objective and the label rule, and the input - hence its gradient
  and the adversarial image - stays float32;
* the gradient passes run on the model's inference network
  (:func:`cascade_adv.models.fuse.inference_network`: BatchNorm folded into the
  convolutions, exact up to float rounding), unless ``with fusion(False):`` asks
  for the model as it is;
* inside ``with trusted():`` (training, and evaluation that validated its
  epsilons up front) a per-example ``eps`` tensor is used where it lies, without
  the checks that read it back to the host.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from cascade_adv.errors import AttackError
from cascade_adv.models.frozen import frozen_network
from cascade_adv.models.fuse import inference_network

#: Maximises the attack objective, given logits and the attack's labels.
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Picks the attack's labels from the clean logits and the true labels.
LabelRule = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Generator | None"], torch.Tensor]
#: An optional per-step record of an iterative attack (:func:`iterate`, APGD), called
#: ``trace(step, logits, loss=None, rows=None)`` with the detached logits at iterate
#: ``step`` (0: the starting point; a new run of the attack starts again at 0) of the
#: batch rows ``rows`` (``None``: every row), and the attack's loss per row there where
#: the attack computes one (APGD; ``None`` for :func:`iterate`).  Without a trace the
#: loops do no extra work (docs/design.md, "Indicators of attack failure").
Trace = Callable[..., None]


_FUSE: contextvars.ContextVar[bool] = contextvars.ContextVar("cascade_adv_fuse", default=True)
_TRUSTED: contextvars.ContextVar[bool] = contextvars.ContextVar("cascade_adv_trusted",
                                                               default=False)
#: the attack network's layout: None measures it (:mod:`cascade_adv.models.layout`)
_LAYOUT: contextvars.ContextVar[bool | None] = contextvars.ContextVar("cascade_adv_layout",
                                                                      default=None)
#: the forward-only attacks (Square) run the model compiled with inductor's freezing
_COMPILE: contextvars.ContextVar[bool] = contextvars.ContextVar("cascade_adv_compile",
                                                               default=False)


@contextlib.contextmanager
def _scoped(var: contextvars.ContextVar, value) -> Iterator[None]:
    """``var`` set to ``value`` for the block, restored afterwards."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def fusion(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """``with fusion(False):`` attacks run the model as it is instead of its inference
    network with BatchNorm folded into the convolutions (the default)."""
    return _scoped(_FUSE, bool(enabled))


def trusted() -> contextlib.AbstractContextManager[None]:
    """Per-example epsilons inside this block were validated by the caller (or drawn
    by the training sampler): they are used on their device, with no host read-back."""
    return _scoped(_TRUSTED, True)


def layout(channels_last: bool | None = None) -> contextlib.AbstractContextManager[None]:
    """``with layout(True):`` the attack network (:func:`attack_network`) stores its folded
    weights and input NHWC, ``False`` NCHW; ``None`` (the default) picks the faster one
    for the device, measured once per machine and model shape on a CPU
    (:mod:`cascade_adv.models.layout`)."""
    if channels_last is not None and not isinstance(channels_last, bool):
        raise AttackError(f"channels_last must be True, False or None, got {channels_last!r}")
    return _scoped(_LAYOUT, channels_last)


def compiled(enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """``with compiled():`` the attacks that only ever run the model forward (Square) run
    it compiled with inductor's freezing (:func:`query_network`); it needs a working
    ``torch.compile`` here (``cascade_adv.speed.compile_support``) and costs a compile
    per model and process."""
    if not isinstance(enabled, bool):
        raise AttackError(f"compiled takes True or False, got {enabled!r}")
    return _scoped(_COMPILE, enabled)


def query_network(model: nn.Module, x: torch.Tensor | None = None
                  ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network a forward-only attack queries (no gradient): inside
    :func:`compiled`, ``model`` compiled with freezing
    (:func:`~cascade_adv.models.frozen.frozen_network`; its weights changed in place
    since the compile: the eager one), else :func:`attack_network`."""
    frozen = frozen_network(model) if _COMPILE.get() else None
    return frozen if frozen is not None else attack_network(model, x)


def attack_network(model: nn.Module, x: torch.Tensor | None = None) -> nn.Module:
    """The network an attack's gradient passes run on (see :func:`fusion` and
    :func:`layout`) for inputs like ``x``; call it with ``model`` in inference mode."""
    return inference_network(model, _LAYOUT.get(), x) if _FUSE.get() else model


@contextlib.contextmanager
def inference_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every sub-module in eval mode; restore the ones that were training afterwards
    (one walk over the modules; nothing to restore for a model already in eval mode)."""
    training = [m for m in model.modules() if m.training]
    for m in training:
        m.training = False
    try:
        yield model
    finally:
        for m in training:
            m.training = True


def predict(model: nn.Module, x: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
    """Logits of ``x`` with ``model`` in inference mode and without gradients (its mode
    restored); ``net`` computes them instead when given (e.g. its
    :func:`attack_network`)."""
    with inference_mode(model), torch.no_grad():
        return (net or model)(x)


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter or buffer (CPU for a module without)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def eps_pixels(eps, n: int, name: str = "eps") -> torch.Tensor:
    """Validate ``eps`` (pixel units, number or ``[N]`` tensor); return it as a float64
    CPU tensor of shape ``[N]`` in pixel units (exact, for step counts)."""
    t = torch.as_tensor(eps).detach().to(device="cpu", dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or t.shape[0] != n:
        raise AttackError(
            f"{name} must be a number or a tensor of shape [{n}] (one per image), "
            f"got shape {list(t.shape)}"
        )
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()) or bool((t > 255).any()):
        bad = t[~torch.isfinite(t) | (t < 0) | (t > 255)][0].item()
        raise AttackError(
            f"{name}={bad:g} is outside [0, 255]; give {name} in pixel units of [0, 255] "
            "(e.g. 16), not as a fraction of 1"
        )
    return t


def pixel_eps(eps, n: int, x: torch.Tensor, name: str = "eps") -> torch.Tensor:
    """Validate ``eps`` (pixel units, number or ``[N]`` tensor); return ``eps / 255``
    shaped ``[N, 1, 1, 1]`` in ``x``'s dtype and device.  Inside :func:`trusted` an
    ``[N]`` tensor is converted where it lies, unchecked (no host sync)."""
    if _TRUSTED.get() and isinstance(eps, torch.Tensor) and eps.dim() == 1:
        exact = torch.float32 if x.device.type == "mps" else torch.float64
        t = eps.to(device=x.device, dtype=exact)  # stays on the device: no host sync
    else:
        t = eps_pixels(eps, n, name)
    return (t / 255.0).to(device=x.device, dtype=x.dtype).view(n, *([1] * (x.dim() - 1)))


def validate_eps(values, name: str = "eps", *, required: bool = False) -> list[float]:
    """The one check of a list of epsilons (pixel units of [0, 255]) before any work
    starts: returns them as floats, duplicates dropped, order kept; ``required``: an
    empty list is an error too.  Raises :class:`AttackError` (a ``ValueError``), one
    line."""
    if isinstance(values, (int, float)):
        values = [values]
    try:
        values = list(dict.fromkeys(float(v) for v in values))
    except (TypeError, ValueError):
        raise AttackError(f"{name} {values!r} holds a non-number; give epsilons in pixel units "
                          "of [0, 255], e.g. 0 2 4 8 16") from None
    if values:
        eps_pixels(torch.tensor(values, dtype=torch.float64), len(values), name)
    elif required:
        raise AttackError(f"{name} is empty; give at least one epsilon in pixel units of "
                          "[0, 255], e.g. 16")
    return values


def iterative_steps(eps) -> torch.Tensor:
    """K17 section 2.2: ``floor(min(eps + 4, 1.25 * eps))`` iterations (eps in pixels).

    A relative tolerance of 1e-6 absorbs the rounding of an eps given in float32
    (e.g. 0.8 or 3.2, where 1.25 eps is a whole number)."""
    t = torch.as_tensor(eps).to(torch.float64)
    m = torch.minimum(t + 4.0, 1.25 * t)
    return torch.floor(m + 1e-6 * m.abs().clamp_min(1.0)).to(torch.int64)


def project(x_adv: torch.Tensor, x: torch.Tensor, eps01: torch.Tensor) -> torch.Tensor:
    """Clip to the L-infinity ball of radius ``eps01`` around ``x`` and to [0, 1]."""
    lower = torch.clamp(x - eps01, min=0.0)
    upper = torch.clamp(x + eps01, max=1.0)
    return torch.maximum(torch.minimum(x_adv, upper), lower)


def float32_logits(out):
    """bf16 logits (autocast) -> float32; anything else unchanged, so that callers can
    still check and reject a model output that is not a logits tensor."""
    if isinstance(out, torch.Tensor) and out.dtype in (torch.bfloat16, torch.float16):
        return out.float()
    return out


def float_logits(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net(x)``, in float32 under bf16 autocast (the precision objectives and label
    rules read logits in)."""
    return float32_logits(net(x))


def input_gradient(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor | None,
    objective: Objective,
    label_rule: LabelRule | None = None,
    generator: torch.Generator | None = None,
    *,
    on_logits: Callable[[torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``objective`` with respect to the input only.

    If ``label_rule`` is given, the attack's labels are chosen from the detached
    logits of this same forward pass (one forward, one input-backward).
    Returns ``(gradient, labels_used)``.  The logits are taken in float32 (a no-op
    unless the model runs under bf16 autocast); the gradient has ``x``'s dtype.
    ``on_logits``, when given, receives the detached logits of the pass (a trace).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = float32_logits(model(x))
        if on_logits is not None:
            on_logits(logits.detach())
        if label_rule is not None:
            labels = label_rule(logits.detach(), labels, generator)
        loss = objective(logits, labels)
        (grad,) = torch.autograd.grad(loss, x)
    return grad, labels


def loss_and_gradient(
    net: nn.Module, x: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward and one input-backward pass of ``net`` for a per-example loss.

    ``loss_fn`` maps the logits (float32 under bf16 autocast) to a loss per example;
    returns ``(losses [N], logits, gradient of their sum with respect to x)``, the first
    two detached.  The search attacks (APGD) need all three from the same pass.
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = float32_logits(net(x))
        loss = loss_fn(logits)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), logits.detach(), grad


def rows_view(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-example ``[N]`` tensor shaped ``[N, 1, ..., 1]`` to broadcast over ``x``."""
    return mask.view(-1, *([1] * (x.dim() - 1)))


#: A run of :meth:`WorstCase.runs`'s plan.
T = TypeVar("T")


class WorstCase:
    """Per image, the worst point that several runs of an attack found (AutoAttack's
    ``x_best_adv`` semantics): a misclassified point as soon as one run found one,
    otherwise the point of the highest loss over the runs.

    Images that the model already misclassifies clean count as broken from the start
    and keep their clean image.  :meth:`rows` lists the images still to attack (one
    host read-back per run, between runs, never inside a run's loop).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, clean_logits: torch.Tensor):
        self.x_adv = x.detach().clone()
        self.broken = clean_logits.argmax(dim=1) != y
        self.loss = torch.full((x.shape[0],), -torch.inf, device=x.device,
                               dtype=clean_logits.dtype)

    def rows(self) -> torch.Tensor | None:
        """Indices of the images no run has broken yet; ``None`` when there are none."""
        idx = torch.nonzero(~self.broken).flatten()
        return idx if idx.numel() else None

    def runs(self, plan: Iterable[T]) -> Iterator[tuple[torch.Tensor, T]]:
        """Each run of ``plan`` (e.g. ``(target rank, restart)``) with the images no
        earlier run has broken (:meth:`rows`, read after the previous run's
        :meth:`update`); stops as soon as every image is broken."""
        for run in plan:
            idx = self.rows()
            if idx is None:
                return
            yield idx, run

    def update(self, idx: torch.Tensor, x_run: torch.Tensor, broken: torch.Tensor,
               loss: torch.Tensor) -> None:
        """Merge one run over the images ``idx``: its points, which of them are
        misclassified, and their losses (higher is worse for the model)."""
        take = broken | (loss > self.loss[idx])
        self.x_adv[idx] = torch.where(rows_view(take, x_run), x_run, self.x_adv[idx])
        self.loss[idx] = torch.where(take, loss.to(self.loss.dtype), self.loss[idx])
        self.broken[idx] = self.broken[idx] | broken


@contextlib.contextmanager
def search(model: nn.Module, x: torch.Tensor, y: torch.Tensor
           ) -> Iterator[tuple[nn.Module, torch.Tensor, WorstCase]]:
    """The set-up of the search attacks (APGD, FAB-T): ``model`` in inference mode, and
    ``(its attack network, the clean logits, the WorstCase of x)`` for the block."""
    with inference_mode(model):
        net = attack_network(model, x)
        with torch.no_grad():
            clean = float_logits(net, x)
        yield net, clean, WorstCase(x, y, clean)


# --- objectives (maximised by every attack) ----------------------------------------


def loss_true(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """J(X, y): untargeted, increase the loss of ``labels`` (FGSM, iter_FGSM)."""
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def loss_target(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-J(X, y_target): targeted, decrease the loss of the target (step_ll, step_rnd)."""
    return -F.cross_entropy(logits.float(), labels, reduction="sum")


def entropy(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Entropy of the predicted distribution (K17 appendix A, "fast entropy")."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum()


# --- label rules (K17 section 2.2, appendix A, section 4.2) --------------------------


def true_label(logits, y, generator=None):
    if y is None:
        raise AttackError("this attack needs the true labels y; pass y")
    return y


def predicted_label(logits, y=None, generator=None):
    return logits.argmax(dim=1)


def least_likely_label(logits, y=None, generator=None):
    """y_LL = argmin_y p(y | X), from the clean image."""
    return logits.argmin(dim=1)


def random_other_label(logits, y, generator=None):
    """A uniformly random class different from the true one (step_rnd)."""
    if y is None:
        raise AttackError("this attack needs the true labels y; pass y")
    num_classes = logits.shape[1]
    shift = torch.randint(1, num_classes, y.shape, device=y.device, generator=generator)
    return (y + shift) % num_classes


# --- step directions ----------------------------------------------------------------


def sign_direction(g: torch.Tensor) -> torch.Tensor:
    return g.sign()


def random_sign_direction(x: torch.Tensor, generator=None) -> torch.Tensor:
    """``sign(N(0, I))`` in ``x``'s shape, dtype and device (K17 appendix A)."""
    return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator).sign()


def l2_direction(g: torch.Tensor) -> torch.Tensor:
    """g / ||g||_2 per example (K17 "fast grad. L2")."""
    norm = g.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


def linf_direction(g: torch.Tensor) -> torch.Tensor:
    """g / ||g||_inf per example (K17 "fast grad. L-inf")."""
    norm = g.flatten(1).abs().amax(dim=1).clamp_min(1e-12)
    return g / norm.view(-1, *([1] * (g.dim() - 1)))


# --- the two attack loops --------------------------------------------------------------


def one_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    eps,
    objective: Objective,
    label_rule: LabelRule,
    direction: Callable[[torch.Tensor], torch.Tensor] = sign_direction,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``X_adv = clip(X + eps * direction(grad_X objective))``: one gradient, one step."""
    eps01 = pixel_eps(eps, x.shape[0], x)
    with inference_mode(model):
        grad, _ = input_gradient(attack_network(model, x), x, y, objective, label_rule,
                                 generator)
    return project(x + eps01 * direction(grad), x, eps01).detach()


def iterate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    eps,
    objective: Objective,
    label_rule: LabelRule,
    alpha=1.0,
    steps=None,
    random_start: bool = False,
    generator: torch.Generator | None = None,
    trace: Trace | None = None,
) -> torch.Tensor:
    """``X_{N+1} = Clip_{X,eps}(X_N + alpha * sign(grad objective(X_N)))``.

    ``steps=None`` uses K17's ``floor(min(eps + 4, 1.25 eps))`` per example; with a
    per-example ``eps`` every example runs its own count: the loop runs to the
    largest count and finished examples leave the batch, so the result and the work
    equal those of separate calls.  The labels are chosen once, on the clean image
    (iter_ll fixes its least-likely class there).  ``trace`` (:data:`Trace`) receives
    the logits of every gradient pass, iterates ``0 .. steps - 1`` (not the returned
    point, which no pass evaluates).
    """
    n = x.shape[0]
    eps01 = pixel_eps(eps, n, x)
    alpha01 = pixel_eps(alpha, n, x, name="alpha")
    # a trusted caller (training) passes positive steps: no host read-back to check them
    if not _TRUSTED.get() and bool((alpha01 <= 0).any()):
        raise AttackError("alpha must be > 0 (pixel units, e.g. 1)")
    if steps is None:
        # From the exact pixel value: eps01 in float32 times 255 can fall just below a
        # whole number (eps=0.8 gave 0 steps instead of 1).
        steps_t = iterative_steps(eps_pixels(eps, n))
    else:
        steps_t = torch.as_tensor(steps, dtype=torch.int64).expand(n)
        if bool((steps_t < 0).any()):
            raise AttackError(f"steps must be >= 0, got {steps}")
    counts = steps_t.cpu()
    max_steps = int(counts.max()) if n else 0
    # Rows still moving at each step: they change only where some row's count ends, so
    # the index sets are built on the host up front (no device sync inside the loop).
    # Finished rows leave the batch instead of being masked, so a stacked call costs
    # the sum of the rows' own step counts, as separate calls would.
    stops = sorted({int(c) for c in counts.tolist()} - {max_steps})
    active_from = {0: None}
    for stop in stops:
        active_from[stop] = torch.nonzero(counts > stop).flatten().to(x.device)

    with inference_mode(model):
        model = attack_network(model, x)
        if label_rule is None:
            labels = y
        elif label_rule is true_label:  # needs no logits: no extra forward pass
            labels = true_label(None, y, generator)
        else:
            with torch.no_grad():
                labels = label_rule(float32_logits(model(x)), y, generator)
        x_adv = x.detach().clone()
        if random_start:
            noise = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x_adv = project(x + (2 * noise - 1) * eps01, x, eps01)
        idx = None  # None: every row
        for step in range(max_steps):
            idx = active_from.get(step, idx)
            seen = None if trace is None else functools.partial(trace, step, rows=idx)
            if idx is None:
                grad, _ = input_gradient(model, x_adv, labels, objective, on_logits=seen)
                x_adv = project(x_adv + alpha01 * grad.sign(), x, eps01)
                continue
            xa, x0, e01 = x_adv[idx], x[idx], eps01[idx]
            grad, _ = input_gradient(model, xa, None if labels is None else labels[idx],
                                     objective, on_logits=seen)
            x_adv[idx] = project(xa + alpha01[idx] * grad.sign(), x0, e01)
    return x_adv.detach()


def check_images(x: torch.Tensor, y: torch.Tensor | None) -> None:
    """Clear errors for inputs outside the conventions (public entry point only)."""
    if not torch.is_floating_point(x) or x.dim() < 2:
        raise AttackError(
            f"images must be a float tensor [N, C, H, W] in [0, 1], got {x.dtype} of shape "
            f"{list(x.shape)}; convert uint8 images with cascade_adv.data.to_float"
        )
    if x.numel() and (
        not bool(torch.isfinite(x).all()) or float(x.min()) < 0.0 or float(x.max()) > 1.0
    ):
        raise AttackError(
            "images must lie in [0, 1] (no NaN); put normalisation (mean subtraction) "
            "inside the model"
        )
    if y is not None and (y.dim() != 1 or y.shape[0] != x.shape[0]):
        raise AttackError(f"labels must have shape [{x.shape[0]}], got {list(y.shape)}")
    if y is not None and (torch.is_floating_point(y) or torch.is_complex(y) or y.dtype == torch.bool):
        raise AttackError(f"labels must be integer class indices, got {y.dtype}")


def truncated_normal(shape, std: torch.Tensor, bound: torch.Tensor, x: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Normal(0, std) samples truncated to [-bound, bound] (per-example std/bound)."""
    # Inverse-CDF sampling: exact truncation without rejection loops.
    ratio = (bound / std.clamp_min(1e-12)).expand(shape)
    lo = torch.special.ndtr(-ratio)
    u = torch.rand(shape, device=x.device, dtype=x.dtype, generator=generator)
    p = lo + u * (1 - 2 * lo)
    z = torch.special.ndtri(p.clamp(1e-7, 1 - 1e-7)) * std
    return torch.maximum(torch.minimum(z, bound), -bound)

