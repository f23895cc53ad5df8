"""PNG figures of both papers, drawn from result rows (``docs/results-schema.md``).

Every function takes a :class:`~cascade_adv.reporting.ResultTable`, writes one PNG
atomically and returns its path.  Missing data raises
:class:`~cascade_adv.errors.CascadeAdvError` with one line that names what is missing
and the command that produces it.

* :func:`plot_softmax_argument` - N18 figures 4 and 6: argument to the softmax vs eps.
* :func:`plot_attack_views` - the same along step_ll and at the iter_FGSM and APGD-CE
  images: what the paper's attacks see vs what the audit finds.
* :func:`plot_gradient_correlation` - N18 figure 5: correlation of input gradients vs eps.
* :func:`plot_sweep` - N18 figure 3: accuracy vs a training parameter (lambda2).
* :func:`plot_transfer_vs_eps` - K17 figures 2 (transfer rate) and 5 (error rate) vs eps.
* :func:`plot_capacity` - K17 figures 1 (top-1) and 4 (top-5): adversarial / clean
  accuracy ratio vs the width multiplier rho; :func:`capacity_ratios` computes the ratios.
* :func:`plot_accuracy_vs_eps` - white-box (or black-box) accuracy vs eps, one panel per
  attack, one line per model.

Only matplotlib's object API is used (no pyplot), so no GUI backend is ever needed.
Each ``plot_*`` function builds its figure in a ``_figure_*`` helper that returns the
:class:`~matplotlib.figure.Figure`.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from cascade_adv.errors import CascadeAdvError
from cascade_adv.io import atomic_write_bytes
from cascade_adv.results.tables import CLEAN, WHITEBOX, ResultTable

__all__ = [
    "capacity_ratios",
    "has_attack_views",
    "plot_accuracy_vs_eps",
    "plot_attack_views",
    "plot_capacity",
    "plot_gradient_correlation",
    "plot_softmax_argument",
    "plot_sweep",
    "plot_transfer_vs_eps",
    "save_png",
]

#: Size of one panel, inches (width, height).
PANEL = (3.2, 2.6)
#: Resolution of the PNG files.
DPI = 120
#: ``source`` of the softmax-argument and gradient-correlation rows.
SOFTMAX_SOURCE = "softmax_argument"
GRADCORR_SOURCE = "gradient_correlation"
#: N18's test-time directions of figures 4-6 (``attack`` of softmax-argument rows).
N18_DIRECTIONS: tuple[str, ...] = ("step_ll", "step_fgsm", "random_sign")
#: The columns of :func:`plot_attack_views`, with what each shows.
ATTACK_VIEWS: dict[str, str] = {"step_ll": "N18's direction", "iter_fgsm": "the paper's attack",
                                "apgd_ce": "the audit"}

_EPS_LABEL = "ε (pixels of [0, 255])"
_FONT = 8


# --- shared helpers ----------------------------------------------------------------------

def _as_table(table: Any) -> ResultTable:
    return table if isinstance(table, ResultTable) else ResultTable(table)


def _new_figure(nrows: int, ncols: int, *, sharex: bool | str = False,
                sharey: bool | str = False, figsize: tuple[float, float] | None = None):
    """A constrained-layout figure with an ``nrows x ncols`` grid of panels."""
    if figsize is None:
        figsize = (PANEL[0] * ncols + 0.3, PANEL[1] * nrows + 0.5)
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey)
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=_FONT)
    return fig, axes


def _title(ax, text: str) -> None:
    ax.set_title(text, fontsize=_FONT + 1)


def _labels(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlabel(xlabel, fontsize=_FONT)
    ax.set_ylabel(ylabel, fontsize=_FONT)


def _legend(ax, **kw) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=_FONT - 1, **kw)


def _no_data(ax) -> None:
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
            fontsize=_FONT, color="0.5")


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG file, atomically (a full disk: one line with its size)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise CascadeAdvError(f"figure path {path} must end in .png")
    buf = io.BytesIO()  # drawn first: its size is known to the free-space check
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _letter(i: int) -> str:
    return f"({chr(ord('a') + i)})" if i < 26 else f"({i + 1})"


def _in_order(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _cells(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, float, str], float]:
    """(model, attack, eps, metric) -> value; the first row of a key wins."""
    out: dict[tuple[str, str, float, str], float] = {}
    for r in rows:
        out.setdefault((r["model"], r["attack"], r["eps"], r["metric"]), r["value"])
    return out


def _curves(table: ResultTable, source: str, models: Sequence[str] | None,
            series: Sequence[str] | None, command: str, what: str
            ) -> tuple[list[str], list[str], ResultTable]:
    """Models and series (``attack`` values) of an analysis's rows, checked."""
    rows = table.filter(source=source)
    if models is None:
        models = _in_order(r["model"] for r in rows)
        if not models:
            raise CascadeAdvError(f"no {source} rows; run '{command}' first")
    models = list(models)
    for m in models:
        if not rows.filter(model=m).rows:
            raise CascadeAdvError(f"no {source} rows for model {m!r}; run '{command}' first")
    present = _in_order(r["attack"] for r in rows.filter(model=models))
    if series is None:
        series = present
    else:
        series = list(series)
        for m in models:
            have = {r["attack"] for r in rows.filter(model=m)}
            for s in series:
                if s not in have:
                    raise CascadeAdvError(f"no {source} rows for model {m!r}, {what} {s!r}; "
                                          f"run '{command}' first")
    return models, list(series), rows


