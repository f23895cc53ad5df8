"""Our numbers beside the paper's: every cell, the difference, the paper's claims.

:func:`compare` lines up our result rows with a published table (which of our models
reproduces which paper row is given by ``row_of``); :func:`check_claims` evaluates
qualitative statements of the paper (:class:`Claim`) on both; :func:`render_comparison`
and :func:`plot_ours_vs_paper` draw them for the reproduction report.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cascade_adv.reporting.figures import save_png
from cascade_adv.results.published import CLEAN, WHITEBOX, PaperTable
from cascade_adv.results.tables import ResultTable

#: Default tolerance, in percentage points, beyond which a cell is marked.
TOLERANCE = 1.5
#: How a model trained with another seed of its chain is named: ``NAME-seedJ`` (J >= 1;
#: seed 0, the config's own, keeps the plain name).
_SEED_TAG = re.compile(r"-seed(\d+)$")


def seed_tag(index: int) -> str:
    """The suffix of the models of seed ``index`` of a chain (``""`` for seed 0)."""
    return f"-seed{index}" if index else ""


def without_seed(name: str) -> str:
    """``name`` without its seed suffix: the model whose seeds are averaged."""
    return _SEED_TAG.sub("", name)


@dataclass(frozen=True)
class Cell:
    row: str          # paper row label (target, for black-box tables)
    source: str
    attack: str
    eps: float
    metric: str
    paper: float | None
    ours: float | None
    model: str = ""   # our model's name (without its seed suffix)
    n: int = 0        # our test images
    primary: bool = True  # the first of our models that maps to ``row``
    std: float | None = None  # sample std of ``ours`` over seeds (two or more)
    seeds: int = 1    # how many seeds ``ours`` is the mean of

    @property
    def diff(self) -> float | None:
        return None if self.paper is None or self.ours is None else self.ours - self.paper

    def off(self, tolerance: float) -> bool:
        """Further from the paper than ``tolerance`` points and than twice our spread
        over seeds: ``|ours - paper| > max(tolerance, 2 std)``."""
        return self.diff is not None and abs(self.diff) > max(tolerance, 2 * (self.std or 0))


@dataclass(frozen=True)
class Claim:
    """A statement of the paper that a table supports: the mean of the ``higher`` cells
    exceeds the mean of the ``lower`` cells. Each side filters the table's cells by
    ``row`` (paper label), ``source``, ``attack``, ``eps`` and ``metric`` (a value or a
    tuple of values; the table's first metric when ``metric`` is not given)."""

    text: str
    higher: Mapping[str, Any]
    lower: Mapping[str, Any]


def _labels(found: str | Sequence[str] | None) -> list[str]:
    return [] if found is None else [found] if isinstance(found, str) else list(found)


def compare(ours: ResultTable | Iterable[Mapping[str, Any]], published: PaperTable,
            row_of: Callable[[str], str | Sequence[str] | None]) -> list[Cell]:
    """Every cell of ``published``'s grid with our value where one of our models maps to
    its row (``row_of(model name)`` -> paper label, or several labels for a model that
    stands for several rows; for black-box tables both the target and the source are
    mapped).

    A row that several of our models map to (e.g. the paper's and the released pivot)
    gets one set of cells per model, the first model's marked ``primary``. The seeds
    of one model (``NAME-seedJ``, :func:`seed_tag`) are one model: its cell holds their
    mean, ``std`` their sample std. mean_std tables compare ``top1_mean`` / ``top1_std``
    with the mean and sample std of all the models of a row.
    """
    from cascade_adv.evaluation.stats import mean_std

    models: dict[str, list[str]] = {}
    found: dict[tuple, list[tuple[float, int]]] = {}
    for r in ours:
        source = r["source"]
        if published.sources:
            source = next(iter(_labels(row_of(source))), None) if source != WHITEBOX else None
            if source is None:
                continue
        for label in _labels(row_of(r["model"])):
            group = "*" if published.kind == "mean_std" else without_seed(r["model"])
            models.setdefault(label, [])
            if group not in models[label]:
                models[label].append(group)
            key = (label, group, source, r["attack"], float(r["eps"]), r["metric"])
            found.setdefault(key, []).append((float(r["value"]), int(r["n"])))
    cells = []
    for row, source, attack, eps, metric in published.grid():
        paper = published.value(row, attack, eps, metric, source if published.sources else None)
        for i, group in enumerate(models.get(row, [""])):
            base = metric.rsplit("_", 1)[0] if published.kind == "mean_std" else metric
            hits = found.get((row, group, source, attack, eps, base), [])
            value = spread = None
            if hits:
                mean, std, _ = mean_std([h[0] for h in hits])
                spread = std if len(hits) > 1 else None
                value = spread if metric.endswith("_std") else mean
            cells.append(Cell(row, source, attack, eps, metric, paper, value,
                              "" if group == "*" else group, hits[-1][1] if hits else 0,
                              primary=i == 0,
                              std=None if published.kind == "mean_std" else spread,
                              seeds=len(hits) if published.kind != "mean_std" else 1))
    return cells


def _pick(cells: Sequence[Cell], spec: Mapping[str, Any], metric: str) -> list[Cell]:
    def ok(c: Cell, key: str, value: Any) -> bool:
        want = value if isinstance(value, (tuple, list)) else (value,)
        return getattr(c, key) in want

    spec = {"metric": metric, **spec}
    return [c for c in cells if c.primary and all(ok(c, k, v) for k, v in spec.items())]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _side(cells: Sequence[Cell], who: str) -> tuple[float | None, float | None]:
    """Mean of the cells' values and its standard error (binomial per cell, from our
    image counts ``n``; ``None`` for the paper's cells, whose counts we do not have)."""
    values = [(getattr(c, who), c.n) for c in cells if getattr(c, who) is not None]
    if not values:
        return None, None
    mean = sum(v for v, _ in values) / len(values)
    if who != "ours" or any(n <= 0 for _, n in values):
        return mean, None
    var = sum((v / 100) * (1 - v / 100) / n for v, n in values) * 100 ** 2
    return mean, math.sqrt(var) / len(values)


def _holds(cells: Sequence[Cell], claim: Claim, metric: str, who: str
           ) -> tuple[bool | None, tuple[float | None, float | None], bool | None]:
    """(holds, (mean higher, mean lower), difference beyond 2 standard errors)."""
    hi, lo = _pick(cells, claim.higher, metric), _pick(cells, claim.lower, metric)
    (a, se_a), (b, se_b) = _side(hi, who), _side(lo, who)
    complete = all(getattr(c, who) is not None for c in [*hi, *lo])
    holds = None if a is None or b is None or not complete else a > b
    clear = (None if holds is None or se_a is None or se_b is None
             else abs(a - b) > 2 * math.hypot(se_a, se_b))
    return holds, (a, b), clear


def _with_model(cells: Sequence[Cell], row: str, model: str) -> list[Cell]:
    """The cells with ``model`` as the one model of ``row``."""
    return [replace(c, primary=True) if c.row == row else c for c in cells
            if c.row != row or c.model == model]


def check_claims(cells: Sequence[Cell], claims: Sequence[Claim], metric: str
                 ) -> list[dict[str, Any]]:
    """For each claim: whether it holds in the paper and on our numbers (``None`` where
    cells are missing), the two means of each side and, for ours, whether the
    difference exceeds twice its standard error (``ours_clear``; cells treated as
    independent binomial estimates). Claims use the first of our models of each row;
    ``alternatives`` gives the verdict with each other model of a row (e.g. the
    released code's pivot beside the paper's)."""
    out = []
    extra = {}
    for c in cells:
        if not c.primary:
            extra.setdefault(c.row, [])
            if c.model not in extra[c.row]:
                extra[c.row].append(c.model)
    for claim in claims:
        res: dict[str, Any] = {"claim": claim.text}
        res["paper"], res["paper_means"], _ = _holds(cells, claim, metric, "paper")
        res["ours"], res["ours_means"], res["ours_clear"] = _holds(cells, claim, metric, "ours")
        named = {r for side in (claim.higher, claim.lower) if "row" in side
                 for r in (side["row"] if isinstance(side["row"], (tuple, list))
                           else (side["row"],))}
        res["alternatives"] = [
            {"model": m, **dict(zip(("ours", "ours_means", "ours_clear"),
                                    _holds(_with_model(cells, row, m), claim, metric, "ours")))}
            for row, models in extra.items() if not named or row in named for m in models]
        out.append(res)
    return out


def _fmt(v: float | None) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.1f}"


