"""Sanity checks run on every report: does the evaluation look trustworthy?

Neither paper (N18, K17) runs these checks; they follow the robustness-evaluation
literature (Athalye, Carlini & Wagner 2018, "Obfuscated gradients give a false sense
of security"; Carlini et al. 2019, "On evaluating adversarial robustness"), which
lists the symptoms of an evaluation that overstates robustness:

* ``iterative_weaker_than_one_step``: an iterative white-box attack leaves a higher
  accuracy than the corresponding one-step attack at the same eps (``iter_fgsm`` /
  ``pgd`` vs ``step_fgsm``, ``iter_ll`` vs ``step_ll``).
* ``accuracy_rises_with_eps``: an iterative white-box attack leaves a higher accuracy
  at a larger eps than at the next smaller measured eps (the clean accuracy counts as
  eps 0).  Not applied to one-step attacks, whose accuracy can legitimately rise
  with eps (N18 tables 1-2, K17 table 3).
* ``blackbox_stronger_than_whitebox``: a transferred (black-box) attack leaves a
  lower accuracy than the white-box attack with the same (attack, eps) on the same
  target.
* ``adversarial_above_clean``: a white-box attack at eps > 0 leaves a higher
  accuracy than the clean images: label leaking (K17 section 4.2, N18 section 4.2).

Differences within ``tolerance`` percentage points are treated as noise.

>>> warnings = check_results(table, tolerance=1.0)
>>> print(format_warnings(warnings))
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from cascade_adv.errors import CascadeAdvError
from cascade_adv.results.tables import AUDIT_PREFIX, CLEAN, WHITEBOX, ResultTable

#: The check ids, in the order their warnings are listed.
CHECKS: tuple[str, ...] = (
    "iterative_weaker_than_one_step",
    "accuracy_rises_with_eps",
    "blackbox_stronger_than_whitebox",
    "adversarial_above_clean",
)

#: (iterative attack, one-step attack it must be at least as strong as).
#: Only untargeted pairs: iter_ll walks towards one fixed class in small steps and
#: measures success differently from step_ll; N18 table 1 itself reports it weaker
#: (MNIST Baseline, eps 32: iter_ll 66.2 vs step_ll 30.2), so that pair would flag
#: correct evaluations.
ITERATIVE_VS_ONE_STEP: tuple[tuple[str, str], ...] = (
    ("iter_fgsm", "step_fgsm"),
    ("pgd", "step_fgsm"),
)
#: Iterative white-box attacks whose accuracy cannot rise with eps.
ITERATIVE_ATTACKS: tuple[str, ...] = ("iter_fgsm", "iter_ll", "pgd")
#: Attacks built on the true label (K17 section 4.2: these leak it).
TRUE_LABEL_ATTACKS: frozenset[str] = frozenset(
    {"step_fgsm", "fast_grad_l2", "fast_grad_linf", "iter_fgsm", "pgd"}
)
#: One-step attacks that do not use the true label.
LABEL_FREE_ONE_STEP: frozenset[str] = frozenset({"step_ll", "step_rnd", "fgsm_pred",
                                                 "fast_entropy"})
#: Random perturbations (no gradient at all).
RANDOM_ATTACKS: frozenset[str] = frozenset({"random_sign", "random_normal"})
#: ``source`` values of rows that are not black-box accuracies.
NOT_BLACKBOX_SOURCES: frozenset[str] = frozenset(
    {WHITEBOX, "softmax_argument", "gradient_correlation"}
)

_MEANING_MASKING_ITER = (
    "gradient masking or a too-weak iterative attack (too few steps, broken attack): "
    "an iterative attack should be at least as strong as its one-step version"
)
_MEANING_MASKING_EPS = (
    "gradient masking or too few attack steps: a larger eps ball contains the smaller "
    "one, so a working iterative attack cannot get weaker as eps grows"
)
_MEANING_MASKING_BLACKBOX = (
    "gradient masking: the white-box attacker, with full access to the model, should be "
    "at least as strong as an attack transferred from another model"
)


@dataclass(frozen=True)
class SanityWarning:
    """One suspicious number of an evaluation.

    ``check`` is one of :data:`CHECKS`; ``attack``/``eps`` the offending cell;
    ``source`` ``"whitebox"`` or, for ``blackbox_stronger_than_whitebox``, the source
    model of the transferred images.  ``message`` states the numbers in one sentence,
    ``meaning`` what they suggest.
    """

    check: str
    model: str
    dataset: str
    split: str
    attack: str
    eps: float
    source: str
    message: str
    meaning: str


def _eps(eps: float) -> str:
    return f"{eps:g}"


def _pct(value: float) -> str:
    return f"{value:.1f}%"


def _above(difference: float, tol: float) -> bool:
    """``difference > tol``, ignoring float rounding (2.2 - 1.2 is 1.0000000000000002)."""
    return difference > tol + 1e-9


def _where(model: str, dataset: str, split: str) -> str:
    data = f"{dataset} {split}".strip()
    return f"{model} ({data})" if data else model


def _leak_meaning(attack: str) -> str:
    if attack in TRUE_LABEL_ATTACKS and attack not in ITERATIVE_ATTACKS:
        return (
            "label leaking (K17 section 4.2): this one-step attack uses the true label, so "
            "its adversarial images carry label information the model has learned to read; "
            "do not use this attack to measure robustness (K17 recommends step_ll or "
            "step_rnd instead)"
        )
    if attack in LABEL_FREE_ONE_STEP:
        return (
            "label leaking without the true label: N18 section 4.2 observed it even for "
            "step_ll (pivot) training and argues it is a natural result of one-step "
            "adversarial training; this attack's accuracy overstates robustness, check it "
            "against the iterative attacks"
        )
    if attack in ITERATIVE_ATTACKS:
        extra = (" and N18 section 4.2 saw label leaking even without the true label"
                 if attack not in TRUE_LABEL_ATTACKS else "")
        return (
            "label leaking or gradient masking: K17 section 4.2 found label leaking "
            f"vanishes for iterative attacks{extra}, so an iterative attack that helps the "
            "model suggests gradient masking or a broken attack"
        )
    if attack in RANDOM_ATTACKS:
        return (
            "random noise should not make the model more accurate: suspect an evaluation "
            "bug (different images or preprocessing for the clean and noisy rows), or a "
            "model that fits noisy images better than clean ones (one trained on randomly "
            "started or perturbed images, whose clean accuracy lags)"
        )
    return (
        "label leaking (K17 section 4.2, N18 section 4.2): the adversarial images carry "
        "label information; do not use this attack to measure robustness"
    )


def check_results(table: ResultTable, *, tolerance: float = 1.0,
                  metric: str = "top1") -> list[SanityWarning]:
    """Run the sanity checks (:data:`CHECKS`) on the ``metric`` rows of ``table``.

    Each (model, dataset, split) is checked on its own; rows of other metrics and of
    other families (error/transfer rates, softmax arguments, gradient correlations)
    are ignored.  ``tolerance`` is in percentage points: a difference up to it is
    noise and not flagged.  When a cell appears twice, its first row counts (as in
    :meth:`ResultTable.value`).  The warnings are sorted by (model, dataset, split,
    check in :data:`CHECKS` order, attack, eps, source).
    """
    if not isinstance(table, ResultTable):
        table = ResultTable(table)
    try:
        tolerance = float(tolerance)
    except (TypeError, ValueError):
        raise CascadeAdvError(f"tolerance must be a number of percentage points, got "
                              f"{tolerance!r}") from None
    if not math.isfinite(tolerance) or tolerance < 0:
        raise CascadeAdvError(f"tolerance must be a finite number >= 0 percentage points, got "
                              f"{tolerance!r}")

    # (model, dataset, split) -> {(attack, eps): value} of white-box rows,
    # and -> {(attack, eps, source): value} of black-box rows.
    white: dict[tuple[str, str, str], dict[tuple[str, float], float]] = {}
    black: dict[tuple[str, str, str], dict[tuple[str, float, str], float]] = {}
    for r in table.rows:
        if r["metric"] != metric:
            continue
        group = (r["model"], r["dataset"], r["split"])
        if r["source"] == WHITEBOX:
            white.setdefault(group, {}).setdefault((r["attack"], r["eps"]), r["value"])
        elif (r["source"] not in NOT_BLACKBOX_SOURCES and r["attack"] != CLEAN
              and not r["source"].startswith(AUDIT_PREFIX)):  # an audit's per-attack rows
            black.setdefault(group, {}).setdefault((r["attack"], r["eps"], r["source"]),
                                                   r["value"])

    warnings: list[SanityWarning] = []
    for group in sorted(set(white) | set(black)):
        warnings.extend(_check_group(group, white.get(group, {}), black.get(group, {}),
                                     tolerance, metric))
    order = {c: i for i, c in enumerate(CHECKS)}
    warnings.sort(key=lambda w: (w.model, w.dataset, w.split, order[w.check], w.attack, w.eps,
                                 w.source))
    return warnings


def _check_group(group: tuple[str, str, str], white: dict[tuple[str, float], float],
                 black: dict[tuple[str, float, str], float], tol: float,
                 metric: str) -> list[SanityWarning]:
    model, dataset, split = group
    where = _where(model, dataset, split)
    out: list[SanityWarning] = []

    def warn(check: str, attack: str, eps: float, source: str, message: str,
             meaning: str) -> None:
        out.append(SanityWarning(check, model, dataset, split, attack, eps, source, message,
                                 meaning))

    # a. iterative attacks at least as strong as their one-step versions.
    for iterative, one_step in ITERATIVE_VS_ONE_STEP:
        for (attack, eps), acc in white.items():
            if attack != iterative or (one_step, eps) not in white:
                continue
            ref = white[(one_step, eps)]
            if _above(acc - ref, tol):
                warn("iterative_weaker_than_one_step", iterative, eps, WHITEBOX,
                     f"{where}: {iterative} at eps {_eps(eps)} leaves {_pct(acc)} {metric} "
                     f"accuracy, {acc - ref:.1f} points above the {_pct(ref)} of {one_step} "
                     f"at the same eps (tolerance {tol:g}).",
                     _MEANING_MASKING_ITER)

    # b. iterative attacks: accuracy cannot rise with eps (clean = eps 0).
    clean = white.get((CLEAN, 0.0))
    for attack in ITERATIVE_ATTACKS:
        curve = {eps: acc for (a, eps), acc in white.items() if a == attack}
        if not curve:
            continue
        if 0.0 not in curve and clean is not None:
            curve[0.0] = clean
        points = sorted(curve.items())
        for (e0, a0), (e1, a1) in itertools.pairwise(points):
            if _above(a1 - a0, tol):
                from_clean = e0 == 0.0 and (attack, 0.0) not in white
                before = "clean images" if from_clean else f"eps {_eps(e0)}"
                warn("accuracy_rises_with_eps", attack, e1, WHITEBOX,
                     f"{where}: {attack} leaves {_pct(a1)} {metric} accuracy at eps "
                     f"{_eps(e1)}, {a1 - a0:.1f} points above the {_pct(a0)} at {before} "
                     f"(tolerance {tol:g}).",
                     _MEANING_MASKING_EPS)

    # c. black-box (transferred) attacks no stronger than white-box ones.
    for (attack, eps, source), acc in black.items():
        if source == model:
            continue  # the diagonal: white-box on the black-box images
        diagonal = black.get((attack, eps, model))
        ref = diagonal if diagonal is not None else white.get((attack, eps))
        if ref is None or not _above(ref - acc, tol):
            continue
        how = ("on the same images, the matrix diagonal" if diagonal is not None
               else "white-box rows")
        warn("blackbox_stronger_than_whitebox", attack, eps, source,
             f"{where}: {attack} at eps {_eps(eps)} transferred from {source} leaves "
             f"{_pct(acc)} {metric} accuracy, {ref - acc:.1f} points below the {_pct(ref)} "
             f"of white-box {attack} ({how}; tolerance {tol:g}).",
             _MEANING_MASKING_BLACKBOX)

    # d. adversarial accuracy above clean accuracy: label leaking.
    if clean is not None:
        for (attack, eps), acc in white.items():
            if attack == CLEAN or eps <= 0 or not _above(acc - clean, tol):
                continue
            warn("adversarial_above_clean", attack, eps, WHITEBOX,
                 f"{where}: {attack} at eps {_eps(eps)} leaves {_pct(acc)} {metric} accuracy, "
                 f"{acc - clean:.1f} points above the clean {_pct(clean)} "
                 f"(tolerance {tol:g}).",
                 _leak_meaning(attack))
    return out


def format_warnings(warnings: Iterable[SanityWarning]) -> str:
    """The warnings as a Markdown bullet list (``"No sanity warnings."`` if none)."""
    lines = [f"- **{w.check}**: {w.message} Suggests {w.meaning}." for w in warnings]
    return "\n".join(lines) if lines else "No sanity warnings."

