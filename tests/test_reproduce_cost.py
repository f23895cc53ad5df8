"""Time estimates of ``reproduce --dry-run`` / ``--list`` from the steps a cache ran."""

from __future__ import annotations

import json

import pytest

from cascade_adv.experiments import cost
from cascade_adv.experiments.recipes import RECIPES, Builder, build_steps
from cascade_adv.experiments.reproduce import Cache, default_configs, plan
from cascade_adv.experiments.steps import Runtime
from cascade_adv.training import dump_config, load_config

CONFIGS = default_configs()


def _metrics(run, points):
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"iteration": i, "loss": 1.0, "seconds": t}) + "\n" for i, t in points))


def test_seconds_per_iteration_is_the_median_interval_across_restarts(tmp_path):
    # 0.5 s per iteration; the process restarted twice (its clock from 0 each time)
    _metrics(tmp_path, [(100, 50.0), (200, 100.0), (300, 10.0), (400, 60.0), (500, 5.0)])
    assert cost.seconds_per_iteration(tmp_path) == pytest.approx(0.5)
    assert cost.seconds_per_iteration(tmp_path / "none") is None


def test_estimates_come_from_the_runs_the_cache_measured(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cost, "calibrate", lambda key, device, quick=False:
                        calls.append(key) or 1e-3)
    steps = build_steps(RECIPES["n18-table1"], Builder(CONFIGS, "mnist"))
    cache = Cache(tmp_path / "out", "mnist")
    records = plan(steps, cache)
    by = {r.step.name: r for r in records}
    # the pre-training ran here at 0.25 s per iteration (a clean iteration of ResNet-20)
    pre = by["train/n18_mnist_pretrain"]
    cfg = load_config(CONFIGS / pre.step.params["config"], pre.step.params["overrides"])
    _metrics(pre.folder / "run", [(0, 0.0), (100, 25.0), (200, 50.0)])
    (pre.folder / "run" / "config.yaml").write_text(dump_config(cfg))
    cost.estimate(records, Runtime(str(CONFIGS), device="cpu"), out=cache.out)
    base, kurakin = by["train/n18_mnist_baseline"], by["train/n18_mnist_kurakin"]
    # the Baseline: the same model and iteration, 8000 - 938 iterations left at 0.25 s
    assert base.measured and base.estimate == pytest.approx((8000 - 938) * 0.25)
    # Kurakin's: the same model, adversarial iterations: the measured pass time scaled
    # by the passes of its iteration: K17's replace mode, the attack on k of m images
    kcfg = load_config(CONFIGS / kurakin.step.params["config"], kurakin.step.params["overrides"])
    assert kcfg.adversarial.mode == "replace"
    passes = 1 + kcfg.adversarial.k / kcfg.optim.batch_size
    assert kurakin.measured and kurakin.estimate == pytest.approx((8000 - 938) * 0.25 * passes)
    # the resumed pre-training has 200 iterations done: 738 left
    (pre.folder / "run" / "checkpoints" / "ckpt-200").mkdir(parents=True)
    cost.estimate(records, Runtime(str(CONFIGS), device="cpu"), out=cache.out)
    assert pre.measured and pre.estimate == pytest.approx(738 * 0.25)
    # no evaluation has run here: a pass of the model's training stands for an attack
    # pass; the timed pass only for a model the cache never ran
    white = by["whitebox/n18_mnist_baseline"]
    _, passes = cost._passes(white, cost._configs(records, str(CONFIGS)))
    assert white.measured and white.estimate == pytest.approx(passes * 0.25)
    assert not calls
    # without a cache, nothing is measured
    cost.estimate(records, Runtime(str(CONFIGS), device="cpu"))
    assert not any(r.measured for r in records) and calls
