"""The report end to end: a store filled by every analysis on tiny models, the HTML and
Markdown pages built from it, and the page checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch

from cascade_adv.analysis import gradient_correlation, softmax_argument
from cascade_adv.data import load_dataset
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation import ResultsStore, evaluate_whitebox, transfer_matrix
from cascade_adv.models import build_model
from cascade_adv.reporting.report import build_report


def _model(seed: int):
    # Untrained stand-ins.  With option-B shortcuts these seeds give the source a few
    # images it classifies right clean and wrong adversarially, which a transfer-rate
    # curve needs; the option-A networks of the same seeds give none.
    torch.manual_seed(seed)
    return build_model({"depth": 8, "width": 0.25, "in_channels": 1, "input_size": 8,
                        "num_classes": 10, "dataset": "digits", "shortcut": "B"}).eval()


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory) -> Path:
    """White-box, black-box, softmax, gradient-correlation and multi-seed rows."""
    path = tmp_path_factory.mktemp("report") / "results.sqlite"
    test = load_dataset("digits", "test").subset(48)
    models = {"n18_mnist_baseline": _model(0), "n18_mnist_kurakin": _model(1),
              "other": _model(2)}
    # the paper rows their configs name, as `eval` records them
    paper = {"n18_mnist_baseline": ["n18-table1: Baseline"],
             "n18_mnist_kurakin": ["n18-table1: Kurakin's"]}
    with ResultsStore(path) as store:
        for i, (name, model) in enumerate(models.items()):
            store.upsert(evaluate_whitebox(model, test, ["step_ll", "iter_fgsm"], [16, 32],
                                           model_name=name, progress=False))
            store.register_model(name, dataset="digits", init="weights:a" if i < 2 else "seed:9",
                                 params={"paper": paper[name]} if name in paper else None)
        store.upsert(transfer_matrix(models, models, test, ["step_fgsm"], [8, 16],
                                     progress=False))
        # one pair at a third epsilon: a transfer-rate curve (K17 figures 2 and 5)
        pair = {k: models[k] for k in ("n18_mnist_baseline", "other")}
        store.upsert(transfer_matrix({"n18_mnist_baseline": models["n18_mnist_baseline"]},
                                     pair, test, ["step_fgsm"], [4], progress=False))
        for name in ("n18_mnist_baseline", "n18_mnist_kurakin"):
            kw = {"eps": (0, 4, 8), "n_images": 8, "model_name": name}
            store.upsert(softmax_argument(models[name], test, **kw))
            store.upsert(gradient_correlation(models[name], test, **kw))
        experiments = {  # the training sweeps, with untrained stand-ins
            "lambda2": [("l0", {"lam2": 0.0}), ("l1", {"lam2": 1e-3})],
            "capacity": [(f"c{r}{a}", {"width": r, "adversarial": a})
                         for r in (0.5, 1.0) for a in (False, True)],
            "activations": [("relu", {"activation": "relu"}),
                            ("tanh", {"activation": "tanh"})],
            "label_leaking": [("fg", {"train_method": "step_fgsm"}),
                              ("ll", {"train_method": "step_ll"})],
        }
        for i, (experiment, members) in enumerate(experiments.items()):
            for j, (name, params) in enumerate(members):
                store.upsert(evaluate_whitebox(_model(20 + 10 * i + j), test,
                                               ["step_ll", "step_fgsm"], [8, 16],
                                               model_name=f"{experiment}/{name}", progress=False))
                store.register_model(f"{experiment}/{name}", experiment=experiment,
                                     params=params)
        for s in (1, 2, 3):  # a multi-seed group
            name = f"seeds:g/seed={s}"
            store.upsert(evaluate_whitebox(_model(10 + s), test, ["step_ll"], [16],
                                           model_name=name, progress=False))
            store.register_model(name, experiment="seeds:g", params={"seed": s})
    return path


class _Tables(HTMLParser):
    """Counts tables, body rows per table and images."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[int] = []
        self.images: list[str] = []
        self._in_body = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.rows.append(0)
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self.rows[-1] += 1
        elif tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False


