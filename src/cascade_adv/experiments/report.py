"""The report step of ``cascade-adv reproduce``: the recipe's rows in a results store,
the standard report built from it, and in front of it our numbers beside the paper's
(every cell, the difference, the tolerance, the paper's claims, accuracy-vs-eps with
the paper dashed)."""

from __future__ import annotations

import html
import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cascade_adv.errors import CascadeAdvError
from cascade_adv.experiments.recipes import WHITEBOX_KINDS
from cascade_adv.io import atomic_path, atomic_write_text, make_temp_dir
from cascade_adv.results.published import get_table, split_paper_entry
from cascade_adv.results.store import ResultsStore
from cascade_adv.results.tables import KEY_COLUMNS, ResultTable


def row_mapper(recipe, table, suffix: str, paper: dict[str, list[str]]):
    """Our model name -> the row labels of published ``table`` it reproduces: the
    ``paper`` rows its config names (``paper[name]``; several when the model stands for
    several configs that train the same thing), else the recipe's ``rows`` (the
    networks of a sweep, by name or name prefix without the scale suffix)."""
    def row_of(name: str) -> list[str]:
        labels = [e[1] for e in map(split_paper_entry, paper.get(name, ()))
                  if e is not None and e[0] == table.id]
        if labels:
            return labels
        base = name.replace(suffix, "", 1) if suffix else name
        for prefix, label in recipe.rows.items():
            if base == prefix or base.startswith((prefix + "/", prefix + "-")):
                return [label]
        return []
    return row_of


def _rows(deps: dict[str, dict]) -> ResultTable:
    """The rows of every step among ``deps``; a row measured by two steps (the clean
    accuracy of a model's white-box step and of its ``@audit`` one) is kept once, the
    later one, as the results store keeps it (its key, :data:`KEY_COLUMNS`)."""
    rows: dict[tuple, dict] = {}
    for out in deps.values():
        if out and "rows" in out:
            for r in json.loads(Path(out["rows"]).read_text()):
                rows.pop(key := tuple(r[k] for k in KEY_COLUMNS), None)
                rows[key] = r
    return ResultTable(rows.values())


def _store(path: Path, rows: ResultTable, deps: dict[str, dict], p: dict,
           paper: dict[str, list[str]]) -> ResultsStore:
    models = [{"name": out["name"], "model_hash": out["hash"], "dataset": out["dataset"],
                   "init": out["init"], "experiment": out.get("experiment", ""),
                   "params": {**out.get("params", {}), "paper": paper.get(out["name"], []),
                           "test_images": p["test_images"]}}
              for out in deps.values() if out and "weights" in out]
    with atomic_path(path) as tmp, ResultsStore(tmp) as store:  # built aside, then moved
        store.save(rows, models)
    return ResultsStore(path)


def _scale_words(p: dict) -> str:
    """What the run reduced from the paper's recipe and what it did not."""
    schedule = ("the full schedule" if p["scale"] == 1
                else f"every schedule scaled by {p['scale']:g}")
    images = (f"the first {p['test_images']} test images" if p["test_images"]
              else "every test image")
    if p["scale"] == 1 and not p["test_images"]:
        return f"{schedule}, {images}"
    trend = " (compare trends rather than absolute numbers; model names carry the " \
            "scale, -xF)" if p["scale"] != 1 else ""
    return f"{schedule}, {images}: a run reduced in " + (
        "schedule and test images" if p["scale"] != 1 and p["test_images"]
        else "schedule" if p["scale"] != 1 else "test images only") + trend


def _trained(steps: list, deps: dict[str, dict]) -> list[dict]:
    """The outputs (``name``, ``run``...) of the finished training steps among ``steps``."""
    return [out for r in steps if r.step.kind == "train" and (out := deps.get(r.step.name))]


def _legs(steps: list, deps: dict[str, dict]) -> list[str]:
    """One line per trained model: where each leg of its training ran (torch version,
    device and its model, threads; :mod:`cascade_adv.training.provenance`)."""
    from cascade_adv.training.provenance import describe_legs, read_legs

    return [f"{out['name']}: " + (describe_legs(read_legs(out["run"]))
                                  or "not recorded (trained before legs were)")
            for out in _trained(steps, deps)]


def _monitored(steps: list, deps: dict[str, dict]) -> list[str]:
    """One line per trained model whose catastrophic-overfitting monitor ran (config
    section ``monitor``; :func:`cascade_adv.training.monitor.describe_monitor`)."""
    from cascade_adv.training.monitor import describe_monitor

    return [f"{out['name']}: {line}" for out in _trained(steps, deps)
            if (line := describe_monitor(out["run"]))]


