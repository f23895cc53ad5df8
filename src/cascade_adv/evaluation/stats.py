"""Statistics over several networks trained with different seeds (N18 table 3), and the
paired test of two evaluations of one network on the same images.

N18 section 3.5: "we train 20 networks with Kurakin's method and ours with pivot loss
and report mean accuracy and the standard deviation" (table 3: ``90.9 ± 0.25``).

>>> seeds = aggregate_seeds(table, {"Kurakin's": ["kurakin_s0", "kurakin_s1", "kurakin_s2"]})
>>> print(seeds.to_markdown(metric="top1_mean"))
>>> format_mean_std(90.9, 0.25)
'90.9 ± 0.25'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cascade_adv.errors import CascadeAdvError, InvalidArgument
from cascade_adv.results.tables import WHITEBOX, ResultTable


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """``(mean, std, n)`` of ``values``, with the *sample* standard deviation (ddof=1).

    The sample standard deviation (divisor ``n - 1``) is used because the networks are
    a small sample of all the networks the training recipe could produce: its
    variance is the unbiased estimate of that population's variance, while the
    population formula (divisor ``n``) underestimates the spread of few networks.
    N18 (section 3.5, table 3: 20 networks) does not state which convention it uses;
    for 20 networks the two differ by a factor sqrt(20/19), about 2.6 %.

    A single value has std 0.0; no values, or a non-finite one, raise
    :class:`CascadeAdvError`.
    """
    try:
        data = [float(v) for v in values]
    except (TypeError, ValueError):
        raise CascadeAdvError(f"mean_std needs numbers, got {values!r}") from None
    if not data:
        raise CascadeAdvError("mean_std needs at least one value, got none")
    bad = [v for v in data if not math.isfinite(v)]
    if bad:
        raise CascadeAdvError(f"mean_std needs finite numbers, got {bad[0]!r}")
    mean = statistics.fmean(data)
    std = statistics.stdev(data) if len(data) > 1 else 0.0
    return mean, std, len(data)


def format_mean_std(mean: float, std: float) -> str:
    """``"90.9 ± 0.25"``: mean with one decimal, std with two, as N18 table 3."""
    return f"{mean:.1f} ± {std:.2f}"


def aggregate_seeds(table: ResultTable, groups: Mapping[str, Sequence[str]], *,
                    metric: str = "top1", source: str = WHITEBOX) -> ResultTable:
    """Mean and standard deviation over the seeds of each group (N18 table 3).

    ``groups`` maps a group label (e.g. ``"Kurakin's"``) to the names of its models,
    one per seed.  Only rows with this ``metric`` and ``source`` are used.  For every
    cell (dataset, split, attack, eps) measured for *all* models of a group, two rows
    are emitted: ``model`` = the group label, ``metric`` = ``f"{metric}_mean"`` and
    ``f"{metric}_std"`` (sample std, see :func:`mean_std`), ``n`` = the number of
    models, ``model_hash`` empty, ``source`` unchanged.  A cell missing for some model
    of the group is left out.  Groups come in the order given, cells in the order
    they first appear in ``table``; the mean row precedes the std row.

    A model of a group without any such rows raises :class:`CascadeAdvError` naming it
    and the command that evaluates it.
    """
    if not isinstance(table, ResultTable):
        table = ResultTable(table)
    rows = [r for r in table.rows if r["metric"] == metric and r["source"] == source]

    out: list[dict[str, Any]] = []
    for label, models in groups.items():
        if isinstance(models, str):
            raise CascadeAdvError(
                f"group {label!r} must list its model names, got the single string {models!r}"
            )
        models = list(models)
        if not models:
            raise CascadeAdvError(f"group {label!r} has no models")
        dupes = sorted({m for m in models if models.count(m) > 1})
        if dupes:
            raise CascadeAdvError(f"group {label!r} lists model {dupes[0]!r} twice")

        # cell -> {model: value}; the first row of a cell counts.
        cells: dict[tuple[str, str, str, float], dict[str, float]] = {}
        seen: set[str] = set()
        for r in rows:
            if r["model"] in models:
                seen.add(r["model"])
                cell = (r["dataset"], r["split"], r["attack"], r["eps"])
                cells.setdefault(cell, {}).setdefault(r["model"], r["value"])
        for m in models:
            if m not in seen:
                hint = (f"cascade-adv eval --checkpoint runs/{m} --name {m} --results <db>"
                        if source == WHITEBOX else
                        f"the black-box evaluation with source {source!r} and target {m!r}")
                raise CascadeAdvError(
                    f"model {m!r} of group {label!r} has no {metric} results from source "
                    f"{source!r}; evaluate it first, e.g. `{hint}`"
                )

        for (dataset, split, attack, eps), values in cells.items():
            if len(values) < len(models):
                continue
            mean, std, n = mean_std(values[m] for m in models)
            for suffix, value in (("mean", mean), ("std", std)):
                out.append({"model": label, "model_hash": "", "dataset": dataset,
                            "split": split, "attack": attack, "eps": eps, "source": source,
                            "metric": f"{metric}_{suffix}", "value": value, "n": n})
    return ResultTable(out)


#: The verdicts of :func:`compare_seeds`.
HOLDS, FAILS, UNDECIDED = "holds", "fails", "undecided"


@dataclass(frozen=True)
class SeedComparison:
    """:func:`compare_seeds`'s answer to "``higher``'s mean exceeds ``lower``'s": the
    verdict, the two means, their difference with its standard error, the Welch degrees
    of freedom and the two-sided ``level`` confidence interval of the difference (``None``
    where fewer than two seeds per side leave no spread), and the seed counts."""

    verdict: str
    higher: float
    lower: float
    difference: float
    se: float | None
    df: float | None
    interval: tuple[float, float] | list[float] | None
    seeds: tuple[int, int] | list[int]
    level: float = 0.95

    def __str__(self) -> str:
        means = f"{self.higher:.1f} vs {self.lower:.1f}"
        if self.interval is None:
            return f"{self.verdict} (one seed; {means})"
        lo, hi = self.interval
        return (f"{self.verdict} ({means}, difference {self.difference:+.1f}, "
                f"{self.level:.0%} CI [{lo:+.1f}, {hi:+.1f}], {self.seeds[0]} vs "
                f"{self.seeds[1]} seeds)")


def compare_seeds(higher: Sequence[float], lower: Sequence[float], *,
                  level: float = 0.95) -> SeedComparison:
    """Whether the mean of ``higher`` (one value per seed, e.g. a row's accuracy) exceeds
    that of ``lower``, judged on the seed means with Welch's t interval: the difference
    of the means, its standard error ``sqrt(s_h^2 / n_h + s_l^2 / n_l)`` (sample
    variances over seeds) and the two-sided ``level`` interval with the Welch-Satterthwaite
    degrees of freedom.  ``holds`` when the interval lies above 0, ``fails`` when below,
    ``undecided`` when it holds 0 (within the noise) or a side has one seed (no spread to
    judge by: "undecided (one seed)").  Two sides with no spread at all are decided by
    the sign of the difference.  Empty or non-finite input raises
    :class:`CascadeAdvError`."""
    from scipy.stats import t as student_t

    (mh, sh, nh), (ml, sl, nl) = mean_std(higher), mean_std(lower)
    d = mh - ml
    if nh < 2 or nl < 2:
        return SeedComparison(UNDECIDED, mh, ml, d, None, None, None, (nh, nl), level)
    vh, vl = sh ** 2 / nh, sl ** 2 / nl
    se = math.sqrt(vh + vl)
    if se == 0:
        verdict = HOLDS if d > 0 else FAILS if d < 0 else UNDECIDED
        return SeedComparison(verdict, mh, ml, d, 0.0, math.inf, (d, d), (nh, nl), level)
    df = (vh + vl) ** 2 / (vh ** 2 / (nh - 1) + vl ** 2 / (nl - 1))
    half = float(student_t.ppf(0.5 + level / 2, df)) * se
    lo, hi = d - half, d + half
    verdict = HOLDS if lo > 0 else FAILS if hi < 0 else UNDECIDED
    return SeedComparison(verdict, mh, ml, d, se, df, (lo, hi), (nh, nl), level)


def paired_gain_p_value(gained: int, lost: int) -> float:
    """One-sided exact sign test (McNemar's exact test) that a second evaluation of the
    same images is more often correct than the first: ``gained`` images are correct only
    under the second, ``lost`` only under the first; under the null each changed image
    goes either way with probability 1/2, so the p-value is ``P(X >= gained)`` for
    ``X ~ Binomial(gained + lost, 1/2)`` (1.0 when no image changed).  4 gained and none
    lost give 1/16; 8 gained and 4 lost give 794/4096.  Negative counts raise
    :class:`InvalidArgument`."""
    from scipy.stats import binomtest

    if gained < 0 or lost < 0:
        raise InvalidArgument(f"paired_gain_p_value needs counts >= 0, got gained={gained!r}, "
                              f"lost={lost!r}")
    if gained + lost == 0:
        return 1.0
    return float(binomtest(int(gained), int(gained + lost), 0.5, alternative="greater").pvalue)
