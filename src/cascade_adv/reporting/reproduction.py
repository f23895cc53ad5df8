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
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from cascade_adv.evaluation.stats import SeedComparison
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


def seed_index(name: str) -> int:
    """The seed index of a chain's model from its name (0: no seed suffix)."""
    m = _SEED_TAG.search(name)
    return int(m.group(1)) if m else 0


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
    #: ``(seed index, value)`` of each seed ``ours`` averages (the claims' seed test)
    by_seed: tuple[tuple[int, float], ...] = ()

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
    #: an attack (e.g. ``iter_fgsm``): the claim compares each model's masking gap, its
    #: accuracy under that attack minus the audit's worst case at the same eps
    #: (:func:`gap_cells`), and is judged under the audit only
    #: (:func:`check_claims_under_audit`); the sides then filter by ``row``, ``eps``...
    gap: str = ""


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
    found: dict[tuple, list[tuple[float, int, int]]] = {}
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
            found.setdefault(key, []).append((float(r["value"]), int(r["n"]),
                                              seed_index(r["model"])))
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
                              seeds=len(hits) if published.kind != "mean_std" else 1,
                              by_seed=tuple(sorted((h[2], h[0]) for h in hits))
                              if published.kind != "mean_std"
                              else tuple(enumerate(h[0] for h in hits))))
    return cells


def _pick(cells: Sequence[Cell], spec: Mapping[str, Any], metric: str) -> list[Cell]:
    def ok(c: Cell, key: str, value: Any) -> bool:
        want = value if isinstance(value, (tuple, list)) else (value,)
        return getattr(c, key) in want

    spec = {"metric": metric, **spec}
    return [c for c in cells if c.primary and all(ok(c, k, v) for k, v in spec.items())]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _side(cells: Sequence[Cell], who: str) -> float | None:
    """Mean of the cells' values (``who``: ``"paper"`` or ``"ours"``)."""
    values = [getattr(c, who) for c in cells if getattr(c, who) is not None]
    return sum(values) / len(values) if values else None


def _per_seed(cells: Sequence[Cell]) -> list[float]:
    """A claim side's value per seed: the mean of its cells for each seed that all of
    them have (a cell without per-seed values counts as one seed, its value)."""
    runs = [dict(c.by_seed) if c.by_seed else {0: c.ours} for c in cells]
    common = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
    return [sum(r[s] for r in runs) / len(runs) for s in common]


def _holds(cells: Sequence[Cell], claim: Claim, metric: str, who: str
           ) -> tuple[bool | None, tuple[float | None, float | None], Any]:
    """(higher mean above lower, (mean higher, mean lower), the seed test of ours:
    :func:`~cascade_adv.evaluation.stats.compare_seeds` as a mapping (JSON, for
    ``comparison.json``); ``None`` for the paper's side or where cells are missing)."""
    from cascade_adv.evaluation.stats import compare_seeds

    hi, lo = _pick(cells, claim.higher, metric), _pick(cells, claim.lower, metric)
    a, b = _side(hi, who), _side(lo, who)
    complete = all(getattr(c, who) is not None for c in [*hi, *lo])
    holds = None if a is None or b is None or not complete else a > b
    test = None
    if who == "ours" and holds is not None:
        seeds_hi, seeds_lo = _per_seed(hi), _per_seed(lo)
        test = asdict(compare_seeds(seeds_hi, seeds_lo)) if seeds_hi and seeds_lo else None
    return holds, (a, b), test


def _with_model(cells: Sequence[Cell], row: str, model: str) -> list[Cell]:
    """The cells with ``model`` as the one model of ``row``."""
    return [replace(c, primary=True) if c.row == row else c for c in cells
            if c.row != row or c.model == model]


