"""APGD, L-infinity (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", section 3 and Algorithm 1).

From a random start in the eps-ball, ``steps`` iterations of

    z       = P(x_k + eta_k sign(grad f(x_k)))
    x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})),  alpha = 0.75

(the first step plain: alpha = 1), P the projection onto the eps-ball and [0, 1]. The
step size starts at ``eta = 2 eps`` and is halved at the checkpoints ``w_j`` (the paper's
``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` of the
iterations) where

1. fewer than ``rho (w_j - w_{j-1})`` of the steps since the last checkpoint increased
   the loss, or
2. the step size was not halved at the last checkpoint and the best loss has not
   improved since;

a halved image restarts from its best point. Losses: cross-entropy, DLR and targeted
DLR over the top-T classes (section 4). Every image's state stays on the device: the
checkpoints are host-side integers known from ``steps``, so no host read-back happens
inside the loop. Differences from the authors' code are listed in docs/design.md
("Strong attacks").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cascade_adv.attacks import core
from cascade_adv.errors import AttackError

#: The paper's momentum: weight of the new step (1 - ALPHA weights the previous one).
ALPHA = 0.75
#: Default number of target classes of APGD-T (AutoAttack's standard version).
DEFAULT_TARGETS = 9


# --- losses (maximised), per example ------------------------------------------------------


def ce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the true class, per example."""
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Difference of logits ratio: ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)``,
    ``z_pi1 >= z_pi2 >= ...`` the sorted logits (positive once the image is misclassified)."""
    top = logits.topk(3, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], -torch.inf).amax(dim=1)
    return -(z_y - other) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor
                      ) -> torch.Tensor:
    """Targeted DLR: ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``."""
    top = logits.topk(4, dim=1).values
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + 1e-12)


def per_example_loss(loss: str, y: torch.Tensor, target: torch.Tensor | None = None
                     ) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss ``"ce"``, ``"dlr"`` or ``"dlr_targeted"`` (towards ``target``) of labels
    ``y``, as a function of the logits."""
    if loss == "ce":
        return lambda z: ce_loss(z, y)
    if loss == "dlr":
        return lambda z: dlr_loss(z, y)
    return lambda z: targeted_dlr_loss(z, y, target)


#: Classes each loss needs (DLR reads the 3rd largest logit, targeted DLR the 4th).
MIN_CLASSES = {"ce": 2, "dlr": 3, "dlr_targeted": 4}
LOSS_NAMES = {"ce": "cross-entropy", "dlr": "DLR", "dlr_targeted": "targeted DLR"}


def check_classes(loss: str, num_classes: int) -> None:
    """A model with too few classes for the loss: :class:`AttackError`, one line."""
    need = MIN_CLASSES[loss]
    if num_classes < need:
        raise AttackError(f"APGD's {LOSS_NAMES[loss]} loss needs a model with at least {need} "
                          f"classes, this one gives {num_classes}"
                          + ("; use apgd_ce" if loss != "ce" else ""))


# --- the step-size schedule -----------------------------------------------------------------


def checkpoints(steps: int) -> list[int]:
    """Iterations after which the step size is checked: ``w_j = p_j * steps`` for the
    paper's ``p_j``, in the authors' integer form (first window ``int(0.22 steps)``,
    each next one ``int(0.03 steps)`` shorter, at least ``int(0.06 steps)``; every
    window at least 1). For ``steps = 100``: 22, 41, 57, 70, 80, 87, 93, 99."""
    window = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    out, at = [], window
    while at <= steps:
        out.append(at)
        window = max(window - shrink, shortest)
        at += window
    return out


