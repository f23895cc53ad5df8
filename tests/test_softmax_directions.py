"""The argument to the softmax at the images of iter_FGSM and APGD-CE (beyond N18 figures
4-6): what the paper's attacks see vs what the audit finds (docs/design.md, "Softmax
argument along the attacks' images"); the analysis, its figure, the report and the CLI."""

from __future__ import annotations

import html
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli import run_cli
from matplotlib.image import imread
from torch import nn

from cascade_adv import attacks
from cascade_adv.analysis import softmax_argument
from cascade_adv.analysis.softmax import ALL_METHODS, ATTACK_METHODS, METHODS, method_label
from cascade_adv.data import ImageDataset
from cascade_adv.errors import AttackError, CascadeAdvError, InvalidArgument, UnknownName
from cascade_adv.evaluation.engine import seeded_generator, stack
from cascade_adv.reporting import ResultTable, figures
from cascade_adv.reporting.report import build_report
from cascade_adv.results.store import ResultsStore

ROOT = Path(__file__).resolve().parents[1]
EPS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)


# --- a 2-class linear model: the CE gradient's sign is constant ---------------------------

def centred(w: np.ndarray) -> tuple[float, float]:
    """The bias that puts the mid-grey image (all pixels 0.5) on the decision boundary."""
    return (-0.5 * float(w[0].sum()), -0.5 * float(w[1].sum()))