def _unfinished(steps: list) -> list[str]:
    """One line per step of the run that failed (with its error, e.g. a diverged
    training's diagnosis) or was blocked by one: their cells are missing from the
    tables."""
    missing = {r.step.name for r in steps if r.status in ("failed", "blocked")}
    out = []
    for r in steps:
        if r.status == "failed":
            out.append(f"{r.step.name} failed: {r.error}")
        elif r.status == "blocked":    # a step is blocked by a failed or blocked dependency
            need = [d for d in r.step.deps if d in missing]
            out.append(f"{r.step.name} blocked: it needs {', '.join(need)}")
    return out


def _not_run(steps: list) -> list[str]:
    """The steps a ``--report-only`` report was written without, each marked "running
    now" where a process holds its folder's lock (another ``reproduce`` of the cache)."""
    from cascade_adv.experiments.reproduce import NOT_RUN
    from cascade_adv.io import lock_holder

    out = []
    for r in steps:
        if r.status == NOT_RUN:
            pid = lock_holder(r.folder)
            out.append(r.step.name if pid is None else
                       f"{r.step.name}: running now (process {pid or '?'})")
    return out


def _seed_words(seeds: list[int], seeds_for: list[str]) -> str:
    """How many seeds each configuration trained (``reproduce --seeds``, ``--seeds-for``)."""
    many = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    if not seeds_for:
        return f"{many} of every configuration"
    return (f"{many} of the configurations whose name contains "
            f"{' or '.join(seeds_for)}, one of every other")


@dataclass
class _Report:
    """What the report step's sections are built from."""

    recipe: Any
    rec: Any                         # the report step's record
    deps: dict[str, dict]            # step name -> its outputs
    records: dict[str, Any]          # step name -> its record
    rows: ResultTable                # the rows of every step
    paper: dict[str, list[str]]      # model -> the paper rows its config names
    stage: Path                      # where figures are drawn
    figures: list[Path] = field(default_factory=list)

    @property
    def p(self) -> dict:
        return self.rec.step.params

    def row_of(self, pub):
        return row_mapper(self.recipe, pub, self.p["suffix"], self.paper)


def _audit_intro(version: str, labels: list[str], eps: list[float], published: bool) -> str:
    head = (f"The audit ({version}: {', '.join(labels)}; AutoAttack's protocol, each attack "
            f"on the images still correct) on the same test images as the table, at eps "
            f"{', '.join(f'{e:g}' for e in eps)}. ")
    replaced = ("The claims are judged again with each attacked cell of a model replaced "
                "by its audit worst case at that eps (clean cells unchanged).")
    if published:
        return head + ("Paper: its lowest cell over the table's attacks at that eps; ours: "
                       "the same over our cells (both naming the attack); ours - audit: how "
                       "much the paper's attacks overstate robustness. " + replaced)
    return head + ("No published numbers. Ours: the lowest cell over the paper's attacks at "
                   "that eps (naming the attack); ours - audit: how much the paper's attacks "
                   "overstate robustness. " + replaced + " A masking claim compares the rows' "
                   "gap iter_FGSM - audit worst case at every audited eps, seed by seed, so "
                   "it is judged under the audit only.")


def _audit_section(r: _Report, pub, claims: list) -> tuple[dict[str, Any], str, str]:
    """The section "Under the audit" of one white-box table (``reproduce --audit``): per
    row and audit eps the paper's lowest cell (none for a layout beyond the papers),
    ours under the paper's attacks, the audit's worst case; each audited model's
    diagnostics (its step's ``checks.json``); the recipe's claims under the audit, the
    masking-gap claims among them. Returns (its ``comparison.json`` part, HTML,
    Markdown)."""
    from cascade_adv.evaluation.audit import resolve_version
    from cascade_adv.reporting.reproduction import (
        audit_lines,
        audit_table,
        check_claims_under_audit,
        compare,
        gap_cells,
        render_audit,
        render_gaps,
    )
    from cascade_adv.results.tables import AUDIT_PREFIX

    version, attacks = resolve_version(r.p["audit"])
    attack = AUDIT_PREFIX + version
    audits = [n for n in r.rec.step.deps if r.records[n].step.kind == "audit" and r.deps[n]]
    eps = sorted({e for n in audits for e in r.records[n].step.params["eps"]})
    wide = audit_table(pub, attack, eps)
    cells = compare(r.rows, wide, r.row_of(pub))
    lines = audit_lines(cells, pub, attack, eps)
    audited = check_claims_under_audit(cells, r.recipe.claims, pub.metrics[0], pub, attack)
    checks = {r.deps[n]["model"]: json.loads(Path(r.deps[n]["checks"]).read_text())
              for n in audits}
    h, md = render_audit(lines, checks, claims, audited, paper=pub.published)
    for gap in dict.fromkeys(c.gap for c in r.recipe.claims if c.gap):
        gh, gmd = render_gaps(gap_cells(cells, gap, attack))
        what = f"Masking gap {gap} - audit worst case (points; the masking claims' cells)"
        h += f"<h4>{html.escape(what)}</h4>{gh}"
        md += f"\n\n#### {what}\n\n{gmd}"
    intro = _audit_intro(version, [a.label for a in attacks], eps, pub.published)
    section = {"version": version, "attack": attack, "eps": eps,
               **({} if pub.published else {"published": False}),
               "lines": [dict(ln.__dict__, gap=ln.gap) for ln in lines],
               "checks": checks, "claims": audited}
    return section, f"<p>{intro}</p>{h}", f"{intro}\n\n{md}"


