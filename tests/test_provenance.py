"""Every leg of a training run records where it ran (torch, device and its model,
threads), and the reproduce report lists it per model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from cascade_adv.training import load_config, train
from cascade_adv.training.provenance import LEGS_FILE, describe_legs, read_legs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.depth=8", "optim.lr_milestones=[]", "optim.batch_size=32",
        "checkpoint.every=2", "log_every=2"]


def _train(run: Path, iterations: int) -> None:
    cfg = load_config(ROOT / "configs/digits_baseline.yaml", [*TINY,
                                                            f"optim.iterations={iterations}"])
    train(cfg, run, progress=False)


def test_each_resumed_leg_records_where_it_ran(tmp_path):
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _train(run, 4)
        torch.set_num_threads(2)
        _train(run, 6)                    # resumed: a second leg from iteration 4
        _train(run, 6)                    # finished: nothing trains, no leg
    finally:
        torch.set_num_threads(threads)
    legs = read_legs(run)
    assert [leg["iteration"] for leg in legs] == [0, 4]
    assert [leg["threads"] for leg in legs] == [1, 2]
    for leg in legs:
        assert leg["torch"] == torch.__version__ and leg["device"] == "cpu"
        assert leg["model"] and leg["processes"] == 1 and leg["time"].endswith("+00:00")
    text = describe_legs(legs)
    assert text.startswith(f"from iteration 0: torch {torch.__version__}, cpu (")
    assert "1 thread;" in text and text.endswith("2 threads")


def test_a_damaged_line_is_skipped_and_no_file_means_no_legs(tmp_path):
    assert read_legs(tmp_path) == [] and describe_legs([]) == ""
    (tmp_path / LEGS_FILE).write_text('{"iteration": 0, "threads": 1}\nnot json\n[1]\n')
    assert read_legs(tmp_path) == [{"iteration": 0, "threads": 1}]


def test_the_report_lists_each_trained_models_legs(tmp_path):
    from cascade_adv.experiments.report import _legs

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / LEGS_FILE).write_text(json.dumps(
        {"iteration": 0, "torch": "2.13.0+cpu", "device": "cpu", "model": "EPYC",
         "threads": 1, "processes": 1}) + "\n")
    steps = [SimpleNamespace(step=SimpleNamespace(name="train/a", kind="train")),
             SimpleNamespace(step=SimpleNamespace(name="train/b", kind="train")),
             SimpleNamespace(step=SimpleNamespace(name="whitebox/a", kind="whitebox"))]
    deps = {"train/a": {"run": str(tmp_path / "a"), "name": "a"},
            "train/b": {"run": str(tmp_path / "b"), "name": "b"}, "whitebox/a": {}}
    assert _legs(steps, deps) == ["a: from iteration 0: torch 2.13.0+cpu, cpu (EPYC), 1 thread",
                                  "b: not recorded (trained before legs were)"]


def test_the_report_lists_the_monitor_of_each_model_that_ran_it(tmp_path):
    from cascade_adv.experiments.report import _monitored

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"iteration": 200, "loss": 1.0, "monitor_pgd_acc": 60.0, "monitor_clean_acc": 95.0},
        {"iteration": 400, "loss": 0.9, "monitor_pgd_acc": 2.0, "monitor_clean_acc": 97.0,
         "monitor_collapse": True}]))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.jsonl").write_text('{"iteration": 200, "loss": 1.0}\n')
    steps = [SimpleNamespace(step=SimpleNamespace(name=f"train/{n}", kind="train"))
             for n in "ab"]
    deps = {f"train/{n}": {"run": str(tmp_path / n), "name": n} for n in "ab"}
    assert _monitored(steps, deps) == [(
        "a: PGD, 2 readings: best 60.0 % at iteration 200, last 2.0 % at iteration 400 "
        "(clean 97.0 %); collapse at iteration 400; the weights of iteration 200 are kept "
        "in best_pgd/")]

