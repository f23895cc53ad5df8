"""Training methods with a random start: R+FGSM and R+Step-LL (Tramer et al. 2018),
FGSM with a uniform random start (Wong et al. 2020) and PGD (Madry et al. 2018).

Each crafts the adversarial images of Algorithm 1's k slots, as the one-step attacks
do: on the model in inference mode (BatchNorm statistics untouched), from the
primitives of :mod:`cascade_adv.attacks.core`, with the training generator for its
random draws (on the images' device) and every example's own epsilon (pixels).  The
step sizes are fractions of that epsilon (``alpha``), so one config serves every
per-example epsilon sampler::

    r_fgsm     x' = x + alpha eps sign(N(0, I)), then x' + (1 - alpha) eps sign(grad J(x', y))
    r_step_ll  the same x', then x' - (1 - alpha) eps sign(grad J(x', y_LL)), y_LL at x'
    fgsm_rs    x' = x + U(-eps, eps), then x' + alpha eps sign(grad J(x', y)), projected
    pgd        x' = x + U(-eps, eps) (or x), then ``steps`` times
               x' <- x' + alpha eps sign(grad J(x', y)), projected each step

Every point is clipped to [0, 1] and lies in the eps ball of ``x``.  Defaults:
``alpha`` 0.5 (r_*), 1.25 (fgsm_rs), 2.5 / ``steps`` (pgd), ``steps`` 10.
docs/fidelity.md lists where the papers differ.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cascade_adv.attacks import core
from cascade_adv.errors import ConfigError

#: PGD's steps when the config gives none, and the largest the config accepts.
DEFAULT_STEPS = 10
MAX_STEPS = 1000
#: The smallest step (pixels) handed to the iterative loop, which refuses a zero step:
#: an example whose drawn eps is 0 stays at its clean image either way (projection).
_MIN_ALPHA = 1e-6


@dataclass(frozen=True)
class MethodOptions:
    """The config's ``adversarial.alpha`` (a fraction of each example's eps),
    ``steps`` and ``random_start``; ``None``: the method's default."""

    alpha: float | None = None
    steps: int | None = None
    random_start: bool | None = None


@dataclass(frozen=True)
class Method:
    """A training method with its options: ``craft(model, x, y, eps, generator, alpha,
    steps, random_start)``; ``alpha`` maps ``steps`` to the default fraction."""

    name: str
    craft: Callable[..., torch.Tensor]
    alpha: Callable[[int], float]
    uses_steps: bool = False
    start_optional: bool = False  # pgd may start at x; the others start at random
    alpha_below_one: bool = False  # r_*: the random step and the gradient step share eps

    def resolve(self, options: MethodOptions | None) -> tuple[float, int, bool]:
        """``(alpha, steps, random_start)`` with the defaults filled in; options the
        method cannot take raise :class:`ConfigError` (:func:`option_problem`)."""
        o = options or MethodOptions()
        problem = _invalid(self.name, o)
        if problem:
            raise ConfigError(problem)
        steps = (o.steps or DEFAULT_STEPS) if self.uses_steps else 1
        alpha = self.alpha(steps) if o.alpha is None else float(o.alpha)
        return alpha, steps, True if o.random_start is None else bool(o.random_start)

    def draws_random(self, options: MethodOptions | None) -> bool:
        return self.resolve(options)[2]

    def passes(self, options: MethodOptions | None) -> int:
        """Forward + backward passes per image: one per gradient step."""
        return self.resolve(options)[1]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor,
                 generator: torch.Generator | None,
                 options: MethodOptions | None = None) -> torch.Tensor:
        return self.craft(model, x, y, eps, generator, *self.resolve(options))


