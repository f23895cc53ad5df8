"""Training sweeps: variant overrides, label-leaking table, registration, resume, seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade_adv.analysis import (
    activation_variants,
    capacity_variants,
    label_leaking_table,
    label_leaking_variants,
    lambda2_variants,
    run_variants,
    seed_variants,
)
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation import ResultsStore, aggregate_seeds
from cascade_adv.reporting import ResultTable
from cascade_adv.training import load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.depth=8", "optim.iterations=3", "optim.lr_milestones=[]", "optim.batch_size=32",
        "log_every=1"]


def test_variant_overrides_are_valid_configs():
    base = ROOT / "configs/n18/table1_mnist_pivot.yaml"
    for variants in (lambda2_variants([0, 1e-4]), capacity_variants([0.5, 2]),
                     activation_variants(), label_leaking_variants(),
                     seed_variants([1, 2], shared_init=False)):
        for v in variants:
            load_config(base, list(v.overrides))  # every override is a valid config key
    (clean, adv) = capacity_variants([0.5])
    assert clean.params == {"width": 0.5, "adversarial": False}
    assert "adversarial.mode=none" in clean.overrides and adv.params["adversarial"]
    decay = activation_variants(["relu_decay:0.01"])[0]
    cfg = load_config(base, list(decay.overrides))
    assert (cfg.model.activation, cfg.model.relu_decay_beta) == ("relu_decay", 0.01)
    cfg = load_config(base, list(seed_variants([3, 4], shared_init=False)[0].overrides))
    assert cfg.init_from is None and cfg.seed == 3
    assert load_config(base, list(seed_variants([3, 4])[0].overrides)).init_from is not None


@pytest.mark.parametrize("call, fragment", [
    (lambda: lambda2_variants([-1]), "lambda2"),
    (lambda: capacity_variants([0]), "width"),
    (lambda: activation_variants(["swish"]), "swish"),
    (lambda: label_leaking_variants(["iter_fgsm"]), "iter_fgsm"),
    (lambda: seed_variants([1]), "two different seeds"),
])
def test_bad_variants(call, fragment):
    with pytest.raises(CascadeAdvError, match=fragment):
        call()


def test_label_leaking_table_by_hand():
    rows = [
        {"model": "fgsm", "attack": "clean", "eps": 0, "value": 76.6},
        {"model": "fgsm", "attack": "step_fgsm", "eps": 2, "value": 86.2},
        {"model": "fgsm", "attack": "step_fgsm", "eps": 16, "value": 70.0},
        {"model": "ll", "attack": "clean", "eps": 0, "value": 77.3},
        {"model": "ll", "attack": "step_ll", "eps": 2, "value": 72.8},
    ]
    table = ResultTable({"dataset": "d", "split": "test", "source": "whitebox", "metric": "top1",
                         "n": 10, **r} for r in rows)
    out = label_leaking_table(table, {"fgsm": "step_fgsm", "ll": "step_ll"})
    assert [(r["model"], r["eps"], r["leak"]) for r in out] == [
        ("fgsm", 2.0, True), ("fgsm", 16.0, False), ("ll", 2.0, False)]


def test_run_variants_registers_resumes_and_aggregates(tmp_path: Path):
    cfg = ROOT / "configs/digits_baseline.yaml"
    variants = seed_variants([1, 2], shared_init=False)
    with ResultsStore(tmp_path / "r.db") as store:
        table = run_variants(cfg, variants, tmp_path / "runs", store, experiment="seeds:g",
                             overrides=TINY, attacks=["step_ll"], eps=[8], limit=30,
                             progress=False)
        models = store.models(experiment="seeds:g")
        assert [m.name for m in models] == ["seeds:g/seed=1", "seeds:g/seed=2"]
        assert models[0].init != models[1].init  # own random initialisations
        again = run_variants(cfg, variants[:1], tmp_path / "runs", store, experiment="seeds:g",
                             overrides=TINY, attacks=["step_ll"], eps=[8], limit=30,
                             progress=False)
        metrics = (tmp_path / "runs/seed=1/metrics.jsonl").read_text().splitlines()
        assert len(metrics) == 3  # the finished run was not trained again
        assert again.rows == table.filter(model="seeds:g/seed=1").rows
    stats = aggregate_seeds(table, {"g": ["seeds:g/seed=1", "seeds:g/seed=2"]})
    assert {r["metric"] for r in stats} == {"top1_mean", "top1_std"}