def _line(cells: Mapping[tuple[str, str, float, str], float], model: str, attack: str,
          mean: str, std: str | None) -> tuple[list[float], list[float], list[float | None]]:
    """x = eps (sorted), y = ``mean``, and ``std`` (``None`` where missing)."""
    eps = sorted(e for (m, a, e, k) in cells if m == model and a == attack and k == mean)
    ys = [cells[(model, attack, e, mean)] for e in eps]
    sds = [cells.get((model, attack, e, std)) if std else None for e in eps]
    return eps, ys, sds


def _band(ax, xs, ys, sds, scale: float, color) -> None:
    """Shade ``y +- scale * std`` where the std is known."""
    pts = [(x, y, s) for x, y, s in zip(xs, ys, sds) if s is not None and math.isfinite(s)]
    if len(pts) >= 1:
        ax.fill_between([p[0] for p in pts], [p[1] - scale * p[2] for p in pts],
                        [p[1] + scale * p[2] for p in pts], color=color, alpha=0.2, linewidth=0)


# --- N18 figures 4 and 6 -----------------------------------------------------------------

def _method_title(method: str) -> str:
    """A panel's method: N18's directions as they are, an attack's rows (``iter_fgsm``,
    ``apgd_ce:steps=20``) marked as the attack's images (docs/design.md, "Softmax
    argument along the attacks' images")."""
    return method if method in N18_DIRECTIONS else f"{method} (its image at ε)"


def _softmax_suptitle(methods: Sequence[str]) -> str:
    n18 = [m for m in methods if m in N18_DIRECTIONS]
    what = "argument to the softmax vs ε (mean ± 1 std)"
    if len(n18) == len(methods):
        return f"{'N18 fig. 4' if methods == ['step_ll'] else 'N18 figs. 4, 6'}: {what}"
    if not n18:
        return f"At the attacks' images: {what}"
    return f"N18 figs. 4, 6 and the attacks' images: {what}"


def _softmax_panel(ax, cells, model: str, method: str) -> None:
    """The true-class (blue) and mean false-class (red) curves, each with its ± 1 std band."""
    drawn = False
    for prefix, color, label in (("true", "tab:blue", "true class"),
                                 ("false", "tab:red", "mean of false classes")):
        xs, ys, sds = _line(cells, model, method, f"{prefix}_mean", f"{prefix}_std")
        if xs:
            drawn = True
            ax.plot(xs, ys, color=color, label=label, linewidth=1.3)
            _band(ax, xs, ys, sds, 1.0, color)
    if not drawn:
        _no_data(ax)