def check_claims(cells: Sequence[Cell], claims: Sequence[Claim], metric: str
                 ) -> list[dict[str, Any]]:
    """For each claim: whether it holds in the paper and on our numbers (``None`` where
    cells are missing), the two means of each side and, for ours, the three-way test on
    the seed means (``ours_test``, the fields of a
    :class:`~cascade_adv.evaluation.stats.SeedComparison`: holds, fails or undecided). Claims use the first of our models of each row;
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
        res["paper"], res["paper_means"], *_ = _holds(cells, claim, metric, "paper")
        res["ours"], res["ours_means"], res["ours_test"] = _holds(cells, claim, metric, "ours")
        named = {r for side in (claim.higher, claim.lower) if "row" in side
                 for r in (side["row"] if isinstance(side["row"], (tuple, list))
                           else (side["row"],))}
        res["alternatives"] = [
            {"model": m, **dict(zip(("ours", "ours_means", "ours_test"),
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
    from the paper are marked (class ``off`` in HTML, bold in Markdown). A table of a
    recipe beyond the papers (``published.published`` False) has ours alone in its cells,
    unmarked: no paper number, no difference."""
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
                if not published.published:
                    md_cells.append(ours)
                    h_cells.append(f"<td>{html.escape(ours)}</td>")
                    continue
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


def summary_ours(cells: Sequence[Cell]) -> dict[str, Any]:
    """Counts for a table with no published numbers: its cells, those with our number
    (``measured``), those without in the rows we ran (``missing``) and the rows we did
    not run at all (``rows_not_run``, e.g. left out with ``--only``)."""
    ran = {c.row for c in cells if c.ours is not None}
    return {"cells": len(cells), "measured": sum(c.ours is not None for c in cells),
            "missing": sum(c.ours is None and c.row in ran for c in cells),
            "rows_not_run": len({c.row for c in cells} - ran)}


def _word(v: bool | None, no: str = "does not hold") -> str:
    return "n/a" if v is None else ("holds" if v else no)


def claim_verdict(r: Mapping[str, Any]) -> str:
    """A :func:`check_claims` result on ours as words, one of three verdicts judged on
    the seed means (:func:`~cascade_adv.evaluation.stats.compare_seeds`): ``holds``,
    ``fails`` or ``undecided`` (the 95 % interval of the difference holds 0, or a side
    has one seed: ``undecided (one seed; a vs b)``), then the verdict with each other
    model of a row; ``n/a`` where cells are missing; :data:`NOT_TESTABLE` for a claim
    the audit cannot judge (:func:`check_claims_under_audit`)."""
    if not r.get("testable", True):
        return NOT_TESTABLE
    test = r.get("ours_test")
    text = "n/a" if test is None else str(SeedComparison(**test))
    return text + "".join(f"; with {alt['model']}: {claim_verdict(alt)}"
                          for alt in r.get("alternatives", ()))


def verdict_class(r: Mapping[str, Any]) -> str:
    """The HTML class of a claim's verdict on ours: ``ok`` (holds), ``off`` (fails) or
    none (undecided, not testable, missing)."""
    test = (r.get("ours_test") if r.get("testable", True) else None) or {}
    return {"holds": "ok", "fails": "off"}.get(test.get("verdict", ""), "")


def render_claims(results: Sequence[Mapping[str, Any]], *, paper: bool = True
                  ) -> tuple[str, str]:
    """(HTML, Markdown): each claim with its verdict in the paper and on ours; with
    ``paper`` False (a recipe beyond the papers) no paper column."""
    head = ["claim", *(["paper"] if paper else []), "ours"]
    md = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    h = ['<table class="claims"><tr>' + "".join(f"<th>{x}</th>" for x in head) + "</tr>"]
    for r in results:
        ours = claim_verdict(r)
        said = [_word(r["paper"])] if paper else []
        md.append("| " + " | ".join([r["claim"], *said, ours]) + " |")
        cls = verdict_class(r)
        h.append(f"<tr><td>{html.escape(r['claim'])}</td>"
                 + "".join(f"<td>{x}</td>" for x in said)
                 + f"<td class=\"{cls}\">{html.escape(ours)}</td></tr>")
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
        drawn = ("ours solid, paper dashed" if any(c.paper is not None for c in white)
                 else "ours (no published numbers)")
        fig.suptitle(f"{title}: {drawn}", fontsize=9)
    return save_png(fig, path, dpi=110)


# --- under the audit (reproduce --audit) ---------------------------------------------------

#: Why a claim is not judged under the audit.
NOT_TESTABLE = "not testable under the audit (it contrasts attacks the audit merges)"


