"""Indicators of attack failure, per image (Pintor et al., NeurIPS 2022, "Indicators of
Attack Failure: Debugging and Improving Optimization of Adversarial Examples").

>>> result = attack_failure_indicators(model, x, y, 32, attacks=("iter_fgsm", "apgd_ce"))
>>> print(result.to_markdown())     # indicator x (attack, eps): % of images it fires on
>>> result.table()                  # the rows, source="attack_failure"
>>> result.fired[("iter_fgsm", 32.0, "silent_success")]   # bool, one per measured image

A robustness number is only as good as the attack that produced it.  Each indicator
tells, for one image and one attack at one eps, a way in which the attack may have
failed although the image is not robust: the returned point is not the adversarial
iterate the attack passed through (``silent_success``), the loss was still rising when
the steps ran out (``incomplete_optimisation``) or kept swinging up and down
(``non_converging``), the input gradient is zero or not finite at the image
(``unavailable_gradients``), the loss changes a lot under noise far smaller than the
attack's steps (``unstable_predictions``), or an example adversarial on a surrogate
model is not adversarial on the model (``transfer_failure``).  docs/design.md
("Indicators of attack failure") gives each definition, its threshold and its cost.

The attacks run with a per-step trace (:data:`~cascade_adv.attacks.core.Trace`): the
iterative attacks of K17 (``iter_fgsm``, ``iter_ll``) and APGD (``apgd_ce``,
``apgd_dlr``, ``apgd_t``).  The indicators are measured on the images the model
classifies correctly clean (those an attack could flip); ``n`` counts them.  Nothing
prints; every random draw comes from a generator seeded by ``seed``; fusion is an
argument.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cascade_adv import attacks as attack_registry
from cascade_adv.attacks import apgd, core
from cascade_adv.attacks.registry import AttackSpec
from cascade_adv.errors import InvalidArgument, UnknownAttackError
from cascade_adv.evaluation.audit import check_targets, resolve_version
from cascade_adv.evaluation.diagnostics import check_twin
from cascade_adv.evaluation.engine import (
    attack_rows,
    check_audit_eps,
    check_inputs,
    input_gradient,
    predict,
    seeded_generator,
)
from cascade_adv.evaluation.outcome import AuditAttack
from cascade_adv.results.tables import ResultTable

__all__ = [
    "ATTACKS",
    "INDICATORS",
    "SOURCE",
    "IndicatorResult",
    "attack_failure_indicators",
    "attack_loss",
    "check_attacks",
    "incomplete_optimisation",
    "non_converging",
    "silent_success",
]

#: ``source`` of the rows.
SOURCE = "attack_failure"
#: The indicators, in row order.
INDICATORS: tuple[str, ...] = (
    "silent_success", "incomplete_optimisation", "non_converging", "unavailable_gradients",
    "unstable_predictions", "transfer_failure",
)
#: The attacks with a per-step trace, and the loss each maximises: ``ce`` the
#: cross-entropy of the true class, ``ll`` minus the cross-entropy of the least-likely
#: class of the clean image (iter_ll, the one targeted goal), ``dlr`` / ``dlr_targeted``
#: APGD's difference of logits ratio (towards the 2nd most likely clean class).
ATTACKS: dict[str, str] = {"iter_fgsm": "ce", "iter_ll": "ll", "apgd_ce": "ce",
                           "apgd_dlr": "dlr", "apgd_t": "dlr_targeted"}

#: incomplete_optimisation: the share (%) of the steps at the end that are looked at,
#: and the gain of the best loss over them, relative to the loss's range over the
#: attack, above which the indicator fires (Pintor et al.'s threshold, 0.05).
INCOMPLETE_WINDOW_PERCENT = 10
INCOMPLETE_GAIN = 0.05
#: non_converging: the share (%) of the steps at the end (at least 2) and how far the
#: loss moves against its net direction over them, relative to its range, to fire.
NONCONVERGING_WINDOW_PERCENT = 20
NONCONVERGING_SWING = 0.1
#: A loss whose range over the attack is at most this times its largest magnitude is
#: flat (float rounding): neither of the two loss-path indicators fires on it.
FLAT = 1e-6
#: unavailable_gradients: the largest |gradient entry| at or below which the input
#: gradient counts as zero (exact zero up to denormal rounding).
GRADIENT_FLOOR = 1e-30
#: unstable_predictions: noise radius (fraction of eps), samples, the loss below which
#: changes are measured against this floor instead, and the mean relative change that
#: fires.
NOISE_RADIUS = 0.01
NOISE_SAMPLES = 8
LOSS_FLOOR = 0.01
UNSTABLE_CHANGE = 0.1

_TRACE_BASED = ("silent_success", "incomplete_optimisation", "non_converging")
_ITERATE = {"iter_fgsm": (core.loss_true, core.true_label),
            "iter_ll": (core.loss_target, core.least_likely_label)}


# --- the indicators on a loss path ------------------------------------------------------------


def _window(steps: int, percent: int, least: int) -> int:
    """``ceil(percent % of steps)``, at least ``least``, at most ``steps`` (integers)."""
    return min(steps, max(least, -(-steps * percent // 100)))


def _moving(losses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the loss's range over the path, and whether it is more than float noise."""
    span = losses.amax(dim=1) - losses.amin(dim=1)
    return span, span > FLAT * losses.abs().amax(dim=1)


