"""Gradient-masking diagnostics: is a robustness number to be trusted?

>>> checks = diagnose(model, x, y, [16, 32], audit_result=result)   # or audit(..., diagnostics=True)
>>> print(format_diagnostics(checks))
>>> [c.name for c in checks if c.flagged]

Every check returns a :class:`Diagnostic`: its name, a verdict (``holds``, ``flagged``,
or ``not run`` with the reason, e.g. no twin model given), the numbers it rests on, one
sentence on what they mean, where the check comes from and what it was measured on.
docs/design.md ("Gradient-masking diagnostics") lists them with their thresholds:

* from AutoAttack (Croce & Hein 2020, its ``checks.py``): ``deterministic`` (the forward
  pass gives the same logits over several runs), ``logits`` (the outputs are not
  probabilities), ``nonzero_gradients`` (no image has an exactly zero input gradient of
  the cross-entropy), ``gradient_free_no_stronger`` (Square, or another gradient-free
  attack of the audit, flips at most 0.2 % of the images the gradient attacks left);
* from Carlini et al. 2019 ("On evaluating adversarial robustness"):
  ``more_iterations_no_gain`` (the audit's iterative attack with twice the steps and one
  more restart, on images the audit left robust), ``chance_at_large_eps`` (at eps 128
  and 255 the accuracy reaches chance), ``noise_no_stronger`` (random_sign /
  random_normal noise is not stronger than the white-box attacks) and, through the
  report sanity checks (:mod:`cascade_adv.evaluation.sanity`) run on the rows measured
  here, ``iterative_beats_one_step``, ``accuracy_falls_with_eps``,
  ``transfer_no_stronger`` (a transfer from an undefended twin) and
  ``adversarial_not_above_clean``;
* from Tramer et al. 2018 ("Ensemble adversarial training"): ``one_step_aligned``, the
  cosine between the one-step (step_fgsm) and the multi-step (iter_fgsm) perturbation.

The checks run on a fixed random subsample of the images (``sample``, 256 by default;
``more_iterations_no_gain`` on up to ``robust_sample``, 128, of the (image, eps) rows
the audit left robust); each diagnostic says on how many.  Nothing prints; every random draw comes from a generator
seeded by ``seed``; fusion is an argument.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cascade_adv import attacks as attack_registry
from cascade_adv.attacks import core
from cascade_adv.errors import InvalidArgument, ModelFault
from cascade_adv.evaluation.blackbox import check_pair
from cascade_adv.evaluation.engine import (
    attack_rows,
    check_audit_eps,
    check_inputs,
    input_gradient,
    predict,
    seeded_generator,
)
from cascade_adv.evaluation.outcome import FLAGGED, HOLDS, NOT_RUN, AuditResult, Diagnostic
from cascade_adv.evaluation.sanity import check_results
from cascade_adv.evaluation.stats import paired_gain_p_value
from cascade_adv.results.tables import CLEAN, WHITEBOX, ResultTable

__all__ = [
    "CHECKS",
    "COSINE_THRESHOLD",
    "FLAGGED",
    "GRADIENT_FREE_POINTS",
    "HOLDS",
    "LARGE_EPS",
    "NOT_RUN",
    "OPTIONS",
    "Diagnostic",
    "base_attack",
    "check_options",
    "check_twin",
    "check_twin_pair",
    "diagnose",
    "format_diagnostics",
    "stronger_options",
]

#: Every diagnostic, in the order :func:`diagnose` returns them.
CHECKS: tuple[str, ...] = (
    "deterministic", "logits", "nonzero_gradients", "gradient_free_no_stronger",
    "more_iterations_no_gain", "chance_at_large_eps", "iterative_beats_one_step",
    "accuracy_falls_with_eps", "transfer_no_stronger", "noise_no_stronger",
    "adversarial_not_above_clean", "one_step_aligned",
)
#: The large radii at which the accuracy must reach chance (Carlini et al. 2019, 5.4).
LARGE_EPS: tuple[float, ...] = (128.0, 255.0)
#: AutoAttack's threshold: a gradient-free attack that takes more than this many points
#: of accuracy after the gradient attacks is a warning (its ``check_square_sr``).
GRADIENT_FREE_POINTS = 0.2
#: AutoAttack's threshold on the relative change of the logits between two forward passes.
DETERMINISM_TOLERANCE = 1e-4
#: Heuristic: the mean cosine between the step_fgsm and the iter_fgsm perturbation below
#: which the loss is too curved for a one-step attack (docs/design.md, measurements).
COSINE_THRESHOLD = 0.5
#: One-sided level of the paired sign test an attack's gain over the clean images must
#: pass to flag ``adversarial_not_above_clean``: on the 256 images of the checks, a
#: tolerance of 1 point is 3 images, which random noise moves either way by chance.
#: Only this check: in ``iterative_beats_one_step`` and ``accuracy_falls_with_eps`` an
#: image the stronger attack leaves correct where the weaker one broke it is an attack
#: failure on that image, not chance (the Snapping model of tests/test_diagnostics.py
#: rises by 2 images of 64 and must be flagged).
LEAK_LEVEL = 0.05

_AUTOATTACK = "AutoAttack (Croce & Hein 2020)"
_CARLINI = "Carlini et al. 2019"
_TRAMER = "Tramer et al. 2018"
_GRADIENT_KINDS = ("one_step", "iterative")
_FREE_KINDS = ("query", "random")
_NOISE = ("random_sign", "random_normal")


def format_diagnostics(checks: Sequence[Diagnostic]) -> str:
    """The diagnostics as a Markdown list under a heading line that counts the flagged
    ones (``"No diagnostics were run."`` for none)."""
    if not checks:
        return "No diagnostics were run."
    flagged = sum(c.flagged for c in checks)
    ran = sum(c.verdict != NOT_RUN for c in checks)
    head = (f"Gradient-masking diagnostics: {flagged} of {ran} flagged"
            + (f", {len(checks) - ran} not run" if ran < len(checks) else "") + ".")
    return "\n".join([head, *(c.to_line() for c in checks)])


# --- what the checks share -------------------------------------------------------------


@dataclass
class _Setup:
    """The inputs every check reads: the model, the subsample (prepared images ``xs`` on
    the model's device, labels ``ys``, their indices ``idx`` into ``x``) and the options."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    prepare: Callable[[torch.Tensor], torch.Tensor] | None
    eps: list[float]
    idx: torch.Tensor
    xs: torch.Tensor
    ys: torch.Tensor
    classes: int
    seed: int
    steps: int
    batch_size: int
    fuse: bool
    tolerance: float

    @property
    def device(self) -> torch.device:
        return self.xs.device

    @property
    def on(self) -> str:
        return f"{len(self.idx)} of {self.x.shape[0]} images"

    def images(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``index`` of ``x`` (prepared, on the model's device) and their labels."""
        xb = self.x[index.to(self.x.device)].to(self.device)
        xb = self.prepare(xb) if self.prepare is not None else xb
        return xb, self.y[index.to(self.y.device)].to(self.device)

    def chunks(self, n: int):
        return ((i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size))


def _generator(device: torch.device, seed: int, salt: int) -> torch.Generator:
    """A generator of its own for each attack of the diagnostics, from ``seed``."""
    return seeded_generator((seed * 1_000_003 + salt) % (1 << 63), device)


def _logits(s: _Setup, x: torch.Tensor) -> torch.Tensor:
    """Logits of ``x`` on the audited model as the attacks see it (the fused inference
    network unless ``fuse`` is off), chunked."""
    out = torch.cat([predict(s.model, x[a:b], fuse=s.fuse) for a, b in s.chunks(len(x))])
    if not bool(torch.isfinite(out).all()):
        raise ModelFault("the model gives non-finite outputs (inf / NaN) on the diagnostics' "
                         "images; its robustness would be meaningless: check its weights")
    return core.float32_logits(out)


def _attack(s: _Setup, name: str, eps: float, model: nn.Module | None = None,
            salt: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``name`` at ``eps`` on the subsample (crafted on ``model``, default the audited
    one): the adversarial images and whether the audited model still classifies each
    correctly.  iter_fgsm runs ``steps`` steps of ``2.5 eps / steps`` from the clean
    image (PGD's step rule without its random start)."""
    spec = attack_registry.get(name)
    options = ({"steps": s.steps, "alpha": 2.5 * eps / s.steps} if name == "iter_fgsm"
               else {})
    source = s.model if model is None else model
    device = attack_registry.model_device(source)
    xs, ys = s.xs.to(device), s.ys.to(device)
    g = _generator(device, s.seed, salt + int(eps * 16))
    parts = []
    for a, b in s.chunks(len(xs)):
        es = torch.full((b - a,), float(eps), dtype=torch.float64, device=device)
        parts.append(attack_rows(source, xs[a:b], ys[a:b], es, spec, options=options,
                                 generator=g, fuse=s.fuse).x_adv)
    x_adv = torch.cat(parts).to(s.device)
    return x_adv, _logits(s, x_adv).argmax(dim=1) == s.ys


def _accuracy(correct: torch.Tensor) -> float:
    return 100.0 * float(correct.double().mean()) if correct.numel() else float("nan")


# --- AutoAttack: the model itself ------------------------------------------------------


def _forward_checks(s: _Setup, runs: int) -> list[Diagnostic]:
    """``deterministic`` and ``logits``: ``runs`` forward passes of the subsample."""
    outs = [_logits(s, s.xs) for _ in range(runs)]
    first = outs[0].double()
    scale = first.norm(dim=1).clamp_min(1e-10)
    change = max(float(((o.double() - first).norm(dim=1) / scale).max()) for o in outs[1:])
    moved = max(int((o.argmax(1) != first.argmax(1)).sum()) for o in outs[1:])
    random = change > DETERMINISM_TOLERANCE or moved > 0
    determinism = Diagnostic(
        "deterministic", FLAGGED if random else HOLDS,
        {"passes": runs, "max relative logit change": change, "predictions changed": moved},
        "the model is randomised: one evaluation measures one draw of it, and attacks need "
        "an expectation over its randomness (EOT) to be trusted" if random else
        "repeated forward passes give the same logits, so one evaluation measures the model",
        _AUTOATTACK, s.on)
    rows = (first >= 0).all(dim=1) & ((first.sum(dim=1) - 1).abs() < 1e-3)
    share = _accuracy(rows)
    probabilities = bool(rows.all())
    logits = Diagnostic(
        "logits", FLAGGED if probabilities else HOLDS,
        {"% of rows that are distributions": share},
        "the model returns probabilities (rows >= 0 summing to 1): the attacks' cross-entropy "
        "on them has vanishing gradients; attack the logits instead" if probabilities else
        "the outputs are logits, as the attacks' losses assume", _AUTOATTACK, s.on)
    return [determinism, logits]


def _gradient_check(s: _Setup) -> Diagnostic:
    """``nonzero_gradients``: the cross-entropy's input gradient per image."""
    zero = []
    for a, b in s.chunks(len(s.xs)):
        try:
            grad = input_gradient(s.model, s.xs[a:b], s.ys[a:b], core.loss_true, fuse=s.fuse)
        except RuntimeError as exc:  # no graph from the inputs to the loss: no gradient
            if "does not require grad" not in str(exc):
                raise
            grad = torch.zeros_like(s.xs[a:b])
        zero.append((grad.flatten(1) == 0).all(dim=1))
    share = _accuracy(torch.cat(zero))
    bad = share > 0
    return Diagnostic(
        "nonzero_gradients", FLAGGED if bad else HOLDS, {"% of images with zero gradient": share},
        "some images have an exactly zero input gradient (a saturated softmax or a "
        "non-differentiable layer): gradient attacks cannot move them, so their accuracy "
        "overstates robustness" if bad else "every image has a non-zero input gradient for "
        "the gradient attacks to follow", _AUTOATTACK, s.on)


# --- AutoAttack and Carlini: the audit's own results -----------------------------------


def _not_run(name: str, why: str, origin: str) -> Diagnostic:
    return Diagnostic(name, NOT_RUN, {}, why, origin)


def _gradient_free_check(s: _Setup, result: AuditResult | None) -> Diagnostic:
    """``gradient_free_no_stronger``: the points of accuracy each gradient-free attack of
    the audit took after at least one gradient attack had run (AutoAttack's rule)."""
    name = "gradient_free_no_stronger"
    if result is None:
        return _not_run(name, "no audit result to read", _AUTOATTACK)
    kinds = [a.spec.kind for a in result.attacks]
    late = [i for i, k in enumerate(kinds)
            if k in _FREE_KINDS and any(j in _GRADIENT_KINDS for j in kinds[:i])]
    if not late:
        return _not_run(name, "the audit ran no gradient-free attack (Square) after a "
                        "gradient attack", _AUTOATTACK)
    numbers: dict[str, float] = {}
    for i in late:
        a = result.attacks[i]
        for e in s.eps:
            acc = result.accuracy(a.name, e)
            numbers[f"{a.name} points at eps {e:g}"] = 100.0 * (acc.attacked - acc.survived) / acc.n
    bad = max(numbers.values()) > GRADIENT_FREE_POINTS
    return Diagnostic(
        name, FLAGGED if bad else HOLDS, numbers,
        f"an attack without gradients takes more than {GRADIENT_FREE_POINTS:g} points of "
        "accuracy after the gradient attacks: their gradients are misleading (gradient "
        "masking)" if bad else "the gradient-free attack adds (almost) nothing to the "
        "gradient attacks, so their gradients are informative", _AUTOATTACK,
        f"{result.n} images (the whole audit)")


def base_attack(attacks: Sequence[Any]):
    """The first iterative attack with a ``steps`` option among an audit's ``attacks``
    (:class:`~cascade_adv.evaluation.audit.AuditAttack`; ``None``: none): the one
    ``more_iterations_no_gain`` runs again, stronger."""
    return next((a for a in attacks
                 if a.spec.kind == "iterative" and "steps" in a.spec.options), None)


def stronger_options(attack, eps: float) -> dict[str, Any]:
    """The attack's options with twice its steps and, where it has restarts, one more."""
    params = inspect.signature(attack.spec.fn).parameters
    steps = attack.options.get("steps", params["steps"].default)
    if steps is None:  # K17's rule for its eps (iter_fgsm, iter_ll, pgd)
        steps = int(attack_registry.iterative_steps(eps))
    out = {**attack.options, "steps": 2 * int(steps)}
    if "restarts" in params:
        out["restarts"] = int(attack.options.get("restarts", params["restarts"].default)) + 1
    return out


def _more_iterations_check(s: _Setup, result: AuditResult | None, sample: int) -> Diagnostic:
    """``more_iterations_no_gain``: the audit's first iterative attack with twice the
    steps and one more restart, on up to ``sample`` (image, eps) rows the audit left
    robust; flagged when it flips more than ``tolerance`` % of them."""
    name = "more_iterations_no_gain"
    base = None if result is None else base_attack(result.attacks)
    if base is None:
        return _not_run(name, "no audit result with an iterative attack that has steps",
                        _CARLINI)
    robust = torch.stack([result.robust(e) for e in s.eps])  # [E, N]
    rows = robust.reshape(-1).nonzero().flatten()
    if len(rows) == 0:
        return _not_run(name, "the audit left no image robust", _CARLINI)
    g = seeded_generator(s.seed, "cpu")
    rows = rows[torch.randperm(len(rows), generator=g)[:sample]].sort().values
    n = result.n
    broken = 0
    for k, e in enumerate(s.eps):
        index = rows[rows // n == k] % n
        options = stronger_options(base, e)
        g = _generator(s.device, s.seed, 7 + k)
        for a, b in s.chunks(len(index)):
            xb, yb = s.images(index[a:b])
            es = torch.full((b - a,), e, dtype=torch.float64, device=s.device)
            out = attack_rows(s.model, xb, yb, es, base.spec, options=options, generator=g,
                              fuse=s.fuse)
            broken += int((~out.correct).sum())
    share = 100.0 * broken / len(rows)
    bad = share > s.tolerance
    stronger = stronger_options(base, s.eps[0])
    return Diagnostic(
        name, FLAGGED if bad else HOLDS,
        {"steps": stronger["steps"], "restarts": stronger.get("restarts", 1),
         "rows tried": len(rows), "flipped": broken, "% flipped": share},
        f"with twice the steps and one more restart, {base.name} still flips images the audit "
        "left robust: the audit has not converged, its worst case overstates robustness"
        if bad else f"with twice the steps and one more restart, {base.name} flips (almost) "
        "none of the images the audit left robust: the audit has converged", _CARLINI,
        f"{len(rows)} of the {int(robust.sum())} robust (image, eps) rows")


# --- Carlini, Tramer and the sanity checks: attacks on the subsample --------------------


@dataclass
class _Measured:
    """Which images of the subsample stay correct per (attack, eps) (on the host), the
    adversarial images of the one-step and the multi-step attack per eps, and the
    accuracy (%) of the transfers from the twin."""

    correct: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)
    images: dict[tuple[str, float], torch.Tensor] = field(default_factory=dict)
    transfer: dict[tuple[str, float], float] = field(default_factory=dict)

    @property
    def white(self) -> dict[tuple[str, float], float]:
        """Accuracy (%) per (attack, eps), from :attr:`correct`."""
        return {cell: _accuracy(c) for cell, c in self.correct.items()}


def _measure(s: _Setup, twin: nn.Module | None, result: AuditResult | None) -> _Measured:
    m = _Measured()
    m.correct[(CLEAN, 0.0)] = (_logits(s, s.xs).argmax(dim=1) == s.ys).cpu()
    for salt, name in enumerate(("step_fgsm", "iter_fgsm", *_NOISE)):
        for e in s.eps + (list(LARGE_EPS) if name == "iter_fgsm" else []):
            x_adv, correct = _attack(s, name, e, salt=salt * 1000)
            m.correct[(name, e)] = correct.cpu()
            if name in ("step_fgsm", "iter_fgsm"):
                m.images[(name, e)] = x_adv
    if result is not None:
        for e in s.eps:
            m.correct[(result.source, e)] = result.robust(e)[s.idx].cpu()
    if twin is not None:
        for name in ("step_fgsm", "iter_fgsm"):
            for e in s.eps:
                _, correct = _attack(s, name, e, model=twin, salt=5000)
                m.transfer[(name, e)] = _accuracy(correct)
    return m


def _chance_check(s: _Setup, m: _Measured) -> Diagnostic:
    chance = 100.0 / s.classes
    at = {f"iter_fgsm % at eps {e:g}": _accuracy(m.correct[("iter_fgsm", e)]) for e in LARGE_EPS}
    numbers = {**at, "chance %": chance}
    bad = max(at.values()) > chance + s.tolerance
    return Diagnostic(
        "chance_at_large_eps", FLAGGED if bad else HOLDS, numbers,
        "at eps 128 and 255 any image can be turned into any other, yet the gradient attack "
        "leaves the accuracy above chance: its gradients do not lead anywhere (masking)"
        if bad else "with a large enough eps the gradient attack drives the accuracy to chance "
        "or below, as it must", _CARLINI, f"{s.on}, iter_fgsm with {s.steps} steps")


def _noise_check(s: _Setup, m: _Measured) -> Diagnostic:
    numbers: dict[str, float] = {}
    bad = False
    accuracy = m.white
    for e in s.eps:
        noise = min(accuracy[(n, e)] for n in _NOISE)
        white = min(v for (a, ee), v in accuracy.items()
                    if ee == e and a not in _NOISE and a != CLEAN)
        numbers[f"noise % at eps {e:g}"] = noise
        numbers[f"white-box % at eps {e:g}"] = white
        bad = bad or noise < white - s.tolerance
    return Diagnostic(
        "noise_no_stronger", FLAGGED if bad else HOLDS, numbers,
        "random noise of the same size flips more images than the white-box attacks: their "
        "gradients point the wrong way (gradient masking)" if bad else "random noise is no "
        "stronger than the white-box attacks", _CARLINI, s.on)


def _cosine_check(s: _Setup, m: _Measured, threshold: float) -> Diagnostic:
    """``one_step_aligned``: mean cosine of the step_fgsm and iter_fgsm perturbations."""
    numbers: dict[str, float] = {}
    for e in s.eps:
        one = (m.images[("step_fgsm", e)] - s.xs).flatten(1).double()
        many = (m.images[("iter_fgsm", e)] - s.xs).flatten(1).double()
        norms = one.norm(dim=1) * many.norm(dim=1)
        defined = norms > 0
        if bool(defined.any()):
            cos = (one * many).sum(dim=1)[defined] / norms[defined]
            numbers[f"mean cosine at eps {e:g}"] = float(cos.mean())
    if not numbers:
        return _not_run("one_step_aligned", "no image moved under both attacks (zero "
                        "gradients, see nonzero_gradients)", _TRAMER)
    bad = min(numbers.values()) < threshold
    return Diagnostic(
        "one_step_aligned", FLAGGED if bad else HOLDS, {**numbers, "threshold": threshold},
        "the one-step perturbation points elsewhere than the multi-step one: the loss is "
        "curved near the images, so one-step attacks (and training on them) see a masked "
        "gradient" if bad else "the one-step and the multi-step perturbation point the "
        "same way: the loss is close to linear around the images", _TRAMER,
        f"{s.on}, iter_fgsm with {s.steps} steps")


#: The report sanity checks (evaluation/sanity.py) as diagnostics: check id -> (name,
#: what it means when none of its warnings fire).
_SANITY: dict[str, tuple[str, str]] = {
    "iterative_weaker_than_one_step": (
        "iterative_beats_one_step",
        "the iterative attack is at least as strong as the one-step attack at every eps"),
    "accuracy_rises_with_eps": (
        "accuracy_falls_with_eps", "the iterative attack's accuracy never rises as eps grows"),
    "blackbox_stronger_than_whitebox": (
        "transfer_no_stronger",
        ("attacks transferred from the undefended twin are no stronger than the same "
         "attacks white-box")),
    "adversarial_above_clean": (
        "adversarial_not_above_clean",
        ("no attack leaves a higher accuracy than the clean images beyond chance (a paired "
         "sign test on the images that changed): no label leaking")),
}


def _sanity_checks(s: _Setup, m: _Measured, twin_name: str | None) -> list[Diagnostic]:
    """The report sanity checks on the rows measured here (white-box rows, and the twin's
    transfers as black-box rows under ``source=twin_name``)."""
    common = {"model": "model", "model_hash": "", "dataset": "", "split": "",
              "metric": "top1", "n": len(s.idx)}
    rows = [{**common, "attack": a, "eps": e, "source": WHITEBOX, "value": v}
            for (a, e), v in m.white.items()]
    rows += [{**common, "attack": a, "eps": e, "source": twin_name, "value": v}
             for (a, e), v in m.transfer.items()]
    raised = check_results(ResultTable(rows), tolerance=s.tolerance)
    warnings = [w for w in raised if w.check != "adversarial_above_clean"
                or _significant_gain(m, (w.attack, w.eps))]
    out = []
    for check, (name, fine) in _SANITY.items():
        origin = f"{_CARLINI}; report sanity check {check}"
        if check == "blackbox_stronger_than_whitebox" and twin_name is None:
            out.append(_not_run(name, "no undefended twin model given", origin))
            continue
        found = [w for w in warnings if w.check == check]
        meaning = (found[0].message.split(": ", 1)[-1].rstrip(".") + f"; suggests "
                   f"{found[0].meaning}") if found else fine
        numbers = {"cells flagged": len(found)}
        if check == "adversarial_above_clean":
            numbers["cells above clean within chance"] = (
                sum(w.check == check for w in raised) - len(found))
        out.append(Diagnostic(name, FLAGGED if found else HOLDS, numbers, meaning, origin,
                              s.on))
    return out


def _significant_gain(m: _Measured, cell: tuple[str, float]) -> bool:
    """Whether ``cell`` is correct on more images than the clean predictions beyond
    chance: the paired sign test on the images that changed, at :data:`LEAK_LEVEL`."""
    clean, attacked = m.correct[(CLEAN, 0.0)], m.correct[cell]
    gained, lost = int((attacked & ~clean).sum()), int((clean & ~attacked).sum())
    return paired_gain_p_value(gained, lost) < LEAK_LEVEL


# --- the entry point -------------------------------------------------------------------


#: The options of :func:`diagnose` that ``audit(..., diagnostics={...})`` passes on.
OPTIONS: tuple[str, ...] = ("twin", "twin_name", "sample", "robust_sample", "steps", "runs",
                            "tolerance", "cosine_threshold", "batch_size", "cheap")
#: The checks ``cheap=True`` runs (AutoAttack's checks on every call: a few forward passes
#: and one input gradient of the subsample).
CHEAP = ("deterministic", "logits", "nonzero_gradients")


def check_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`diagnose`'s options (:data:`OPTIONS`), checked before any work: an unknown
    name or a bad value raises :class:`~cascade_adv.errors.InvalidArgument` (one line)."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise InvalidArgument(f"diagnostics have no option {unknown[0]!r}; their options are: "
                              f"{', '.join(OPTIONS)}")
    defaults = {p.name: p.default for p in inspect.signature(diagnose).parameters.values()
                if p.name in OPTIONS}
    out = {**defaults, **options}
    for name, low in (("sample", 2), ("robust_sample", 1), ("steps", 1), ("runs", 2),
                      ("batch_size", 1)):
        value = out[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise InvalidArgument(f"diagnostics option {name} must be an integer >= {low}, "
                                  f"got {value!r}")
    tol = out["tolerance"]
    if (isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol)
            or tol < 0):
        raise InvalidArgument(f"diagnostics option tolerance must be a finite number >= 0 "
                              f"(percentage points), got {tol!r}")
    cos = out["cosine_threshold"]
    if isinstance(cos, bool) or not isinstance(cos, (int, float)) or not -1 <= cos <= 1:
        raise InvalidArgument(f"diagnostics option cosine_threshold must be in [-1, 1], got "
                              f"{cos!r}")
    if out["twin"] is not None and not isinstance(out["twin"], nn.Module):
        raise InvalidArgument(f"twin must be a torch.nn.Module, got {type(out['twin']).__name__}")
    if not isinstance(out["twin_name"], str) or not out["twin_name"]:
        raise InvalidArgument(f"twin_name must be a non-empty name, got {out['twin_name']!r}")
    return out


def _check_audit_result(result: Any, n: int, eps: list[float]) -> None:
    if result is None:
        return
    if not all(hasattr(result, a) for a in ("robust", "attacks", "eps", "accuracy")):
        raise InvalidArgument(f"audit_result must be an AuditResult, got {type(result).__name__}")
    if result.n != n or any(e not in result.eps for e in eps):
        raise InvalidArgument(
            f"audit_result is of {result.n} images at eps "
            f"{', '.join(f'{e:g}' for e in result.eps)}; give the images and epsilons it was "
            f"run on ({n} images, eps {', '.join(f'{e:g}' for e in eps)} here)")


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    """``a`` and ``b`` hold the same tensors under the same names (not vacuously)."""
    sa, sb = a.state_dict(), b.state_dict()
    if not sa or sa.keys() != sb.keys():
        return False
    return all(t.shape == sb[k].shape and t.dtype == sb[k].dtype
               and torch.equal(t, sb[k].to(t.device)) for k, t in sa.items())


def check_twin_pair(model: nn.Module, twin: nn.Module, *, model_name: str = "the audited model",
                    twin_name: str = "twin", model_hash: str = "", twin_hash: str = "") -> None:
    """The transfer check's twin must be another model that takes ``model``'s images:
    not ``model`` itself (the same object, the same weights hash, or the same tensors
    under the same names) and, like a source of ``cascade-adv transfer``, of the same
    dataset, input size, channels and classes
    (:func:`~cascade_adv.evaluation.blackbox.check_pair`).
    :class:`~cascade_adv.errors.InvalidArgument` otherwise, one line."""
    if (twin is model or (model_hash and model_hash == twin_hash)
            or _same_weights(model, twin)):
        raise InvalidArgument(
            f"{twin_name} is the audited model {model_name} itself (the same weights), so "
            "the transfer check would hold trivially; give another, undefended model of "
            "the same task as the twin")
    check_pair(twin_name, twin, model_name, model)


def check_twin(twin: nn.Module | None, x: torch.Tensor,
               prepare: Callable[[torch.Tensor], torch.Tensor] | None, classes: int,
               model: nn.Module | None = None, twin_name: str = "twin",
               model_name: str = "the audited model") -> None:
    """The twin must not be ``model`` and must take its images
    (:func:`check_twin_pair`) and give logits of the same ``classes`` on the first image
    of ``x`` (:class:`~cascade_adv.errors.InvalidArgument` otherwise; nothing for no
    twin)."""
    if twin is None:
        return
    if model is not None:
        check_twin_pair(model, twin, model_name=model_name, twin_name=twin_name)
    first = x[:1].to(attack_registry.model_device(twin))
    first = prepare(first) if prepare is not None else first
    try:
        out = attack_registry.predict(twin, first)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise InvalidArgument(f"twin {twin_name} cannot take the audited images "
                              f"({type(exc).__name__}: {exc}); give a twin of the same "
                              "input size and channels") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, classes):
        raise InvalidArgument(f"the twin model must return logits for the same {classes} "
                              f"classes, got {getattr(out, 'shape', type(out).__name__)}")


def _setup(model, x, y, eps, prepare, seed, fuse, options) -> _Setup:
    """Everything checked, the subsample drawn and prepared."""
    eps_values = check_audit_eps(eps)
    classes = check_inputs(model, x, y, prepare)
    g = seeded_generator(seed, "cpu")
    idx = torch.randperm(int(x.shape[0]), generator=g)[:options["sample"]].sort().values
    device = attack_registry.model_device(model)
    xs = x[idx.to(x.device)].to(device)
    xs = prepare(xs) if prepare is not None else xs
    ys = y[idx.to(y.device)].to(device)
    check_twin(options["twin"], x, prepare, classes, model, options["twin_name"])
    return _Setup(model, x, y, prepare, eps_values, idx, xs, ys, classes, int(seed),
                  options["steps"], options["batch_size"], bool(fuse), float(options["tolerance"]))


def diagnose(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float | Sequence[float],
    *,
    audit_result: AuditResult | None = None,
    twin: nn.Module | None = None,
    twin_name: str = "twin",
    sample: int = 256,
    robust_sample: int = 128,
    steps: int = 20,
    runs: int = 3,
    tolerance: float = 1.0,
    cosine_threshold: float = COSINE_THRESHOLD,
    seed: int = 0,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 256,
    fuse: bool = True,
    cheap: bool = False,
) -> list[Diagnostic]:
    """Run the gradient-masking diagnostics (:data:`CHECKS`, in that order) on ``model``
    (any ``nn.Module`` mapping images in [0, 1] to logits) with images ``x`` and labels
    ``y`` at every ``eps`` (pixel units, in (0, 255]).

    ``audit_result``: the :func:`~cascade_adv.evaluation.audit` of the same ``x``, ``y``
    at (at least) these eps; without it the two checks that read it are ``not run``.
    ``twin``: an undefended model of the same task whose step_fgsm / iter_fgsm images are
    transferred (named ``twin_name`` in the messages; without it
    ``transfer_no_stronger`` is ``not run``).  The checks run on ``sample`` images drawn
    with ``seed`` (``more_iterations_no_gain`` on up to ``robust_sample`` of the (image,
    eps) rows the audit left robust); the multi-step attack is iter_fgsm with ``steps`` steps
    of ``2.5 eps / steps``; ``runs`` forward passes test determinism.  ``tolerance``
    (percentage points) is the noise allowed by the accuracy comparisons,
    ``cosine_threshold`` the heuristic bound of ``one_step_aligned``.  ``prepare`` maps a
    batch of ``x`` to the model's inputs (as in :func:`~cascade_adv.evaluation.audit`);
    ``batch_size`` caps the images of one attack call; ``fuse``: the attacks and
    forward passes run on the inference network with BatchNorm folded into the
    convolutions, as the audit's do.  ``cheap=True`` runs only the checks of :data:`CHEAP`
    (what ``audit()`` runs by default).

    Bad arguments raise :class:`~cascade_adv.errors.InvalidArgument` (a ``ValueError``)
    before any work; a model with non-finite outputs raises
    :class:`~cascade_adv.errors.ModelFault`.  A randomised model is not an error: its
    ``deterministic`` check is flagged.
    """
    options = check_options({"twin": twin, "twin_name": twin_name, "sample": sample,
                             "robust_sample": robust_sample, "steps": steps, "runs": runs, "tolerance": tolerance,
                             "cosine_threshold": cosine_threshold, "batch_size": batch_size,
                             "cheap": cheap})
    s = _setup(model, x, y, eps, prepare, seed, fuse, options)
    _check_audit_result(audit_result, int(x.shape[0]), s.eps)
    checks = _forward_checks(s, runs)
    checks.append(_gradient_check(s))
    if cheap:
        return checks
    checks.append(_gradient_free_check(s, audit_result))
    checks.append(_more_iterations_check(s, audit_result, robust_sample))
    measured = _measure(s, twin, audit_result)
    checks.append(_chance_check(s, measured))
    sanity = _sanity_checks(s, measured, twin_name if twin is not None else None)
    checks.extend(sanity[:3])
    checks.append(_noise_check(s, measured))
    checks.append(sanity[3])
    checks.append(_cosine_check(s, measured, float(cosine_threshold)))
    return checks
