"""Render result tables in the papers' layout, our numbers beside the published ones.

Three layouts, each as Markdown or HTML (``fmt="markdown" | "html"``):

* :func:`render_whitebox` -- N18 tables 1, 2, 5, 6 and K17 tables 1-3, 5, 7: one row
  per model, a ``clean`` column, then columns grouped by attack, epsilon increasing.
  A model that reproduces a published row is followed by a row
  ``published: <paper label>`` with the paper's numbers.
* :func:`render_blackbox` -- N18 tables 4, 7-10 and K17 tables 4, 6: targets as rows,
  sources as columns, one group of columns per attack; cells where source and target
  share their initialisation carry a dagger (†).
* :func:`render_mean_std` -- N18 table 3: ``mean ± std`` over several trained networks.

Header conventions.  HTML gets the papers' two-row header: the first row names the
attack groups (``<th colspan="N">``), the second the epsilons (white-box) or the
source models (black-box).  Markdown tables have a single header row and no
column spans, so each column header carries its group: ``step_ll ε=16`` (white-box),
``iter_fgsm ε=16 from B2`` (black-box), ``clean`` for the clean column.

Numbers are printed with one decimal (the std of :func:`render_mean_std` with two,
as in N18 table 3); ``-`` marks a missing cell.  All text in HTML is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.stats import mean_std
from cascade_adv.results.published import (
    APPROXIMATE_NOTE,
    PaperTable,
    get_table,
    same_init_by_number,
)
from cascade_adv.results.tables import CLEAN, WHITEBOX, ResultTable

DAGGER = "†"
SAME_INIT_NOTE = f"{DAGGER} source and target share their initialisation (N18 appendix B)"
APPROX_MARK = "‡"
MISSING = "-"

Column = tuple[str, float]
Rows = ResultTable | Iterable[Mapping[str, Any]]


# --- helpers -----------------------------------------------------------------------------------


def _rows(table: Rows) -> list[Mapping[str, Any]]:
    return table.rows if isinstance(table, ResultTable) else list(table)


def _eps(eps: float) -> str:
    return f"{float(eps):g}"


def _num(v: float | None) -> str:
    return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _check_fmt(fmt: str) -> None:
    if fmt not in ("markdown", "html"):
        raise CascadeAdvError(f"unknown table format {fmt!r}; use 'markdown' or 'html'")


def layout_columns(table_rows: Rows) -> list[Column]:
    """The papers' column order: ``("clean", 0)`` first (if present), then the attacks
    in order of first appearance, each with its epsilons ascending."""
    has_clean = False
    attacks: dict[str, set[float]] = {}
    for r in _rows(table_rows):
        if r["attack"] == CLEAN:
            has_clean = True
        else:
            attacks.setdefault(r["attack"], set()).add(float(r["eps"]))
    cols: list[Column] = [(CLEAN, 0.0)] if has_clean else []
    for attack, eps_set in attacks.items():
        cols.extend((attack, e) for e in sorted(eps_set))
    return cols


def _groups(columns: Sequence[Column]) -> list[tuple[str, list[Column]]]:
    """Consecutive columns of the same attack, as (attack, columns)."""
    out: list[tuple[str, list[Column]]] = []
    for col in columns:
        if out and out[-1][0] == col[0]:
            out[-1][1].append(col)
        else:
            out.append((col[0], [col]))
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _render(*, fmt: str, title: str | None, corner: tuple[str, str],
            groups: Sequence[tuple[str, Sequence[str]]], md_labels: Sequence[str],
            body: Sequence[tuple[str, Sequence[str], str | None]],
            notes: Sequence[str] = ()) -> str:
    """A table with a two-row header (HTML) or combined header cells (Markdown).

    ``groups``: (group label, its sub-column labels); ``md_labels``: one Markdown header
    per column; ``body``: (row label, cell texts, CSS class or None).
    """
    if fmt == "markdown":
        lines = [f"**{title}**", ""] if title else []
        lines.append("| " + " | ".join(_md_cell(c) for c in [corner[0], *md_labels]) + " |")
        lines.append("| " + " | ".join(["---"] + ["---:"] * len(md_labels)) + " |")
        for label, cells, _cls in body:
            lines.append("| " + " | ".join(_md_cell(c) for c in [label, *cells]) + " |")
        if notes:
            lines.append("")
            lines.extend(notes)
        return "\n".join(lines) + "\n"

    e = html.escape
    out = ['<table class="paper">']
    if title:
        out.append(f"<caption>{e(title)}</caption>")
    out.append("<thead>")
    out.append("<tr><th>" + e(corner[0]) + "</th>" + "".join(
        f'<th colspan="{len(subs)}">{e(label)}</th>' for label, subs in groups) + "</tr>")
    out.append("<tr><th>" + e(corner[1]) + "</th>" + "".join(
        f"<th>{e(s)}</th>" for _, subs in groups for s in subs) + "</tr>")
    out.append("</thead>")
    out.append("<tbody>")
    for label, cells, cls in body:
        attr = f' class="{e(cls)}"' if cls else ""
        out.append(f"<tr{attr}><th>{e(label)}</th>"
                   + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody>")
    out.append("</table>")
    out.extend(f'<p class="note">{e(n)}</p>' for n in notes)
    return "\n".join(out) + "\n"


def _published_label(model: str, published: PaperTable, row_map: Mapping[str, str] | None,
                     labels: Sequence[str]) -> str | None:
    """The paper's label for our ``model`` among ``labels`` (``None``: no published row):
    ``row_map[model]``, or without ``row_map`` the model's own name if it is a label."""
    if row_map is not None:
        if model not in row_map:
            return None
        label = row_map[model]
        if label not in labels:
            raise CascadeAdvError(
                f"row_map maps {model!r} to {label!r}, which is not a label of "
                f"{published.id}; its labels are: {', '.join(labels)}"
            )
        return label
    return model if model in labels else None


