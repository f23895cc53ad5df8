"""The published numbers of the papers' tables, as result rows.

Every table of N18 (Na et al. 2018, *Cascade adversarial machine learning
regularized with a unified embedding*, tables 1-10) and K17 (Kurakin et al.
2017, *Adversarial machine learning at scale*, tables 1-7) is transcribed here
as a :class:`PaperTable`: its rows are dicts in the results-store format
(``docs/results-schema.md``; ``model`` = the paper's row label, ``n`` = 0), so
they can be put beside our own numbers (:mod:`cascade_adv.reporting.paper_tables`).

Conventions of the transcription:

* values are percentages (0-100), exactly as printed (K17 tables 4 and 6 are
  rounded to the nearest percent in the paper);
* attack names are ours: ``step_FGSM`` / FGSM -> ``step_fgsm``, ``iter_FGSM`` /
  "basic iter." -> ``iter_fgsm``, "iter. l.l." -> ``iter_ll``, "step l.l." ->
  ``step_ll``; eps is in pixel units of [0, 255] (both papers use that scale);
* white-box rows have ``source`` ``"whitebox"``, the clean column is
  ``attack="clean"`` at eps 0 (a clean value repeated for each attack group of
  the paper appears once);
* black-box rows have ``model`` = target label and ``source`` = source label,
  whatever the paper's orientation (K17 tables 4 and 6 print sources as rows);
* the "(Ours)" suffix of N18 labels is dropped, other labels are kept as the
  paper writes them (N18 table 2: ``"step_ll, Kurakin's"``; ASCII apostrophes).

Cells that a table's grid (``row_order`` x ``sources`` x ``columns`` x
``metrics``) has but the paper does not report are listed in
:attr:`PaperTable.holes`: the "-" cells of N18 table 10 (same initialisation),
and in K17 tables 3 and 5 the attacks a row was not evaluated with (each of
those rows uses one evaluation attack).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cascade_adv.errors import CascadeAdvError
from cascade_adv.results.tables import ResultTable

CLEAN = "clean"
WHITEBOX = "whitebox"
_SPLIT = {"mnist": "test", "cifar10": "test", "imagenet": "val"}

Column = tuple[str, float]


@dataclass(frozen=True)
class PaperTable:
    """One published table.

    ``rows`` are result rows (``docs/results-schema.md``); ``row_order`` the row
    labels (targets, for black-box tables) in the paper's order; ``columns`` the
    ``(attack, eps)`` columns in the paper's order; ``sources`` the source labels
    in the paper's order (black-box / transfer tables; ``()`` otherwise);
    ``metrics`` the metrics the table reports; ``holes`` the grid cells
    ``(row label, source, attack, eps, metric)`` the paper leaves empty.
    """

    id: str
    paper: str
    number: int
    title: str
    kind: str
    dataset: str
    rows: tuple[dict[str, Any], ...] = field(hash=False, compare=False, repr=False)
    row_order: tuple[str, ...]
    columns: tuple[Column, ...]
    notes: str = ""
    sources: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ("top1",)
    holes: tuple[tuple[str, str, str, float, str], ...] = field(default=(), repr=False)

    @property
    def split(self) -> str:
        return _SPLIT[self.dataset]

    def value(self, row: str, attack: str, eps: float = 0.0, metric: str | None = None,
              source: str | None = None) -> float | None:
        """The published value of one cell (``None`` where the paper has none).

        ``metric`` defaults to the table's first metric, ``source`` to
        ``"whitebox"`` for white-box tables (any source otherwise).
        """
        metric = self.metrics[0] if metric is None else metric
        if source is None and self.kind in ("whitebox", "mean_std"):
            source = WHITEBOX
        for r in self.rows:
            if (r["model"] == row and r["attack"] == attack and r["eps"] == float(eps)
                    and r["metric"] == metric and (source is None or r["source"] == source)):
                return r["value"]
        return None

    def grid(self) -> list[tuple[str, str, str, float, str]]:
        """Every cell ``(row label, source, attack, eps, metric)`` of the paper's layout."""
        sources = self.sources or (WHITEBOX,)
        return [(row, src, a, e, m) for m in self.metrics for row in self.row_order
                for src in sources for a, e in self.columns]

    def to_result_table(self) -> ResultTable:
        """The rows as a :class:`~cascade_adv.results.tables.ResultTable` (copies)."""
        return ResultTable(self.rows)


# --- builders ------------------------------------------------------------------------------


def _row(dataset: str, model: str, attack: str, eps: float, source: str, metric: str,
         value: float) -> dict[str, Any]:
    return {"model": model, "model_hash": "", "dataset": dataset, "split": _SPLIT[dataset],
            "attack": attack, "eps": float(eps), "source": source, "metric": metric,
            "value": float(value), "n": 0}


def _cols(*groups: tuple[str, Sequence[float]], clean: bool = True) -> tuple[Column, ...]:
    cols: list[Column] = [(CLEAN, 0.0)] if clean else []
    for attack, eps_list in groups:
        cols.extend((attack, float(e)) for e in eps_list)
    return tuple(cols)


def _whitebox(dataset: str, columns: Sequence[Column], metric: str,
              values: Mapping[str, Sequence[float | None]]) -> list[dict[str, Any]]:
    """Rows of a white-box table: ``values[label]`` follows ``columns`` (None = no cell)."""
    rows = []
    for label, vals in values.items():
        if len(vals) != len(columns):
            raise AssertionError(f"{label}: {len(vals)} values for {len(columns)} columns")
        for (attack, eps), v in zip(columns, vals):
            if v is not None:
                rows.append(_row(dataset, label, attack, eps, WHITEBOX, metric, v))
    return rows