def _trained_iterations(cfg, run: Path, init_run: str | None) -> int | None:
    """The iterations a run trained: its schedule after the iteration its first leg
    started at (``legs.jsonl``), else after the pre-training it continues."""
    from cascade_adv.training import load_config
    from cascade_adv.training.provenance import read_legs

    legs = read_legs(run)
    if legs:
        return cfg.optim.iterations - legs[0]["iteration"]
    if cfg.init_mode == "continue" and init_run:
        try:
            return cfg.optim.iterations - load_config(
                Path(init_run) / "config.yaml").optim.iterations
        except (CascadeAdvError, OSError):
            return None
    return cfg.optim.iterations if cfg.init_from is None else None


def _cost_of(out: dict, init_run: str | None) -> dict[str, Any] | None:
    """One trained model's cost: priced passes (:mod:`cascade_adv.experiments.cost`)
    from the config its run recorded, measured times from its ``metrics.jsonl``."""
    from cascade_adv.experiments.cost import (
        crafting_per_iteration,
        iteration_passes,
        seconds_per_iteration,
        training_seconds,
    )
    from cascade_adv.training import load_config
    from cascade_adv.training.provenance import read_legs

    run = Path(out["run"])
    try:
        cfg = load_config(run / "config.yaml")
    except (CascadeAdvError, OSError):
        return None
    where = dict.fromkeys(f"{leg.get('device', '?')} ({leg.get('model', '?')}, "
                          f"{leg.get('threads', '?')} thread"
                          f"{'' if leg.get('threads') == 1 else 's'})" for leg in read_legs(run))
    return {"iterations": _trained_iterations(cfg, run, init_run),
            "crafting": crafting_per_iteration(cfg), "passes": iteration_passes(cfg),
            "seconds_per_iteration": seconds_per_iteration(run),
            "wall": training_seconds(run), "device": " + ".join(where)}


def _mean(values: list) -> float | None:
    found = [v for v in values if v is not None]
    return sum(found) / len(found) if found else None


def _cost_lines(r: _Report, pub) -> list:
    """One :class:`~cascade_adv.reporting.reproduction.CostLine` per row of ``pub`` we
    trained, the mean over its seeds, in the table's row order."""
    from cascade_adv.reporting.reproduction import CostLine, without_seed

    found: dict[str, list[tuple[str, dict]]] = {}
    row_of = r.row_of(pub)
    for n in r.rec.step.deps:
        out = r.deps.get(n)
        labels = row_of(out["name"]) if r.records[n].step.kind == "train" and out else []
        init = r.records[n].step.params.get("init") if labels else None
        cost = _cost_of(out, (r.deps.get(init) or {}).get("run")) if labels else None
        if cost is not None:
            found.setdefault(labels[0], []).append((without_seed(out["name"]), cost))
    lines = []
    for row in pub.row_order:
        runs = found.get(row, [])
        if runs:
            costs = [c for _, c in runs]
            lines.append(CostLine(
                row, runs[0][0], len(runs), _mean([c["iterations"] for c in costs]),
                *(_mean([c[k] for c in costs]) for k in ("crafting", "passes",
                                                         "seconds_per_iteration", "wall")),
                device=" / ".join(dict.fromkeys(c["device"] for c in costs if c["device"]))))
    return lines


