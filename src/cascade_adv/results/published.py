"""The published numbers of the papers' tables, as result rows.

The numbers live in ``published/TABLE.yaml`` beside this module, one file per table
and one line per paper row: ``columns`` are ``"ATTACK EPS"``, ``sources`` the source
labels of black-box / transfer tables, and ``values[metric][row]`` one value per cell
of the grid (source after source, each source's cells in column order), ``null`` where
the paper prints none.
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
from importlib import resources
from typing import Any

from cascade_adv.errors import CascadeAdvError, InvalidArgument
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
    ``published`` is False for the layout of a recipe beyond the papers (:func:`layout`):
    rows of our own in a published table's grid, with no numbers at all.
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
    published: bool = True

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


# --- the data files ------------------------------------------------------------------------

#: Tables with cells the paper leaves empty (any other empty cell is a transcription
#: error and stops the import).
_HOLES_ALLOWED = frozenset({"n18-table10", "k17-table3", "k17-table5"})


def _column(text: str) -> Column:
    attack, eps = text.rsplit(" ", 1)
    return attack, float(eps)


def _load(entry: Mapping[str, Any]) -> PaperTable:
    """One table file: its values, in grid order, as result rows."""
    columns = tuple(_column(c) for c in entry["columns"])
    sources = tuple(entry.get("sources", ()))
    metrics = tuple(entry["metrics"])
    row_order = tuple(entry["values"][metrics[0]])
    t = PaperTable(id=entry["id"], paper=entry["paper"], number=entry["number"],
                   title=entry["title"], kind=entry["kind"], dataset=entry["dataset"],
                   rows=(), row_order=row_order, columns=columns,
                   notes=entry.get("notes", ""), sources=sources, metrics=metrics)
    split = _SPLIT[t.dataset]
    rows, holes = [], []
    for metric in metrics:
        for label in row_order:
            values = entry["values"][metric][label]
            grid = [(s, a, e) for s in (sources or (WHITEBOX,)) for a, e in columns]
            if len(values) != len(grid):
                raise AssertionError(f"{t.id} {label} {metric}: {len(values)} values for "
                                     f"{len(grid)} cells")
            for (source, attack, eps), v in zip(grid, values):
                if v is None:
                    holes.append((label, source, attack, eps, metric))
                    continue
                rows.append({"model": label, "model_hash": "", "dataset": t.dataset,
                             "split": split, "attack": attack, "eps": eps, "source": source,
                             "metric": metric, "value": float(v), "n": 0})
    if holes and t.id not in _HOLES_ALLOWED:
        raise AssertionError(f"{t.id}: cells missing from the transcription: {holes[:3]}")
    return replace(t, rows=tuple(rows), holes=tuple(holes))


def _load_all() -> list[PaperTable]:
    import yaml

    folder = resources.files("cascade_adv.results").joinpath("published")
    tables = [_load(yaml.safe_load(f.read_text("utf-8"))) for f in folder.iterdir()
              if f.name.endswith(".yaml")]
    return sorted(tables, key=lambda t: (t.paper != "N18", t.number))


#: Every transcribed table, by id (``"n18-table1"`` ... ``"n18-table10"``,
#: ``"k17-table1"`` ... ``"k17-table7"``), read from ``published/TABLE.yaml``.
PUBLISHED: dict[str, PaperTable] = {t.id: t for t in _load_all()}


def get_table(table_id: str) -> PaperTable:
    """The published table ``table_id`` (e.g. ``"n18-table1"``)."""
    try:
        return PUBLISHED[table_id]
    except KeyError:
        raise CascadeAdvError(
            f"no published table {table_id!r}; the tables are: {', '.join(PUBLISHED)}"
        ) from None


def layout(base: str, table_id: str, title: str, rows: Sequence[str],
           notes: str = "") -> PaperTable:
    """The table of a recipe beyond the papers: the grid of published table ``base``
    (kind, dataset, columns, metrics) with the row labels ``rows`` of our own and no
    numbers (``published`` False: a report shows ours alone, with no paper column).  It
    is not one of :data:`PUBLISHED`, and no config's ``paper`` key can name it."""
    t = get_table(base)
    if table_id in PUBLISHED:
        raise InvalidArgument(f"layout {table_id!r} would hide the published table of that id")
    if not rows or len(set(rows)) != len(rows):
        raise InvalidArgument(f"layout {table_id!r} needs distinct row labels, got {rows!r}")
    return replace(t, id=table_id, paper="beyond", number=0, title=title, rows=(),
                   row_order=tuple(rows), notes=notes, holes=(), published=False)


# --- the paper rows a config names ------------------------------------------------------------


def split_paper_entry(entry: str) -> tuple[str, str] | None:
    """``"TABLE: LABEL"`` (an entry of a training config's ``paper`` key) as
    ``(table id, row label)``; ``None`` without the colon."""
    table, sep, label = (x.strip() for x in entry.partition(":"))
    return (table, label) if sep else None


def paper_row(entries: Iterable[str], table_id: str) -> str | None:
    """The label of ``table_id``'s row among ``"TABLE: LABEL"`` entries, if one names it."""
    for entry in entries:
        parts = split_paper_entry(entry)
        if parts is not None and parts[0] == table_id:
            return parts[1]
    return None


def whitebox_rows(entries: Iterable[str]) -> list[tuple[str, str]]:
    """The ``(table id, row label)`` entries of ``entries`` (a config's ``paper`` key, as
    the results store records it) in white-box tables."""
    parts = (split_paper_entry(entry) for entry in entries)
    return [p for p in parts if p is not None and p[0] in PUBLISHED
            and PUBLISHED[p[0]].kind == "whitebox"]


def blackbox_label(entries: Iterable[str]) -> str | None:
    """The label the black-box tables give the network (``B1``, ``K2``, ``P1C``, ...):
    its first entry in a table with sources."""
    for entry in entries:
        parts = split_paper_entry(entry)
        if parts is not None and parts[0] in PUBLISHED and PUBLISHED[parts[0]].sources:
            return parts[1]
    return None


#: Why K17's ImageNet tables are only approximated by our CIFAR-10 runs.
APPROXIMATE_NOTE = ("CIFAR-10 re-creation of an ImageNet (Inception v3) table: compare trends, "
                    "not absolute numbers")


def same_init_by_number(target: str, source: str) -> bool:
    """N18's convention: models with the same number in their label (K1, P1C; K2, P2C)
    share their initialisation.  ``False`` when either label has no number."""
    a, b = re.search(r"\d+", target), re.search(r"\d+", source)
    return a is not None and b is not None and a.group() == b.group()
