"""PNG figures of both papers (cascade_adv.reporting.figures), from hand-made rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from matplotlib.image import imread

from cascade_adv.errors import CascadeAdvError
from cascade_adv.reporting import ResultTable, figures

EPS = [0.0, 2.0, 4.0, 8.0]


def row(model: str, attack: str, eps: float, value: float, metric: str = "top1",
        source: str = "whitebox") -> dict:
    return {"model": model, "model_hash": "h-" + model, "dataset": "cifar10", "split": "test",
            "attack": attack, "eps": eps, "source": source, "metric": metric, "value": value,
            "n": 128}


def decode(path: Path) -> tuple[int, int]:
    """Height and width of a PNG that decodes to an RGB(A) image."""
    assert path.is_file()
    img = imread(path, format="png")
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert img.shape[0] > 100 and img.shape[1] > 100
    return img.shape[0], img.shape[1]


def no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --- N18 figures 4 and 6 -----------------------------------------------------------------

def softmax_table(models=("baseline", "pivot"),
                  methods=("step_ll", "step_fgsm", "random_sign")) -> ResultTable:
    rows = []
    for i, m in enumerate(models):
        for method in methods:
            for e in EPS:
                rows += [row(m, method, e, 10 - e * (i + 1) / 4, "true_mean", "softmax_argument"),
                         row(m, method, e, 1.5, "true_std", "softmax_argument"),
                         row(m, method, e, -1 + e / 8, "false_mean", "softmax_argument"),
                         row(m, method, e, 0.5, "false_std", "softmax_argument")]
    return ResultTable(rows)


def test_softmax_argument_grid_grows(tmp_path: Path) -> None:
    table = softmax_table()
    big = figures.plot_softmax_argument(table, tmp_path / "big.png")
    assert big == tmp_path / "big.png"
    small = figures.plot_softmax_argument(table, tmp_path / "small.png", models=["pivot"],
                                          methods=["step_ll"])
    (hb, wb), (hs, ws) = decode(big), decode(small)
    assert hb > hs and wb > ws
    no_temp_files(tmp_path)


def test_softmax_argument_layout() -> None:
    fig = figures._figure_softmax_argument(softmax_table())
    axes = fig.axes
    assert len(axes) == 6  # 3 methods x 2 models
    # row-major: method rows, model columns, in order of appearance
    assert axes[0].get_title() == "(a) baseline, step_ll"
    assert axes[1].get_title() == "(b) pivot, step_ll"
    assert axes[5].get_title() == "(f) pivot, random_sign"
    lines = axes[0].get_lines()
    assert [ln.get_color() for ln in lines] == ["tab:blue", "tab:red"]
    assert list(lines[0].get_xdata()) == EPS
    assert "N18" in fig._suptitle.get_text()
    # one shaded band per line
    assert len(axes[0].collections) == 2


def test_softmax_argument_missing(tmp_path: Path) -> None:
    with pytest.raises(CascadeAdvError, match="'kurakin'.*cascade-adv analyze softmax"):
        figures.plot_softmax_argument(softmax_table(), tmp_path / "x.png",
                                      models=["pivot", "kurakin"])
    with pytest.raises(CascadeAdvError, match="no softmax_argument rows"):
        figures.plot_softmax_argument(ResultTable([row("a", "clean", 0, 90)]),
                                      tmp_path / "x.png")
    with pytest.raises(CascadeAdvError, match="'baseline'.*'random_sign'"):
        figures.plot_softmax_argument(softmax_table(methods=("step_ll",)), tmp_path / "x.png",
                                      methods=["step_ll", "random_sign"])
    assert not (tmp_path / "x.png").exists()


# --- N18 figure 5 ------------------------------------------------------------------------

PAIRS = ("clean~step_ll", "clean~step_fgsm", "clean~random_sign", "step_ll~step_fgsm")


def corr_table(models=("baseline", "kurakin", "pivot"), std=True, low=0.0,
               drop=40.0) -> ResultTable:
    rows = []
    for m in models:
        for j, pair in enumerate(PAIRS):
            for e in EPS:
                rows.append(row(m, pair, e, max(low, 1 - e * (j + 1) / drop), "mean",
                                "gradient_correlation"))
                if std:
                    rows.append(row(m, pair, e, 0.1, "std", "gradient_correlation"))
    return ResultTable(rows)


def test_gradient_correlation(tmp_path: Path) -> None:
    big = figures.plot_gradient_correlation(corr_table(), tmp_path / "c3.png")
    small = figures.plot_gradient_correlation(corr_table(), tmp_path / "c1.png",
                                              models=["pivot"], pairs=["clean~step_ll"])
    assert decode(big)[1] > decode(small)[1]
    fig = figures._figure_gradient_correlation(corr_table())
    assert len(fig.axes) == 3
    assert len(fig.axes[0].get_lines()) == 4
    assert fig.axes[0].get_ylim() == pytest.approx((-0.2, 1.05))
    assert "N18 fig. 5" in fig._suptitle.get_text()


def test_gradient_correlation_auto_range_and_no_std() -> None:
    fig = figures._figure_gradient_correlation(corr_table(std=False, low=-0.9, drop=4.0))
    assert fig.axes[0].get_ylim()[0] < -0.8
    assert all(len(ax.collections) == 0 for ax in fig.axes)  # no std -> no shading


def test_gradient_correlation_missing(tmp_path: Path) -> None:
    with pytest.raises(CascadeAdvError, match="'other'.*cascade-adv analyze gradcorr"):
        figures.plot_gradient_correlation(corr_table(), tmp_path / "x.png",
                                          models=["other"])


# --- N18 figure 3 ------------------------------------------------------------------------

LAM2 = {"lambda2/a": 0.0, "lambda2/b": 1e-4, "lambda2/c": 1e-2, "lambda2/d": 0.3}


def lambda2_table() -> ResultTable:
    rows = []
    for i, m in enumerate(LAM2):
        rows += [row(m, "clean", 0, 91 - i), row(m, "iter_fgsm", 16, 10 + 5 * i),
                 row(m, "step_ll", 16, 80 + i)]
    return ResultTable(rows)


SERIES = [("clean", 0.0), ("iter_fgsm", 16.0), ("step_ll", 16.0)]


def test_sweep_symlog_keeps_zero(tmp_path: Path) -> None:
    path = figures.plot_sweep(lambda2_table(), tmp_path / "fig3.png", values=LAM2,
                              xlabel="lambda2", series=SERIES, log_x=True)
    decode(path)
    fig = figures._figure_sweep(lambda2_table(), values=LAM2, xlabel="lambda2", series=SERIES,
                                log_x=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "symlog"
    assert ax.xaxis.get_transform().linthresh < 1e-4
    clean = ax.get_lines()[0]
    assert list(clean.get_xdata()) == [0.0, 1e-4, 1e-2, 0.3]  # 0 is kept, sorted by x
    assert list(clean.get_ydata()) == [91, 90, 89, 88]
    assert [t.get_text() for t in ax.legend_.get_texts()] == ["clean", "iter_fgsm ε=16",
                                                              "step_ll ε=16"]
    assert "N18 fig. 3" in ax.get_title()


def test_sweep_scales() -> None:
    positive = {m: v for m, v in LAM2.items() if v > 0}
    fig = figures._figure_sweep(lambda2_table(), values=positive, xlabel="lambda2",
                                series=SERIES, log_x=True, title="custom")
    assert fig.axes[0].get_xscale() == "log"
    assert fig.axes[0].get_title() == "custom"
    fig = figures._figure_sweep(lambda2_table(), values=LAM2, xlabel="lambda2", series=SERIES)
    assert fig.axes[0].get_xscale() == "linear"


def test_sweep_missing(tmp_path: Path) -> None:
    with pytest.raises(CascadeAdvError, match="'lambda2/e'"):
        figures.plot_sweep(lambda2_table(), tmp_path / "x.png",
                           values={**LAM2, "lambda2/e": 1.0}, xlabel="lambda2", series=SERIES)
    with pytest.raises(CascadeAdvError, match="iter_ll ε=4"):
        figures.plot_sweep(lambda2_table(), tmp_path / "x.png", values=LAM2,
                           xlabel="lambda2", series=[("iter_ll", 4)])


# --- K17 figures 2 and 5 -----------------------------------------------------------------

def transfer_table() -> ResultTable:
    rows = []
    for a, base in (("step_fgsm", 60), ("iter_fgsm", 20), ("iter_ll", 5)):
        for e in (2, 4, 8, 16):
            rows += [row("B", a, e, base + e, "transfer_top1", "A"),
                     row("B", a, e, base / 2 + e, "error_top1", "A")]
    return ResultTable(rows)


def test_transfer_vs_eps(tmp_path: Path) -> None:
    attacks = ["step_fgsm", "iter_fgsm", "iter_ll"]
    for kind, paper in (("transfer", "K17 fig. 2"), ("error", "K17 fig. 5")):
        path = figures.plot_transfer_vs_eps(transfer_table(), tmp_path / f"{kind}.png",
                                            source="A", target="B", attacks=attacks, kind=kind)
        decode(path)
        fig = figures._figure_transfer_vs_eps(transfer_table(), source="A", target="B",
                                              attacks=attacks, kind=kind)
        ax = fig.axes[0]
        assert paper in ax.get_title()
        assert len(ax.get_lines()) == 3
        assert list(ax.get_lines()[1].get_xdata()) == [2, 4, 8, 16]
    fig = figures._figure_transfer_vs_eps(transfer_table(), source="A", target="B",
                                          attacks=["iter_ll"], kind="error")
    assert list(fig.axes[0].get_lines()[0].get_ydata()) == [4.5, 6.5, 10.5, 18.5]


def test_transfer_vs_eps_missing(tmp_path: Path) -> None:
    with pytest.raises(CascadeAdvError, match="transfer_top5.*'A'.*'B'.*transfer-eps"):
        figures.plot_transfer_vs_eps(transfer_table(), tmp_path / "x.png", source="A",
                                     target="B", attacks=["iter_ll"], k=5)
    with pytest.raises(CascadeAdvError, match="'C'"):
        figures.plot_transfer_vs_eps(transfer_table(), tmp_path / "x.png", source="C",
                                     target="B", attacks=["iter_ll"])
    with pytest.raises(CascadeAdvError, match="'step_ll'"):
        figures.plot_transfer_vs_eps(transfer_table(), tmp_path / "x.png", source="A",
                                     target="B", attacks=["step_ll"])
    with pytest.raises(CascadeAdvError, match="kind"):
        figures.plot_transfer_vs_eps(transfer_table(), tmp_path / "x.png", source="A",
                                     target="B", attacks=["iter_ll"], kind="rate")


# --- K17 figures 1 and 4 -----------------------------------------------------------------

WIDTHS = {"w0.5": (0.5, False), "w1": (1.0, False), "w2": (2.0, False),
          "w0.5_adv": (0.5, True), "w1_adv": (1.0, True), "w2_adv": (2.0, True)}


def capacity_table() -> ResultTable:
    clean = {"w0.5": 80.0, "w1": 85.0, "w2": 90.0, "w0.5_adv": 78.0, "w1_adv": 84.0,
             "w2_adv": 88.0}
    rows = []
    for m, c in clean.items():
        rows += [row(m, "clean", 0, c), row(m, "clean", 0, 95.0, "top5")]
        for a, frac in (("step_ll", 0.5), ("iter_ll", 0.25), ("iter_fgsm", 0.1)):
            for e in (2, 16):
                adv = c * frac * (2 if m.endswith("_adv") else 1) / (1 if e == 2 else 2)
                rows += [row(m, a, e, adv), row(m, a, e, 47.5, "top5")]
    return ResultTable(rows)


def test_capacity_ratios() -> None:
    r = figures.capacity_ratios(capacity_table(), WIDTHS, "step_ll", 2, k=1)
    assert r == pytest.approx({m: (1.0 if m.endswith("_adv") else 0.5) for m in WIDTHS})
    r = figures.capacity_ratios(capacity_table(), WIDTHS, "iter_fgsm", 16, k=1)
    assert r["w1"] == pytest.approx(85 * 0.1 / 2 / 85)
    assert r["w2_adv"] == pytest.approx(0.1)
    r = figures.capacity_ratios(capacity_table(), WIDTHS, "iter_ll", 16, k=5)
    assert r == pytest.approx({m: 0.5 for m in WIDTHS})
    # a model without the (attack, eps) row is left out
    assert figures.capacity_ratios(capacity_table(), WIDTHS, "iter_ll", 8) == {}
    table = capacity_table()
    table.extend([row("w4", "step_ll", 2, 40.0)])
    with pytest.raises(CascadeAdvError, match="'w4'"):
        figures.capacity_ratios(table, {**WIDTHS, "w4": (4.0, False)}, "step_ll", 2)


def test_capacity_figure(tmp_path: Path) -> None:
    attacks = ["step_ll", "iter_ll", "iter_fgsm"]
    big = figures.plot_capacity(capacity_table(), tmp_path / "fig1.png", widths=WIDTHS,
                                attacks=attacks, eps=[2, 16])
    small = figures.plot_capacity(capacity_table(), tmp_path / "one.png",
                                  widths={m: w for m, w in WIDTHS.items() if not w[1]},
                                  attacks=["step_ll"], eps=[2], k=5)
    (hb, wb), (hs, ws) = decode(big), decode(small)
    assert hb > hs and wb > ws
    fig = figures._figure_capacity(capacity_table(), widths=WIDTHS, attacks=attacks,
                                   eps=[2, 16])
    assert len(fig.axes) == 6
    assert "K17 fig. 1" in fig._suptitle.get_text()
    left, right = fig.axes[0], fig.axes[1]
    assert "without" in left.get_title() and "with adv" in right.get_title()
    dashed, e2, _ = left.get_lines()
    assert list(dashed.get_ydata()) == [1, 1]
    assert list(e2.get_xdata()) == [0.5, 1.0, 2.0]
    assert list(e2.get_ydata()) == pytest.approx([0.5, 0.5, 0.5])
    assert list(right.get_lines()[2].get_ydata()) == pytest.approx([0.5, 0.5, 0.5])
    fig = figures._figure_capacity(capacity_table(), widths=WIDTHS, attacks=attacks, eps=[2],
                                   k=5)
    assert "K17 fig. 4" in fig._suptitle.get_text()


def test_capacity_errors(tmp_path: Path) -> None:
    with pytest.raises(CascadeAdvError, match="iter_ll ε=8"):
        figures.plot_capacity(capacity_table(), tmp_path / "x.png", widths=WIDTHS,
                              attacks=["iter_ll"], eps=[8])
    with pytest.raises(CascadeAdvError, match="both have rho=1"):
        figures.plot_capacity(capacity_table(), tmp_path / "x.png",
                              widths={"w1": (1, False), "w2": (1, False)},
                              attacks=["iter_ll"], eps=[2])
    with pytest.raises(CascadeAdvError, match="k must be 1 or 5"):
        figures.capacity_ratios(capacity_table(), WIDTHS, "iter_ll", 2, k=3)


# --- accuracy vs eps ---------------------------------------------------------------------

def test_accuracy_vs_eps(tmp_path: Path) -> None:
    table = capacity_table()
    path = figures.plot_accuracy_vs_eps(table, tmp_path / "acc.png", models=["w1", "w1_adv"],
                                        attacks=["step_ll", "iter_ll", "iter_fgsm"])
    small = figures.plot_accuracy_vs_eps(table, tmp_path / "acc1.png", models=["w1"],
                                         attacks=["step_ll"])
    assert decode(path)[1] > decode(small)[1]
    fig = figures._figure_accuracy_vs_eps(table, models=["w1", "w1_adv"], attacks=["step_ll"])
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0, 2, 16]  # eps 0 = clean accuracy
    assert list(line.get_ydata()) == pytest.approx([85, 42.5, 21.25])
    with pytest.raises(CascadeAdvError, match="'nope'"):
        figures.plot_accuracy_vs_eps(table, tmp_path / "x.png", models=["w1", "nope"],
                                     attacks=["step_ll"])


def test_path_must_be_png(tmp_path: Path) -> None:
    with pytest.raises(CascadeAdvError, match=r"\.png"):
        figures.plot_transfer_vs_eps(transfer_table(), tmp_path / "x.pdf", source="A",
                                     target="B", attacks=["iter_ll"])


def test_plain_rows_accepted(tmp_path: Path) -> None:
    path = figures.plot_transfer_vs_eps(list(transfer_table()), tmp_path / "sub" / "t.png",
                                        source="A", target="B", attacks=["iter_ll"])
    assert math.prod(decode(path)) > 0