def _softmax_axes(ax, *, last_row: bool, first_column: bool) -> None:
    """The axis labels of a softmax-argument panel: eps under the last row, the
    quantity beside the first column."""
    if last_row:
        ax.set_xlabel(_EPS_LABEL, fontsize=_FONT)
    if first_column:
        ax.set_ylabel("argument to the softmax", fontsize=_FONT)


def _figure_softmax_argument(table: ResultTable, *, models: Sequence[str] | None = None,
                             methods: Sequence[str] | None = None) -> Figure:
    table = _as_table(table)
    models, methods, rows = _curves(table, SOFTMAX_SOURCE, models, methods,
                                    "cascade-adv analyze softmax", "method")
    cells = _cells(rows)
    fig, axes = _new_figure(len(methods), len(models), sharex=True, sharey="row")
    fig.suptitle(_softmax_suptitle(methods), fontsize=_FONT + 2)
    for i, method in enumerate(methods):
        for j, model in enumerate(models):
            ax = axes[i][j]
            _title(ax, f"{_letter(i * len(models) + j)} {model}, {_method_title(method)}")
            _softmax_panel(ax, cells, model, method)
            _softmax_axes(ax, last_row=i == len(methods) - 1, first_column=j == 0)
    _legend(axes[0][0], loc="best")
    return fig


def plot_softmax_argument(table: ResultTable, path: str | os.PathLike, *,
                          models: Sequence[str] | None = None,
                          methods: Sequence[str] | None = None) -> Path:
    """N18 figures 4 and 6: one row of panels per method, one column per model.

    N18 figure 4: "Argument to the softmax vs. eps in test time. [...] "step_ll" method is
    used to generate test-time adversarial images. Arguments to the softmax were measured
    by changing eps and averaged over randomly chosen 128 images from CIFAR10 test-set.
    Blue line represents true class and the red line represents mean of the false
    classes. Shaded region shows +- 1 standard deviation of each line."  Figure 6 adds
    the "step_FGSM" and "random sign" methods.

    Rows: ``source="softmax_argument"``, ``attack`` = method, metrics ``true_mean``,
    ``true_std``, ``false_mean``, ``false_std``.  ``models`` defaults to the models in
    order of appearance, ``methods`` to the methods present.  A requested model (or an
    explicitly requested method of a model) without rows raises
    :class:`CascadeAdvError`.  Rows of an attack's images (``iter_fgsm``, ``apgd_ce``,
    ``apgd_ce:steps=20``; beyond N18) get their own rows of panels, titled
    "METHOD (its image at ε)".
    """
    return save_png(_figure_softmax_argument(table, models=models, methods=methods), path)


def _at_attack_images(attack: str) -> bool:
    """Rows of an attack's images: iter_fgsm or apgd_ce, with or without options."""
    return attack.split(":", 1)[0] in ATTACK_VIEWS and attack not in N18_DIRECTIONS


def _view_series(rows: ResultTable, model: str) -> dict[str, str | None]:
    """For each column of :func:`plot_attack_views`, the ``attack`` of ``model``'s
    softmax-argument rows it draws: the view's name itself if present, else the first
    labelled run of it (``apgd_ce:steps=20``), else ``None``."""
    present = _in_order(r["attack"] for r in rows.filter(model=model))
    out: dict[str, str | None] = {}
    for view in ATTACK_VIEWS:
        runs = [a for a in present if a.split(":", 1)[0] == view]
        out[view] = view if view in runs else (runs[0] if runs else None)
    return out


def has_attack_views(table: ResultTable) -> bool:
    """Whether ``table`` holds softmax-argument rows at an attack's images (iter_fgsm or
    apgd_ce, with or without options): what :func:`plot_attack_views` needs."""
    return any(r["source"] == SOFTMAX_SOURCE and _at_attack_images(r["attack"])
               for r in _as_table(table))