def _halves(first: Mapping[str, Sequence[float]], second: Mapping[str, Sequence[float]]
            ) -> dict[str, list[float]]:
    """Join the two halves of a table printed as two blocks that both start with the
    clean column (N18 tables 2, 5, 6); the clean values must agree."""
    out = {}
    for label, a in first.items():
        b = second[label]
        if a[0] != b[0]:
            raise AssertionError(f"{label}: clean {a[0]} != {b[0]} in the two halves")
        out[label] = list(a) + list(b[1:])
    return out


def _blackbox(dataset: str, eps: float, metric: str, attacks: Sequence[str],
              sources: Sequence[str], values: Mapping[str, Sequence[float | None]],
              *, source_major: bool = False) -> list[dict[str, Any]]:
    """Rows of a matrix: ``values[label]`` holds, attack after attack, one value per
    source (``label`` is the target), or per target with ``source_major``."""
    rows = []
    for label, vals in values.items():
        if len(vals) != len(attacks) * len(sources):
            raise AssertionError(f"{label}: {len(vals)} values")
        for i, v in enumerate(vals):
            if v is None:
                continue
            attack, other = attacks[i // len(sources)], sources[i % len(sources)]
            target, source = (other, label) if source_major else (label, other)
            rows.append(_row(dataset, target, attack, eps, source, metric, v))
    return rows


def _holes_from(rows: Iterable[Mapping[str, Any]], grid: Iterable[tuple]) -> tuple:
    have = {(r["model"], r["source"], r["attack"], r["eps"], r["metric"]) for r in rows}
    return tuple(c for c in grid if c not in have)


def _table(*, id: str, paper: str, number: int, title: str, kind: str, dataset: str,
           rows: list[dict[str, Any]], row_order: Sequence[str], columns: Sequence[Column],
           notes: str = "", sources: Sequence[str] = (), metrics: Sequence[str] = ("top1",),
           holes_allowed: bool = False) -> PaperTable:
    t = PaperTable(id=id, paper=paper, number=number, title=title, kind=kind, dataset=dataset,
                   rows=tuple(rows), row_order=tuple(row_order), columns=tuple(columns),
                   notes=notes, sources=tuple(sources), metrics=tuple(metrics))
    holes = _holes_from(rows, t.grid())
    if holes and not holes_allowed:
        raise AssertionError(f"{id}: cells missing from the transcription: {holes[:3]}")
    return replace(t, holes=holes)


# --- N18 -------------------------------------------------------------------------------------

_N18_T2_LABELS = (
    "Baseline", "step_ll, Kurakin's", "step_ll, Bidirection", "step_ll, Pivot",
    "step_FGSM, Kurakin's", "step_FGSM, Pivot", "step_both, Kurakin's", "step_both, Pivot",
)
_CIFAR_EPS = (2, 4, 8, 16)
_CIFAR_COLS = _cols(("step_ll", _CIFAR_EPS), ("step_fgsm", _CIFAR_EPS),
                    ("iter_ll", _CIFAR_EPS), ("iter_fgsm", _CIFAR_EPS))
_CASCADE_LABELS = ("step_ll, P", "step_ll, saved_P2, P", "step_ll, saved_P2, K")
_N18_BB_ATTACKS = ("step_fgsm", "iter_ll", "iter_fgsm")


def _n18_tables() -> list[PaperTable]:
    tables = []
    mnist_cols = _cols(("step_ll", (16, 32)), ("step_fgsm", (16, 32)),
                       ("iter_ll", (16, 32)), ("iter_fgsm", (16, 32)))
    t1 = {
        "Baseline": (99.6, 95.7, 30.2, 92.6, 29.7, 98.1, 66.2, 86.6, 7.5),
        "Kurakin's": (99.6, 99.2, 96.7, 98.5, 94.1, 99.5, 97.9, 98.2, 87.9),
        "Bidirection": (99.5, 99.3, 98.8, 99.1, 98.4, 99.4, 99.1, 98.9, 96.5),
        "Pivot": (99.6, 99.4, 98.8, 99.1, 98.1, 99.5, 99.3, 98.8, 96.4),
    }
    tables.append(_table(
        id="n18-table1", paper="N18", number=1, title="MNIST test results (%)",
        kind="whitebox", dataset="mnist", rows=_whitebox("mnist", mnist_cols, "top1", t1),
        row_order=tuple(t1), columns=mnist_cols,
        notes="20-layer ResNet. Baseline: standard training; Kurakin's: adversarial training "
              "w/o distance based loss; Bidirection: w/ bidirectional loss; Pivot: w/ pivot "
              "loss. Adversarial training with step_ll only (max eps 32).",
    ))

    t2_step = {  # clean, step_ll 2 4 8 16, step_FGSM 2 4 8 16
        "Baseline": (90.9, 44.5, 26.0, 14.2, 11.5, 28.7, 20.6, 15.7, 12.2),
        "step_ll, Kurakin's": (91.0, 85.8, 86.7, 87.3, 84.4, 78.9, 83.3, 85.2, 81.5),
        "step_ll, Bidirection": (91.0, 86.1, 87.1, 88.3, 87.3, 78.7, 82.8, 88.0, 90.0),
        "step_ll, Pivot": (90.9, 86.2, 88.0, 89.0, 88.3, 79.7, 84.8, 90.0, 91.7),
        "step_FGSM, Kurakin's": (91.1, 87.9, 89.0, 89.3, 88.0, 88.1, 92.2, 95.1, 93.9),
        "step_FGSM, Pivot": (90.9, 87.8, 88.7, 89.4, 89.1, 86.0, 90.3, 93.9, 93.9),
        "step_both, Kurakin's": (91.3, 87.4, 88.6, 89.2, 87.6, 83.3, 88.5, 93.3, 92.0),
        "step_both, Pivot": (90.8, 87.2, 88.5, 89.1, 88.2, 82.2, 87.1, 91.8, 92.3),
    }
    t2_iter = {  # clean, iter_ll 2 4 8 16, iter_FGSM 2 4 8 16
        "Baseline": (90.9, 47.7, 33.3, 12.5, 9.1, 14.0, 0.4, 0.0, 0.0),
        "step_ll, Kurakin's": (91.0, 78.2, 65.1, 35.3, 16.8, 50.6, 9.8, 0.4, 0.0),
        "step_ll, Bidirection": (91.0, 76.6, 69.0, 41.8, 22.9, 52.0, 11.2, 0.2, 0.0),
        "step_ll, Pivot": (90.9, 76.3, 69.4, 41.3, 22.2, 52.0, 11.3, 0.2, 0.0),
        "step_FGSM, Kurakin's": (91.1, 65.0, 51.5, 24.2, 14.9, 41.2, 2.3, 0.0, 0.0),
        "step_FGSM, Pivot": (90.9, 69.5, 63.3, 38.4, 23.4, 49.9, 6.8, 0.1, 0.0),
        "step_both, Kurakin's": (91.3, 70.5, 58.9, 27.8, 15.4, 45.7, 5.1, 0.1, 0.0),
        "step_both, Pivot": (90.8, 76.6, 69.7, 44.0, 25.5, 55.0, 13.1, 0.2, 0.0),
    }
    assert tuple(t2_step) == _N18_T2_LABELS
    t2 = _halves(t2_step, t2_iter)
    tables.append(_table(
        id="n18-table2", paper="N18", number=2,
        title="CIFAR10 test results (%) for various adversarial attacks",
        kind="whitebox", dataset="cifar10", rows=_whitebox("cifar10", _CIFAR_COLS, "top1", t2),
        row_order=_N18_T2_LABELS, columns=_CIFAR_COLS,
        notes="20-layer ResNet. The row label names the adversarial training method "
              "(step_ll, step_FGSM, or step_both = 32 step_ll + 32 step_FGSM examples per "
              "batch) and the loss (Kurakin's: no distance loss; Bidirection; Pivot). "
              "Max training eps 16.",
    ))

    t3 = {  # (mean, std): clean, step_ll 4 16, iter_ll 4 16
        "Kurakin's": ((90.9, 0.25), (86.1, 0.98), (84.6, 2.89), (64.2, 2.89), (16.3, 2.02)),
        "Pivot": ((90.9, 0.25), (87.3, 0.79), (87.8, 0.82), (69.4, 1.61), (21.9, 1.85)),
    }
    t3_cols = _cols(("step_ll", (4, 16)), ("iter_ll", (4, 16)))
    t3_rows = (_whitebox("cifar10", t3_cols, "top1_mean", {k: [m for m, _ in v]
                                                           for k, v in t3.items()})
               + _whitebox("cifar10", t3_cols, "top1_std", {k: [s for _, s in v]
                                                            for k, v in t3.items()}))
    tables.append(_table(
        id="n18-table3", paper="N18", number=3,
        title="CIFAR10 test results (%) for 20 trained networks (mean ± std)",
        kind="mean_std", dataset="cifar10", rows=t3_rows, row_order=tuple(t3),
        columns=t3_cols, metrics=("top1_mean", "top1_std"),
        notes="20 networks per method, trained with step_ll (Kurakin's and Pivot), learning "
              "rate schedule 60k/90k, stop at 120k iterations.",
    ))

    t4 = {  # step_FGSM B2 K2 P2, iter_ll B2 K2 P2, iter_FGSM B2 K2 P2
        "B1": (16.2, 31.6, 29.1, 69.7, 82.6, 78.3, 2.7, 60.1, 54.4),
        "K1": (66.7, 82.7, 79.4, 87.7, 83.5, 82.5, 55.8, 28.5, 28.5),
        "P1": (57.2, 89.2, 85.4, 87.8, 83.3, 82.3, 52.0, 24.3, 21.7),
    }
    tables.append(_table(
        id="n18-table4", paper="N18", number=4,
        title="CIFAR10 test results (%) under black box attacks",
        kind="blackbox", dataset="cifar10",
        rows=_blackbox("cifar10", 16, "top1", _N18_BB_ATTACKS, ("B2", "K2", "P2"), t4),
        row_order=tuple(t4), sources=("B2", "K2", "P2"),
        columns=_cols(*((a, (16,)) for a in _N18_BB_ATTACKS), clean=False),
        notes="B: Baseline, K: Kurakin's, P: Pivot, trained with step_ll. Targets B1, K1, P1; "
              "sources B2, K2, P2. Models with the same number share the same initialization.",
    ))

    cascade_notes = (
        "{layers}-layer ResNet. step_ll, P: Pivot trained with 64 step_ll examples; "
        "step_ll, saved_P2: 32 step_ll examples + 32 pre-saved iter_FGSM images crafted from "
        "P2 of table 4 (P2_iter_FGSM_train, eps 1..16, center-cropped train images, no "
        "random crop). K: Kurakin's, P: Pivot."
    )
    t5 = _halves({
        "step_ll, P": (90.9, 86.2, 88.0, 89.0, 88.3, 79.7, 84.8, 90.0, 91.7),
        "step_ll, saved_P2, P": (90.7, 84.6, 82.8, 79.4, 73.9, 80.5, 77.6, 72.7, 65.7),
        "step_ll, saved_P2, K": (91.3, 85.3, 83.6, 80.7, 73.8, 80.2, 79.1, 75.4, 67.6),
    }, {
        "step_ll, P": (90.9, 76.3, 69.4, 41.3, 22.2, 52.0, 11.3, 0.2, 0.0),
        "step_ll, saved_P2, P": (90.7, 82.2, 75.8, 67.1, 58.7, 67.0, 37.9, 20.1, 9.7),
        "step_ll, saved_P2, K": (91.3, 81.4, 69.0, 41.3, 19.2, 60.7, 18.9, 1.7, 0.1),
    })
    tables.append(_table(
        id="n18-table5", paper="N18", number=5,
        title="CIFAR10 test results (%) for cascade networks",
        kind="whitebox", dataset="cifar10", rows=_whitebox("cifar10", _CIFAR_COLS, "top1", t5),
        row_order=_CASCADE_LABELS, columns=_CIFAR_COLS,
        notes=cascade_notes.format(layers=20)
        + " Row step_ll, P is table 2's step_ll, Pivot.",
    ))
    t6 = _halves({
        "step_ll, P": (92.3, 86.0, 86.8, 89.3, 89.4, 81.6, 84.5, 90.1, 91.6),
        "step_ll, saved_P2, P": (91.4, 85.6, 83.9, 81.4, 76.8, 81.2, 79.3, 74.3, 67.2),
        "step_ll, saved_P2, K": (92.2, 85.4, 83.7, 80.6, 73.9, 81.4, 80.1, 75.8, 66.8),
    }, {
        "step_ll, P": (92.3, 79.6, 66.2, 48.6, 34.1, 64.1, 20.9, 2.6, 0.1),
        "step_ll, saved_P2, P": (91.4, 83.8, 77.8, 69.8, 61.6, 69.9, 45.9, 30.4, 19.5),
        "step_ll, saved_P2, K": (92.2, 84.6, 75.6, 56.4, 33.5, 69.9, 35.2, 9.8, 1.2),
    })
    tables.append(_table(
        id="n18-table6", paper="N18", number=6,
        title="CIFAR10 test results (%) for cascade 110-layer ResNet models",
        kind="whitebox", dataset="cifar10", rows=_whitebox("cifar10", _CIFAR_COLS, "top1", t6),
        row_order=_CASCADE_LABELS, columns=_CIFAR_COLS,
        notes=cascade_notes.format(layers=110)
        + " The saved iter_FGSM images come from the 20-layer P2.",
    ))

    t7_sources = ("B2", "K2", "P2", "K2C", "P2C", "K4C", "P4C")
    t7 = {  # step_FGSM (7 sources), iter_FGSM (7 sources)
        "K1C": (60.2, 65.7, 58.7, 72.6, 73.6, 63.3, 69.0,
                42.5, 69.1, 68.5, 51.3, 61.7, 76.4, 81.0),
        "P1C": (61.3, 68.3, 65.1, 71.2, 73.9, 66.6, 71.5,
                50.5, 69.0, 71.0, 50.3, 62.4, 77.1, 81.5),
        "K3C": (73.4, 73.3, 70.8, 75.8, 77.7, 69.3, 74.6,
                62.8, 73.8, 75.4, 58.3, 71.4, 78.4, 83.0),
        "P3C": (71.8, 74.8, 72.7, 76.6, 75.4, 68.3, 74.4,
                67.5, 77.5, 78.1, 66.8, 68.8, 80.2, 83.5),
    }
    cascade_bb_notes = (
        "B: Baseline, K: Kurakin's, P: Pivot; KC / PC: with cascade adversarial training. "
        "1 and 2: 20-layer ResNet, 3 and 4: 110-layer ResNet. Models with the same number "
        "share the same initialization."
    )
    tables.append(_table(
        id="n18-table7", paper="N18", number=7,
        title="CIFAR10 test results (%) for cascade models under black box attacks",
        kind="blackbox", dataset="cifar10",
        rows=_blackbox("cifar10", 16, "top1", ("step_fgsm", "iter_fgsm"), t7_sources, t7),
        row_order=tuple(t7), sources=t7_sources,
        columns=_cols(("step_fgsm", (16,)), ("iter_fgsm", (16,)), clean=False),
        notes=cascade_bb_notes + " Targets are the cascade networks of tables 5 and 6.",
    ))

    t8 = {
        "B1": (12.2, 27.4, 27.5, 9.3, 78.6, 80.7, 0.0, 45.9, 44.7),
        "K1": (65.7, 81.5, 81.8, 87.7, 16.8, 81.8, 51.5, 0.0, 18.2),
        "P1": (58.1, 89.3, 91.7, 88.1, 81.9, 22.3, 48.9, 13.4, 0.0),
    }
    tables.append(_table(
        id="n18-table8", paper="N18", number=8,
        title="Black box test accuracy (%) between networks with the same initialization",
        kind="blackbox", dataset="cifar10",
        rows=_blackbox("cifar10", 16, "top1", _N18_BB_ATTACKS, ("B1", "K1", "P1"), t8),
        row_order=tuple(t8), sources=("B1", "K1", "P1"),
        columns=_cols(*((a, (16,)) for a in _N18_BB_ATTACKS), clean=False),
        notes="Appendix B. B: Baseline, K: Kurakin's, P: Pivot, trained with step_ll. Targets "
              "and sources B1, K1, P1, which used the same initialization (the diagonal is "
              "the white-box accuracy).",
    ))
    t9 = {
        "B2": (17.9, 33.9, 34.5, 73.9, 82.2, 82.8, 4.1, 54.8, 54.3),
        "K2": (65.0, 84.6, 84.5, 87.6, 81.5, 82.3, 61.2, 25.3, 30.4),
        "P2": (66.4, 88.2, 87.2, 88.3, 83.5, 83.9, 61.6, 27.7, 36.1),
    }
    tables.append(_table(
        id="n18-table9", paper="N18", number=9,
        title="Black box test accuracy (%), targets B2/K2/P2, sources B1/K1/P1",
        kind="blackbox", dataset="cifar10",
        rows=_blackbox("cifar10", 16, "top1", _N18_BB_ATTACKS, ("B1", "K1", "P1"), t9),
        row_order=tuple(t9), sources=("B1", "K1", "P1"),
        columns=_cols(*((a, (16,)) for a in _N18_BB_ATTACKS), clean=False),
        notes="Appendix B; table 4 with sources and targets switched. B1, K1, P1 share one "
              "initialization; B2, K2, P2 share another.",
    ))
    t10_sources = ("B1", "K1C", "P1C", "K2C", "P2C", "K3C", "P3C", "K4C", "P4C")
    t10 = {
        "K2C": (41.2, 58.4, 63.6, None, None, 50.0, 58.3, 75.0, 82.0),
        "P2C": (51.7, 62.9, 62.5, None, None, 53.7, 64.0, 76.8, 81.7),
        "K4C": (62.7, 68.2, 70.3, 52.4, 68.7, 55.6, 65.8, None, None),
        "P4C": (76.4, 69.9, 71.3, 65.1, 69.0, 61.7, 67.7, None, None),
    }
    tables.append(_table(
        id="n18-table10", paper="N18", number=10,
        title="Test accuracy (%) under black box attack, cascade models switched",
        kind="blackbox", dataset="cifar10",
        rows=_blackbox("cifar10", 16, "top1", ("iter_fgsm",), t10_sources, t10),
        row_order=tuple(t10), sources=t10_sources,
        columns=_cols(("iter_fgsm", (16,)), clean=False), holes_allowed=True,
        notes="Appendix B; table 7 with sources and targets switched. " + cascade_bb_notes
        + " '-': not reported (source and target share their initialization).",
    ))
    return tables


# --- K17 -------------------------------------------------------------------------------------

_K17_EPS = (2, 4, 8, 16)
_K17_T5_LABELS = (
    "No adversarial training", "FGSM", "Fast with predicted class", "Fast entropy",
    "Step rnd.", "Step l.l.", "Fast grad. L2", "Fast grad. L∞",
    "Sign of random perturbation", "Random normal perturbation",
)
_K17_MODELS = ("A", "B", "C", "D")
_K17_MODELS_NOTE = ("A and B: Inception v3 with different random initializations; C: "
                    "Inception v3 with ELU activations; D: Inception v4.")


def _k17_tables() -> list[PaperTable]:
    tables = []
    t1_cols = _cols(("step_ll", _K17_EPS))
    t1 = {  # label: (top 1, top 5), each clean, eps 2 4 8 16
        "Baseline (standard training)": ((78.4, 30.8, 27.2, 27.2, 29.5),
                                         (94.0, 60.0, 55.6, 55.1, 57.2)),
        "Adv. training": ((77.6, 73.5, 74.0, 74.5, 73.9), (93.8, 91.7, 91.9, 92.0, 91.4)),
        "Deeper model (standard training)": ((78.7, 33.5, 30.0, 30.0, 31.6),
                                             (94.4, 63.3, 58.9, 58.1, 59.5)),
        "Deeper model (Adv. training)": ((78.1, 75.4, 75.7, 75.6, 74.4),
                                         (94.1, 92.6, 92.7, 92.5, 91.6)),
    }
    tables.append(_table(
        id="k17-table1", paper="K17", number=1,
        title="Top 1 and top 5 accuracies of an adversarially trained network (step l.l.)",
        kind="whitebox", dataset="imagenet",
        rows=(_whitebox("imagenet", t1_cols, "top1", {k: v[0] for k, v in t1.items()})
              + _whitebox("imagenet", t1_cols, "top5", {k: v[1] for k, v in t1.items()})),
        row_order=tuple(t1), columns=t1_cols, metrics=("top1", "top5"),
        notes="Inception v3 on ImageNet (validation set); training and evaluation with step "
              "l.l. The deeper model has two additional Inception blocks.",
    ))

    t2_cols = _cols(("iter_ll", _K17_EPS), ("iter_fgsm", _K17_EPS))
    t2 = {  # label: (top 1, top 5), each clean, iter l.l. 2 4 8 16, basic iter. 2 4 8 16
        "Adv. training": (
            (77.4, 29.1, 7.5, 3.0, 1.5, 30.0, 25.2, 23.5, 23.2),
            (93.9, 56.9, 21.3, 9.4, 5.5, 44.3, 33.6, 28.4, 26.8)),
        "Baseline": (
            (78.3, 23.3, 5.5, 1.8, 0.7, 31.4, 28.1, 26.4, 25.9),
            (94.1, 49.3, 18.8, 7.8, 4.4, 43.1, 34.8, 30.2, 28.8)),
    }
    tables.append(_table(
        id="k17-table2", paper="K17", number=2,
        title="Accuracy of adversarially trained network on iterative adversarial examples",
        kind="whitebox", dataset="imagenet",
        rows=(_whitebox("imagenet", t2_cols, "top1", {k: v[0] for k, v in t2.items()})
              + _whitebox("imagenet", t2_cols, "top5", {k: v[1] for k, v in t2.items()})),
        row_order=tuple(t2), columns=t2_cols, metrics=("top1", "top5"),
        notes="Inception v3, adversarial training with step l.l., 140k iterations. The paper "
              "groups rows by attack (Iter. l.l., Iter. basic); the clean column is the same "
              "in both groups.",
    ))

    t3_cols = _cols(("step_ll", _K17_EPS), ("step_fgsm", _K17_EPS))
    no_leak = "No label leaking, training and eval using step l.l."
    leak = "With label leaking, training and eval using FGSM"
    t3 = {
        no_leak: ((77.3, 72.8, 73.1, 73.4, 72.0, None, None, None, None),
                  (93.7, 91.1, 91.1, 91.0, 90.3, None, None, None, None)),
        leak: ((76.6, None, None, None, None, 86.2, 87.6, 88.7, 87.0),
               (93.2, None, None, None, None, 95.9, 96.4, 96.9, 96.4)),
    }
    tables.append(_table(
        id="k17-table3", paper="K17", number=3,
        title="Effect of label leaking on adversarial examples",
        kind="whitebox", dataset="imagenet",
        rows=(_whitebox("imagenet", t3_cols, "top1", {k: v[0] for k, v in t3.items()})
              + _whitebox("imagenet", t3_cols, "top5", {k: v[1] for k, v in t3.items()})),
        row_order=tuple(t3), columns=t3_cols, metrics=("top1", "top5"), holes_allowed=True,
        notes="Inception v3, 150k iterations, initial learning rate 0.0225. Each row is "
              "trained and evaluated with one method (step l.l. or FGSM); the paper prints "
              "both in the same eps columns.",
    ))

    bb_attacks = ("step_fgsm", "iter_fgsm", "iter_ll")
    bb_cols = _cols(*((a, (16,)) for a in bb_attacks), clean=False)
    t4_top1 = {  # source: FGSM -> A B C D, basic iter. -> A B C D, iter l.l. -> A B C D
        "A": (100, 56, 58, 47, 100, 46, 45, 33, 100, 13, 13, 9),
        "B": (58, 100, 59, 51, 41, 100, 40, 30, 15, 100, 13, 10),
        "C": (56, 58, 100, 52, 44, 44, 100, 32, 12, 11, 100, 9),
        "D": (50, 54, 52, 100, 35, 39, 37, 100, 12, 13, 13, 100),
    }
    t4_top5 = {
        "A": (100, 50, 50, 36, 100, 15, 17, 11, 100, 8, 7, 5),
        "B": (51, 100, 50, 37, 16, 100, 14, 10, 7, 100, 5, 4),
        "C": (44, 45, 100, 37, 16, 18, 100, 13, 6, 6, 100, 4),
        "D": (42, 38, 46, 100, 11, 15, 15, 100, 6, 6, 6, 100),
    }
    tables.append(_table(
        id="k17-table4", paper="K17", number=4,
        title="Transfer rate (%) of adversarial examples, eps = 16",
        kind="transfer", dataset="imagenet",
        rows=(_blackbox("imagenet", 16, "transfer_top1", bb_attacks, _K17_MODELS, t4_top1,
                        source_major=True)
              + _blackbox("imagenet", 16, "transfer_top5", bb_attacks, _K17_MODELS, t4_top5,
                          source_major=True)),
        row_order=_K17_MODELS, sources=_K17_MODELS, columns=bb_cols,
        metrics=("transfer_top1", "transfer_top5"),
        notes=_K17_MODELS_NOTE + " The paper prints sources as rows and targets as columns; "
              "values rounded to the nearest percent; 1000 random test images.",
    ))

    t5_cols = _cols(("step_fgsm", _K17_EPS), ("step_ll", _K17_EPS))
    t5_vals = {
        "No adversarial training": (76.8, 40.7, 39.0, 37.9, 36.7),
        "FGSM": (74.9, 79.3, 82.8, 85.3, 83.2),
        "Fast with predicted class": (76.4, 43.2, 42.0, 40.9, 40.0),
        "Fast entropy": (76.4, 62.8, 61.7, 59.5, 54.8),
        "Step rnd.": (76.4, 73.0, 75.4, 76.5, 72.5),
        "Step l.l.": (76.3, 72.9, 75.1, 76.2, 72.2),
        "Fast grad. L2": (76.8, 44.0, 33.2, 26.4, 22.5),
        "Fast grad. L∞": (75.6, 52.2, 39.7, 30.9, 25.0),
        "Sign of random perturbation": (76.5, 38.8, 36.6, 35.0, 32.7),
        "Random normal perturbation": (76.6, 38.3, 36.0, 34.4, 31.8),
    }
    assert tuple(t5_vals) == _K17_T5_LABELS
    step_ll_eval = ("Fast grad. L2", "Fast grad. L∞")
    blank = (None,) * 4
    t5 = {k: v[:1] + (blank + v[1:] if k in step_ll_eval else v[1:] + blank)
          for k, v in t5_vals.items()}
    tables.append(_table(
        id="k17-table5", paper="K17", number=5,
        title="Comparison of one-step adversarial methods for adversarial training",
        kind="whitebox", dataset="imagenet", rows=_whitebox("imagenet", t5_cols, "top1", t5),
        row_order=_K17_T5_LABELS, columns=t5_cols, holes_allowed=True,
        notes="Inception v3, evaluated after 90k steps. The row label is the one-step method "
              "used for adversarial training. Evaluation with FGSM, except Fast grad. L2 and "
              "Fast grad. L∞ (evaluated with step l.l.); FGSM-trained / FGSM-evaluated is "
              "inflated by label leaking. The paper does not say top 1 or top 5: the clean "
              "values (~76%) are top 1.",
    ))

    t6_top1 = {
        "A": (65, 52, 53, 45, 78, 51, 50, 42, 100, 32, 31, 27),
        "B": (52, 66, 54, 48, 50, 79, 51, 43, 35, 99, 34, 29),
        "C": (53, 55, 70, 50, 47, 46, 74, 40, 31, 30, 100, 28),
        "D": (47, 51, 49, 62, 43, 46, 45, 73, 30, 31, 31, 99),
    }
    t6_top5 = {
        "A": (46, 28, 28, 22, 76, 17, 18, 13, 94, 12, 12, 9),
        "B": (29, 46, 30, 22, 19, 76, 18, 16, 13, 96, 12, 11),
        "C": (28, 29, 55, 25, 18, 19, 74, 15, 12, 12, 96, 9),
        "D": (23, 22, 25, 40, 14, 16, 16, 70, 11, 11, 11, 97),
    }
    tables.append(_table(
        id="k17-table6", paper="K17", number=6,
        title="Error rates (%) on adversarial examples transferred between models, eps = 16",
        kind="blackbox", dataset="imagenet",
        rows=(_blackbox("imagenet", 16, "error_top1", bb_attacks, _K17_MODELS, t6_top1,
                        source_major=True)
              + _blackbox("imagenet", 16, "error_top5", bb_attacks, _K17_MODELS, t6_top5,
                          source_major=True)),
        row_order=_K17_MODELS, sources=_K17_MODELS, columns=bb_cols,
        metrics=("error_top1", "error_top5"),
        notes=_K17_MODELS_NOTE + " The paper prints sources as rows and targets as columns; "
              "values rounded to the nearest percent; 1000 random adversarial images.",
    ))

    t7_cols = _cols(("step_ll", _K17_EPS), ("iter_ll", _K17_EPS), ("iter_fgsm", _K17_EPS))
    t7_step = {
        "relu": (77.5, 74.6, 75.1, 75.5, 74.5),
        "relu6": (77.7, 71.8, 73.5, 74.5, 74.0),
        "ReluDecay0.001": (78.0, 74.0, 74.9, 75.2, 73.9),
        "ReluDecay0.01": (77.4, 73.6, 74.6, 75.0, 73.6),
        "ReluDecay0.1": (75.3, 67.5, 67.5, 67.0, 64.8),
        "tanh": (74.5, 63.7, 65.1, 65.8, 61.9),
    }
    t7_iter_ll = {
        "relu": (77.5, 30.2, 8.0, 3.1, 1.6),
        "relu6": (77.7, 39.8, 13.7, 4.1, 1.9),
        "ReluDecay0.001": (78.0, 39.9, 12.6, 3.8, 1.8),
        "ReluDecay0.01": (77.4, 36.2, 11.2, 3.2, 1.6),
        "ReluDecay0.1": (75.3, 47.0, 25.8, 6.5, 2.4),
        "tanh": (74.5, 35.8, 6.6, 2.7, 0.9),
    }
    t7_basic = {
        "relu": (77.5, 28.4, 23.2, 21.5, 21.0),
        "relu6": (77.7, 31.2, 26.1, 23.8, 23.2),
        "ReluDecay0.001": (78.0, 32.9, 27.2, 24.7, 24.1),
        "ReluDecay0.01": (77.4, 30.0, 24.2, 21.4, 20.5),
        "ReluDecay0.1": (75.3, 26.7, 20.6, 16.5, 15.2),
        "tanh": (74.5, 24.5, 22.0, 20.9, 20.7),
    }
    t7 = _halves(_halves(t7_step, t7_iter_ll), t7_basic)
    tables.append(_table(
        id="k17-table7", paper="K17", number=7,
        title="Activation functions and robustness to adversarial examples",
        kind="whitebox", dataset="imagenet", rows=_whitebox("imagenet", t7_cols, "top1", t7),
        row_order=tuple(t7), columns=t7_cols,
        notes="Inception v3 with the named activation instead of relu, adversarially trained "
              "on step l.l. images. ReluDecay_b(x) = relu(x) / (1 + b relu(x)^2). The paper "
              "groups rows by attack; the clean column repeats. It does not say top 1 or top "
              "5: the clean values (~77%) are top 1.",
    ))
    return tables


#: Every transcribed table, by id (``"n18-table1"`` ... ``"n18-table10"``,
#: ``"k17-table1"`` ... ``"k17-table7"``).
PUBLISHED: dict[str, PaperTable] = {t.id: t for t in _n18_tables() + _k17_tables()}


def get_table(table_id: str) -> PaperTable:
    """The published table ``table_id`` (e.g. ``"n18-table1"``)."""
    try:
        return PUBLISHED[table_id]
    except KeyError:
        raise CascadeAdvError(
            f"no published table {table_id!r}; the tables are: {', '.join(PUBLISHED)}"
        ) from None


# --- training recipes ------------------------------------------------------------------------

#: Our training-config name -> (table id, paper row label) of the published row it
#: reproduces.  For n18_cifar10_B2/K2/P2 the label is the *source* label of N18 table 4.
RECIPES: dict[str, tuple[str, str]] = {
    "n18_mnist_baseline": ("n18-table1", "Baseline"),
    "n18_mnist_kurakin": ("n18-table1", "Kurakin's"),
    "n18_mnist_bidirection": ("n18-table1", "Bidirection"),
    "n18_mnist_pivot": ("n18-table1", "Pivot"),
    "n18_cifar10_baseline": ("n18-table2", "Baseline"),
    "n18_cifar10_step_ll_kurakin": ("n18-table2", "step_ll, Kurakin's"),
    "n18_cifar10_step_ll_bidirection": ("n18-table2", "step_ll, Bidirection"),
    "n18_cifar10_step_ll_pivot": ("n18-table2", "step_ll, Pivot"),
    "n18_cifar10_step_fgsm_kurakin": ("n18-table2", "step_FGSM, Kurakin's"),
    "n18_cifar10_step_fgsm_pivot": ("n18-table2", "step_FGSM, Pivot"),
    "n18_cifar10_step_both_kurakin": ("n18-table2", "step_both, Kurakin's"),
    "n18_cifar10_step_both_pivot": ("n18-table2", "step_both, Pivot"),
    "n18_cifar10_cascade_pivot": ("n18-table5", "step_ll, saved_P2, P"),
    "n18_cifar10_cascade_kurakin": ("n18-table5", "step_ll, saved_P2, K"),
    "n18_cifar10_resnet110_step_ll_pivot": ("n18-table6", "step_ll, P"),
    "n18_cifar10_resnet110_cascade_pivot": ("n18-table6", "step_ll, saved_P2, P"),
    "n18_cifar10_resnet110_cascade_kurakin": ("n18-table6", "step_ll, saved_P2, K"),
    "n18_cifar10_B2": ("n18-table4", "B2"),
    "n18_cifar10_K2": ("n18-table4", "K2"),
    "n18_cifar10_P2": ("n18-table4", "P2"),
    "k17_cifar10_baseline": ("k17-table5", "No adversarial training"),
    "k17_cifar10_step_ll": ("k17-table5", "Step l.l."),
    "k17_cifar10_step_fgsm": ("k17-table5", "FGSM"),
    "k17_cifar10_fgsm_pred": ("k17-table5", "Fast with predicted class"),
    "k17_cifar10_fast_entropy": ("k17-table5", "Fast entropy"),
    "k17_cifar10_step_rnd": ("k17-table5", "Step rnd."),
    "k17_cifar10_fast_grad_l2": ("k17-table5", "Fast grad. L2"),
    "k17_cifar10_fast_grad_linf": ("k17-table5", "Fast grad. L∞"),
    "k17_cifar10_random_sign": ("k17-table5", "Sign of random perturbation"),
    "k17_cifar10_random_normal": ("k17-table5", "Random normal perturbation"),
    # the ImageNet path (Inception v3); their K17 table 2 rows are the same networks
    "k17_imagenet_baseline": ("k17-table1", "Baseline (standard training)"),
    "k17_imagenet_step_ll": ("k17-table1", "Adv. training"),
}

#: Recipes that re-create a published row only approximately: K17 table 5 is an
#: ImageNet / Inception v3 table, our k17_cifar10_* configs train on CIFAR-10.
APPROXIMATE: frozenset[str] = frozenset(k for k in RECIPES if k.startswith("k17_cifar10_"))
APPROXIMATE_NOTE = ("CIFAR-10 re-creation of an ImageNet (Inception v3) table: compare trends, "
                    "not absolute numbers")

#: Labels the N18 black-box tables (4, 7-10) give our models.  Inferred from the
#: text: the table-4 targets B1/K1/P1 are the step_ll models of table 2 (table 8's
#: diagonal equals table 2's white-box numbers), and the table-7 targets K1C/P1C,
#: K3C/P3C are the cascade networks of tables 5 and 6 ("Target networks are the same
#: networks used in table 5 and 6").
BLACKBOX_LABELS: dict[str, str] = {
    "n18_cifar10_baseline": "B1",
    "n18_cifar10_step_ll_kurakin": "K1",
    "n18_cifar10_step_ll_pivot": "P1",
    "n18_cifar10_B2": "B2",
    "n18_cifar10_K2": "K2",
    "n18_cifar10_P2": "P2",
    "n18_cifar10_cascade_kurakin": "K1C",
    "n18_cifar10_cascade_pivot": "P1C",
    "n18_cifar10_resnet110_cascade_kurakin": "K3C",
    "n18_cifar10_resnet110_cascade_pivot": "P3C",
}


def _match(model_name: str, names: Iterable[str]) -> str | None:
    """The longest of ``names`` that ``model_name`` equals or starts with, followed by
    ``-`` or ``_seed`` (``n18_mnist_pivot-seed3``, ``n18_mnist_pivot_seed3``)."""
    best = None
    for name in names:
        matches = model_name == name or model_name.startswith((name + "-", name + "_seed"))
        if matches and (best is None or len(name) > len(best)):
            best = name
    return best


def recipe_name(model_name: str) -> str | None:
    """The recipe (training-config name) ``model_name`` was trained with, if any."""
    return _match(model_name, RECIPES)


def recipe_for(model_name: str) -> tuple[str, str] | None:
    """``(table id, paper row label)`` that ``model_name`` reproduces, or ``None``.

    ``model_name`` is a recipe name, or one followed by ``-...`` or ``_seed...``.
    """
    name = recipe_name(model_name)
    return None if name is None else RECIPES[name]


def is_approximate(model_name: str) -> bool:
    """Whether ``model_name``'s recipe only approximates its published row (K17 on CIFAR-10)."""
    name = recipe_name(model_name)
    return name is not None and name in APPROXIMATE


def blackbox_label_for(model_name: str) -> str | None:
    """The label (B1, K2, P1C, ...) N18's black-box tables give ``model_name``'s recipe."""
    name = _match(model_name, BLACKBOX_LABELS)
    return None if name is None else BLACKBOX_LABELS[name]


def same_init_by_number(target: str, source: str) -> bool:
    """N18's convention: models with the same number in their label (K1, P1C; K2, P2C)
    share their initialisation.  ``False`` when either label has no number."""
    a, b = re.search(r"\d+", target), re.search(r"\d+", source)
    return a is not None and b is not None and a.group() == b.group()
