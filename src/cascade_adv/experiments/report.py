"""The report step of ``cascade-adv reproduce``: the recipe's rows in a results store,
the standard report built from it, and in front of it our numbers beside the paper's
(every cell, the difference, the tolerance, the paper's claims, accuracy-vs-eps with
the paper dashed)."""

from __future__ import annotations

import html
import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

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


def _legs(steps: list, deps: dict[str, dict]) -> list[str]:
    """One line per trained model: where each leg of its training ran (torch version,
    device and its model, threads; :mod:`cascade_adv.training.provenance`)."""
    from cascade_adv.training.provenance import describe_legs, read_legs

    lines = []
    for r in steps:
        out = deps.get(r.step.name)
        if r.step.kind == "train" and out:
            legs = describe_legs(read_legs(out["run"])) or "not recorded (trained before legs were)"
            lines.append(f"{out['name']}: {legs}")
    return lines


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


def _seed_words(seeds: list[int], seeds_for: list[str]) -> str:
    """How many seeds each configuration trained (``reproduce --seeds``, ``--seeds-for``)."""
    many = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    if not seeds_for:
        return f"{many} of every configuration"
    return (f"{many} of the configurations whose name contains "
            f"{' or '.join(seeds_for)}, one of every other")


def _audit_section(recipe, pub, rows: ResultTable, claims: list, deps: dict[str, dict],
                   records: dict[str, Any], rec, paper: dict[str, list[str]]
                   ) -> tuple[dict[str, Any], str, str]:
    """The section "Under the audit" of one white-box table (``reproduce --audit``): per
    row and audit eps the paper's lowest cell, ours under the paper's attacks, the
    audit's worst case; each audited model's diagnostics (its step's ``checks.json``);
    the recipe's claims under the audit. Returns (its ``comparison.json`` part, HTML,
    Markdown)."""
    from cascade_adv.evaluation.audit import resolve_version
    from cascade_adv.reporting.reproduction import (
        audit_lines,
        audit_table,
        check_claims_under_audit,
        compare,
        render_audit,
    )
    from cascade_adv.results.tables import AUDIT_PREFIX

    p = rec.step.params
    version, attacks = resolve_version(p["audit"])
    attack = AUDIT_PREFIX + version
    audits = [n for n in rec.step.deps if records[n].step.kind == "audit" and deps[n]]
    eps = sorted({e for n in audits for e in records[n].step.params["eps"]})
    wide = audit_table(pub, attack, eps)
    cells = compare(rows, wide, row_mapper(recipe, pub, p["suffix"], paper))
    lines = audit_lines(cells, pub, attack, eps)
    audited = check_claims_under_audit(cells, recipe.claims, pub.metrics[0], pub, attack)
    checks = {deps[n]["model"]: json.loads(Path(deps[n]["checks"]).read_text())
              for n in audits}
    h, md = render_audit(lines, checks, claims, audited)
    intro = (f"The audit ({version}: {', '.join(a.label for a in attacks)}"
             f"; AutoAttack's protocol, each attack on the images still correct) on the same "
             f"test images as the table, at eps {', '.join(f'{e:g}' for e in eps)}. Paper: its "
             "lowest cell over the table's attacks at that eps; ours: the same over our cells "
             "(both naming the attack); ours - audit: how much the paper's attacks overstate "
             "robustness. The claims are judged again with each attacked cell of a model "
             "replaced by its audit worst case at that eps (clean cells unchanged).")
    section = {"version": version, "attack": attack, "eps": eps,
               "lines": [dict(ln.__dict__, gap=ln.gap) for ln in lines],
               "checks": checks, "claims": audited}
    return section, f"<p>{intro}</p>{h}", f"{intro}\n\n{md}"