def _eps(e: float) -> str:
    return f"{e:g}"


def render_comparison(cells: Sequence[Cell], published: PaperTable, *,
                      tolerance: float = TOLERANCE) -> tuple[str, str]:
    """(HTML, Markdown): one line per paper row (and metric; per source for black-box
    tables), each cell ``ours (paper, diff)``; cells further than ``tolerance`` points
    from the paper are marked (class ``off`` in HTML, bold in Markdown)."""
    cols = [(s, a, e) for s in (published.sources or (WHITEBOX,)) for a, e in published.columns]
    head = [f"{a} {_eps(e)}" if a != CLEAN else "clean" for _, a, e in cols]
    if published.sources:
        head = [f"{s}: {h}" for (s, _, _), h in zip(cols, head)]
    by = {(c.row, c.model, c.source, c.attack, c.eps, c.metric): c for c in cells}
    md = ["| row | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    h = ["<table class=\"compare\"><tr><th>row</th>"
         + "".join(f"<th>{html.escape(x)}</th>" for x in head) + "</tr>"]
    lines = list(dict.fromkeys((c.row, c.model) for c in cells))
    for metric in published.metrics:
        for row, model in sorted(lines, key=lambda rm: published.row_order.index(rm[0])):
            label = row if len(published.metrics) == 1 else f"{row} ({metric})"
            if model and sum(r == row for r, _ in lines) > 1:
                label += f" [{model}]"
            md_cells, h_cells = [], []
            for s, a, e in cols:
                c = by.get((row, model, s, a, e, metric))
                if c is None or (c.paper is None and c.ours is None):
                    md_cells.append("-")
                    h_cells.append("<td>-</td>")
                    continue
                d = c.diff
                ours = _fmt(c.ours) or "n/a"
                if c.std is not None:
                    ours += f" ± {c.std:.1f}"
                text = (f"{ours} ({_fmt(c.paper) or '-'}"
                        + (f", {d:+.1f})" if d is not None else ")"))
                off = c.off(tolerance)
                md_cells.append(f"**{text}**" if off else text)
                cls = " class=\"off\"" if off else (" class=\"ok\"" if d is not None else "")
                h_cells.append(f"<td{cls}>{html.escape(text)}</td>")
            md.append(f"| {label} | " + " | ".join(md_cells) + " |")
            h.append(f"<tr><th>{html.escape(label)}</th>" + "".join(h_cells) + "</tr>")
    h.append("</table>")
    return "\n".join(h), "\n".join(md)


