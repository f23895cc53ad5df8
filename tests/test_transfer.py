"""Black-box transfer: transfer rate vs error rate by hand, matrices, set reuse, bad pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_adv.data import ImageDataset, load_dataset
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation import (
    evaluate_whitebox,
    rates_from_ranks,
    transfer_matrix,
    true_class_rank,
)
from cascade_adv.evaluation import transfer as transfer_module
from cascade_adv.models import build_model


def test_rank_of_true_class() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 1.0], [1.0, 2.0, 3.0]])
    assert true_class_rank(logits, torch.tensor([0, 2, 0])).tolist() == [0, 1, 2]


def test_transfer_rate_vs_error_rate_constructed_case() -> None:
    """Ten candidates; the source gets 6 right clean, of which 4 wrong adversarial.

    image:             0  1  2  3  4  5  6  7  8  9
    source clean ok:   y  y  y  y  y  y  n  n  n  n
    source adv wrong:  y  y  y  y  n  n  y  y  n  n   -> transfer candidates 0-3
    target adv wrong:  y  y  n  n  y  n  y  n  n  n   -> 2 of 4 candidates, 4 of 10 overall
    """
    src_clean = np.array([0, 0, 0, 0, 0, 0, 3, 3, 3, 3])
    src_adv = np.array([1, 1, 1, 1, 0, 0, 1, 1, 0, 0])
    tgt = np.array([2, 1, 0, 0, 1, 0, 1, 0, 0, 0])
    out = rates_from_ranks(tgt, 1, src_clean, src_adv)
    assert out["top1"] == (60.0, 10)
    assert out["error_top1"] == (40.0, 10)
    assert out["transfer_top1"] == (50.0, 4)
    # top-2: rank >= 2 is wrong. source clean all rank < 2 except 6-9 (rank 3);
    # source adv never >= 2 -> no candidates -> no transfer rate
    out2 = rates_from_ranks(tgt, 2, src_clean, src_adv)
    assert out2["top2"] == (90.0, 10) and out2["error_top2"] == (10.0, 10)
    assert "transfer_top2" not in out2
    assert "transfer_top1" not in rates_from_ranks(tgt, 1)  # no source ranks: no rate


def _model(seed: int, **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = {"depth": 8, "width": 0.25, "in_channels": 1, "input_size": 8, "num_classes": 10,
               "dataset": "digits"}
    cfg.update(kw)
    return build_model(cfg).eval()


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    return load_dataset("digits", "test").subset(40)


def test_matrix_rows_and_diagonal(digits: ImageDataset, tmp_path: Path) -> None:
    a, b = _model(0), _model(1)
    table = transfer_matrix({"A": a, "B": b}, {"A": a, "B": b}, digits, ["step_fgsm"], [8, 16],
                            sets_dir=tmp_path, progress=False)
    cells = {(r["model"], r["source"], r["eps"], r["metric"]) for r in table}
    for t in "AB":
        for s in "AB":
            for e in (8.0, 16.0):
                assert {(t, s, e, "top1"), (t, s, e, "error_top1"), (t, s, e, "top5")} <= cells
    # accuracy and error rate are complements over all images
    for r in table.filter(metric="top1"):
        err = table.value(r["model"], "step_fgsm", r["eps"], "error_top1", r["source"])
        assert r["value"] + err == pytest.approx(100.0)
        assert r["n"] == len(digits)
    # the diagonal is the white-box accuracy of the same attack on the same images
    white = evaluate_whitebox(a, digits, ["step_fgsm"], [8, 16], progress=False)
    for e in (8.0, 16.0):
        assert table.value("A", "step_fgsm", e, "top1", "A") == pytest.approx(
            white.value("model", "step_fgsm", e, "top1"), abs=100 / len(digits) + 1e-9)
        # on the source itself every transfer candidate is misclassified: rate 100
        rate = table.value("A", "step_fgsm", e, "transfer_top1", "A")
        assert rate is None or rate == 100.0


def test_sets_are_reused_only_for_same_weights(digits: ImageDataset, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    a = _model(0)
    calls = []
    real = transfer_module.craft_adversarial_set
    monkeypatch.setattr(transfer_module, "craft_adversarial_set",
                        lambda *args, **kw: calls.append(kw["source_name"]) or real(*args, **kw))
    kw = {"sets_dir": tmp_path, "progress": False}
    first = transfer_matrix({"A": a}, {"A": a}, digits, ["step_ll"], [4], hashes={"A": "h1"}, **kw)
    second = transfer_matrix({"A": a}, {"A": a}, digits, ["step_ll"], [4], hashes={"A": "h1"}, **kw)
    assert calls == ["A"] and first == second
    transfer_matrix({"A": a}, {"A": a}, digits, ["step_ll"], [4], hashes={"A": "h2"}, **kw)
    assert calls == ["A", "A"]  # other weights: crafted again
    transfer_matrix({"A": a}, {"A": a}, digits, ["step_ll"], [4, 8], hashes={"A": "h2"}, **kw)
    assert len(calls) == 3  # other epsilons: crafted again


@pytest.mark.parametrize("kw, fragment", [
    ({"dataset": "mnist"}, "target T on mnist"),
    ({"input_size": 6}, "input size 8, target T 6"),
    ({"num_classes": 5}, "number of classes"),
])
def test_incompatible_pairs_refused_before_work(digits: ImageDataset, tmp_path: Path,
                                                kw: dict, fragment: str) -> None:
    with pytest.raises(CascadeAdvError, match=fragment):
        transfer_matrix({"S": _model(0)}, {"T": _model(1, **kw)}, digits, ["step_ll"], [4],
                        sets_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_arguments(digits: ImageDataset) -> None:
    a = _model(0)
    with pytest.raises(CascadeAdvError, match="non-zero epsilon"):
        transfer_matrix({"A": a}, {"A": a}, digits, ["step_ll"], [0], progress=False)
    with pytest.raises(CascadeAdvError, match="unknown attack"):
        transfer_matrix({"A": a}, {"A": a}, digits, ["nope"], [4], progress=False)
    with pytest.raises(CascadeAdvError, match="at least one source"):
        transfer_matrix({}, {"A": a}, digits, ["step_ll"], [4], progress=False)