def write_report(recipe, rec, deps: dict[str, dict], records: dict[str, Any]) -> dict:
    """Build ``OUT/reports/LABEL/`` (report.html, report.md, figures/, results.db,
    comparison.json); returns its folder and the comparison."""
    from cascade_adv import __version__
    from cascade_adv.reporting.report import build_report
    from cascade_adv.reporting.reproduction import (
        check_claims,
        compare,
        plot_ours_vs_paper,
        render_claims,
        render_comparison,
        summary,
    )

    p = rec.step.params
    label = rec.step.name.split("/", 1)[1]
    folder = rec.folder.parents[1] / "reports" / label
    folder.mkdir(parents=True, exist_ok=True)
    rows = _rows(deps)
    # the rows each model's config names (read from the steps, so an edited paper key
    # needs no retraining)
    paper = {deps[n]["name"]: records[n].step.params.get("paper", [])
             for n in rec.step.deps if records[n].step.kind == "train" and deps[n]}
    rec.folder.mkdir(parents=True, exist_ok=True)
    stage = make_temp_dir(rec.folder, "figs")
    sections, figures, comparison = [], [], {}
    steps = [records[n] for n in rec.step.deps]
    spent = sum(r.seconds or 0 for r in steps)
    seeds = p.get("seeds", [0])
    info = (f"{recipe.title}. Dataset {p['dataset']}, {_scale_words(p)}; "
            + _seed_words(seeds, p.get("seeds_for", []))
            + (" (cells: mean ± sample std; a cell is off when |ours - paper| > "
               "max(tolerance, 2 std); claims are judged on the means)" if len(seeds) > 1
               else "")
            + f"; tolerance {p['tolerance']:g} points. cascade-adv {__version__}, "
            f"{platform.node() or 'this machine'}, {len(steps)} steps, "
            f"{spent / 60:.1f} min of step time; "
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.")
    shared = [(deps[n]["name"], records[n].step.params["also"]) for n in rec.step.deps
              if records[n].step.kind == "train" and deps[n]
              and records[n].step.params.get("also")]
    if shared:
        info += " " + " ".join(f"{name} also stands for {', '.join(also)}: the same "
                               "training computation, trained once." for name, also in shared)
    sections.append(("Reproduction", f"<p>{info}</p>", info))
    legs = _legs(steps, deps)
    if legs:
        sections.append(("Training legs",
                         "<ul>" + "".join(f"<li>{html.escape(g)}</li>" for g in legs) + "</ul>",
                         "\n".join(f"- {g}" for g in legs)))
    unfinished = _unfinished(steps)
    if unfinished:
        sections.append(("Steps that did not finish",
                         "<ul>" + "".join(f"<li>{html.escape(u)}</li>" for u in unfinished)
                         + "</ul>", "\n".join(f"- {u}" for u in unfinished)))
    for table_id in recipe.tables:
        pub = get_table(table_id)
        cells = compare(rows, pub, row_mapper(recipe, pub, p["suffix"], paper))
        h, md = render_comparison(cells, pub, tolerance=p["tolerance"])
        claims = check_claims(cells, recipe.claims, pub.metrics[0])
        ch, cmd = render_claims(claims)
        s = summary(cells, p["tolerance"])
        line = (f"{s['compared']} cells compared, {s['off']} more than {p['tolerance']:g} "
                f"points from the paper, {s['missing']} without our number"
                + (f", {s['rows_not_run']} paper rows not run." if s["rows_not_run"] else "."))
        fig = plot_ours_vs_paper(cells, stage / f"{table_id}-ours-vs-paper.png",
                                 title=f"{pub.paper} table {pub.number}")
        fig_h = fig_md = ""
        if fig is not None:
            figures.append(fig)
            fig_h = f'<figure><img src="figures/{fig.name}" alt="ours vs paper"></figure>'
            fig_md = f"![ours vs paper](figures/{fig.name})"
        sections.append((f"{pub.paper} table {pub.number}: ours (paper, difference)",
                         f"<p>{line}</p>{h}<h3>Claims</h3>{ch}{fig_h}",
                         f"{line}\n\n{md}\n\n### Claims\n\n{cmd}\n\n{fig_md}"))
        comparison[table_id] = {"summary": s, "claims": claims,
                                "cells": [dict(c.__dict__, diff=c.diff) for c in cells]}
        if p.get("audit") and pub.kind in WHITEBOX_KINDS:
            section, h, md = _audit_section(recipe, pub, rows, claims, deps, records, rec,
                                            paper)
            comparison[table_id]["audit"] = section
            sections.append((f"Under the audit: {pub.paper} table {pub.number}", h, md))
    atomic_write_text(folder / "comparison.json", json.dumps(comparison, indent=1))
    store = _store(folder / "results.db", rows, deps, p, paper)
    try:
        if len(rows):
            build_report(store, folder, title=f"cascade-adv reproduce {label}", overwrite=True,
                         sections=sections, extra_figures=figures,
                         accuracy_figures=False)
    finally:
        store.close()
    for f in figures:
        f.unlink(missing_ok=True)
    stage.rmdir()
    return {"folder": str(folder), "comparison": comparison}