def test_report_has_every_section(filled_store: Path, tmp_path: Path) -> None:
    with ResultsStore(filled_store) as store:
        html_path, md_path = build_report(store, tmp_path / "rep")
    page = html_path.read_text()
    for heading in ("Sanity checks", "N18 table 1", "White-box accuracy, digits",
                    "Black-box accuracy", "transfer rate", "error rate", "mean ± std",
                    "N18 figures 4, 6", "N18 figure 5", "lambda2 (N18 figure 3)",
                    "Model capacity", "Activation functions (K17 table 7)",
                    "Label leaking (K17 table 3)"):
        assert heading in page, heading
    parsed = _Tables()
    parsed.feed(page)
    # N18 table 1 section: our two models, each followed by its published row
    assert "published: Baseline" in page and "published: Kurakin" in page
    assert parsed.rows[0] >= 0 and max(parsed.rows) >= 3
    # the same-initialisation dagger appears for the two models sharing "weights:a"
    assert "†" in page
    # accuracy vs eps for the N18 table 1 models (paper dashed) and the digits models,
    # softmax, gradient correlation, transfer and error rate, lambda2, capacity,
    # label leaking, activations
    assert len(parsed.images) == 10
    assert parsed.images[:2] == ["figures/accuracy-n18-table1.png", "figures/accuracy-digits.png"]
    for src in parsed.images:
        assert (html_path.parent / src).is_file()
    md = md_path.read_text()
    assert "## Sanity checks" in md and "![" in md


def test_report_of_empty_store_is_refused(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "empty.sqlite") as store, \
            pytest.raises(CascadeAdvError, match="empty"):
        build_report(store, tmp_path / "rep")
    assert not (tmp_path / "rep" / "report.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian package "
                    "'chromium'); the headless-browser check of the report is skipped")
def test_report_loads_in_headless_chromium(filled_store: Path, tmp_path: Path) -> None:
    with ResultsStore(filled_store) as store:
        html_path, _ = build_report(store, tmp_path / "rep")
    url = html_path.resolve().as_uri()
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
           "--virtual-time-budget=10000", "--dump-dom", url]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    images = re.search(r'data-images="(\d+)"', dom)
    decoded = re.search(r'data-images-decoded="(\d+)"', dom)
    assert images and decoded, "the page's load handler did not run"
    assert int(images.group(1)) == 10 and int(decoded.group(1)) == 10  # every image decoded
    parsed = _Tables()
    parsed.feed(dom)
    expected = _Tables()
    expected.feed(html_path.read_text())
    assert parsed.rows == expected.rows and len(parsed.rows) >= 8


def test_black_box_rows_find_their_published_matrix():
    from cascade_adv.reporting import ResultTable
    from cascade_adv.reporting.report import _published_matrix

    def rows(targets, sources):
        return ResultTable({"model": t, "source": s, "dataset": "cifar10", "split": "test",
                            "attack": "iter_fgsm", "eps": 16, "metric": "top1", "value": 1.0,
                            "n": 1} for t in targets for s in sources)

    # the labels the configs' paper rows give the networks (configs/n18/*.yaml)
    labels = {"n18_cifar10_baseline": "B1", "n18_cifar10_step_ll_kurakin": "K1",
              "n18_cifar10_step_ll_pivot": "P1", "n18_cifar10_P2": "P2"}
    # targets of initialisation 1, sources of initialisation 2: N18 table 4
    table4 = rows(["n18_cifar10_baseline", "n18_cifar10_step_ll_pivot"], ["n18_cifar10_P2"])
    assert _published_matrix(table4, labels).id == "n18-table4"
    # sources and targets of initialisation 1: table 8
    table8 = rows(["n18_cifar10_baseline"], ["n18_cifar10_step_ll_kurakin"])
    assert _published_matrix(table8, labels).id == "n18-table8"
    assert _published_matrix(rows(["mine"], ["yours"]), labels) is None
    assert _published_matrix(table4, {}) is None  # unregistered: names alone map nothing
