"""End to end on the real MNIST files (skipped without $CASCADE_ADV_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cascade_adv.data import load_dataset
from cascade_adv.evaluation import evaluate_whitebox
from cascade_adv.training import load_config, train

ROOT = Path(__file__).resolve().parents[1]
DATA = os.environ.get("CASCADE_ADV_DATA")

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not DATA or not (Path(DATA) / "mnist").is_dir(),
                       reason="set CASCADE_ADV_DATA to a folder holding mnist/ to run"),
]


def test_mnist_short_adversarial_training_and_eval(tmp_path):
    """N18's MNIST pivot config, shortened: trains, then evaluates white-box.  The
    config's BatchNorm momentum 0.001 (TensorFlow's decay 0.999) moves the running
    statistics only 6 % of the way in 60 iterations, so this short run uses 0.1."""
    cfg = load_config(ROOT / "configs/n18/table1_mnist_pivot.yaml", [
        f"data.root={DATA}", "init_from=null", "optim.iterations=60", "optim.batch_size=64",
        "adversarial.k=32", "optim.lr_milestones=[40]", "checkpoint.every=60",
        "model.bn_momentum=0.1",
    ])
    model = train(cfg, tmp_path / "run", progress=False).model
    test = load_dataset("mnist", "test", root=DATA).subset(200)
    table = evaluate_whitebox(model, test, ["step_fgsm", "iter_fgsm"], [16], progress=False)
    clean = table.value("model", "clean")
    assert clean > 60  # 60 iterations (lr /10 after 40) learn MNIST far beyond chance
    assert table.value("model", "iter_fgsm", 16) <= clean