def _cost_section(r: _Report, pub) -> tuple[list[dict], tuple[str, str, str]]:
    """The training costs of ``pub``'s rows relative to the recipe's ``cost_reference``:
    (their ``comparison.json`` part, the section)."""
    from cascade_adv.reporting.reproduction import cost_ratios, render_costs

    ref = r.recipe.cost_reference
    lines = _cost_lines(r, pub)
    ratios = cost_ratios(lines, ref)
    h, md = render_costs(lines, ref)
    intro = (f"Per row, the mean over its seeds: the iterations it trained after the "
             "pre-training; forward + backward passes of 128 images per iteration as priced "
             "(crafting: each adversarial row times its method's gradient steps, PGD's "
             "steps; passes: the step, the crafting and append mode's extra rows, the price "
             "reproduce --dry-run uses); the measured median seconds per iteration and wall "
             "time of the training (metrics.jsonl, its legs summed). Each with its ratio to "
             f"{ref} (x1.00 there). Measured times compare only between rows that ran on the "
             "same device with the same threads (ran on; the training legs above).")
    part = [dict(ln.__dict__, ratios=ratios[ln.row]) for ln in lines]
    return part, (f"Training cost relative to {ref}", f"<p>{html.escape(intro)}</p>{h}",
                  f"{intro}\n\n{md}")


def _figure_of(r: _Report, cells, pub) -> tuple[str, str]:
    """Accuracy vs eps of ``cells`` (ours solid, the paper's dashed where published)."""
    from cascade_adv.reporting.reproduction import plot_ours_vs_paper

    name = f"{pub.id}-ours-vs-paper.png" if pub.published else f"{pub.id}-ours.png"
    title = f"{pub.paper} table {pub.number}" if pub.published else pub.id
    fig = plot_ours_vs_paper(cells, r.stage / name, title=title)
    if fig is None:
        return "", ""
    r.figures.append(fig)
    alt = "ours vs paper" if pub.published else "ours"
    return (f'<figure><img src="figures/{fig.name}" alt="{alt}"></figure>',
            f"![{alt}](figures/{fig.name})")


def _table_sections(r: _Report, pub) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """The comparison of one table of the recipe (a published one, or its layout beyond
    the papers: ours alone, then the training costs), its claims and figure, and with
    ``--audit`` the section "Under the audit": (its ``comparison.json`` part, sections)."""
    from cascade_adv.reporting.reproduction import (
        check_claims,
        compare,
        render_claims,
        render_comparison,
        summary,
        summary_ours,
    )

    p = r.p
    cells = compare(r.rows, pub, r.row_of(pub))
    h, md = render_comparison(cells, pub, tolerance=p["tolerance"])
    claims = check_claims(cells, [c for c in r.recipe.claims if not c.gap], pub.metrics[0])
    ch, cmd = render_claims(claims, paper=pub.published)
    if pub.published:
        s = summary(cells, p["tolerance"])
        line = (f"{s['compared']} cells compared, {s['off']} more than {p['tolerance']:g} "
                f"points from the paper, {s['missing']} without our number"
                + (f", {s['rows_not_run']} paper rows not run." if s["rows_not_run"] else "."))
        title = f"{pub.paper} table {pub.number}: ours (paper, difference)"
    else:
        s = summary_ours(cells)
        line = (f"{pub.title}. No published numbers: ours alone (mean ± sample std over "
                f"seeds where several). {s['measured']} of {s['cells']} cells measured, "
                f"{s['missing']} missing" + (f", {s['rows_not_run']} rows not run."
                                             if s["rows_not_run"] else ".") + f" {pub.notes}")
        title = f"{pub.id}: ours (no published numbers)"
    fig_h, fig_md = _figure_of(r, cells, pub)
    sections = [(title, f"<p>{line}</p>{h}<h3>Claims</h3>{ch}{fig_h}",
                 f"{line}\n\n{md}\n\n### Claims\n\n{cmd}\n\n{fig_md}")]
    part = {**({} if pub.published else {"published": False}), "summary": s,
            "claims": claims, "cells": [dict(c.__dict__, diff=c.diff) for c in cells]}
    if not pub.published and r.recipe.cost_reference:
        part["costs"], section = _cost_section(r, pub)
        sections.append(section)
    if p.get("audit") and pub.kind in WHITEBOX_KINDS:
        part["audit"], h, md = _audit_section(r, pub, claims)
        name = f"{pub.paper} table {pub.number}" if pub.published else pub.id
        sections.append((f"Under the audit: {name}", h, md))
    return part, sections