def halve_step(increases: torch.Tensor, window: int, rho: float, halved_last: torch.Tensor,
               best_at_last: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """Which images halve their step size at a checkpoint (the paper's two conditions):
    ``increases`` (the steps since the last checkpoint that raised the loss) below
    ``rho * window``, or no halving at the last checkpoint (``halved_last``) and no
    improvement of the best loss since (``best_at_last >= best``).  At the first
    checkpoint ``halved_last`` is all true (as in the authors' code), so only the
    first condition applies."""
    return (increases < rho * window) | (~halved_last & (best_at_last >= best))


def first_reference(start_loss: torch.Tensor) -> torch.Tensor:
    """What the first step's loss is compared with when counting the steps that raised
    the loss: the start's, ``f(x^(0))`` as in the paper.  (The authors' code compares it
    with 0, an index that wraps around to an unfilled entry; docs/design.md.)"""
    return start_loss


@dataclass
class Search:
    """The per-image state of one APGD run, on the device."""

    x_adv: torch.Tensor        # the current iterate
    grad: torch.Tensor         # the loss gradient at it
    step: torch.Tensor         # eta, [N, 1, ..., 1]
    x_best: torch.Tensor       # the iterate of the highest loss so far
    grad_best: torch.Tensor
    best: torch.Tensor         # that loss, [N]
    increases: torch.Tensor    # steps since the last checkpoint that raised the loss, [N]
    halved_last: torch.Tensor  # halved at the last checkpoint (true before the first), [N]
    best_at_last: torch.Tensor  # ``best`` at the last checkpoint, [N]

    def checkpoint(self, window: int, rho: float) -> None:
        """Halve the step of the images :func:`halve_step` picks and move them back to
        their best point and its gradient; start the next window."""
        halve = halve_step(self.increases, window, rho, self.halved_last, self.best_at_last,
                           self.best)
        h = core.rows_view(halve, self.x_adv)
        self.step = torch.where(h, self.step / 2, self.step)
        self.x_adv = torch.where(h, self.x_best, self.x_adv)
        self.grad = torch.where(h, self.grad_best, self.grad)
        self.halved_last, self.best_at_last = halve, self.best.clone()
        self.increases = torch.zeros_like(self.increases)

    def record(self, x_adv: torch.Tensor, grad: torch.Tensor, loss: torch.Tensor,
               prev_loss: torch.Tensor) -> None:
        """A new iterate, its gradient and loss (``prev_loss``: the previous iterate's)."""
        self.x_adv, self.grad = x_adv, grad
        self.increases = self.increases + (loss > prev_loss).to(loss.dtype)
        better = loss > self.best
        b = core.rows_view(better, x_adv)
        self.x_best = torch.where(b, x_adv, self.x_best)
        self.grad_best = torch.where(b, grad, self.grad_best)
        self.best = torch.where(better, loss, self.best)


# --- one run ---------------------------------------------------------------------------------


def random_start(x: torch.Tensor, eps01: torch.Tensor, generator: torch.Generator | None
                 ) -> torch.Tensor:
    """``x + eps t / ||t||_inf``, ``t`` uniform in [-1, 1]^d (the authors' start), clipped
    to [0, 1]."""
    t = 2 * torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator) - 1
    scale = t.flatten(1).abs().amax(dim=1).clamp_min(1e-12)
    return core.project(x + eps01 * t / core.rows_view(scale, x), x, eps01)