@dataclass(frozen=True)
class AuditLine:
    """One of our models of a paper row at one audit eps: the paper's lowest accuracy
    over the table's attacks at that eps (``paper``, by ``paper_attack``; ``None``
    where the paper has no column at that eps), ours under the same attacks (``ours``,
    by ``ours_attack``) and the audit's worst case (``audit``); seed means, with the
    sample std over ``seeds`` seeds."""

    row: str
    model: str
    eps: float
    paper: float | None
    paper_attack: str
    ours: float | None
    ours_attack: str
    audit: float | None
    audit_std: float | None = None
    seeds: int = 1
    n: int = 0

    @property
    def gap(self) -> float | None:
        """``ours - audit``: how much the paper's attacks overstate robustness."""
        return None if self.ours is None or self.audit is None else self.ours - self.audit


def _attacks(published: PaperTable) -> list[str]:
    return [a for a in dict.fromkeys(a for a, _ in published.columns) if a != CLEAN]


def audit_table(published: PaperTable, audit_attack: str, eps: Sequence[float]) -> PaperTable:
    """``published`` (its first metric) widened for :func:`compare` to give the cells the
    audit section needs: the audit's worst case (attack ``audit_attack``, e.g.
    ``audit:standard``) at every ``eps``, and the table's attacks at the ``eps`` it has
    no column for (the paper's value there is ``None``)."""
    cols = list(published.columns)
    cols += [(a, float(e)) for e in eps for a in _attacks(published)
             if (a, float(e)) not in cols]
    cols += [(audit_attack, float(e)) for e in eps]
    return replace(published, columns=tuple(cols), metrics=published.metrics[:1])


def _lowest(cells: Iterable[Cell | None], who: str) -> tuple[float | None, str]:
    """The lowest value of ``who`` (paper / ours) and its attack; a tie goes to the
    attack that comes first in the table."""
    found = [(getattr(c, who), c.attack) for c in cells
             if c is not None and getattr(c, who) is not None]
    return min(found, key=lambda va: va[0], default=(None, ""))


def audit_lines(cells: Sequence[Cell], published: PaperTable, audit_attack: str,
                eps: Sequence[float]) -> list[AuditLine]:
    """Per paper row and model we ran (in the paper's row order) and per audit ``eps``,
    the :class:`AuditLine` from ``cells``, :func:`compare` on :func:`audit_table`."""
    metric = published.metrics[0]
    by = {(c.row, c.model, c.attack, c.eps): c for c in cells if c.metric == metric}
    out = []
    for row, model in dict.fromkeys((c.row, c.model) for c in cells if c.metric == metric):
        for e in map(float, eps):
            attacked = [by.get((row, model, a, e)) for a in _attacks(published)]
            audit = by.get((row, model, audit_attack, e))
            if audit is None or (audit.ours is None and all(
                    c is None or c.ours is None for c in attacked)):
                continue   # a row we did not run
            (paper, paper_by), (ours, ours_by) = (_lowest(attacked, "paper"),
                                                  _lowest(attacked, "ours"))
            out.append(AuditLine(row, model, e, paper, paper_by, ours, ours_by, audit.ours,
                                 audit.std, audit.seeds, audit.n))
    return sorted(out, key=lambda ln: published.row_order.index(ln.row))


def _named(value: float | None, attack: str, absent: str) -> str:
    return absent if value is None else f"{_fmt(value)} ({attack})"


def _line_labels(lines: Sequence[AuditLine]) -> list[str]:
    """Each line's row label, with its model where several of ours stand for the row."""
    models: dict[str, set[str]] = {}
    for ln in lines:
        models.setdefault(ln.row, set()).add(ln.model)
    return [ln.row + (f" [{ln.model}]" if len(models[ln.row]) > 1 else "") for ln in lines]


def _identity(cells: Sequence[Cell]) -> list[tuple]:
    """What a claim's side compares once the audit stands for every attack of a model."""
    return sorted((c.row, c.model, c.source, c.eps, c.metric, c.attack == CLEAN)
                  for c in cells)


def gap_attack(attack: str) -> str:
    """The attack name of the masking-gap cells of ``attack`` (:func:`gap_cells`)."""
    return f"{attack} - audit"