def _random_then_step(objective: core.Objective, label_rule: core.LabelRule):
    """R+FGSM / R+Step-LL: a random signed step of ``alpha eps`` (clipped to [0, 1]),
    then one signed gradient step of ``(1 - alpha) eps`` from there, the labels chosen
    at the random point (one forward, one input-backward)."""

    def craft(model, x, y, eps, generator, alpha, steps, random_start):
        eps01 = core.pixel_eps(eps, x.shape[0], x)
        start01 = alpha * eps01
        start = core.project(x + start01 * core.random_sign_direction(x, generator), x, start01)
        with core.inference_mode(model):
            grad, _ = core.input_gradient(core.attack_network(model, start), start, y, objective,
                                          label_rule)
        return core.project(start + (eps01 - start01) * core.sign_direction(grad), x,
                            eps01).detach()

    return craft


def _projected_steps(model, x, y, eps, generator, alpha, steps, random_start):
    """``steps`` signed steps of ``alpha eps`` on the true label's cross-entropy, each
    projected to the eps ball and [0, 1], from a uniform start in the ball or from x."""
    step = (alpha * torch.as_tensor(eps)).clamp_min(_MIN_ALPHA)  # pixels, per example
    return core.iterate(model, x, y, eps, core.loss_true, core.true_label, step, steps,
                        random_start=random_start, generator=generator)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("r_fgsm", _random_then_step(core.loss_true, core.true_label), lambda _s: 0.5,
           alpha_below_one=True),
    Method("r_step_ll", _random_then_step(core.loss_target, core.least_likely_label),
           lambda _s: 0.5, alpha_below_one=True),
    Method("fgsm_rs", _projected_steps, lambda _s: 1.25),
    Method("pgd", _projected_steps, lambda s: 2.5 / s, uses_steps=True, start_optional=True),
)}
#: The methods that read ``adversarial.alpha`` / ``steps`` / ``random_start``.
USES_ALPHA = tuple(METHODS)
USES_STEPS = tuple(n for n, m in METHODS.items() if m.uses_steps)
USES_RANDOM_START = tuple(METHODS)


def option_problem(methods: list[str], options: MethodOptions) -> str | None:
    """What is wrong with ``options`` for the training methods ``methods`` (those of a
    config's sources), as one line naming the config key and the fix, or ``None``.  A
    key that none of them reads is refused, so that a config never carries a setting
    without effect; a key is checked against each method that reads it."""
    o = options
    for key, value, users in (("alpha", o.alpha, USES_ALPHA), ("steps", o.steps, USES_STEPS),
                              ("random_start", o.random_start, USES_RANDOM_START)):
        if value is not None and not set(methods) & set(users):
            return (f"adversarial.{key} applies to the methods {', '.join(users)}, not "
                    f"{', '.join(dict.fromkeys(methods)) or 'saved sources'}; remove it or "
                    "choose one of those methods")
    return next(filter(None, (_invalid(m, o) for m in methods if m in METHODS)), None)


def _invalid(method: str, o: MethodOptions) -> str | None:
    m = METHODS[method]
    if o.alpha is not None and not (0 < o.alpha < 1 if m.alpha_below_one else 0 < o.alpha):
        if m.alpha_below_one:
            return (f"adversarial.alpha={o.alpha:g} must lie in (0, 1) for {method}: the random "
                    "step (alpha eps) and the gradient step ((1 - alpha) eps) share eps; use "
                    "e.g. 0.5 (Tramer et al.)")
        return (f"adversarial.alpha={o.alpha:g} must be > 0 (a fraction of each example's "
                "eps); use e.g. 0.25")
    if o.random_start is False and not m.start_optional:
        return (f"adversarial.random_start=false: {method} starts from a random point by "
                "definition; remove the key, or use method pgd (which may start at x) or "
                "step_fgsm")
    if o.steps is not None and not 1 <= o.steps <= MAX_STEPS:
        return (f"adversarial.steps={o.steps} must lie in 1..{MAX_STEPS} (PGD's gradient "
                f"steps per image); use e.g. {DEFAULT_STEPS}")
    return None


def crafting_passes(method: str, options: MethodOptions | None = None) -> int:
    """Forward + backward passes per image that crafting with training method ``method``
    costs: ``steps`` for pgd, one for the one-step attacks, step_both and the methods
    with one random step (r_fgsm, r_step_ll, fgsm_rs)."""
    return METHODS[method].passes(options) if method in METHODS else 1