def run_once(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps01: torch.Tensor,
             loss_fn: Callable[[torch.Tensor], torch.Tensor], steps: int, rho: float,
             generator: torch.Generator | None, trace: core.Trace | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run from a random start; returns ``(points, misclassified, best loss)``:
    per image the last misclassified iterate if one was, else the best-loss iterate.
    ``trace(step, logits, loss)`` (:data:`~cascade_adv.attacks.core.Trace`) sees the
    start (step 0) and every iterate ``1 .. steps``."""
    x0 = random_start(x, eps01, generator)
    loss, logits, grad = core.loss_and_gradient(net, x0, loss_fn)
    if trace is not None:
        trace(0, logits, loss)
    broken = logits.argmax(dim=1) != y
    x_broken = x0.clone()
    s = Search(x_adv=x0, grad=grad, step=(2 * eps01).expand(x.shape[0], *eps01.shape[1:]),
               x_best=x0.clone(), grad_best=grad.clone(), best=loss.clone(),
               increases=torch.zeros_like(loss), halved_last=torch.ones_like(broken),
               best_at_last=loss.clone())
    x_prev, loss = x0, first_reference(loss)
    marks, last_mark = set(checkpoints(steps)), 0
    for i in range(steps):
        a = ALPHA if i > 0 else 1.0
        z = core.project(s.x_adv + s.step * s.grad.sign(), x, eps01)
        x_new = core.project(s.x_adv + (z - s.x_adv) * a + (s.x_adv - x_prev) * (1 - a), x,
                             eps01)
        x_prev = s.x_adv
        prev_loss = loss
        loss, logits, grad = core.loss_and_gradient(net, x_new, loss_fn)
        if trace is not None:
            trace(i + 1, logits, loss)
        wrong = logits.argmax(dim=1) != y
        x_broken = torch.where(core.rows_view(wrong, x), x_new, x_broken)
        broken = broken | wrong
        s.record(x_new, grad, loss, prev_loss)
        if i + 1 in marks:
            s.checkpoint(i + 1 - last_mark, rho)
            last_mark = i + 1
    return torch.where(core.rows_view(broken, x), x_broken, s.x_best), broken, s.best


# --- the attacks -----------------------------------------------------------------------------


def check_options(steps: int, restarts: int, rho: float = 0.75) -> None:
    """``steps`` a whole number >= 0, ``restarts`` >= 1, ``rho`` in (0, 1]
    (:class:`AttackError` otherwise; FAB-T checks its steps and restarts here too)."""
    if int(steps) != steps or steps < 0:
        raise AttackError(f"steps must be a whole number >= 0, got {steps}")
    if int(restarts) != restarts or restarts < 1:
        raise AttackError(f"restarts must be a whole number >= 1, got {restarts}")
    if not 0 < rho <= 1:
        raise AttackError(f"rho must lie in (0, 1], got {rho}")


def target_count(targets: int | None, num_classes: int) -> int:
    """The number of target classes of APGD-T for a model with ``num_classes`` classes:
    ``targets``, or by default ``min(9, num_classes - 1)``; more than ``num_classes - 1``
    raises :class:`AttackError` (a ``ValueError``)."""
    if targets is None:
        return min(DEFAULT_TARGETS, num_classes - 1)
    if int(targets) != targets or targets < 1:
        raise AttackError(f"targets must be a whole number >= 1, got {targets}")
    if targets > num_classes - 1:
        raise AttackError(f"targets={targets} is more target classes than the model has: it "
                          f"predicts {num_classes} classes, so at most {num_classes - 1} "
                          "targets; lower targets")
    return int(targets)


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps, loss: str, *,
         steps: int = 100, restarts: int = 1, rho: float = 0.75, targets: int | None = None,
         generator: torch.Generator | None = None, trace: core.Trace | None = None
         ) -> torch.Tensor:
    """APGD with loss ``"ce"``, ``"dlr"`` or ``"dlr_targeted"`` (then ``targets`` classes,
    the 2nd to (T+1)-th largest clean logits, each with ``restarts`` runs, as AutoAttack).

    Each run attacks only the images no earlier run has broken; images misclassified
    clean are returned unchanged.  Per image the result is a misclassified point if any
    run found one, otherwise the point of the highest loss over the runs.  ``trace``
    (:data:`~cascade_adv.attacks.core.Trace`) sees every run's start and iterates with
    their loss, ``rows`` the images of ``x`` the run attacks."""
    check_options(steps, restarts, rho)
    core.true_label(None, y)
    n = x.shape[0]
    eps01 = core.pixel_eps(eps, n, x)
    with core.search(model, x, y) as (net, clean, worst):
        check_classes(loss, clean.shape[1])
        ranks = [None]
        if loss == "dlr_targeted":
            ranks = list(range(1, target_count(targets, clean.shape[1]) + 1))
            ranked = clean.argsort(dim=1, descending=True)
        for idx, rank in worst.runs(r for r in ranks for _ in range(restarts)):
            fn = per_example_loss(loss, y[idx], None if rank is None else ranked[idx, rank])
            seen = None if trace is None else functools.partial(trace, rows=idx)
            found = run_once(net, x[idx], y[idx], eps01[idx], fn, int(steps), rho,
                             generator, seen)
            worst.update(idx, *found)
    return worst.x_adv
