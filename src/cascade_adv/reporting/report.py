"""The report: every table and figure that the results store can fill, as one HTML
page and one Markdown file, rebuilt from the store alone.

Sections, each present when the store holds its rows:

1. sanity warnings (:mod:`cascade_adv.evaluation.sanity`) with what they mean;
2. white-box tables in the papers' layout, grouped by the paper table a model's
   recipe reproduces, with the published row under ours;
3. black-box matrices (N18 tables 4, 7-10: accuracy; K17 tables 4 and 6:
   transfer and error rate), same-initialisation cells marked;
4. multi-seed mean +- std (N18 table 3);
5. the analyses: lambda2 sweep (N18 fig. 3), softmax argument (figs. 4, 6; and
   at the iter_FGSM / APGD-CE images where stored), gradient correlation (fig. 5),
   label leaking (K17 table 3), transfer rate vs epsilon (K17 figs. 2, 5), model
   capacity (figs. 1, 4), activations (table 7).

Figures are written next to the page (``figures/*.png``) and linked relatively,
so the folder can be moved or served as it is.
"""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.sanity import check_results, format_warnings
from cascade_adv.evaluation.stats import aggregate_seeds
from cascade_adv.io import atomic_write_text, make_temp_dir, remove_stale_temps
from cascade_adv.reporting import figures
from cascade_adv.reporting.paper_tables import (
    render_blackbox,
    render_mean_std,
    render_whitebox,
)
from cascade_adv.reporting.reproduction import compare, plot_ours_vs_paper
from cascade_adv.results.published import blackbox_label, get_table, whitebox_rows
from cascade_adv.results.store import ResultsStore
from cascade_adv.results.tables import AUDIT_PREFIX, CLEAN, WHITEBOX, ResultTable

ANALYSIS_SOURCES = ("softmax_argument", "gradient_correlation")


#: our model -> the ``"TABLE: LABEL"`` entries of its config's ``paper`` key
PaperRows = Mapping[str, Sequence[str]]


@dataclass
class _Page:
    """Sections collected as (title, html, markdown)."""

    sections: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, title: str, html_body: str, md_body: str) -> None:
        self.sections.append((title, html_body, md_body))


def _para(text: str) -> tuple[str, str]:
    return f"<p>{html.escape(text)}</p>", text + "\n"