def incomplete_optimisation(losses: torch.Tensor) -> torch.Tensor:
    """Per row of ``losses`` (``[n, K]``: the attack's loss, which it maximises, at its
    iterates ``0 .. K - 1``, the last one the returned point): the best loss so far
    still rose over the last :data:`INCOMPLETE_WINDOW_PERCENT` % of the steps (at least
    one) by more than :data:`INCOMPLETE_GAIN` of the loss's range over the path."""
    steps = losses.shape[1] - 1
    if steps < 1:
        return torch.zeros(losses.shape[0], dtype=torch.bool, device=losses.device)
    w = _window(steps, INCOMPLETE_WINDOW_PERCENT, 1)
    best = losses.cummax(dim=1).values
    span, moving = _moving(losses)
    gain = (best[:, -1] - best[:, -1 - w]) / torch.where(moving, span, torch.ones_like(span))
    return moving & (gain > INCOMPLETE_GAIN)


def non_converging(losses: torch.Tensor) -> torch.Tensor:
    """Per row of ``losses`` (as :func:`incomplete_optimisation`): over the last
    :data:`NONCONVERGING_WINDOW_PERCENT` % of the steps (at least 2), the loss moved
    against its net direction by more than :data:`NONCONVERGING_SWING` of its range
    over the path (half its total variation there minus half its net change)."""
    steps = losses.shape[1] - 1
    if steps < 2:
        return torch.zeros(losses.shape[0], dtype=torch.bool, device=losses.device)
    tail = losses[:, -1 - _window(steps, NONCONVERGING_WINDOW_PERCENT, 2):]
    against = (tail.diff(dim=1).abs().sum(dim=1) - (tail[:, -1] - tail[:, 0]).abs()) / 2
    span, moving = _moving(losses)
    return moving & (against > NONCONVERGING_SWING * span)


def silent_success(reached: torch.Tensor, returned: torch.Tensor) -> torch.Tensor:
    """Per row: some iterate of the attack reached its goal (``reached``, ``[n, K]``,
    the iterates the attack passed through) but the returned point (``returned``,
    ``[n]``) does not."""
    return reached.any(dim=1) & ~returned


# --- the attacks' losses and goals -----------------------------------------------------------


def attack_loss(kind: str, logits: torch.Tensor, y: torch.Tensor,
                aim: torch.Tensor | None) -> torch.Tensor:
    """The loss ``kind`` (a value of :data:`ATTACKS`) per image, which the attack
    maximises; ``aim`` is the least-likely class (``ll``) or the target
    (``dlr_targeted``).  In the logits' dtype (float64 stays float64)."""
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "ll":
        return -F.cross_entropy(logits, aim, reduction="none")
    if kind == "dlr":
        return apgd.dlr_loss(logits, y)
    return apgd.targeted_dlr_loss(logits, y, aim)


def _aim(kind: str, clean: torch.Tensor) -> torch.Tensor | None:
    """The class the loss aims at besides the true one, from the clean logits: the least
    likely (iter_ll), the 2nd most likely (APGD-T's first target) or none."""
    if kind == "ll":
        return clean.argmin(dim=1)
    if kind == "dlr_targeted":
        return clean.argsort(dim=1, descending=True)[:, 1]
    return None


def _reached(kind: str, logits: torch.Tensor, y: torch.Tensor,
             aim: torch.Tensor | None) -> torch.Tensor:
    """Whether the attack's goal holds: the least-likely class predicted (iter_ll), else
    any wrong class (APGD-T too: it keeps any misclassified point)."""
    pred = logits.argmax(dim=1)
    return pred == aim if kind == "ll" else pred != y