def two_class(w: np.ndarray, b=None) -> nn.Module:
    b = centred(w) if b is None else b
    model = nn.Sequential(nn.Flatten(), nn.Linear(w.shape[1], 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(w, dtype=torch.float32))
        model[1].bias.copy_(torch.tensor(b, dtype=torch.float32))
    return model


def mid_range_images(model: nn.Module, n: int = 12, seed: int = 0) -> ImageDataset:
    """``n`` random 1x4x4 images with pixels in [0.4, 0.6] (so no eps up to 16 reaches the
    [0, 1] box), labelled with the model's own clean prediction (APGD leaves an image it
    misclassifies clean as it is)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(102, 154, (n, 1, 4, 4), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(dim=1)
    assert len(set(labels.tolist())) == 2  # both classes, so both of w_y - w_other's signs
    return ImageDataset(images, labels, "toy", "test", ["a", "b"])


def closed_form(w: np.ndarray, b, ds: ImageDataset, e: float) -> tuple[np.ndarray, np.ndarray]:
    """True and false logit per image at ``x + e/255 sign(w_other - w_y)``: the CE gradient
    of a 2-class linear model is ``p_other (w_other - w_y)``, so every step of iter_FGSM (and
    APGD's first) moves each pixel the same way, to the corner of the eps ball."""
    x = ds.images.numpy().reshape(len(ds), -1).astype(np.float64) / 255
    y = ds.labels.numpy()
    other = 1 - y
    x_adv = x + e / 255 * np.sign(w[other] - w[y])
    z = x_adv @ w.T + np.asarray(b)
    rows = np.arange(len(y))
    return z[rows, y], z[rows, other]


def cells(table) -> dict:
    return {(r["attack"], r["eps"], r["metric"]): r["value"] for r in table}


W_RANDOM = np.random.default_rng(3).normal(scale=0.5, size=(2, 16))
W_MIRROR = np.stack([W_RANDOM[0], -W_RANDOM[0]])  # w_1 = -w_0: the true logit itself falls


@pytest.mark.parametrize("w", [W_RANDOM, W_MIRROR], ids=["random", "mirror"])
@pytest.mark.parametrize("method", ATTACK_METHODS)
def test_attack_images_of_a_two_class_linear_model_by_hand(w, method):
    b = centred(w)
    model = two_class(w, b)
    ds = mid_range_images(model)
    got = cells(softmax_argument(model, ds, methods=[method], eps=EPS, seed=5))
    clean_gap = got[(method, 0.0, "true_mean")] - got[(method, 0.0, "false_mean")]
    l1 = np.abs(w[0] - w[1]).sum()
    for e in EPS:
        true, false = closed_form(w, b, ds, e)
        for name, v in (("true", true), ("false", false)):
            assert got[(method, e, f"{name}_mean")] == pytest.approx(v.mean(), abs=2e-5)
            assert got[(method, e, f"{name}_std")] == pytest.approx(v.std(ddof=1), abs=2e-5)
        # the logit difference moves by exactly eps * ||w_y - w_other||_1 (not clipped)
        gap = got[(method, e, "true_mean")] - got[(method, e, "false_mean")]
        assert gap == pytest.approx(clean_gap - e / 255 * l1, abs=2e-5)
        # never above the clean true-class logit on average where the model is a mirror
        if w is W_MIRROR:
            assert got[(method, e, "true_mean")] <= got[(method, 0.0, "true_mean")] + 1e-6


def test_apgd_is_seeded_and_its_options_label_the_rows():
    torch.manual_seed(0)  # curved enough for the random start and the steps to matter
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3))
    with torch.no_grad():
        model[1].weight.mul_(8.0)
        model[1].bias.mul_(8.0)
    images = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(dim=1)
    ds = ImageDataset(images, labels, "toy", "test", ["a", "b", "c"])
    kw = {"methods": ["step_ll", "apgd_ce"], "eps": (0, 8, 32),
          "attack_options": {"apgd_ce": {"steps": 3}}}
    first = softmax_argument(model, ds, seed=1, **kw)
    torch.manual_seed(99)  # the global generator plays no part
    assert softmax_argument(model, ds, seed=1, **kw) == first
    other = cells(softmax_argument(model, ds, seed=2, **kw))  # the same 6 images
    mine = cells(first)
    assert {a for a, _, _ in mine} == {"step_ll", "apgd_ce:steps=3"}
    assert mine[("apgd_ce:steps=3", 32.0, "true_mean")] != other[("apgd_ce:steps=3", 32.0,
                                                                  "true_mean")]
    assert all(mine[k] == other[k] for k in mine if k[0] == "step_ll")  # no random draw
    # each eps's row is APGD's image for that eps ball: the attack run by hand on the
    # batch stacked eps-major, from the method's generator seeded with the seed
    xs, ys, es = stack(images.float() / 255, labels, [8.0, 32.0])
    x_adv = attacks.run("apgd_ce", model, xs, ys, es, steps=3,
                        generator=seeded_generator(1, "cpu"))
    with torch.no_grad():
        true = model(x_adv).gather(1, ys[:, None]).squeeze(1).double().view(2, 6)
    for i, e in enumerate((8.0, 32.0)):
        assert mine[("apgd_ce:steps=3", e, "true_mean")] == pytest.approx(
            true[i].mean().item(), abs=1e-6)
    # the attack's defaults leave the plain name: rows of the full APGD
    assert method_label("apgd_ce", {"steps": 100, "rho": 0.75}) == "apgd_ce"
    assert method_label("apgd_ce", {"steps": 20, "restarts": 2}) == "apgd_ce:restarts=2:steps=20"
    assert method_label("iter_fgsm", {"steps": None}) == "iter_fgsm"