def gap_cells(cells: Sequence[Cell], attack: str, audit_attack: str) -> list[Cell]:
    """Per model and eps where ``cells`` (:func:`compare` on :func:`audit_table`) have
    ours both under ``attack`` and under the audit (attack ``audit_attack``), a cell of
    the gap ``attack`` minus the audit's worst case (attack :func:`gap_attack`, points):
    how much ``attack`` overstates the model's robustness there, large under gradient
    masking. Each seed's gap is the difference of that seed's two values (the seeds
    both cells have); ``ours`` their mean, ``std`` their sample std; ``paper`` None."""
    worst = {(c.row, c.model, c.source, c.eps, c.metric): c for c in cells
             if c.attack == audit_attack}
    out = []
    for c in cells:
        w = worst.get((c.row, c.model, c.source, c.eps, c.metric))
        if c.attack != attack or w is None or c.ours is None or w.ours is None:
            continue
        mine, theirs = dict(c.by_seed), dict(w.by_seed)
        pairs = tuple((j, mine[j] - theirs[j]) for j in sorted(mine.keys() & theirs.keys()))
        values = [v for _, v in pairs] or [c.ours - w.ours]
        std = statistics.stdev(values) if len(values) > 1 else None
        out.append(replace(c, attack=gap_attack(attack), paper=None,
                           ours=statistics.fmean(values), std=std, seeds=len(values),
                           by_seed=pairs, n=min(c.n, w.n)))
    return out


def render_gaps(cells: Sequence[Cell]) -> tuple[str, str]:
    """(HTML, Markdown): the masking gaps of :func:`gap_cells`, one line per row (and
    model) and one column per eps, each ``gap`` (``± std`` over seeds)."""
    eps = sorted({c.eps for c in cells})
    lines = list(dict.fromkeys((c.row, c.model) for c in cells))
    by = {(c.row, c.model, c.eps): c for c in cells}
    head = ["row", *(f"eps {_eps(e)}" for e in eps)]
    md = ["| " + " | ".join(head) + " |", "|---" + "|---:" * len(eps) + "|"]
    h = ['<table class="gaps"><tr>' + "".join(f"<th>{html.escape(x)}</th>" for x in head)
         + "</tr>"]
    for row, model in lines:
        label = row + (f" [{model}]" if sum(r == row for r, _ in lines) > 1 else "")
        values = []
        for e in eps:
            c = by.get((row, model, e))
            values.append("-" if c is None else f"{c.ours:+.1f}"
                          + (f" ± {c.std:.1f}" if c.std is not None else ""))
        md.append("| " + " | ".join([label, *values]) + " |")
        h.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in [label, *values])
                 + "</tr>")
    h.append("</table>")
    return "\n".join(h), "\n".join(md)


def check_claims_under_audit(cells: Sequence[Cell], claims: Sequence[Claim], metric: str,
                             published: PaperTable, audit_attack: str
                             ) -> list[dict[str, Any]]:
    """:func:`check_claims` with every attacked cell of ``published``'s grid (ours)
    replaced by the same model's audit worst case (attack ``audit_attack``) at its eps,
    clean cells unchanged; ``cells`` from :func:`compare` on :func:`audit_table`. A claim
    whose two sides become the same cells (it contrasts attacks on one model) has
    ``testable`` False and no verdict (``ours`` None). A claim with a ``gap`` is judged
    on the models' masking gaps instead (:func:`gap_cells`, every audited eps)."""
    worst = {(c.row, c.model, c.source, c.eps, c.metric): c for c in cells
             if c.attack == audit_attack}
    grid = {(a, float(e)) for a, e in published.columns}
    kept = [c for c in cells if (c.attack, c.eps) in grid]

    def audited(c: Cell) -> Cell:
        if c.attack == CLEAN:
            return c
        w = worst.get((c.row, c.model, c.source, c.eps, c.metric))
        return replace(c, ours=None if w is None else w.ours, std=None if w is None else w.std,
                       n=0 if w is None else w.n, seeds=1 if w is None else w.seeds,
                       by_seed=() if w is None else w.by_seed)

    plain = iter(check_claims([audited(c) for c in kept], [c for c in claims if not c.gap],
                              metric))
    out = []
    for claim in claims:
        if claim.gap:
            (res,) = check_claims(gap_cells(cells, claim.gap, audit_attack), [claim], metric)
            res["testable"] = True
            out.append(res)
            continue
        res = next(plain)
        same = _identity(_pick(kept, claim.higher, metric)) == _identity(
            _pick(kept, claim.lower, metric))
        res["testable"] = not same
        if same:
            res.update(ours=None, ours_test=None, alternatives=[])
        out.append(res)
    return out


