"""Standard training: LR schedule, config validation, exact resume, divergence."""

from __future__ import annotations

import json

import pytest
import torch

from cascade_adv.errors import CheckpointError, ConfigError, TrainingDiverged
from cascade_adv.models import load_model
from cascade_adv.training import latest_checkpoint, learning_rate, load_config, train
from cascade_adv.training.loop import Sampler


def tiny_config(**over):
    base = [
        "data.dataset=digits", "model.depth=8", "optim.iterations=12", "optim.batch_size=32",
        "optim.lr_milestones=[6, 9]", "checkpoint.every=4", "checkpoint.keep=2", "log_every=2",
    ]
    return load_config(None, base + [f"{k}={v}" for k, v in over.items()])


def test_learning_rate_is_piecewise_by_iteration():
    cfg = load_config(None, ["optim.lr=0.1", "optim.lr_milestones=[4000, 6000]"])
    assert learning_rate(cfg, 0) == pytest.approx(0.1)
    assert learning_rate(cfg, 3999) == pytest.approx(0.1)
    assert learning_rate(cfg, 4000) == pytest.approx(0.01)
    assert learning_rate(cfg, 5999) == pytest.approx(0.01)
    assert learning_rate(cfg, 6000) == pytest.approx(0.001)
    assert learning_rate(cfg, 7999) == pytest.approx(0.001)


def test_paper_configs_validate():
    mnist = load_config("configs/mnist_baseline.yaml")
    assert (mnist.optim.iterations, mnist.optim.lr_milestones) == (8000, [4000, 6000])
    assert (mnist.optim.momentum, mnist.optim.weight_decay, mnist.optim.batch_size) == (0.9, 1e-4, 128)
    assert mnist.data.crop_size is None and not mnist.data.flip
    cifar = load_config("configs/cifar10_baseline.yaml")
    assert (cifar.optim.iterations, cifar.optim.lr_milestones) == (94000, [48000, 72000])
    assert cifar.data.crop_size == 24 and cifar.data.flip
    assert load_config("configs/cifar10_resnet110_baseline.yaml").model.depth == 110


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "optim.lrr" in msg and "lr_milestones" in msg and "\n" not in msg


def test_wrong_type_and_bad_choice_are_one_line():
    with pytest.raises(ConfigError, match="optim.iterations"):
        load_config(None, ["optim.iterations=many"])
    with pytest.raises(ConfigError, match="digits.*mnist.*cifar10"):
        load_config(None, ["data.dataset=imagenet2"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("does/not/exist.yaml")


def test_sampler_is_deterministic_per_iteration():
    from cascade_adv.data import load_dataset

    cfg = tiny_config()
    data = load_dataset("digits", "train")
    a, b = Sampler(data, cfg, torch.device("cpu")), Sampler(data, cfg, torch.device("cpu"))
    xa, ya = a.batch(7)
    xb, yb = b.batch(7)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # each epoch's order is a permutation: an epoch visits every image at most once
    assert sorted(a._perm.tolist()) == list(range(len(data)))
    epoch0 = a._perm.clone()
    a.batch(len(data) // 32)  # first batch of epoch 1 reshuffles
    assert not torch.equal(a._perm, epoch0)


def test_resume_reproduces_uninterrupted_weights(tmp_path):
    cfg = tiny_config()
    full = train(cfg, tmp_path / "full", progress=False)

    class Crash(Exception):
        pass

    def crash_at_6(done, loss):
        if done == 6:
            raise Crash

    with pytest.raises(Crash):
        train(cfg, tmp_path / "part", progress=False, on_step=crash_at_6)
    assert latest_checkpoint(tmp_path / "part").name == "ckpt-0000004"
    resumed = train(cfg, tmp_path / "part", progress=False)
    assert resumed.resumed_from == 4
    sa, sb = full.model.state_dict(), resumed.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    iters = [json.loads(line)["iteration"]
             for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert iters == [2, 4, 6, 8, 10, 12]
    # checkpoints keep only the newest `keep`
    names = sorted(p.name for p in (tmp_path / "part" / "checkpoints").glob("ckpt-*"))
    assert names == ["ckpt-0000008", "ckpt-0000012"]


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = tiny_config(**{"checkpoint.every": 2})

    def nan_at_5(model, x, y, it, g):
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return (loss * float("nan") if it == 5 else loss), logits, y

    with pytest.raises(TrainingDiverged) as err:
        train(cfg, tmp_path / "run", progress=False, objective=nan_at_5,
              divergence_hint="lower lambda2")
    msg = str(err.value)
    assert "iteration 5" in msg and "ckpt-0000004" in msg and "lambda2" in msg
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt.name == "ckpt-0000004"
    model = load_model(ckpt)
    assert all(torch.isfinite(p).all() for p in model.state_dict().values() if p.is_floating_point())
    assert not (tmp_path / "run" / "final").exists()


def test_resume_with_other_architecture_is_refused(tmp_path):
    train(tiny_config(**{"optim.iterations": 4}), tmp_path / "run", progress=False)
    other = tiny_config(**{"optim.iterations": 8, "model.depth": 14})
    with pytest.raises(ConfigError, match="model.depth 8 -> 14"):  # the recorded config's
        train(other, tmp_path / "run", progress=False)
    (tmp_path / "run" / "config.yaml").unlink()  # no recorded config: the weights' own check
    with pytest.raises(CheckpointError, match="depth"):
        train(other, tmp_path / "run", progress=False)


def test_training_learns_digits(tmp_path):
    """A short run of the paper recipe beats chance by far on held-out digits."""
    from cascade_adv.data import load_dataset, to_float

    cfg = tiny_config(**{"optim.iterations": 60, "optim.lr_milestones": "[40, 50]",
                         "optim.batch_size": 64})
    model = train(cfg, tmp_path / "run", progress=False).model
    test = load_dataset("digits", "test")
    with torch.no_grad():
        acc = (model(to_float(test.images)).argmax(1) == test.labels).float().mean().item()
    assert acc > 0.8