# --- the trace ---------------------------------------------------------------------------------


@dataclass
class _Run:
    """One run of an attack: per step, the rows traced, their loss and goal."""

    steps: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]] = field(
        default_factory=list)


class _Recorder:
    """A :data:`~cascade_adv.attacks.core.Trace` that keeps, per run of the attack (a new
    one at each step 0), each traced row's loss and whether it reached the goal, on the
    device (nothing read back)."""

    def __init__(self, kind: str, y: torch.Tensor, aim: torch.Tensor | None):
        self.kind, self.y, self.aim = kind, y, aim
        self.runs: list[_Run] = []

    def __call__(self, step: int, logits: torch.Tensor, loss: torch.Tensor | None = None,
                 rows: torch.Tensor | None = None) -> None:
        if step == 0 or not self.runs:
            self.runs.append(_Run())
        y = self.y if rows is None else self.y[rows]
        aim = self.aim if rows is None or self.aim is None else self.aim[rows]
        if loss is None:
            loss = attack_loss(self.kind, logits, y, aim)
        self.runs[-1].steps.append((rows, loss, _reached(self.kind, logits, y, aim)))

    def matrices(self, run: _Run, n: int, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss [n, K], reached [n, K], covered [n])`` of one run over the batch
        (NaN / False where a row was not traced)."""
        k = len(run.steps)
        loss = torch.full((n, k), math.nan, dtype=dtype, device=self.y.device)
        reached = torch.zeros((n, k), dtype=torch.bool, device=self.y.device)
        covered = torch.zeros(n, dtype=torch.bool, device=self.y.device)
        for j, (rows, value, hit) in enumerate(run.steps):
            sel = slice(None) if rows is None else rows
            loss[sel, j], reached[sel, j], covered[sel] = value.to(dtype), hit, True
        return loss, reached, covered


def _paths(rec: _Recorder, final_loss: torch.Tensor, final_reached: torch.Tensor,
           append_final: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: the loss path of the run whose point the attack returned (as
    :class:`~cascade_adv.attacks.core.WorstCase` picks it: the run that reached the goal,
    else the run of the highest loss), with the returned point appended where no pass
    evaluated it (:func:`~cascade_adv.attacks.core.iterate`); and whether any iterate of
    any run reached the goal."""
    n = final_loss.shape[0]
    if not rec.runs:
        return final_loss[:, None], torch.zeros_like(final_reached)
    mats = [rec.matrices(run, n, final_loss.dtype) for run in rec.runs]
    chosen = torch.zeros(n, dtype=torch.int64, device=final_loss.device)
    best = torch.full_like(final_loss, -math.inf)
    anywhere = torch.zeros_like(final_reached)
    for i, (loss, reached, covered) in enumerate(mats):
        hit, top = reached.any(dim=1), loss.amax(dim=1)
        take = covered & (hit | (top > best))
        chosen = torch.where(take, i, chosen)
        best = torch.where(take, top, best)
        anywhere = anywhere | hit
    paths = torch.stack([m[0] for m in mats])[chosen, torch.arange(n, device=chosen.device)]
    if append_final:
        paths = torch.cat([paths, final_loss[:, None]], dim=1)
    return paths, anywhere


def _traced_spec(name: str, trace: _Recorder) -> AttackSpec:
    """The registered attack ``name`` (same defaults, same result) with ``trace``."""
    if name in _ITERATE:
        objective, rule = _ITERATE[name]

        def fn(model, x, y, eps, *, alpha=1.0, steps=None, generator=None):
            return core.iterate(model, x, y, eps, objective, rule, alpha, steps, trace=trace)
    else:
        def fn(model, x, y, eps, *, generator=None, **options):
            return apgd.apgd(model, x, y, eps, ATTACKS[name], generator=generator,
                             trace=trace, **options)
    return AttackSpec(name, fn, "iterative", f"{name} with a per-step trace")


# --- one batch ---------------------------------------------------------------------------------


@dataclass
class _Batch:
    """The images of one batch (all classified correctly clean), their labels and the
    clean logits of the model (and of the surrogate, when there is one)."""

    x: torch.Tensor
    y: torch.Tensor
    clean: torch.Tensor
    surrogate_clean: torch.Tensor | None

    def eps(self, value: float) -> torch.Tensor:
        return torch.full((self.x.shape[0],), float(value), dtype=torch.float64)


