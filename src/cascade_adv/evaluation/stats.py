"""Statistics over several networks trained with different seeds (N18 table 3).

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
from typing import Any

from cascade_adv.errors import CascadeAdvError
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