def summary(cells: Sequence[Cell], tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Counts: cells compared, of those further than ``tolerance`` from the paper,
    paper cells without our number in the rows we ran (``missing``), and paper rows we
    did not run at all (``rows_not_run``, e.g. left out with ``--only``)."""
    both = [c for c in cells if c.diff is not None]
    off = [c for c in both if c.off(tolerance)]
    ran = {c.row for c in cells if c.ours is not None}
    return {"cells": len(cells), "compared": len(both), "off": len(off),
            "missing": sum(c.ours is None and c.paper is not None and c.row in ran
                           for c in cells),
            "rows_not_run": len({c.row for c in cells} - ran),
            "max_abs_diff": max((abs(c.diff) for c in both), default=None)}


def render_claims(results: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    def word(v: bool | None) -> str:
        return "n/a" if v is None else ("holds" if v else "does not hold")

    def verdict(r: Mapping[str, Any]) -> str:
        a, b = r["ours_means"]
        text = word(r["ours"])
        if a is not None and b is not None:
            text += f" ({a:.1f} vs {b:.1f}" + (
                "; within 2 standard errors)" if r.get("ours_clear") is False else ")")
        return text

    md = ["| claim | paper | ours |", "|---|---|---|"]
    h = ["<table class=\"claims\"><tr><th>claim</th><th>paper</th><th>ours</th></tr>"]
    for r in results:
        ours = verdict(r) + "".join(f"; with {alt['model']}: {verdict(alt)}"
                                    for alt in r.get("alternatives", ()))
        md.append(f"| {r['claim']} | {word(r['paper'])} | {ours} |")
        cls = "ok" if r["ours"] else ("off" if r["ours"] is False else "")
        h.append(f"<tr><td>{html.escape(r['claim'])}</td><td>{word(r['paper'])}</td>"
                 f"<td class=\"{cls}\">{html.escape(ours)}</td></tr>")
    h.append("</table>")
    return "\n".join(h), "\n".join(md)


def plot_ours_vs_paper(cells: Sequence[Cell], path: str | os.PathLike, *,
                       title: str = "") -> Path | None:
    """Accuracy vs eps, one panel per attack, one colour per model (a paper row with
    two of our models gets two colours): ours solid, the paper's dashed for the rows
    we ran (the eps 0 point is the clean accuracy). ``None`` when the cells
    have no white-box attack columns."""
    from matplotlib.figure import Figure

    white = [c for c in cells if c.source == WHITEBOX and c.metric in ("top1", "top1_mean")]
    attacks = [a for a in dict.fromkeys(c.attack for c in white) if a != CLEAN]
    if not attacks:
        return None
    lines = list(dict.fromkeys((c.row, c.model) for c in white))
    fig = Figure(figsize=(3.2 * len(attacks) + 3.0, 3.4), layout="constrained")
    axes = fig.subplots(1, len(attacks), sharey=True, squeeze=False)[0]
    for ax, attack in zip(axes, attacks):
        for i, (row, model) in enumerate(lines):
            mine = [c for c in white if c.row == row and c.model == model]
            clean = next((c for c in mine if c.attack == CLEAN), None)
            pts = sorted((c for c in mine if c.attack == attack), key=lambda c: c.eps)
            many = sum(r == row for r, _ in lines) > 1
            for who, style in (("ours", "-"), ("paper", "--")):
                if who == "paper" and (not mine[0].primary
                                       or all(c.ours is None for c in mine)):
                    continue  # the paper's line once per row, for rows we ran
                xy = [(c.eps, getattr(c, who)) for c in ([clean] if clean else []) + pts
                      if getattr(c, who) is not None]
                name = f"{row} [{model}]" if many and who == "ours" else row
                if xy:
                    ax.plot(*zip(*xy), style, marker="o", markersize=3, color=f"C{i % 10}",
                            label=f"{name} ({who})")
        ax.set_title(attack, fontsize=9)
        ax.set_xlabel("ε (pixels of 255)", fontsize=8)
        ax.set_ylim(-2, 102)
    axes[0].set_ylabel("top-1 accuracy (%)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    if title:
        fig.suptitle(f"{title}: ours solid, paper dashed", fontsize=9)
    return save_png(fig, path, dpi=110)