def test_default_methods_and_bad_methods_or_options():
    model = two_class(W_RANDOM)
    ds = mid_range_images(model)
    assert METHODS == ("step_ll", "step_fgsm", "random_sign")
    assert ALL_METHODS == METHODS + ("iter_fgsm", "apgd_ce")
    assert {r["attack"] for r in softmax_argument(model, ds, eps=(0, 4))} == set(METHODS)
    with pytest.raises(UnknownName, match="choose from: step_ll, .*iter_fgsm, apgd_ce") as err:
        softmax_argument(model, ds, methods=["pgd"])
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    with pytest.raises(InvalidArgument, match="no method"):
        softmax_argument(model, ds, methods=[])
    with pytest.raises(UnknownName, match="only the attack methods"):
        softmax_argument(model, ds, methods=["step_ll"], attack_options={"step_ll": {}})
    with pytest.raises(InvalidArgument, match="not among the methods"):
        softmax_argument(model, ds, methods=["iter_fgsm"], attack_options={"apgd_ce": {}})
    with pytest.raises(AttackError, match="steps"):
        softmax_argument(model, ds, methods=["apgd_ce"], attack_options={"apgd_ce": {"steps": 0}})
    with pytest.raises(AttackError, match="no option 'queries'"):
        softmax_argument(model, ds, methods=["apgd_ce"],
                         attack_options={"apgd_ce": {"queries": 5}})
    with pytest.raises(InvalidArgument, match="mapping"):
        softmax_argument(model, ds, methods=["apgd_ce"], attack_options=[("apgd_ce", {})])


# --- the figures ------------------------------------------------------------------------

def table(models=("kurakin", "pivot"), methods=("step_ll", "iter_fgsm", "apgd_ce")):
    rows = []
    for i, m in enumerate(models):
        for method in methods:
            for e in (0.0, 4.0, 8.0, 16.0):
                drop = {"step_ll": 0.05, "iter_fgsm": 0.1}.get(method.split(":")[0], 0.8)
                for metric, v in (("true_mean", 10 - drop * e * (i + 1)), ("true_std", 1.0),
                                  ("false_mean", -1 + e / 10), ("false_std", 0.5)):
                    rows.append({"model": m, "model_hash": "", "dataset": "cifar10",
                                 "split": "test", "attack": method, "eps": e,
                                 "source": "softmax_argument", "metric": metric, "value": v,
                                 "n": 16})
    return ResultTable(rows)


def is_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path, format="png")
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_attack_views_figure(tmp_path):
    path = figures.plot_attack_views(table(), tmp_path / "views.png")
    assert path == tmp_path / "views.png"
    is_png(path)
    fig = figures._figure_attack_views(table())
    assert len(fig.axes) == 6  # 2 models x (step_ll, iter_fgsm, apgd_ce)
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        "(a) kurakin, step_ll: N18's direction", "(b) kurakin, iter_fgsm: the paper's attack",
        "(c) kurakin, apgd_ce: the audit"]
    assert [ln.get_color() for ln in fig.axes[2].get_lines()] == ["tab:blue", "tab:red"]
    assert list(fig.axes[2].get_lines()[0].get_ydata()) == [10, 10 - 3.2, 10 - 6.4, 10 - 12.8]
    assert "what the audit finds" in fig._suptitle.get_text()
    # a labelled cheaper APGD is drawn under its label; a missing view says so
    cheap = table(models=("pivot",), methods=("iter_fgsm", "apgd_ce:steps=20"))
    fig = figures._figure_attack_views(cheap)
    assert fig.axes[2].get_title() == "(c) pivot, apgd_ce:steps=20: the audit"
    assert [t.get_text() for t in fig.axes[0].texts] == ["no data"]
    # only models with rows at an attack's images, unless asked
    n18 = table(models=("baseline",), methods=("step_ll", "step_fgsm"))
    both = ResultTable([*n18, *cheap])
    assert len(figures._figure_attack_views(both).axes) == 3
    assert figures.has_attack_views(both) and not figures.has_attack_views(n18)
    with pytest.raises(CascadeAdvError, match="iter_fgsm or apgd_ce.*--method apgd_ce"):
        figures.plot_attack_views(n18, tmp_path / "none.png")
    with pytest.raises(CascadeAdvError, match="'other'"):
        figures.plot_attack_views(both, tmp_path / "none.png", models=["other"])
    assert not (tmp_path / "none.png").exists()