def _figure_attack_views(table: ResultTable, *, models: Sequence[str] | None = None) -> Figure:
    table = _as_table(table)
    rows = table.filter(source=SOFTMAX_SOURCE)
    command = "cascade-adv analyze softmax --method step_ll --method iter_fgsm --method apgd_ce"
    if models is None:
        models = _in_order(r["model"] for r in rows if _at_attack_images(r["attack"]))
        if not models:
            raise CascadeAdvError(f"no softmax_argument rows at the iter_fgsm or apgd_ce "
                                  f"images; run '{command}' first")
    models = list(models)
    for m in models:
        if not rows.filter(model=m).rows:
            raise CascadeAdvError(f"no softmax_argument rows for model {m!r}; run '{command}' "
                                  "first")
    cells = _cells(rows)
    fig, axes = _new_figure(len(models), len(ATTACK_VIEWS), sharex=True, sharey="row")
    fig.suptitle("Argument to the softmax vs ε (mean ± 1 std): what the paper's attacks see "
                 "vs what the audit finds", fontsize=_FONT + 2)
    for i, model in enumerate(models):
        series = _view_series(rows, model)
        for j, (view, role) in enumerate(ATTACK_VIEWS.items()):
            ax, method = axes[i][j], series[view]
            _title(ax, f"{_letter(i * len(ATTACK_VIEWS) + j)} {model}, {method or view}: "
                       f"{role}")
            if method is None:
                _no_data(ax)
            else:
                _softmax_panel(ax, cells, model, method)
            _softmax_axes(ax, last_row=i == len(models) - 1, first_column=j == 0)
    _legend(axes[0][0], loc="best")
    return fig


def plot_attack_views(table: ResultTable, path: str | os.PathLike, *,
                      models: Sequence[str] | None = None) -> Path:
    """What the paper's attacks see vs what the audit finds: for each model (one row of
    panels) the argument to the softmax (true class blue, mean of the false classes red,
    ± 1 std) along N18's step_ll direction, at the iter_FGSM images and at the APGD-CE
    images, side by side on one y scale (beyond N18; docs/design.md, "Softmax argument
    along the attacks' images").

    A network that masks its gradients keeps its true-class logit high along step_ll
    and at the iter_FGSM images while APGD-CE's images bring it below the false
    classes'.  Rows: ``source="softmax_argument"`` as :func:`plot_softmax_argument`
    reads them; a column takes the view's plain rows (``apgd_ce``) or else its first
    labelled run (``apgd_ce:steps=20``, named in the panel title), and shows "no data"
    where the model has neither.  ``models`` defaults to the models with rows at an
    attack's images, in order of appearance; none, or a requested model without
    softmax-argument rows, raises :class:`CascadeAdvError`.
    """
    return save_png(_figure_attack_views(table, models=models), path)


# --- N18 figure 5 ------------------------------------------------------------------------

def _figure_gradient_correlation(table: ResultTable, *, models: Sequence[str] | None = None,
                                 pairs: Sequence[str] | None = None) -> Figure:
    table = _as_table(table)
    models, pairs, rows = _curves(table, GRADCORR_SOURCE, models, pairs,
                                  "cascade-adv analyze gradcorr", "pair")
    cells = _cells(rows)
    fig, axes = _new_figure(1, len(models), sharex=True, sharey=True)
    fig.suptitle("N18 fig. 5: Pearson correlation of input gradients vs ε (mean ± 0.5 std)",
                 fontsize=_FONT + 2)
    colors = [f"C{i % 10}" for i in range(len(pairs))]
    lo, hi = math.inf, -math.inf
    for j, model in enumerate(models):
        ax = axes[0][j]
        _title(ax, f"{_letter(j)} {model}")
        drawn = False
        for pair, color in zip(pairs, colors):
            xs, ys, sds = _line(cells, model, pair, "mean", "std")
            if not xs:
                continue
            drawn = True
            ax.plot(xs, ys, color=color, label=pair.replace("~", " vs "), linewidth=1.3)
            _band(ax, xs, ys, sds, 0.5, color)
            for y, s in zip(ys, sds):
                half = 0.5 * s if s is not None and math.isfinite(s) else 0.0
                lo, hi = min(lo, y - half), max(hi, y + half)
        if not drawn:
            _no_data(ax)
        ax.set_xlabel(_EPS_LABEL, fontsize=_FONT)
        if j == 0:
            ax.set_ylabel("correlation", fontsize=_FONT)
    if lo >= -0.2 and hi <= 1.05:
        axes[0][0].set_ylim(-0.2, 1.05)
    _legend(axes[0][0], loc="best")
    return fig