@dataclass
class _Plan:
    """What runs: the model, the attacks, the options and whether the model (and the
    surrogate) have input gradients at all."""

    model: nn.Module
    attacks: list[AuditAttack]
    eps: list[float]
    surrogate: nn.Module | None
    seed: int
    batch_size: int
    noise_samples: int
    noise_radius: float
    fuse: bool
    graph: bool = True
    surrogate_graph: bool = True

    def generator(self, device: torch.device, *salt: float) -> torch.Generator:
        key = self.seed
        for s in salt:
            key = (key * 1_000_003 + int(s * 16)) % (1 << 63)
        return seeded_generator(key, device)


def _trace_indicators(p: _Plan, a: AuditAttack, e: float, b: _Batch,
                      g: torch.Generator) -> dict[str, torch.Tensor]:
    """silent_success, incomplete_optimisation and non_converging of one batch, each
    only where the returned point misses the attack's goal (an image the attack broke
    has no failure to explain)."""
    kind = ATTACKS[a.name]
    aim = _aim(kind, b.clean)
    rec = _Recorder(kind, b.y, aim)
    out = attack_rows(p.model, b.x, b.y, b.eps(e), _traced_spec(a.name, rec),
                      options=a.options, generator=g, fuse=p.fuse)
    final_loss = attack_loss(kind, out.logits, b.y, aim)
    final = _reached(kind, out.logits, b.y, aim)
    paths, anywhere = _paths(rec, final_loss, final, append_final=a.name in _ITERATE)
    return {"silent_success": anywhere & ~final,
            "incomplete_optimisation": ~final & incomplete_optimisation(paths),
            "non_converging": ~final & non_converging(paths)}