def _approx_note(published: PaperTable, datasets: Iterable[str]) -> str | None:
    ours = sorted({d for d in datasets if d})
    if any(d != published.dataset for d in ours):
        where = f" (ours: {', '.join(ours)})"
        why = (APPROXIMATE_NOTE if published.dataset == "imagenet" and "cifar10" in ours
               else "other images: compare trends, not absolute numbers")
        return (f"{APPROX_MARK} {published.paper} table {published.number} reports "
                f"{published.dataset}{where}: {why}.")
    return None


def _default_title(published: PaperTable | None, title: str | None) -> str | None:
    if title is not None or published is None:
        return title
    return f"{published.paper} table {published.number}: {published.title}"


# --- white-box ---------------------------------------------------------------------------------


def render_whitebox(ours: Rows, *, metric: str = "top1", published: PaperTable | None = None,
                    row_map: Mapping[str, str] | None = None, fmt: str = "markdown",
                    title: str | None = None, published_metric: str | None = None,
                    include_paper_columns: bool = False) -> str:
    """Our white-box rows (``source == "whitebox"`` or clean) in the papers' layout.

    Rows are our models in order of first appearance.  With ``published``, a model
    that maps to one of its rows (``row_map``: our model name -> paper row label, e.g.
    from the ``paper`` rows the results store records for each model; default: a model
    named like a paper row) is followed by a row ``published: <label>``
    with the paper's numbers (``published_metric``, default ``metric``).  The columns
    are ours; a column we measured that the paper lacks shows ``-`` in the published
    row.  ``include_paper_columns`` adds the paper's other columns (``-`` in our rows).
    """
    _check_fmt(fmt)
    rows = [r for r in _rows(ours) if r["metric"] == metric
            and (r["attack"] == CLEAN or r["source"] == WHITEBOX)]
    columns = layout_columns(rows)
    if published is not None and include_paper_columns:
        extra = [{"attack": a, "eps": e} for a, e in published.columns]
        columns = layout_columns([{"attack": a, "eps": e} for a, e in columns] + extra)
    cells: dict[str, dict[Column, float]] = {}
    for r in rows:
        cells.setdefault(r["model"], {}).setdefault((r["attack"], float(r["eps"])), r["value"])

    pmetric = published_metric or metric
    notes: list[str] = []
    approx = None
    if published is not None:
        approx = _approx_note(published, (r["dataset"] for r in rows))
        if approx:
            notes.append(approx)
    body: list[tuple[str, list[str], str | None]] = []
    for model, values in cells.items():
        body.append((model, [_num(values.get(c)) for c in columns], None))
        if published is None:
            continue
        label = _published_label(model, published, row_map, published.row_order)
        if label is None:
            continue
        texts = [_num(published.value(label, a, e, metric=pmetric, source=WHITEBOX))
                 for a, e in columns]
        mark = f" {APPROX_MARK}" if approx else ""
        body.append((f"published: {label}{mark}", texts, "published"))

    groups = [(attack, [_eps(e) for _, e in cols]) for attack, cols in _groups(columns)]
    md_labels = [CLEAN if a == CLEAN else f"{a} ε={_eps(e)}" for a, e in columns]
    return _render(fmt=fmt, title=_default_title(published, title), corner=("model", "ε"),
                   groups=groups, md_labels=md_labels, body=body, notes=notes)


# --- black-box ---------------------------------------------------------------------------------


def _as_list(value: Any) -> list:
    if isinstance(value, (str, int, float)):
        return [value]
    return list(value)


