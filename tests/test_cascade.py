"""Cascade and ensemble adversarial training with saved sets, end to end on digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cascade_adv.data import load_dataset
from cascade_adv.errors import CascadeAdvError, ConfigError, TrainingDiverged
from cascade_adv.evaluation import craft_adversarial_set, load_adversarial_set, prepare_images
from cascade_adv.training import latest_checkpoint, load_config, train
from cascade_adv.training.adversarial import AdversarialObjective

BASE = ["data.dataset=digits", "model.depth=8", "optim.batch_size=32", "optim.iterations=6",
        "optim.lr_milestones=[]", "checkpoint.every=3", "log_every=3"]


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained source network and a small saved iter_FGSM set of its training images."""
    root = tmp_path_factory.mktemp("cascade")
    run = train(load_config(None, BASE), root / "source", progress=False)
    data = load_dataset("digits", "train").subset(40)
    path = craft_adversarial_set(run.model, data, root / "saved", "iter_fgsm", [2, 4, 8],
                                 prepare=lambda x: prepare_images(run.model, x),
                                 source_name="source", progress=False)
    return root, run, data, path


def test_saved_set_round_trips_bit_exactly(source):
    _root, run, data, path = source
    saved = load_adversarial_set(path, dataset="digits", split="train", image_shape=[1, 8, 8])
    assert len(saved) == 120
    assert sorted(set(saved.eps.tolist())) == [2.0, 4.0, 8.0]
    # re-run the attack for eps 4 and compare with the stored uint8 images exactly
    from cascade_adv import attacks
    from cascade_adv.data import to_uint8

    x = prepare_images(run.model, data.images)
    again = to_uint8(attacks.run("iter_fgsm", run.model, x, data.labels, eps=4)).numpy()
    rows = saved.eps == 4.0
    assert np.array_equal(saved.images[rows], again)
    assert np.array_equal(saved.index[rows], np.arange(40))
    assert np.array_equal(saved.labels[rows], data.labels.numpy())
    # each saved image stays inside its epsilon ball around the clean uint8 image
    clean = data.images.numpy().astype(int)[saved.index]
    assert np.all(np.abs(saved.images.astype(int) - clean) <= saved.eps[:, None, None, None])


def test_tampered_or_mismatched_sets_are_refused(source, tmp_path):
    _root, _run, _data, path = source
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    images = np.load(copy / "images.npy")
    images[0, 0, 0, 0] ^= 1
    np.save(copy / "images.npy", images)
    with pytest.raises(CascadeAdvError, match="sha256"):
        load_adversarial_set(copy)
    with pytest.raises(CascadeAdvError, match="split 'train', not 'test'"):
        load_adversarial_set(path, split="test")
    with pytest.raises(CascadeAdvError, match="shape"):
        load_adversarial_set(path, image_shape=[3, 24, 24])
    with pytest.raises(CascadeAdvError, match="dataset"):
        load_adversarial_set(path, dataset="mnist")
    meta = json.loads((copy / "meta.json").read_text())
    meta["format"] = "something/else"
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CascadeAdvError, match="format"):
        load_adversarial_set(copy)
    with pytest.raises(CascadeAdvError, match="no meta.json"):
        load_adversarial_set(tmp_path)


def test_cascade_batch_pairs_saved_images_with_their_clean_twins(source):
    _root, run, _data, path = source
    cfg = load_config(None, BASE + [
        "adversarial.mode=append", "adversarial.k=8", "adversarial.distance=pivot",
        (f"adversarial.sources=[{{kind: current, count: 4, method: step_ll}}, "
        f"{{kind: saved, count: 4, paths: [{path}]}}]"),
    ])
    train_set = load_dataset("digits", "train")
    from cascade_adv.training.loop import model_config_for

    objective = AdversarialObjective(cfg, train_set, model_config_for(cfg, train_set),
                                     torch.device("cpu"))
    assert objective.clean_per_batch == 24
    captured = {}
    model = run.model.train()
    original_forward = model.forward

    def spy(x):
        captured["x"] = x.detach().clone()
        return original_forward(x)

    model.forward = spy
    x = torch.rand(24, 1, 8, 8)
    y = torch.randint(0, 10, (24,))
    loss, _logits, labels = objective(model, x, y, 0, torch.Generator().manual_seed(1))
    model.forward = original_forward
    batch = captured["x"]
    assert batch.shape[0] == 32 and torch.isfinite(loss)
    saved = load_adversarial_set(path)
    for i in range(4, 8):                       # saved adversarial rows
        adv = (batch[i] * 255).round().to(torch.uint8).numpy()
        matches = np.where((saved.images == adv).all(axis=(1, 2, 3)))[0]
        assert matches.size, "row is not a saved image"
        twin = train_set.images[int(saved.index[matches[0]])].float() / 255
        assert torch.equal(batch[8 + i], twin)  # its clean twin at row k + i
        assert labels[i] == labels[8 + i] == int(saved.labels[matches[0]])
    assert torch.equal(batch[8:12], x[:4])      # current-network rows keep their clean twins