def _gradient_unavailable(p: _Plan, kind: str, b: _Batch) -> torch.Tensor:
    """unavailable_gradients: the input gradient of the attack's loss at the clean image
    is not finite, or its largest entry is at most :data:`GRADIENT_FLOOR`."""
    if not p.graph:
        return torch.ones_like(b.y, dtype=torch.bool)
    aim = _aim(kind, b.clean)

    def objective(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return attack_loss(kind, logits, y, aim).sum()

    grad = input_gradient(p.model, b.x, b.y, objective, fuse=p.fuse).flatten(1)
    return ~torch.isfinite(grad).all(dim=1) | (grad.abs().amax(dim=1) <= GRADIENT_FLOOR)


def _unstable(p: _Plan, kind: str, e: float, b: _Batch, g: torch.Generator) -> torch.Tensor:
    """unstable_predictions: the mean over :data:`NOISE_SAMPLES` points drawn uniformly
    in the L-inf ball of radius ``noise_radius * eps`` around the clean image (clipped
    to [0, 1]) of ``|loss(point) - loss(image)| / max(|loss(image)|, LOSS_FLOOR)``
    exceeds :data:`UNSTABLE_CHANGE`."""
    aim = _aim(kind, b.clean)
    base = attack_loss(kind, b.clean, b.y, aim)
    radius = p.noise_radius * e / 255.0
    change = torch.zeros_like(base)
    for _ in range(p.noise_samples):
        u = torch.rand(b.x.shape, generator=g, dtype=b.x.dtype, device=b.x.device)
        noisy = (b.x + (2 * u - 1) * radius).clamp(0.0, 1.0)
        change = change + (attack_loss(kind, _logits(p.model, noisy, p.fuse), b.y, aim)
                           - base).abs()
    relative = change / p.noise_samples / base.abs().clamp_min(LOSS_FLOOR)
    return relative > UNSTABLE_CHANGE


def _transfer_failure(p: _Plan, a: AuditAttack, e: float, b: _Batch,
                      g: torch.Generator) -> torch.Tensor:
    """transfer_failure: the attack run on the surrogate returns a point that reaches the
    attack's goal on the surrogate (its own least-likely class for iter_ll) but not on
    the model."""
    kind, device = ATTACKS[a.name], attack_registry.model_device(p.surrogate)
    y = b.y.to(device)
    aim = _aim(kind, b.surrogate_clean)
    out = attack_rows(p.surrogate, b.x.to(device), y, b.eps(e), a.spec, options=a.options,
                      generator=g, fuse=p.fuse)
    on_model = _reached(kind, _logits(p.model, out.x_adv.to(b.x.device), p.fuse), b.y,
                        None if aim is None else aim.to(b.x.device))
    return (_reached(kind, out.logits, y, aim).to(b.x.device)) & ~on_model


def _logits(model: nn.Module, x: torch.Tensor, fuse: bool) -> torch.Tensor:
    return core.float32_logits(predict(model, x, fuse=fuse))


# --- the result ----------------------------------------------------------------------------------


@dataclass
class IndicatorResult:
    """What :func:`attack_failure_indicators` found.

    ``images``: the indices into ``x`` of the images measured (classified correctly
    clean; ``n`` of them).  ``fired[(attack, eps, indicator)]``: per measured image,
    whether the indicator fired (bool CPU ``[n]``), for every indicator that ran.
    ``not_run``: indicator -> why it did not run (for every attack and eps).  ``attacks``
    are the attacks' labels (``name`` or ``name:key=value...``), as in the rows."""

    attacks: tuple[str, ...]
    eps: tuple[float, ...]
    images: torch.Tensor
    fired: dict[tuple[str, float, str], torch.Tensor]
    not_run: dict[str, str]
    model: str = "model"
    model_hash: str = ""
    dataset: str = ""
    split: str = ""

    @property
    def n(self) -> int:
        return int(self.images.numel())

    def share(self, attack: str, eps: float, indicator: str) -> float | None:
        """% of the measured images on which ``indicator`` fired (``None``: not run)."""
        hits = self.fired.get((attack, float(eps), indicator))
        if hits is None or not self.n:
            return None
        return 100.0 * int(hits.sum()) / self.n

    def table(self) -> ResultTable:
        """One row per (attack, eps, indicator that ran): ``source="attack_failure"``,
        ``metric`` the indicator, ``value`` the % of images it fired on, ``n``."""
        common = {"model": self.model, "model_hash": self.model_hash, "dataset": self.dataset,
                  "split": self.split, "source": SOURCE, "n": self.n}
        return ResultTable({**common, "attack": a, "eps": e, "metric": name, "value": value}
                           for a in self.attacks for e in self.eps for name in INDICATORS
                           if (value := self.share(a, e, name)) is not None)

    def to_markdown(self) -> str:
        """Indicator x (attack, eps) with the % of images each fired on, the ``n`` row,
        then one line per indicator that did not run, with the reason."""
        cells = [(a, e) for a in self.attacks for e in self.eps]
        lines = ["| indicator | " + " | ".join(f"{a} {e:g}" for a, e in cells) + " |",
                 "| --- | " + " | ".join("---:" for _ in cells) + " |"]
        for name in INDICATORS:
            values = [self.share(a, e, name) for a, e in cells]
            lines.append(f"| {name} | " + " | ".join(
                "not run" if v is None else f"{v:.1f}" for v in values) + " |")
        lines.append("| n | " + " | ".join(str(self.n) for _ in cells) + " |")
        lines += [f"{name} not run: {why}" for name, why in self.not_run.items()]
        return "\n".join(lines) + "\n"


# --- checks and the entry point ------------------------------------------------------------------


def check_attacks(attacks: Any, num_classes: int | None = None) -> list[AuditAttack]:
    """The attacks to trace: names of :data:`ATTACKS`, ``"name:key=value..."`` or
    ``(name, options)`` pairs (a comma-separated string too), options checked against the
    registry's ranges (and ``targets`` against ``num_classes``).  An unregistered name
    raises :class:`~cascade_adv.errors.UnknownAttackError` (a ``KeyError`` and a
    ``ValueError``); a registered attack without a trace, a repeated one or none at all
    :class:`~cascade_adv.errors.InvalidArgument`."""
    items = [a for a in attacks.split(",") if a.strip()] if isinstance(attacks, str) else attacks
    if not isinstance(items, Sequence) or not items:
        raise InvalidArgument(f"no attack given for the indicators; give some of: "
                              f"{', '.join(ATTACKS)}")
    out: list[AuditAttack] = []
    for item in items:
        name = item[0] if isinstance(item, tuple) and len(item) == 2 else item
        if not isinstance(name, str):
            raise InvalidArgument(f"an attack is a name or (name, options), got {item!r}")
        base = name.split(":")[0].strip()
        if base not in attack_registry.names():
            raise UnknownAttackError(f"unknown attack {base!r}; the indicators trace: "
                                     f"{', '.join(ATTACKS)}")
        if base not in ATTACKS:
            raise InvalidArgument(f"attack {base!r} has no per-step trace for the "
                                  f"indicators; choose from: {', '.join(ATTACKS)}")
        (attack,) = resolve_version(name.strip() if isinstance(item, str) else [item])[1]
        if any(a.name == attack.name for a in out):
            raise InvalidArgument(f"attack {attack.name!r} is listed twice; list each once")
        out.append(attack)
    return out if num_classes is None else check_targets(out, num_classes)


def _check_number(value: Any, name: str, low: float, high: float, integer: bool) -> None:
    kind = numbers.Integral if integer else numbers.Real
    if (isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value)
            or not low <= value <= high):
        what = "an integer" if integer else "a number"
        raise InvalidArgument(f"{name} must be {what} in [{low:g}, {high:g}], got {value!r}")


