"""Every attack of K17 section 2.2 and appendix A, plus PGD, APGD (CE, DLR, targeted
DLR), FAB-T and the Square attack, by name.

All attacks share one signature::

    fn(model, x, y, eps, *, generator=None, **options) -> x_adv

and are built from the loops in :mod:`cascade_adv.attacks.core`; the registry
maps the names used by every command and config to them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from cascade_adv.attacks import apgd as _apgd
from cascade_adv.attacks import core
from cascade_adv.attacks import fab as _fab
from cascade_adv.attacks import options as opt
from cascade_adv.attacks import square as _square
from cascade_adv.errors import AttackError, UnknownAttackError


@dataclass(frozen=True)
class AttackSpec:
    name: str
    fn: Callable[..., torch.Tensor]
    kind: str  # "one_step" | "iterative" | "random" | "query" (scores only, no gradient)
    description: str
    #: draws from its ``generator`` (random labels, noise, a random start): under DDP
    #: such an attack runs on its whole block of rows on every rank (training)
    stochastic: bool = False
    #: each keyword option's type and range (:mod:`cascade_adv.attacks.options`); every
    #: registered attack has one per option, an attack built by hand may have none
    limits: Mapping[str, opt.OptionSpec] = field(default_factory=dict, compare=False)
    #: forward passes an iterative attack's step runs besides its gradient pass (FAB-T
    #: predicts its new point); its price in :mod:`cascade_adv.experiments.cost`
    step_forwards: int = 0

    @property
    def options(self) -> tuple[str, ...]:
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY)


_REGISTRY: dict[str, AttackSpec] = {}


def register(name: str, kind: str, description: str, stochastic: bool = False,
             options: Mapping[str, opt.OptionSpec] | None = None, step_forwards: int = 0):
    """Decorator adding an attack function to the registry under ``name``; ``stochastic``
    says whether it draws from its ``generator`` (random attacks always do); ``options``
    gives every keyword option of the function (``generator`` aside) its type and range
    (:class:`~cascade_adv.attacks.options.OptionSpec`; ``ValueError`` if one is missing);
    ``step_forwards``: :attr:`AttackSpec.step_forwards`."""

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"attack {name!r} registered twice")
        spec = AttackSpec(name, fn, kind, description, stochastic or kind == "random",
                          dict(options or {}), step_forwards)
        opt.check_specs(name, spec.options, spec.limits)
        _REGISTRY[name] = spec
        return fn

    return deco


def names(kind: str | None = None) -> list[str]:
    """Every registered attack name (optionally only one ``kind``)."""
    return [n for n, s in _REGISTRY.items() if kind is None or s.kind == kind]


def get(name: str) -> AttackSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownAttackError(
            f"unknown attack {name!r}; choose one of: {', '.join(_REGISTRY)}"
        ) from None


def run(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None,
        eps=16, **options) -> torch.Tensor:
    """Run attack ``name`` on images ``x`` in [0, 1] with labels ``y``.

    ``eps`` is in pixel units of [0, 255], a number or a tensor of shape ``[N]``.
    ``options``: the attack's keyword options, each checked against its type and range
    first (:func:`~cascade_adv.attacks.options.check_options`), and ``generator``.
    The result has the shape and dtype of ``x``.
    """
    spec = get(name)
    seeded = {"generator": options.pop("generator")} if "generator" in options else {}
    options = opt.check_options(spec, options)
    core.check_images(x, y)
    return spec.fn(model, x, y, eps, **options, **seeded).to(x.dtype)


# --- one-step attacks (K17 section 2.2 and appendix A) ---------------------------------


@register("step_fgsm", "one_step", "FGSM: X + eps sign(grad J(X, y_true))  [K17 eq. 1]")
def step_fgsm(model, x, y, eps, *, generator=None):
    return core.one_step(model, x, y, eps, core.loss_true, core.true_label)


@register("fgsm_pred", "one_step", "FGSM with the predicted label instead of the true one")
def fgsm_pred(model, x, y, eps, *, generator=None):
    return core.one_step(model, x, y, eps, core.loss_true, core.predicted_label)


@register("step_ll", "one_step", "X - eps sign(grad J(X, y_LL)), y_LL least likely  [K17 eq. 2]")
def step_ll(model, x, y, eps, *, generator=None):
    return core.one_step(model, x, y, eps, core.loss_target, core.least_likely_label)


@register("step_rnd", "one_step", "X - eps sign(grad J(X, y_rnd)), y_rnd random != y_true",
          stochastic=True)
def step_rnd(model, x, y, eps, *, generator=None):
    return core.one_step(
        model, x, y, eps, core.loss_target, core.random_other_label, generator=generator
    )


@register("fast_entropy", "one_step", "X + eps sign(grad H(p(.|X))): maximise predictive entropy")
def fast_entropy(model, x, y, eps, *, generator=None):
    return core.one_step(model, x, y, eps, core.entropy, core.predicted_label)


@register("fast_grad_l2", "one_step", "X + eps grad J / ||grad J||_2")
def fast_grad_l2(model, x, y, eps, *, generator=None):
    return core.one_step(
        model, x, y, eps, core.loss_true, core.true_label, direction=core.l2_direction
    )


@register("fast_grad_linf", "one_step", "X + eps grad J / ||grad J||_inf")
def fast_grad_linf(model, x, y, eps, *, generator=None):
    return core.one_step(
        model, x, y, eps, core.loss_true, core.true_label, direction=core.linf_direction
    )


# --- random perturbations (K17 appendix A) --------------------------------------------


@register("random_sign", "random", "X + eps sign(N(0, I))")
def random_sign(model, x, y, eps, *, generator=None):
    eps01 = core.pixel_eps(eps, x.shape[0], x)
    return core.project(x + eps01 * core.random_sign_direction(x, generator), x, eps01)


@register("random_normal", "random", "X + T, T truncated normal, std 0.5 eps, on [-eps, eps]")
def random_normal(model, x, y, eps, *, generator=None):
    eps01 = core.pixel_eps(eps, x.shape[0], x)
    t = core.truncated_normal(x.shape, 0.5 * eps01, eps01, x, generator)
    return core.project(x + t, x, eps01)


# --- iterative attacks (K17 section 2.2) and PGD ---------------------------------------


@register("iter_fgsm", "iterative", "basic iterative: alpha = 1, floor(min(eps+4, 1.25 eps)) steps",
          options={"alpha": opt.ALPHA, "steps": opt.K17_STEPS_OPTION})
def iter_fgsm(model, x, y, eps, *, alpha=1.0, steps=None, generator=None):
    return core.iterate(model, x, y, eps, core.loss_true, core.true_label, alpha, steps)


@register("iter_ll", "iterative", "iterative least likely; y_LL fixed on the clean image",
          options={"alpha": opt.ALPHA, "steps": opt.K17_STEPS_OPTION})
def iter_ll(model, x, y, eps, *, alpha=1.0, steps=None, generator=None):
    return core.iterate(model, x, y, eps, core.loss_target, core.least_likely_label, alpha, steps)


@register("pgd", "iterative", "PGD (Madry et al.): random start, restarts keep the worst case",
          stochastic=True, options={"alpha": opt.PGD_ALPHA, "steps": opt.K17_STEPS_OPTION,
                                    "restarts": opt.RESTARTS})
def pgd(model, x, y, eps, *, alpha=None, steps=None, restarts=1, generator=None):
    """Projected gradient descent on J(X, y_true) from a uniform random start.

    Defaults: K17's step count rule and ``alpha = 2.5 * eps / steps``; with
    ``restarts > 1`` each example keeps the restart with the highest loss.
    """
    if restarts < 1:
        raise AttackError(f"restarts must be >= 1, got {restarts}")
    n = x.shape[0]
    eps_px = core.eps_pixels(eps, n)
    steps_t = core.iterative_steps(eps_px) if steps is None else torch.full((n,), int(steps))
    if alpha is None:
        alpha = (2.5 * eps_px / steps_t.clamp_min(1).double()).clamp_min(1e-6)
    best, best_loss = x.detach().clone(), None
    for _ in range(restarts):
        cand = core.iterate(model, x, y, eps, core.loss_true, core.true_label, alpha, steps_t,
                            random_start=True, generator=generator)
        if restarts == 1:
            return cand
        loss = torch.nn.functional.cross_entropy(core.predict(model, cand).float(), y,
                                                 reduction="none")
        if best_loss is None:
            best, best_loss = cand, loss
        else:
            better = loss > best_loss
            best = torch.where(better.view(n, *([1] * (x.dim() - 1))), cand, best)
            best_loss = torch.maximum(loss, best_loss)
    return best


# --- strong attacks: APGD (Croce & Hein 2020) --------------------------------------------


@register("apgd_ce", "iterative",
          "APGD, cross-entropy: eta = 2 eps halved at the checkpoints, momentum 0.75, "
          "random start, restarts keep the worst case", stochastic=True,
          options={"steps": opt.STEPS, "restarts": opt.RESTARTS, "rho": opt.RHO})
def apgd_ce(model, x, y, eps, *, steps=100, restarts=1, rho=0.75, generator=None):
    return _apgd.apgd(model, x, y, eps, "ce", steps=steps, restarts=restarts, rho=rho,
                      generator=generator)


@register("apgd_dlr", "iterative",
          "APGD on the DLR loss -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)", stochastic=True,
          options={"steps": opt.STEPS, "restarts": opt.RESTARTS, "rho": opt.RHO})
def apgd_dlr(model, x, y, eps, *, steps=100, restarts=1, rho=0.75, generator=None):
    return _apgd.apgd(model, x, y, eps, "dlr", steps=steps, restarts=restarts, rho=rho,
                      generator=generator)


@register("apgd_t", "iterative",
          "targeted APGD, DLR -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) towards each of the "
          "top-T classes (T = min(9, classes - 1) by default)", stochastic=True,
          options={"targets": opt.TARGETS, "steps": opt.STEPS, "restarts": opt.RESTARTS,
                   "rho": opt.RHO})
def apgd_t(model, x, y, eps, *, targets=None, steps=100, restarts=1, rho=0.75,
           generator=None):
    return _apgd.apgd(model, x, y, eps, "dlr_targeted", steps=steps, restarts=restarts,
                      rho=rho, targets=targets, generator=generator)


# --- strong attacks: FAB-T (Croce & Hein 2020, ICML) ----------------------------------------


@register("fab_t", "iterative",
          "targeted FAB: the smallest L-inf step onto the linearised boundary z_t = z_y, "
          "biased towards the image, towards each of the top-T classes; kept within eps",
          stochastic=True, options={"targets": opt.TARGETS, "steps": opt.STEPS,
                                    "restarts": opt.RESTARTS}, step_forwards=1)
def fab_t(model, x, y, eps, *, targets=None, steps=100, restarts=1, generator=None):
    return _fab.fab_t(model, x, y, eps, targets=targets, steps=steps, restarts=restarts,
                      generator=generator)


# --- strong attacks: Square (Andriushchenko et al. 2020) ----------------------------------


@register("square", "query",
          "Square attack: random search on the margin z_y - max_{j!=y} z_j with square "
          "windows, stripe start, p schedule from p_init (scores only)", stochastic=True,
          options={"queries": opt.QUERIES, "p_init": opt.P_INIT, "rescale": opt.FLAG})
def square(model, x, y, eps, *, queries=5000, p_init=0.8, rescale=True, generator=None):
    return _square.square(model, x, y, eps, queries=queries, p_init=p_init, rescale=rescale,
                          generator=generator)