def summarise_checks(checks: Sequence[Mapping[str, Any]]) -> str:
    """One model's diagnostics (``Diagnostic`` fields as mappings) in one line: the
    counts, each flagged one with its sentence and each one not run with its reason
    (``"10 hold, 1 flagged, 1 not run; flagged: logits (the model returns ...); not
    run: transfer_no_stronger (no undefended twin model given)"``)."""
    from cascade_adv.evaluation.diagnostics import FLAGGED, HOLDS, NOT_RUN

    def named(verdict: str) -> list[str]:
        return [f"{c['name']} ({c['meaning']})" for c in checks if c["verdict"] == verdict]

    holds, flagged, not_run = (sum(c["verdict"] == v for c in checks)
                               for v in (HOLDS, FLAGGED, NOT_RUN))
    text = f"{holds} hold{'s' if holds == 1 else ''}, {flagged} flagged" + (
        f", {not_run} not run" if not_run else "")
    return text + "".join(f"; {verdict}: {'; '.join(named(verdict))}"
                          for verdict in (FLAGGED, NOT_RUN) if named(verdict))


def audit_summary(section: Mapping[str, Any]) -> list[str]:
    """The audit part of a table's comparison (``comparison.json``'s ``audit``) as
    plain lines for the command's printed summary."""
    paper = section.get("published", True)   # False: a table beyond the papers
    out = [(f"under the audit ({section['version']}): " + ("paper / " if paper else "")
            + "ours under the paper's attacks (lowest) / audit worst case, ours - audit")]
    names = {f.name for f in fields(AuditLine)}
    lines = [AuditLine(**{k: v for k, v in ln.items() if k in names})
             for ln in section["lines"]]
    for ln, name in zip(lines, _line_labels(lines)):
        said = f"{_named(ln.paper, ln.paper_attack, '-')} / " if paper else ""
        out.append(f"  {name}, eps {_eps(ln.eps)}: {said}"
                   f"{_named(ln.ours, ln.ours_attack, 'n/a')} / {_fmt(ln.audit) or 'n/a'}"
                   + (f", {ln.gap:+.1f}" if ln.gap is not None else ""))
    for model, checks in section["checks"].items():
        out.append(f"  diagnostics of {model}: {summarise_checks(checks)}")
    for r in section["claims"]:
        out.append(f"  under the audit, {r['claim']}: {claim_verdict(r)}")
    return out


def render_audit(lines: Sequence[AuditLine], checks: Mapping[str, Sequence[Mapping]],
                 claims: Sequence[Mapping[str, Any]], audited: Sequence[Mapping[str, Any]],
                 *, paper: bool = True) -> tuple[str, str]:
    """(HTML, Markdown) of the section "Under the audit": the table of ``lines``, each
    model's diagnostics (``checks``: model name -> its ``Diagnostic`` fields) with the
    flagged and not-run ones' sentences, and the claims on ours under the paper's
    attacks (``claims``, :func:`check_claims`) beside the same claims under the audit
    (``audited``, :func:`check_claims_under_audit`; a masking-gap claim, judged under the
    audit only, has "-" beside it). ``paper`` False (a table beyond the papers): no
    paper column."""
    head = ["row", "eps", *(["paper (lowest, attack)"] if paper else []),
            "ours under the paper's attacks", "audit worst case", "ours - audit"]
    md = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    h = ['<table class="audit"><tr>' + "".join(f"<th>{html.escape(x)}</th>" for x in head)
         + "</tr>"]
    for ln, label in zip(lines, _line_labels(lines)):
        audit = _fmt(ln.audit) or "n/a"
        if ln.audit_std is not None:
            audit += f" ± {ln.audit_std:.1f}"
        cells = [label, _eps(ln.eps),
                 *([_named(ln.paper, ln.paper_attack, "-")] if paper else []),
                 _named(ln.ours, ln.ours_attack, "n/a"),
                 audit, f"{ln.gap:+.1f}" if ln.gap is not None else "-"]
        md.append("| " + " | ".join(cells) + " |")
        h.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    h.append("</table>")
    diag_md, diag_h = [], []
    for model, found in checks.items():
        diag_md.append(f"- **{model}**: {summarise_checks(found)}")
        diag_h.append(f"<li><b>{html.escape(model)}</b>: "
                      f"{html.escape(summarise_checks(found))}</li>")
    by_claim = {r["claim"]: r for r in claims}
    c_md = ["| claim | ours under the paper's attacks | under the audit |", "|---|---|---|"]
    c_h = [('<table class="claims"><tr><th>claim</th><th>ours under the paper\'s attacks</th>'
           "<th>under the audit</th></tr>")]
    for r in audited:
        before = by_claim.get(r["claim"])
        left = claim_verdict(before) if before is not None else "-"
        c_md.append(f"| {r['claim']} | {left} | {claim_verdict(r)} |")
        c_h.append(f"<tr><td>{html.escape(r['claim'])}</td><td>{html.escape(left)}</td>"
                   f"<td>{html.escape(claim_verdict(r))}</td></tr>")
    c_h.append("</table>")
    md_text = "\n".join([*md, "", "#### Diagnostics", "", *diag_md, "",
                         "#### Claims under the audit", "", *c_md])
    h_text = "".join([*h, "<h4>Diagnostics</h4><ul>", *diag_h, "</ul>",
                      "<h4>Claims under the audit</h4>", *c_h])
    return h_text, md_text