def _has_graph(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fuse: bool) -> bool:
    """Whether the model's output depends differentiably on its input (Pintor et al.'s
    interrupted computational graph: a detach or a non-differentiable layer)."""
    try:
        input_gradient(model, x, y, core.loss_true, fuse=fuse)
    except RuntimeError as exc:
        if "does not require grad" not in str(exc):
            raise
        return False
    return True


def _not_run(p: _Plan, n: int, total: int) -> dict[str, str]:
    """Why each indicator that cannot run does not."""
    why: dict[str, str] = {}
    if n == 0:
        return {name: f"the model classifies none of the {total} images correctly; the "
                "indicators are measured on the images an attack could flip"
                for name in INDICATORS}
    if not p.graph:
        for name in _TRACE_BASED:
            why[name] = ("the model's output has no gradient with respect to its input (an "
                         "interrupted graph: a detach or a non-differentiable layer), so the "
                         "gradient attacks cannot run on it; unavailable_gradients fires on "
                         "every image")
    if p.surrogate is None:
        why["transfer_failure"] = ("no surrogate model given: the attacks ran on the model "
                                   "itself, nothing was transferred")
    elif not p.surrogate_graph:
        why["transfer_failure"] = ("the surrogate's output has no gradient with respect to "
                                   "its input, so the attacks cannot run on it")
    return why


def _plan(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: Any,
          options: Mapping[str, Any]) -> _Plan:
    """Every argument checked (one-line :class:`~cascade_adv.errors.InvalidArgument`,
    before any work) -> the plan, with the interrupted graphs found."""
    classes = check_inputs(model, x, y, None)
    eps_values = check_audit_eps(eps)
    attacks = check_attacks(options["attacks"], classes)
    for a in attacks:  # DLR reads the 3rd (targeted: 4th) largest logit
        if ATTACKS[a.name] in apgd.MIN_CLASSES:
            apgd.check_classes(ATTACKS[a.name], classes)
    _check_number(options["noise_samples"], "noise_samples", 1, 10_000, True)
    _check_number(options["noise_radius"], "noise_radius", 0, 1, False)
    if options["noise_radius"] <= 0:
        raise InvalidArgument("noise_radius must be > 0 (a fraction of eps, e.g. 0.01)")
    _check_number(options["batch_size"], "batch_size", 1, 2**31 - 1, True)
    _check_number(options["seed"], "seed", -(2**63), 2**64 - 1, True)
    surrogate = options["surrogate"]
    if surrogate is not None and not isinstance(surrogate, nn.Module):
        raise InvalidArgument(f"surrogate must be a torch.nn.Module, got "
                              f"{type(surrogate).__name__}")
    check_twin(surrogate, x, None, classes, model, twin_name=options["surrogate_name"],
               model_name=options["model_name"])
    p = _Plan(model, attacks, eps_values, surrogate, int(options["seed"]),
              int(options["batch_size"]), int(options["noise_samples"]),
              float(options["noise_radius"]), bool(options["fuse"]))
    device = attack_registry.model_device(model)
    p.graph = _has_graph(model, x[:1].to(device), y[:1].to(device), p.fuse)
    if surrogate is not None:
        s_device = attack_registry.model_device(surrogate)
        p.surrogate_graph = _has_graph(surrogate, x[:1].to(s_device), y[:1].to(s_device),
                                       p.fuse)
    return p