def plot_gradient_correlation(table: ResultTable, path: str | os.PathLike, *,
                              models: Sequence[str] | None = None,
                              pairs: Sequence[str] | None = None) -> Path:
    """N18 figure 5: one panel per model, one line per pair of images.

    N18 figure 5: "Averaged Pearson's correlation coefficient between the gradients
    w.r.t. two images. (b) and (c) were trained with "step_ll". Correlation were measured
    by changing eps for each adversarial image and averaged over randomly chosen 128
    images from Cifar10 test-set. Shaded region represents +- 0.5 standard deviation of
    each line."

    Rows: ``source="gradient_correlation"``, ``attack`` = pair (``"clean~step_ll"``,
    ...), metrics ``mean`` and ``std`` (no shading where ``std`` is missing).  The y axis
    spans -0.2 to 1.05 unless a shaded band leaves that range.
    """
    return save_png(_figure_gradient_correlation(table, models=models, pairs=pairs), path)


# --- N18 figure 3 ------------------------------------------------------------------------

def _series_label(attack: str, eps: float) -> str:
    return CLEAN if attack == CLEAN else f"{attack} ε={eps:g}"


def _figure_sweep(table: ResultTable, *, values: Mapping[str, float], xlabel: str,
                  series: Sequence[tuple[str, float]], log_x: bool = False,
                  title: str = "") -> Figure:
    table = _as_table(table)
    if not values:
        raise CascadeAdvError("plot_sweep needs at least one model in 'values'")
    if not series:
        raise CascadeAdvError("plot_sweep needs at least one (attack, eps) series")
    xs: dict[str, float] = {}
    for model, v in values.items():
        try:
            xs[model] = float(v)
        except (TypeError, ValueError):
            raise CascadeAdvError(f"the {xlabel} value of model {model!r} is not a number: "
                                  f"{v!r}") from None
    white = table.filter(source=WHITEBOX, metric="top1", model=list(xs))
    for model in xs:
        if not white.filter(model=model).rows:
            raise CascadeAdvError(f"no white-box top1 rows for model {model!r}; run "
                                  "'cascade-adv eval' (or the sweep's 'cascade-adv analyze' "
                                  "command) first")
    cells = _cells(white)
    order = sorted(xs, key=lambda m: xs[m])
    fig, axes = _new_figure(1, 1, figsize=(PANEL[0] * 1.5 + 0.3, PANEL[1] * 1.3 + 0.5))
    ax = axes[0][0]
    for attack, eps in series:
        pts = [(xs[m], cells[(m, attack, float(eps), "top1")]) for m in order
               if (m, attack, float(eps), "top1") in cells]
        if not pts:
            raise CascadeAdvError(f"no white-box top1 rows for {_series_label(attack, eps)} "
                                  f"on any of the models {order}; run 'cascade-adv eval' first")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                linewidth=1.3, label=_series_label(attack, eps))
    ticks = sorted(set(xs.values()))
    if log_x:
        positive = [abs(x) for x in ticks if x != 0]
        if positive and (min(ticks) <= 0):
            ax.set_xscale("symlog", linthresh=min(positive) / 10, linscale=0.5)
        elif positive:
            ax.set_xscale("log")
    if len(ticks) <= 12:
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.minorticks_off()
    _labels(ax, xlabel, "top-1 accuracy (%)")
    _title(ax, title or f"N18 fig. 3: accuracy vs {xlabel}")
    _legend(ax, loc="best")
    return fig