def render_blackbox(ours: Rows, *, attack: str | Sequence[str], eps: float | Sequence[float],
                    metric: str = "top1", targets: Sequence[str] | None = None,
                    sources: Sequence[str] | None = None,
                    same_init: Callable[[str, str], bool] | None = None,
                    published: PaperTable | None = None,
                    row_map: Mapping[str, str] | None = None, fmt: str = "markdown",
                    title: str | None = None, published_metric: str | None = None) -> str:
    """A black-box matrix: targets (``model``) as rows, sources as columns, one group of
    columns per ``(attack, eps)`` (``attack`` and ``eps`` may be lists: N18 table 4
    puts step_FGSM, iter_ll and iter_FGSM side by side).

    ``targets`` / ``sources`` default to those of the rows, in order of appearance.
    Cells with ``same_init(target, source)`` true carry a dagger and a footnote.  With
    ``published``, each target that maps to a paper target (``row_map``, applied to
    sources too, e.g. to the N18 black-box labels ``B1``/``K2`` the store records;
    default: the name itself) is followed by its published row; a source without a paper
    counterpart shows ``-``.
    """
    _check_fmt(fmt)
    attacks = [str(a) for a in _as_list(attack)]
    eps_list = [float(e) for e in _as_list(eps)]
    col_groups = [(a, e) for a in attacks for e in eps_list]
    rows = [r for r in _rows(ours) if r["metric"] == metric and r["source"] != WHITEBOX
            and r["attack"] in attacks and float(r["eps"]) in eps_list]
    if targets is None:
        targets = list(dict.fromkeys(r["model"] for r in rows))
    if sources is None:
        sources = list(dict.fromkeys(r["source"] for r in rows))
    cells: dict[tuple[str, str, str, float], float] = {}
    for r in rows:
        cells.setdefault((r["model"], r["source"], r["attack"], float(r["eps"])), r["value"])

    pmetric = published_metric or metric
    src_labels: dict[str, str | None] = {}
    approx = None
    if published is not None:
        src_labels = {s: _published_label(s, published, row_map, published.sources)
                      for s in sources}
        approx = _approx_note(published, (r["dataset"] for r in rows))
    marked = False
    body: list[tuple[str, list[str], str | None]] = []
    for target in targets:
        texts = []
        for a, e in col_groups:
            for s in sources:
                text = _num(cells.get((target, s, a, e)))
                if same_init is not None and same_init(target, s):
                    text += DAGGER
                    marked = True
                texts.append(text)
        body.append((target, texts, None))
        if published is None:
            continue
        label = _published_label(target, published, row_map, published.row_order)
        if label is None:
            continue
        ptexts = []
        for a, e in col_groups:
            for s in sources:
                ps = src_labels.get(s)
                ptexts.append(MISSING if ps is None else
                              _num(published.value(label, a, e, metric=pmetric, source=ps)))
        mark = f" {APPROX_MARK}" if approx else ""
        body.append((f"published: {label}{mark}", ptexts, "published"))

    notes = [SAME_INIT_NOTE] if marked else []
    if approx:
        notes.append(approx)
    groups = [(f"{a} ε={_eps(e)}", list(sources)) for a, e in col_groups]
    md_labels = [f"{a} ε={_eps(e)} from {s}" for a, e in col_groups for s in sources]
    return _render(fmt=fmt, title=_default_title(published, title), corner=("target", "source"),
                   groups=groups, md_labels=md_labels, body=body, notes=notes)


# --- mean ± std --------------------------------------------------------------------------------

Cell = tuple[float, float, int]


def mean_std_cells(ours: Rows, groups: Mapping[str, str] | Callable[[str], str | None], *,
                   metric: str = "top1") -> dict[tuple[str, str, float], Cell]:
    """Mean, sample standard deviation (0 for one model) and count of our white-box
    ``metric`` values over the models of each group, per ``(attack, eps)``.

    ``groups`` maps a model name to its group label (a mapping, or a function returning
    ``None`` to leave a model out), e.g. the seed experiment each model is registered
    with.
    """
    group_of = groups if callable(groups) else groups.get
    values: dict[tuple[str, str, float], list[float]] = {}
    for r in _rows(ours):
        if r["metric"] != metric or (r["attack"] != CLEAN and r["source"] != WHITEBOX):
            continue
        g = group_of(r["model"])
        if g is not None:
            values.setdefault((g, r["attack"], float(r["eps"])), []).append(r["value"])
    return {k: mean_std(v) for k, v in values.items()}


def _mean_std_text(mean: float | None, std: float | None, std_decimals: int) -> str:
    if mean is None:
        return MISSING
    if std is None:
        return _num(mean)
    return f"{mean:.1f} ± {std:.{std_decimals}f}"