def _measured(p: _Plan, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Indices (CPU int64) of the images the model classifies correctly clean."""
    correct = []
    for start in range(0, x.shape[0], p.batch_size):
        xb, yb = x[start:start + p.batch_size], y[start:start + p.batch_size]
        correct.append(_logits(p.model, xb, p.fuse).argmax(dim=1) == yb)
    return torch.cat(correct).cpu().nonzero().flatten()


def _measure(p: _Plan, x: torch.Tensor, y: torch.Tensor, images: torch.Tensor
             ) -> dict[tuple[str, float, str], torch.Tensor]:
    """Every indicator that runs, per (attack label, eps), over the measured images in
    batches; one read-back at the end."""
    parts: dict[tuple[str, float, str], list[torch.Tensor]] = {}
    for start in range(0, len(images), p.batch_size):
        index = images[start:start + p.batch_size].to(x.device)
        xb, yb = x[index], y[index]
        b = _Batch(xb, yb, _logits(p.model, xb, p.fuse), None if p.surrogate is None else
                   _logits(p.surrogate, xb.to(attack_registry.model_device(p.surrogate)),
                           p.fuse))
        for i, a in enumerate(p.attacks):
            kind = ATTACKS[a.name]
            no_gradient = _gradient_unavailable(p, kind, b)  # at the clean image: any eps
            for e in p.eps:
                hits = {"unavailable_gradients": no_gradient}
                if p.graph:
                    hits.update(_trace_indicators(p, a, e, b, p.generator(
                        xb.device, i, start, e, 1)))
                hits["unstable_predictions"] = _unstable(p, kind, e, b, p.generator(
                    xb.device, i, start, e, 2))
                if p.surrogate is not None and p.surrogate_graph:
                    hits["transfer_failure"] = _transfer_failure(p, a, e, b, p.generator(
                        xb.device, i, start, e, 3))
                for name, fired in hits.items():
                    parts.setdefault((a.label, e, name), []).append(fired)
    return {key: torch.cat(v).cpu() for key, v in parts.items()}


def attack_failure_indicators(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | Sequence[float],
    *,
    attacks: Any = ("iter_fgsm", "apgd_ce"),
    surrogate: nn.Module | None = None,
    surrogate_name: str = "surrogate",
    noise_samples: int = NOISE_SAMPLES,
    noise_radius: float = NOISE_RADIUS,
    seed: int = 0,
    batch_size: int = 256,
    fuse: bool = True,
    model_name: str = "model",
    model_hash: str = "",
    dataset: str = "",
    split: str = "",
) -> IndicatorResult:
    """The indicators of attack failure of Pintor et al. (:data:`INDICATORS`), per image,
    for each attack of ``attacks`` at each ``eps`` (pixel units, in (0, 255]) on
    ``model`` (any ``nn.Module`` mapping images ``x`` in [0, 1] to logits; labels ``y``).

    ``attacks``: names of :data:`ATTACKS`, ``"name:key=value"`` or ``(name, options)``
    (:func:`check_attacks`); each runs with its registered defaults and the options
    given.  ``surrogate``: a model the attacks also run on, whose adversarial examples
    ``transfer_failure`` checks on ``model`` (``surrogate_name`` in messages; without one
    that indicator is not run).  ``unstable_predictions`` draws ``noise_samples`` points
    within ``noise_radius * eps``.  Images are taken ``batch_size`` at a time; the random
    starts and the noise come from generators seeded by ``seed``; ``fuse``: the attacks and
    forward passes run on the inference network with BatchNorm folded into the
    convolutions.  The model / dataset fields label the rows of
    :meth:`IndicatorResult.table`.

    Returns an :class:`IndicatorResult`.  Bad arguments raise
    :class:`~cascade_adv.errors.InvalidArgument` or
    :class:`~cascade_adv.errors.AttackError` (``ValueError`` s; an unknown attack name
    :class:`~cascade_adv.errors.UnknownAttackError`, also a ``KeyError``) before any work.
    """
    p = _plan(model, x, y, eps, {"attacks": attacks, "surrogate": surrogate,
                                 "surrogate_name": surrogate_name,
                                 "noise_samples": noise_samples, "noise_radius": noise_radius,
                                 "seed": seed, "batch_size": batch_size, "fuse": fuse,
                                 "model_name": model_name})
    device = attack_registry.model_device(model)
    x, y = x.to(device), y.to(device)
    images = _measured(p, x, y)
    not_run = _not_run(p, len(images), int(x.shape[0]))
    fired = _measure(p, x, y, images) if len(images) else {}
    return IndicatorResult(tuple(a.label for a in p.attacks), tuple(p.eps), images, fired,
                           not_run, model_name, model_hash, dataset, split)