def plot_sweep(table: ResultTable, path: str | os.PathLike, *, values: Mapping[str, float],
               xlabel: str, series: Sequence[tuple[str, float]], log_x: bool = False,
               title: str = "") -> Path:
    """Accuracy vs a training parameter; N18 figure 3 ("Accuracy vs. lambda2").

    N18 section 3.4: "Figure 3 shows that a higher lambda2 reduces accuracy of the clean
    images [...] On the contrary, as lambda2 increases, accuracy of the iteratively
    generated adversarial images increases."

    ``values`` maps model name -> parameter value (x); ``series`` lists the
    ``(attack, eps)`` lines, ``("clean", 0)`` for the clean accuracy; y is the white-box
    top-1 accuracy.  With ``log_x`` a 0 (or negative) value is kept on a symlog axis whose
    linear range ends a decade below the smallest positive value.  A model without
    white-box rows, or a series with no point at all, raises :class:`CascadeAdvError`;
    single missing points are left out of their line.
    """
    return save_png(_figure_sweep(table, values=values, xlabel=xlabel, series=series,
                               log_x=log_x, title=title), path)


# --- K17 figures 2 and 5 -----------------------------------------------------------------

_KINDS = {"transfer": ("transfer_top", "transfer rate", "K17 fig. 2"),
          "error": ("error_top", "error rate", "K17 fig. 5")}


def _check_k(k: int) -> int:
    if k not in (1, 5):
        raise CascadeAdvError(f"k must be 1 or 5 (top-1 / top-5), got {k!r}")
    return k


def _figure_transfer_vs_eps(table: ResultTable, *, source: str, target: str,
                            attacks: Sequence[str], kind: str = "transfer",
                            k: int = 1) -> Figure:
    table = _as_table(table)
    if kind not in _KINDS:
        raise CascadeAdvError(f"kind must be 'transfer' or 'error', got {kind!r}")
    prefix, what, paper = _KINDS[kind]
    metric = f"{prefix}{_check_k(k)}"
    rows = table.filter(model=target, source=source, metric=metric)
    command = "cascade-adv analyze transfer-eps"
    if not rows.rows:
        raise CascadeAdvError(f"no {metric} rows for source {source!r} -> target {target!r}; "
                              f"run '{command}' first")
    if not attacks:
        raise CascadeAdvError("plot_transfer_vs_eps needs at least one attack")
    cells = _cells(rows)
    fig, axes = _new_figure(1, 1, figsize=(PANEL[0] * 1.4 + 0.3, PANEL[1] * 1.3 + 0.4))
    ax = axes[0][0]
    for attack in attacks:
        xs, ys, _ = _line(cells, target, attack, metric, None)
        if not xs:
            raise CascadeAdvError(f"no {metric} rows for attack {attack!r}, source {source!r} "
                                  f"-> target {target!r}; run '{command}' first")
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.3, label=attack)
    ax.set_ylim(-2, 102)
    _labels(ax, _EPS_LABEL, f"top-{k} {what} (%)")
    _title(ax, f"{paper}: top-{k} {what} vs ε\n{source} → {target}")
    _legend(ax, loc="best")
    return fig


def plot_transfer_vs_eps(table: ResultTable, path: str | os.PathLike, *, source: str,
                         target: str, attacks: Sequence[str], kind: str = "transfer",
                         k: int = 1) -> Path:
    """K17 figure 2 (``kind="transfer"``) or 5 (``kind="error"``): rate vs eps, one line
    per attack, for images crafted on ``source`` and classified by ``target``.

    K17 figure 2: "Influence of the size of adversarial perturbation on transfer rate of
    adversarial examples. Transfer rate was computed using two Inception v3 models with
    different random intializations."
    K17 figure 5: "Influence of the size of adversarial perturbation on the error rate on
    adversarial examples generated for one model and classified using another model. Both
    source and target models were Inception v3 networks with different random
    intializations."

    Rows: ``model=target``, ``source=source``, metric ``transfer_top{k}`` or
    ``error_top{k}`` (percent).
    """
    return save_png(_figure_transfer_vs_eps(table, source=source, target=target,
                                         attacks=attacks, kind=kind, k=k), path)


# --- K17 figures 1 and 4 -----------------------------------------------------------------