def _intro(recipe, rec, steps: list, deps: dict[str, dict], records: dict[str, Any],
           waiting: list[str]) -> str:
    """The report's first paragraph: what ran, how reduced, where, when; ``waiting``: the
    steps a ``--report-only`` report lacks (:func:`_not_run`)."""
    from cascade_adv import __version__

    p = rec.step.params
    spent = sum(r.seconds or 0 for r in steps)
    seeds = p.get("seeds", [0])
    compared = recipe.layout is None   # a recipe beyond the papers compares with none
    info = (f"{recipe.title}. Dataset {p['dataset']}, {_scale_words(p)}; "
            + _seed_words(seeds, p.get("seeds_for", []))
            + ((" (cells: mean ± sample std; a cell is off when |ours - paper| > "
                "max(tolerance, 2 std); claims are judged on the means)" if compared
                else " (cells: mean ± sample std; claims are judged on the means)")
               if len(seeds) > 1 else "")
            + (f"; tolerance {p['tolerance']:g} points" if compared
               else "; beyond the papers: no published numbers to compare with")
            + f". cascade-adv {__version__}, "
            f"{platform.node() or 'this machine'}, {len(steps)} steps, "
            f"{spent / 60:.1f} min of step time; "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.")
    shared = [(deps[n]["name"], records[n].step.params["also"]) for n in rec.step.deps
              if records[n].step.kind == "train" and deps[n]
              and records[n].step.params.get("also")]
    if shared:
        info += " " + " ".join(f"{name} also stands for {', '.join(also)}: the same "
                               "training computation, trained once." for name, also in shared)
    if waiting:
        info += (f" A partial report (--report-only): {len(waiting)} of {len(steps)} steps "
                 "not run yet (listed below); the cells and seeds they would add are missing "
                 "and every claim is judged on the seeds finished.")
    return info


def _listed(title: str, items: list[str]) -> tuple[str, str, str]:
    return (title, "<ul>" + "".join(f"<li>{html.escape(g)}</li>" for g in items) + "</ul>",
            "\n".join(f"- {g}" for g in items))


def write_report(recipe, rec, deps: dict[str, dict], records: dict[str, Any]) -> dict:
    """Build ``OUT/reports/LABEL/`` (report.html, report.md, figures/, results.db,
    comparison.json); returns its folder and the comparison. A recipe beyond the
    papers (its :attr:`~cascade_adv.experiments.recipes.Recipe.layout`) gets its table
    with ours alone, its training costs and its claims, and its models are stored
    without the paper rows their configs name (the report shows no published number)."""
    from cascade_adv.reporting.report import build_report

    label = rec.step.name.split("/", 1)[1]
    folder = rec.folder.parents[1] / "reports" / label
    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(deps)
    # the rows each model's config names (read from the steps, so an edited paper key
    # needs no retraining)
    paper = {deps[n]["name"]: records[n].step.params.get("paper", [])
             for n in rec.step.deps if records[n].step.kind == "train" and deps[n]}
    rec.folder.mkdir(parents=True, exist_ok=True)
    r = _Report(recipe, rec, deps, records, rows, paper, make_temp_dir(rec.folder, "figs"))
    steps = [records[n] for n in rec.step.deps]
    waiting = _not_run(steps)
    info = _intro(recipe, rec, steps, deps, records, waiting)
    sections = [("Reproduction", f"<p>{info}</p>", info)]
    if legs := _legs(steps, deps):
        sections.append(_listed("Training legs", legs))
    if monitored := _monitored(steps, deps):
        sections.append(_listed("Catastrophic-overfitting monitor", monitored))
    if unfinished := _unfinished(steps):
        sections.append(_listed("Steps that did not finish", unfinished))
    if waiting:
        sections.append(_listed("Steps not run yet", waiting))
    comparison = {}
    tables = [get_table(t) for t in recipe.tables]
    for pub in tables + ([recipe.layout] if recipe.layout is not None else []):
        comparison[pub.id], more = _table_sections(r, pub)
        sections += more
    atomic_write_text(folder / "comparison.json", json.dumps(comparison, indent=1))
    # beyond the papers: no published row in the standard sections either
    stored = paper if recipe.layout is None else {name: [] for name in paper}
    store = _store(folder / "results.db", rows, deps, rec.step.params, stored)
    try:
        if len(rows):
            build_report(store, folder, title=f"cascade-adv reproduce {label}", overwrite=True,
                         sections=sections, extra_figures=r.figures,
                         accuracy_figures=False)
    finally:
        store.close()
    for f in r.figures:
        f.unlink(missing_ok=True)
    r.stage.rmdir()
    return {"folder": str(folder), "comparison": comparison}