def test_rank_shares_with_saved_and_ensemble_sources_sum_to_one_process(source):
    """Under DDP every rank draws the same saved rows and ensemble pick, attacks only its
    own adversarial rows (a random attack: all of its block) and keeps its share of the
    batch: with BatchNorm in inference mode the shares' mean is the one-process loss and
    gradient."""
    root, run, _data, path = source
    cfg = load_config(None, BASE + [
        "adversarial.mode=append", "adversarial.k=12", "adversarial.distance=pivot",
        "adversarial.lam2=0.01",
        (f"adversarial.sources=[{{kind: current, count: 4, method: step_rnd}}, "
         f"{{kind: saved, count: 5, paths: [{path}]}}, "
         f"{{kind: static, count: 3, method: step_both, paths: [{root / 'source'}]}}]"),
    ])
    train_set = load_dataset("digits", "train")
    from cascade_adv.training.loop import Sampler, model_config_for

    model = run.model.eval()

    def loss_and_grads(rank, world):
        objective = AdversarialObjective(cfg, train_set, model_config_for(cfg, train_set),
                                         torch.device("cpu"), rank, world)
        sampler = Sampler(train_set, cfg, torch.device("cpu"), objective.clean_per_batch)
        x, y = sampler.batch(0)
        loss, logits, _ = objective(model, x, y, 0, sampler.generator(0, 3))
        model.zero_grad()
        loss.backward()
        return loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()]), \
            logits.shape[0]

    single, grad, rows = loss_and_grads(0, 1)
    shares = [loss_and_grads(r, 4) for r in range(4)]
    assert [s[2] for s in shares] == [rows // 4] * 4
    assert sum(s[0] for s in shares) / 4 == pytest.approx(single.item(), abs=1e-6)
    assert torch.allclose(sum(s[1] for s in shares) / 4, grad, rtol=0, atol=1e-6)


def test_cascade_training_runs_end_to_end(source, tmp_path):
    root, _run, _data, path = source
    cfg = load_config(None, BASE + [
        f"init_from={root / 'source'}", "adversarial.mode=append", "adversarial.k=8",
        "adversarial.distance=pivot", "adversarial.max_e=8",
        f"adversarial.sources=[{{kind: current, count: 4}}, {{kind: saved, count: 4, paths: [{path}]}}]",
    ])
    result = train(cfg, tmp_path / "cascade", progress=False)
    assert result.iterations == 6 and np.isfinite(result.final_loss)


def test_ensemble_training_with_static_source(source, tmp_path, monkeypatch):
    root, _run, _data, _path = source
    cfg = load_config(None, BASE + [
        "adversarial.mode=replace", "adversarial.k=8",
        (f"adversarial.sources=[{{kind: static, count: 8, method: step_fgsm, "
        f"paths: [{root / 'source'}]}}]"),
    ])
    from cascade_adv.models import load_model
    from cascade_adv.training import adversarial

    attacked: list[dict] = []
    real = adversarial.one_step_examples

    def spy(method, model, *args, **kwargs):
        attacked.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(method, model, *args, **kwargs)

    monkeypatch.setattr(adversarial, "one_step_examples", spy)
    result = train(cfg, tmp_path / "ens", progress=False)
    assert np.isfinite(result.final_loss)
    # every adversarial image came from the fixed source network, never the one trained
    fixed = load_model(root / "source").state_dict()
    assert len(attacked) == cfg.optim.iterations
    for state in attacked:
        assert all(torch.equal(state[k], fixed[k]) for k in fixed)
    assert not torch.equal(result.model.state_dict()["fc.weight"], fixed["fc.weight"])


def test_bad_cascade_sources_fail_before_training(source, tmp_path):
    _root, _run, _data, path = source
    # a set made for another image shape (here: another dataset name in its meta)
    other = tmp_path / "other"
    import shutil

    shutil.copytree(path, other)
    meta = json.loads((other / "meta.json").read_text())
    meta["dataset"] = "mnist"
    (other / "meta.json").write_text(json.dumps(meta))
    cfg = load_config(None, BASE + [
        "adversarial.mode=append", "adversarial.k=8",
        f"adversarial.sources=[{{kind: saved, count: 8, paths: [{other}]}}]",
    ])
    with pytest.raises(CascadeAdvError, match="mnist"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="needs paths"):
        load_config(None, BASE + ["adversarial.mode=append", "adversarial.k=8",
                                  "adversarial.sources=[{kind: saved, count: 8}]"])
    with pytest.raises(ConfigError, match="unknown adversarial training method"):
        train(load_config(None, BASE + ["adversarial.mode=append", "adversarial.k=8",
                                        "adversarial.method=iter_fgsm"]),
              tmp_path / "run2", progress=False)


def test_empty_saved_set_is_refused(source, tmp_path):
    _root, run, data, path = source
    with pytest.raises(CascadeAdvError, match="empty"):
        craft_adversarial_set(run.model, data.subset(torch.arange(0)), tmp_path / "none",
                              "iter_fgsm", [2], progress=False)
    # a consistent (correctly hashed) set with zero images is refused on load
    import shutil

    from cascade_adv.io import file_sha256

    empty = tmp_path / "empty"
    shutil.copytree(path, empty)
    meta = json.loads((empty / "meta.json").read_text())
    for name in ("images", "labels", "eps", "index"):
        arr = np.load(empty / f"{name}.npy")
        np.save(empty / f"{name}.npy", arr[:0])
        meta["sha256"][f"{name}.npy"] = file_sha256(empty / f"{name}.npy")
    meta["count"] = 0
    (empty / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CascadeAdvError, match="empty"):
        load_adversarial_set(empty)
    cfg = load_config(None, BASE + ["adversarial.mode=append", "adversarial.k=8",
                                    f"adversarial.sources=[{{kind: saved, count: 8, paths: [{empty}]}}]"])
    with pytest.raises(CascadeAdvError, match="empty"):
        train(cfg, tmp_path / "run", progress=False)


def test_large_lambda2_divergence_names_lambda2(tmp_path):
    cfg = load_config(None, BASE + [
        "optim.iterations=40", "checkpoint.every=2", "optim.lr=0.5", "adversarial.mode=append",
        "adversarial.k=16", "adversarial.distance=bidirectional", "adversarial.lam2=1000",
        "adversarial.max_e=32",
    ])
    with pytest.raises(TrainingDiverged) as err:
        train(cfg, tmp_path / "run", progress=False)
    assert "lam2" in str(err.value) and "1000" in str(err.value)
    last = latest_checkpoint(tmp_path / "run")
    assert last is None or (last / "model.safetensors").is_file()


def test_multi_source_cascade_draws_from_every_saved_set(source, tmp_path):
    """Several saved sets in one source mix uniformly over all their images."""
    _root, run, data, path = source
    second = craft_adversarial_set(run.model, data, tmp_path / "second", "step_fgsm", [16],
                                   prepare=lambda x: prepare_images(run.model, x),
                                   source_name="other", progress=False)
    cfg = load_config(None, BASE + [
        "adversarial.mode=append", "adversarial.k=16",
        f"adversarial.sources=[{{kind: saved, count: 16, paths: [{path}, {second}]}}]",
    ])
    train_set = load_dataset("digits", "train")
    from cascade_adv.training.loop import model_config_for

    objective = AdversarialObjective(cfg, train_set, model_config_for(cfg, train_set),
                                     torch.device("cpu"))
    saved = objective.saved[0]
    _images, labels, eps, index = saved.sample(4000, torch.Generator().manual_seed(0))
    # set 1 holds 120 images (eps 2, 4, 8), set 2 holds 40 (eps 16): a 3:1 mix
    assert set(eps.tolist()) == {2.0, 4.0, 8.0, 16.0}
    assert (eps == 16).float().mean().item() == pytest.approx(0.25, abs=0.03)
    assert torch.equal(labels, train_set.labels[index])