def _clean_accuracy(cells, model: str, metric: str) -> float:
    v = cells.get((model, CLEAN, 0.0, metric))
    if v is None:
        raise CascadeAdvError(f"no white-box {metric} clean accuracy for model {model!r}; run "
                              "'cascade-adv analyze capacity' (or 'cascade-adv eval') first")
    return v


def capacity_ratios(table: ResultTable, widths: Mapping[str, Any], attack: str, eps: float,
                    k: int = 1) -> dict[str, float]:
    """Model -> white-box ``top{k}(attack, eps) / top{k}(clean)`` (K17 section 4.3: "the
    ratio of accuracy on adversarial images to accuracy on clean images").

    ``widths`` maps model name -> ``(rho, adversarially_trained)`` (only its keys are
    used).  A model without a clean accuracy raises :class:`CascadeAdvError`; models
    without the ``(attack, eps)`` row, or with a clean accuracy of 0, are left out.
    """
    table = _as_table(table)
    metric = f"top{_check_k(k)}"
    cells = _cells(table.filter(source=WHITEBOX, metric=metric, model=list(widths)))
    out: dict[str, float] = {}
    for model in widths:
        clean = _clean_accuracy(cells, model, metric)
        adv = cells.get((model, attack, float(eps), metric))
        if adv is not None and clean > 0:
            out[model] = adv / clean
    return out


def _capacity_layout(widths: Mapping[str, Any]) -> dict[bool, list[tuple[float, str]]]:
    """adversarially_trained -> [(rho, model)] sorted by rho; duplicates raise."""
    groups: dict[bool, list[tuple[float, str]]] = {}
    seen: dict[tuple[float, bool], str] = {}
    for model, spec in widths.items():
        try:
            rho, adv = spec
            rho, adv = float(rho), bool(adv)
        except (TypeError, ValueError):
            raise CascadeAdvError(f"widths[{model!r}] must be (rho, adversarially_trained), "
                                  f"got {spec!r}") from None
        if (rho, adv) in seen:
            raise CascadeAdvError(f"models {seen[(rho, adv)]!r} and {model!r} both have "
                                  f"rho={rho:g}, adversarially_trained={adv}")
        seen[(rho, adv)] = model
        groups.setdefault(adv, []).append((rho, model))
    return {adv: sorted(groups[adv]) for adv in (False, True) if adv in groups}


def _figure_capacity(table: ResultTable, *, widths: Mapping[str, Any], attacks: Sequence[str],
                     eps: Sequence[float], k: int = 1) -> Figure:
    table = _as_table(table)
    if not widths:
        raise CascadeAdvError("plot_capacity needs at least one model in 'widths'")
    if not attacks or not eps:
        raise CascadeAdvError("plot_capacity needs at least one attack and one eps")
    groups = _capacity_layout(widths)
    ratios = {(a, float(e)): capacity_ratios(table, widths, a, e, k) for a in attacks
              for e in eps}
    for (a, e), r in ratios.items():
        if not r:
            raise CascadeAdvError(f"no white-box top{k} rows for {a} ε={e:g} on any of the "
                                  f"models {list(widths)}; run 'cascade-adv analyze capacity' "
                                  "first")
    cols = list(groups)
    fig, axes = _new_figure(len(attacks), len(cols), sharex=True, sharey=True)
    n = "1" if k == 1 else "4"
    fig.suptitle(f"K17 fig. {n}: top-{k} adversarial / clean accuracy vs width ρ",
                 fontsize=_FONT + 2)
    for i, attack in enumerate(attacks):
        for j, adv in enumerate(cols):
            ax = axes[i][j]
            ax.axhline(1.0, color="0.3", linestyle="--", linewidth=0.9)
            for e in eps:
                r = ratios[(attack, float(e))]
                pts = [(rho, r[m]) for rho, m in groups[adv] if m in r]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                            markersize=3, linewidth=1.3, label=f"ε={float(e):g}")
            training = "with adv. training" if adv else "without adv. training"
            _title(ax, f"{attack}, {training}")
            if i == len(attacks) - 1:
                ax.set_xlabel("width multiplier ρ", fontsize=_FONT)
            if j == 0:
                ax.set_ylabel("adv. / clean accuracy", fontsize=_FONT)
            _legend(ax, loc="best")
    return fig