def render_mean_std(cells: Mapping[tuple[str, str, float], Cell], *,
                    row_order: Sequence[str] | None = None,
                    columns: Sequence[Column] | None = None,
                    published: PaperTable | None = None,
                    row_map: Mapping[str, str] | None = None, fmt: str = "markdown",
                    title: str | None = None, std_decimals: int = 2) -> str:
    """N18 table 3: ``mean ± std`` cells, one row per group.

    ``cells`` maps ``(group label, attack, eps)`` to ``(mean, std, n)`` (see
    :func:`mean_std_cells`; n <= 0: unknown, not shown).  When every cell of a group
    has the same ``n`` the row label says ``(n = N)``, otherwise each cell does.  With a ``mean_std``
    ``published`` table, each group mapping to one of its rows (``row_map``, default:
    the group label itself) is followed by the published ``mean ± std``.
    """
    _check_fmt(fmt)
    keyed = [{"model": g, "attack": a, "eps": float(e)} for g, a, e in cells]
    if columns is None:
        columns = layout_columns(keyed)
    columns = [(a, float(e)) for a, e in columns]
    if row_order is None:
        row_order = list(dict.fromkeys(k["model"] for k in keyed))
    lookup = {(g, a, float(e)): v for (g, a, e), v in cells.items()}
    if published is not None and len(published.metrics) < 2:
        raise CascadeAdvError(f"{published.id} is not a mean ± std table")

    body: list[tuple[str, list[str], str | None]] = []
    for group in row_order:
        got = [lookup.get((group, a, e)) for a, e in columns]
        ns = {c[2] for c in got if c is not None and c[2] > 0}
        per_cell_n = len(ns) > 1
        texts = []
        for c in got:
            if c is None:
                texts.append(MISSING)
            else:
                text = _mean_std_text(c[0], c[1], std_decimals)
                texts.append(f"{text} (n = {c[2]})" if per_cell_n and c[2] > 0 else text)
        label = f"{group} (n = {ns.pop()})" if len(ns) == 1 else group
        body.append((label, texts, None))
        if published is None:
            continue
        plabel = _published_label(group, published, row_map, published.row_order)
        if plabel is None:
            continue
        mean_m, std_m = published.metrics[0], published.metrics[1]
        ptexts = [_mean_std_text(published.value(plabel, a, e, metric=mean_m),
                                 published.value(plabel, a, e, metric=std_m), std_decimals)
                  for a, e in columns]
        body.append((f"published: {plabel}", ptexts, "published"))

    groups = [(attack, [_eps(e) for _, e in cols]) for attack, cols in _groups(columns)]
    md_labels = [CLEAN if a == CLEAN else f"{a} ε={_eps(e)}" for a, e in columns]
    return _render(fmt=fmt, title=_default_title(published, title), corner=("model", "ε"),
                   groups=groups, md_labels=md_labels, body=body)


# --- a published table alone -------------------------------------------------------------------


def render_paper_table(table: PaperTable | str, *, metric: str | None = None,
                       fmt: str = "markdown", title: str | None = None) -> str:
    """A published table by itself, in the papers' layout (``metric`` defaults to its
    first one; N18 black-box tables mark same-initialisation cells)."""
    t = get_table(table) if isinstance(table, str) else table
    metric = t.metrics[0] if metric is None else metric
    if metric not in t.metrics:
        raise CascadeAdvError(f"{t.id} has no metric {metric!r}; it has: {', '.join(t.metrics)}")
    if title is None:
        which = "" if t.kind == "mean_std" or len(t.metrics) == 1 else f" ({metric})"
        title = f"{t.paper} table {t.number}: {t.title}{which}"
    if t.kind in ("blackbox", "transfer"):
        ours = ResultTable(t.rows)
        attacks = list(dict.fromkeys(a for a, _ in t.columns))
        eps = sorted({e for _, e in t.columns})
        same = same_init_by_number if t.paper == "N18" else None
        return render_blackbox(ours, attack=attacks, eps=eps, metric=metric,
                               targets=t.row_order, sources=t.sources, same_init=same,
                               fmt=fmt, title=title)
    if t.kind == "mean_std":
        mean_m, std_m = t.metrics[0], t.metrics[1]
        cells = {}
        for row in t.row_order:
            for a, e in t.columns:
                m, s = t.value(row, a, e, metric=mean_m), t.value(row, a, e, metric=std_m)
                if m is not None:
                    cells[(row, a, e)] = (m, s, 0)
        return render_mean_std(cells, row_order=t.row_order, columns=t.columns, fmt=fmt,
                               title=title)
    return render_whitebox(ResultTable(t.rows), metric=metric, fmt=fmt, title=title,
                           include_paper_columns=False)