# --- training cost (recipes beyond the papers) -------------------------------------------------

@dataclass(frozen=True)
class CostLine:
    """What training one row of ours cost, the mean over its seeds: the iterations it
    trained (after the pre-training it continues), the forward + backward passes of 128
    images one iteration costs as priced (``passes``: the step, the crafting and
    append mode's extra rows; ``crafting``: the crafting alone, each adversarial row
    times its method's gradient steps), the measured median seconds per iteration and
    the measured wall time of the training (its legs summed), and where it ran."""

    row: str
    model: str
    seeds: int
    iterations: float | None
    crafting: float
    passes: float
    seconds_per_iteration: float | None = None
    wall: float | None = None
    device: str = ""


_COST_FIELDS = ("crafting", "passes", "seconds_per_iteration", "wall")


def cost_ratios(lines: Sequence[CostLine], reference: str) -> dict[str, dict[str, float | None]]:
    """Per row, each cost field over the same field of the row ``reference`` (``None``
    where either is missing, or the reference's is 0)."""
    ref = next((ln for ln in lines if ln.row == reference), None)

    def ratio(ln: CostLine, name: str) -> float | None:
        a, b = getattr(ln, name), None if ref is None else getattr(ref, name)
        return None if a is None or not b else a / b

    return {ln.row: {name: ratio(ln, name) for name in _COST_FIELDS} for ln in lines}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 120 else (
        f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.2f} h")


def render_costs(lines: Sequence[CostLine], reference: str) -> tuple[str, str]:
    """(HTML, Markdown): one line per row of :class:`CostLine`, each cost with its ratio
    to the row ``reference`` (``x1.00`` on that row)."""
    ratios = cost_ratios(lines, reference)
    head = ["row", "iterations", "crafting passes / iteration", "passes / iteration",
            "s / iteration (measured)", "training wall time (measured)", "ran on"]
    md = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 2) + "|---|"]
    h = ['<table class="costs"><tr>' + "".join(f"<th>{html.escape(x)}</th>" for x in head)
         + "</tr>"]
    def cell(text: str, ratio: float | None) -> str:
        return text + (f" (x{ratio:.2f})" if ratio is not None else "")

    for ln in lines:
        r = ratios[ln.row]
        its = "n/a" if ln.iterations is None else f"{ln.iterations:.0f}"
        label = ln.row + (f" ({ln.seeds} seeds)" if ln.seeds > 1 else "")
        spi = "n/a" if ln.seconds_per_iteration is None else f"{ln.seconds_per_iteration:.3f}"
        cells = [label, its, cell(f"{ln.crafting:.2f}", r["crafting"]),
                 cell(f"{ln.passes:.2f}", r["passes"]),
                 cell(spi, r["seconds_per_iteration"]), cell(_duration(ln.wall), r["wall"]),
                 ln.device or "not recorded"]
        md.append("| " + " | ".join(cells) + " |")
        h.append("<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in cells) + "</tr>")
    h.append("</table>")
    return "\n".join(h), "\n".join(md)