def plot_capacity(table: ResultTable, path: str | os.PathLike, *, widths: Mapping[str, Any],
                  attacks: Sequence[str], eps: Sequence[float], k: int = 1) -> Path:
    """K17 figure 1 (``k=1``) or 4 (``k=5``): ratio of adversarial to clean white-box
    accuracy vs the width multiplier rho.

    K17 figure 1: "Influence of size of the model on top 1 classification accuracy of
    various adversarial examples. Left column - base model without adversarial training,
    right column - model with adversarial training using "step l.l." method. Top row -
    results on "step l.l." adversarial images, middle row - results on "iter. l.l."
    adversarial images, bottom row - results on "basic iter." adversarial images."
    K17 figure 4: "Influence of size of the model on top 5 classification accuracy of
    various adversarial examples."

    ``widths`` maps model name -> ``(rho, adversarially_trained)``.  One row of panels
    per attack; columns: without, then with adversarial training (only the groups
    present in ``widths``); one line per eps; a dashed line at ratio 1.  See
    :func:`capacity_ratios`.
    """
    return save_png(_figure_capacity(table, widths=widths, attacks=attacks, eps=eps, k=k), path)


# --- accuracy vs eps ---------------------------------------------------------------------

def _figure_accuracy_vs_eps(table: ResultTable, *, models: Sequence[str],
                            attacks: Sequence[str], k: int = 1,
                            source: str = WHITEBOX) -> Figure:
    table = _as_table(table)
    metric = f"top{_check_k(k)}"
    if not models or not attacks:
        raise CascadeAdvError("plot_accuracy_vs_eps needs at least one model and one attack")
    rows = table.filter(metric=metric, model=list(models))
    cells = _cells(rows.filter(source=source))
    clean_white = _cells(rows.filter(source=WHITEBOX, attack=CLEAN))
    command = "cascade-adv eval" if source == WHITEBOX else "cascade-adv transfer"
    for m in models:
        if not any(key[0] == m and key[1] != CLEAN for key in cells):
            raise CascadeAdvError(f"no {metric} rows with source {source!r} for model {m!r}; "
                                  f"run '{command}' first")
    fig, axes = _new_figure(1, len(attacks), sharex=True, sharey=True)
    where = "white-box" if source == WHITEBOX else f"black-box from {source}"
    fig.suptitle(f"top-{k} accuracy vs ε ({where})", fontsize=_FONT + 2)
    for j, attack in enumerate(attacks):
        ax = axes[0][j]
        for i, m in enumerate(models):
            xs, ys, _ = _line(cells, m, attack, metric, None)
            clean = cells.get((m, CLEAN, 0.0, metric), clean_white.get((m, CLEAN, 0.0, metric)))
            if clean is not None and 0.0 not in xs:
                xs, ys = [0.0, *xs], [clean, *ys]
            if xs:
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.3, color=f"C{i % 10}",
                        label=m)
        _title(ax, attack)
        ax.set_ylim(-2, 102)
        ax.set_xlabel(_EPS_LABEL, fontsize=_FONT)
        if j == 0:
            ax.set_ylabel(f"top-{k} accuracy (%)", fontsize=_FONT)
    _legend(axes[0][0], loc="best")
    return fig


def plot_accuracy_vs_eps(table: ResultTable, path: str | os.PathLike, *,
                         models: Sequence[str], attacks: Sequence[str], k: int = 1,
                         source: str = WHITEBOX) -> Path:
    """Accuracy vs eps: one panel per attack, one line per model; the eps 0 point is the
    clean accuracy (from ``source``'s rows, else the white-box one).

    ``source`` is ``"whitebox"`` (N18 tables 1-2, K17 table 1 as curves) or a source
    model's name (black-box rows).  A model without any row of ``source`` raises
    :class:`CascadeAdvError`.
    """
    return save_png(_figure_accuracy_vs_eps(table, models=models, attacks=attacks, k=k,
                                         source=source), path)