def test_softmax_figure_titles_the_attack_rows(tmp_path):
    fig = figures._figure_softmax_argument(table(models=("pivot",)))
    assert [ax.get_title() for ax in fig.axes] == [
        "(a) pivot, step_ll", "(b) pivot, iter_fgsm (its image at ε)",
        "(c) pivot, apgd_ce (its image at ε)"]
    assert fig._suptitle.get_text().startswith("N18 figs. 4, 6 and the attacks' images")
    only = figures._figure_softmax_argument(table(methods=("apgd_ce:steps=5",)))
    assert only._suptitle.get_text().startswith("At the attacks' images")
    is_png(figures.plot_softmax_argument(table(), tmp_path / "soft.png"))


def test_report_adds_the_views_only_with_attack_rows(tmp_path, monkeypatch):
    drawn = []  # the methods of N18's figure
    n18_figure = figures.plot_softmax_argument
    monkeypatch.setattr(figures, "plot_softmax_argument", lambda t, *a, **kw: (
        drawn.append({r["attack"] for r in t}), n18_figure(t, *a, **kw))[1])
    with ResultsStore(tmp_path / "n18.sqlite") as store:
        store.upsert(table(methods=("step_ll", "step_fgsm")))
        page, _ = build_report(store, tmp_path / "n18")
    assert "what the audit finds" not in page.read_text()
    assert not (tmp_path / "n18" / "figures" / "softmax_attack_views.png").exists()
    with ResultsStore(tmp_path / "all.sqlite") as store:
        store.upsert(table(methods=("step_ll", "step_fgsm", "iter_fgsm", "apgd_ce")))
        page, md = build_report(store, tmp_path / "all")
    text = html.unescape(page.read_text())
    assert "what the paper's attacks see vs what the audit finds" in text
    assert "figures/softmax_attack_views.png" in text and "softmax_attack_views.png" in \
        md.read_text()
    is_png(tmp_path / "all" / "figures" / "softmax_attack_views.png")
    # N18's figure keeps N18's directions only
    assert "figures/n18_fig4_softmax_argument.png" in text
    assert drawn == [{"step_ll", "step_fgsm"}] * 2


# --- the command line ---------------------------------------------------------------------

def test_cli_methods_are_the_analysis_methods():
    from cascade_adv.cli import research

    assert research.SOFTMAX_METHODS == ALL_METHODS


def test_cli_softmax_at_the_attack_images(tmp_path):
    from cascade_adv.models import build_model, save_model

    torch.manual_seed(0)
    weights = tmp_path / "model" / "m.safetensors"
    weights.parent.mkdir()
    save_model(build_model({"depth": 8, "width": 0.25, "in_channels": 1, "input_size": 8,
                            "num_classes": 10, "dataset": "digits"}), weights)
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    args = ["analyze", "softmax", "--model", f"K={weights}", "--dataset",
            "digits", "--eps", "0,4,8", "--images", "6", "--limit", "20", "--quiet",
            "--results", "r.db", "--figure", "f.png", "--views-figure", "v.png"]
    code, out, err = run_cli([*args, "--method", "step_ll", "--method", "iter_fgsm",
                              "--method", "apgd_ce", "--apgd-steps", "3"], tmp_path)
    assert code == 0, err
    is_png(tmp_path / "f.png")
    is_png(tmp_path / "v.png")
    with sqlite3.connect(tmp_path / "r.db") as con:
        stored = {r[0] for r in con.execute("SELECT DISTINCT attack FROM results")}
    assert stored == {"step_ll", "iter_fgsm", "apgd_ce:steps=3"}
    # the choices are checked when the command line is parsed, in one line
    for bad, words in ((["--methods", "step_ll,pgd"], ["--methods", "pgd"]),
                       (["--method", "pgd"], ["--method", "pgd"]),
                       (["--method", "iter_fgsm", "--apgd-steps", "3"], ["--apgd-steps"])):
        code, out, err = run_cli([*args, "--results", "bad.db", *bad], tmp_path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in words), err
    assert not (tmp_path / "bad.db").exists()
    code, out, _ = run_cli(["analyze", "softmax", "--help"], tmp_path)
    assert code == 0 and "--method apgd_ce" in out and "iter_fgsm" in out