def _figure(path: Path, root: Path, caption: str) -> tuple[str, str]:
    rel = path.relative_to(root).as_posix()
    return ((f'<figure><img src="{html.escape(rel)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"),
            f"![{caption}]({rel})\n")


def _whitebox_sections(page: _Page, rows: ResultTable, paper: PaperRows, root: Path,
                       figdir: Path | None) -> None:
    """One section per published white-box table our models map to (``paper``: the rows
    the store records for each model, which may name several tables; the published row
    under each of ours) and per dataset for the others; each also draws accuracy vs epsilon
    into ``figdir`` (unless ``None``), one line per model, ours solid and the paper's
    dashed where they exist."""
    white = ResultTable(r for r in rows if r["source"] == WHITEBOX)
    if not len(white):
        return
    by_table: dict[str, dict[str, str]] = {}  # table -> our model -> its row there
    others: dict[str, list[str]] = {}
    for model in dict.fromkeys(r["model"] for r in white):
        named = whitebox_rows(paper.get(model, ()))
        for table_id, label in named:
            by_table.setdefault(table_id, {})[model] = label
        if not named:
            dataset = next(r["dataset"] for r in white if r["model"] == model)
            others.setdefault(dataset, []).append(model)
    for table_id, row_map in by_table.items():
        models = list(row_map)
        table = get_table(table_id)
        ours = white.filter(model=models)
        title = f"{table.paper} table {table.number}: {table.title}"
        h = render_whitebox(ours, published=table, row_map=row_map, fmt="html", title="")
        md = render_whitebox(ours, published=table, row_map=row_map, fmt="markdown", title="")
        note = ("Our rows with the published row below each; the settings may differ "
                "(schedule, test images): see each run's config.")
        if table.notes:
            note += " " + table.notes
        ph, pm = _para(note)
        fh = fm = ""
        if figdir is not None:
            path = plot_ours_vs_paper(compare(ours, table, row_map.get),
                                      figdir / f"accuracy-{table_id}.png",
                                      title=f"{table.paper} table {table.number}")
            if path is not None:
                fh, fm = _figure(path, root, "Accuracy vs epsilon: ours solid, the paper's "
                                 "dashed")
        page.add(title, h + ph + fh, md + "\n" + pm + fm)
    for dataset, models in others.items():
        ours = white.filter(model=models)
        title = f"White-box accuracy, {dataset}"
        attacks = [a for a in dict.fromkeys(r["attack"] for r in ours) if a != CLEAN]
        fh = fm = ""
        if attacks and figdir is not None:
            path = figures.plot_accuracy_vs_eps(ours, figdir / f"accuracy-{_slug(dataset)}.png",
                                                models=models, attacks=attacks)
            fh, fm = _figure(path, root, "Accuracy vs epsilon (no published row to compare)")
        page.add(title, render_whitebox(ours, fmt="html", title="") + fh,
                 render_whitebox(ours, fmt="markdown", title="") + "\n" + fm)


BLACKBOX_TABLES = ("n18-table4", "n18-table7", "n18-table8", "n18-table9", "n18-table10")


def _blackbox_labels(paper: PaperRows) -> dict[str, str]:
    """Our model -> the label N18's black-box tables give it (B1, K2, P1C, ...)."""
    labels = {m: blackbox_label(entries) for m, entries in paper.items()}
    return {m: label for m, label in labels.items() if label is not None}


def _published_matrix(rows: ResultTable, labels: Mapping[str, str]):
    """The N18 black-box table holding the most of our (target, source, attack) cells,
    through the labels our models' configs give them there (``labels``); None if none
    does."""
    ours = {(labels.get(r["model"]), labels.get(r["source"]), r["attack"]) for r in rows}
    best, hits = None, 0
    for table_id in BLACKBOX_TABLES:
        paper = get_table(table_id)
        cells = {(r["model"], r["source"], r["attack"]) for r in paper.rows}
        n = len(ours & cells)
        if n > hits:
            best, hits = paper, n
    return best


def _blackbox_sections(page: _Page, rows: ResultTable, paper: PaperRows,
                       same_init: Callable[[str, str], bool]) -> None:
    black = ResultTable(r for r in rows
                        if r["source"] not in (WHITEBOX, *ANALYSIS_SOURCES)
                        and not r["source"].startswith(AUDIT_PREFIX) and r["attack"] != CLEAN)
    if not len(black):
        return
    labels = _blackbox_labels(paper)
    groups: dict[tuple[str, float], list[str]] = {}
    for r in black:
        attacks = groups.setdefault((r["dataset"], r["eps"]), [])
        if r["attack"] not in attacks:
            attacks.append(r["attack"])
    for (dataset, eps), attacks in groups.items():
        part = black.filter(dataset=dataset, eps=eps)
        for metric, what in (("top1", "accuracy (%), N18 tables 4, 7-10"),
                             ("transfer_top1", "transfer rate (%), K17 table 4"),
                             ("error_top1", "error rate (%), K17 table 6")):
            sub = part.filter(metric=metric)
            if not len(sub):
                continue
            title = f"Black-box {what}: {dataset}, eps {eps:g}"
            published = _published_matrix(sub, labels) if metric == "top1" else None
            row_map = ({m: lab for m, lab in labels.items()
                        if lab in (*published.row_order, *published.sources)}
                       if published is not None else None)
            page.add(title, *(render_blackbox(sub, attack=attacks, eps=eps, metric=metric,
                                              same_init=same_init, fmt=fmt, title="",
                                              published=published, row_map=row_map)
                              for fmt in ("html", "markdown")))


def _seed_sections(page: _Page, rows: ResultTable, store: ResultsStore) -> None:
    groups: dict[str, list[str]] = {}
    for m in store.models():
        if m.experiment.startswith("seeds:"):
            groups.setdefault(m.experiment.split(":", 1)[1], []).append(m.name)
    if not groups:
        return
    stats = aggregate_seeds(rows, groups)
    cells = {(r["model"], r["attack"], r["eps"]): (
        r["value"], stats.value(r["model"], r["attack"], r["eps"], "top1_std"), r["n"])
        for r in stats.filter(metric="top1_mean")}
    page.add("Multiple seeds: mean ± std (N18 table 3)",
             *(render_mean_std(cells, fmt=fmt, title="") for fmt in ("html", "markdown")))


def _softmax_figures(add_fig: Callable[[str, Path, str], None], soft: ResultTable,
                     figdir: Path) -> None:
    """N18 figures 4, 6 from the rows along N18's directions and, where the store holds
    rows at the iter_fgsm / apgd_ce images, the figure of what the paper's attacks see
    vs what the audit finds (docs/design.md, "Softmax argument along the attacks'
    images")."""
    n18 = soft.filter(attack=list(figures.N18_DIRECTIONS))
    if len(n18):
        path = figures.plot_softmax_argument(n18, figdir / "n18_fig4_softmax_argument.png")
        add_fig("Argument to the softmax vs epsilon (N18 figures 4, 6)", path,
                "True-class logit (blue) and mean false-class logit (red), mean ± 1 std")
    if figures.has_attack_views(soft):
        path = figures.plot_attack_views(soft, figdir / "softmax_attack_views.png")
        add_fig("Argument to the softmax: what the paper's attacks see vs what the audit "
                "finds", path,
                "Along step_ll and at the iter_FGSM and APGD-CE images of each eps: "
                "true-class logit (blue) and mean false-class logit (red), mean ± 1 std")


def _analysis_sections(page: _Page, rows: ResultTable, store: ResultsStore, root: Path,
                       figdir: Path) -> None:
    def add_fig(title: str, path: Path, caption: str) -> None:
        h, m = _figure(path, root, caption)
        page.add(title, h, m)

    def experiment(name: str, key: str) -> dict:
        return {m.name: m.params[key] for m in store.models(experiment=name) if key in m.params}

    white = ResultTable(r for r in rows if r["source"] == WHITEBOX)
    lam2 = experiment("lambda2", "lam2")
    if lam2 and white.filter(model=list(lam2)).rows:
        series = [(CLEAN, 0.0)] + sorted({(r["attack"], r["eps"]) for r in white.filter(
            model=list(lam2)) if r["attack"] != CLEAN})
        path = figures.plot_sweep(white, figdir / "n18_fig3_lambda2.png", values=lam2,
                                  xlabel="lambda2", series=series, log_x=True,
                                  title="N18 fig. 3: accuracy vs lambda2")
        add_fig("Effect of lambda2 (N18 figure 3)", path, "Accuracy vs lambda2")
    _softmax_figures(add_fig, rows.filter(source="softmax_argument"), figdir)
    corr = rows.filter(source="gradient_correlation")
    if len(corr):
        path = figures.plot_gradient_correlation(corr, figdir / "n18_fig5_gradient_corr.png")
        add_fig("Gradient correlation vs epsilon (N18 figure 5)", path,
                "Pearson correlation of input gradients, mean ± 0.5 std")
    leak = experiment("label_leaking", "train_method")
    if leak:
        from cascade_adv.analysis.sweeps import label_leaking_table

        table_rows = label_leaking_table(white, leak)
        h = [("<table class=\"paper\"><thead><tr><th>trained and attacked with</th><th>eps</th>"
             "<th>clean</th><th>adversarial</th><th>label leaking</th></tr></thead><tbody>")]
        m = ["| trained and attacked with | eps | clean | adversarial | label leaking |",
             "| --- | ---: | ---: | ---: | --- |"]
        for r in table_rows:
            clean = "-" if r["clean"] is None else f"{r['clean']:.1f}"
            flag = "yes" if r["leak"] else "no"
            h.append(f"<tr><td>{html.escape(r['method'])}</td><td>{r['eps']:g}</td>"
                     f"<td>{clean}</td><td>{r['adversarial']:.1f}</td><td>{flag}</td></tr>")
            m.append(f"| {r['method']} | {r['eps']:g} | {clean} | {r['adversarial']:.1f} | "
                     f"{flag} |")
        h.append("</tbody></table>")
        path = figures.plot_accuracy_vs_eps(white, figdir / "k17_table3_label_leaking.png",
                                            models=list(leak), attacks=sorted(set(leak.values())))
        fh, fm = _figure(path, root, "Accuracy vs epsilon under each training method's own "
                                     "attack (eps 0: clean)")
        page.add("Label leaking (K17 table 3)", "\n".join(h) + fh, "\n".join(m) + "\n" + fm)
    pairs = dict.fromkeys((r["source"], r["model"]) for r in rows
                          if r["metric"] == "transfer_top1" and r["source"] != r["model"])
    for source, target in pairs:
        sub = rows.filter(source=source, model=target)
        if len({r["eps"] for r in sub if r["metric"] == "transfer_top1"}) < 3:
            continue  # a curve needs a few epsilons (K17 figure 2 has four)
        attacks = list(dict.fromkeys(r["attack"] for r in sub))
        for kind, fig in (("transfer", "k17_fig2_transfer"), ("error", "k17_fig5_error")):
            path = figures.plot_transfer_vs_eps(
                sub, figdir / f"{fig}_{_slug(source)}_to_{_slug(target)}.png", source=source,
                target=target, attacks=attacks, kind=kind)
            add_fig(f"{kind.capitalize()} rate vs epsilon, {source} -> {target} "
                    f"(K17 figure {'2' if kind == 'transfer' else '5'})", path,
                    f"{kind} rate (top-1) of images crafted on {source}, classified by {target}")
    cap = {m.name: (m.params["width"], m.params["adversarial"])
           for m in store.models(experiment="capacity")}
    if cap and white.filter(model=list(cap)).rows:
        sub = white.filter(model=list(cap))
        attacks = list(dict.fromkeys(r["attack"] for r in sub if r["attack"] != CLEAN))
        eps = sorted({r["eps"] for r in sub if r["attack"] != CLEAN})
        path = figures.plot_capacity(sub, figdir / "k17_fig1_capacity.png", widths=cap,
                                     attacks=attacks, eps=eps, k=1)
        add_fig("Model capacity (K17 figure 1)", path,
                "Adversarial / clean top-1 accuracy ratio vs width multiplier rho")
    act = experiment("activations", "activation")
    if act and white.filter(model=list(act)).rows:
        ours = white.filter(model=list(act))
        # our "relu_decay:0.01" is the paper's "ReluDecay0.01"
        labels = {m: a.replace("relu_decay:", "ReluDecay") for m, a in act.items()}
        paper = get_table("k17-table7")
        title = "Activation functions (K17 table 7)"
        html_t, md_t = (render_whitebox(ours, fmt=fmt, title="", published=paper,
                                        row_map=labels) for fmt in ("html", "markdown"))
        attacks = list(dict.fromkeys(r["attack"] for r in ours if r["attack"] != CLEAN))
        path = figures.plot_accuracy_vs_eps(ours, figdir / "k17_table7_activations.png",
                                            models=list(act), attacks=attacks)
        fh, fm = _figure(path, root, "Accuracy vs epsilon per activation function")
        page.add(title, html_t + fh, md_t + "\n" + fm)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table.paper { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
table.paper th, table.paper td { border: 1px solid #bbb; padding: 0.2em 0.5em; }
table.paper td { text-align: right; }
table.paper td:first-child { text-align: left; }
tr.published td { color: #666; font-style: italic; }
.warning { background: #fff4e5; border-left: 4px solid #f0a020; padding: 0.3em 0.8em; }
figure img { max-width: 100%; }
table.compare, table.claims { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.85em; }
table.compare th, table.compare td, table.claims th, table.claims td {
  border: 1px solid #bbb; padding: 0.2em 0.4em; }
td.off { background: #fde2e1; }
td.ok { background: #e5f5e5; }
"""

# Marks the page once every image has decoded, so a headless browser can check it.
IMAGE_CHECK = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-decoded', ok);
});
"""


#: What :func:`build_report` writes into its folder (the rest of the folder is left alone).
REPORT_FILES = ("report.html", "report.md", "figures")


def report_outputs(out: str | os.PathLike) -> list[Path]:
    """The paths a report into ``out`` writes (:data:`REPORT_FILES`)."""
    return [Path(out) / name for name in REPORT_FILES]


def is_report_folder(out: Path) -> bool:
    """True when ``out`` holds a report written by :func:`build_report`."""
    try:
        page = (out / "report.html").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return (out / "report.md").is_file() and "data-images-decoded" in page


def check_report_output(out, overwrite: bool = False) -> Path:
    """``out`` may be missing, empty or an earlier report; any other folder is refused
    (:class:`~cascade_adv.errors.OutputPathError`) unless ``overwrite``."""
    from cascade_adv.errors import OutputPathError
    from cascade_adv.io import check_writable_dir

    out = check_writable_dir(out, "--out folder")
    if out.is_dir() and any(out.iterdir()) and not is_report_folder(out) and not overwrite:
        raise OutputPathError(f"--out {out} already exists and is not a report folder; pass a "
                              "new path or --overwrite to write the report into it")
    return out


def build_report(store: ResultsStore, out: str | os.PathLike, *,
                 title: str = "cascade-adv report", overwrite: bool = False,
                 sections: Sequence[tuple[str, str, str]] = (),
                 extra_figures: Sequence[str | os.PathLike] = (),
                 accuracy_figures: bool = True) -> tuple[Path, Path]:
    """Write ``out/report.html``, ``out/report.md`` and ``out/figures/*.png`` from the
    store; returns the two page paths.  Figures are drawn in a scratch folder and moved
    into place with the pages, so a failure leaves any previous report intact.  An
    existing ``out`` must be empty or an earlier report unless ``overwrite``.

    ``sections`` (title, HTML, Markdown) come first; ``extra_figures`` are PNG files they
    show as ``figures/NAME``, copied in. ``accuracy_figures=False`` leaves out the
    accuracy-vs-epsilon figure of each white-box section (when ``sections`` draw it)."""
    rows = store.query()
    if not len(rows):
        raise CascadeAdvError(f"results store {store.path} is empty; run 'cascade-adv eval' "
                              "or another evaluation first")
    out = check_report_output(out, overwrite=overwrite)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(out, "report")
    stage = make_temp_dir(out, "report")
    try:
        return _build_in(stage, store, rows, out, title, sections, extra_figures,
                         accuracy_figures)
    finally:  # a failure (a full disk) leaves the earlier report and no stage folder
        shutil.rmtree(stage, ignore_errors=True)


def _build_in(stage: Path, store: ResultsStore, rows, out: Path, title: str, sections,
              extra_figures, accuracy_figures: bool) -> tuple[Path, Path]:
    """:func:`build_report`'s pages and figures drawn in ``stage``, then moved into ``out``."""
    figdir = stage / "figures"
    figdir.mkdir(parents=True)
    page = _Page()
    for section in sections:
        page.add(*section)
    for fig in extra_figures:
        shutil.copyfile(fig, figdir / Path(fig).name)
    warnings = check_results(rows)
    warn_md = format_warnings(warnings)
    warn_html = (
        "<p>No sanity warnings.</p>" if not warnings else "<ul>" + "".join(
            f'<li class="warning">{html.escape(w.message)} <em>{html.escape(w.meaning)}</em>'
            "</li>" for w in warnings) + "</ul>")
    page.add("Sanity checks", warn_html, warn_md)
    # the published rows each model reproduces: its config's ``paper`` key, as recorded
    paper = {m.name: tuple(m.params.get("paper", ())) for m in store.models()}
    _whitebox_sections(page, rows, paper, stage, figdir if accuracy_figures else None)
    # the diagonal (a model attacked by itself) is white-box, not a same-init pair
    _blackbox_sections(page, rows, paper, lambda a, b: a != b and store.same_init(a, b))
    _seed_sections(page, rows, store)
    _analysis_sections(page, rows, store, stage, figdir)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    intro = (f"Built {stamp} from {store.path} ({len(rows)} rows, "
             f"{len(store.models())} registered models).")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>", "<nav><ul>"]
    body += [f'<li><a href="#s{i}">{html.escape(t)}</a></li>'
             for i, (t, _, _) in enumerate(page.sections)]
    body.append("</ul></nav>")
    md = [f"# {title}", "", intro, ""]
    for i, (t, h, m) in enumerate(page.sections):
        body.append(f'<section id="s{i}"><h2>{html.escape(t)}</h2>{h}</section>')
        md += [f"## {t}", "", m, ""]
    doc = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{html.escape(title)}</title><style>{CSS}</style>"
           f"<script>{IMAGE_CHECK}</script></head><body>" + "\n".join(body) + "</body></html>\n")
    atomic_write_text(stage / "report.html", doc)
    atomic_write_text(stage / "report.md", "\n".join(md))
    final_figs = out / "figures"
    aside = stage / "figures.old"
    if final_figs.exists():  # moved aside, removed only once the new figures are in place
        os.replace(final_figs, aside)
    try:
        os.replace(figdir, final_figs)
    except OSError:
        if aside.exists():
            os.replace(aside, final_figs)  # the earlier report's figures stay
        raise
    for name in ("report.md", "report.html"):
        os.replace(stage / name, out / name)
    return out / "report.html", out / "report.md"
