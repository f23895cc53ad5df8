"""Details of the N18 authors' released code (docs/fidelity.md): both pivots,
normalize_embedding, weight-decay scope, one schedule across pre-training, and the
refusals of options that do not fit."""

from __future__ import annotations

import pytest
import test_adversarial_training
import torch
from torch import nn

from cascade_adv.cli.main import main
from cascade_adv.errors import CheckpointError, ConfigError
from cascade_adv.training import load_config, train
from cascade_adv.training.loss import embedding_distance, unified_loss
from cascade_adv.training.optim import make_optimizer

# the loss tests' batch of m = 6 rows (adversarial 0, 1; twins 2, 3; clean 4, 5), in float64
LOGITS = test_adversarial_training.LOGITS.double()
LABELS = test_adversarial_training.LABELS


def loss_and_grad(distance, normalize=False, logits=LOGITS):
    logits = logits.clone().requires_grad_(True)
    loss = unified_loss(logits, LABELS, 2, lam=0.3, lam2=0.5, distance=distance,
                        normalize_embedding=normalize)
    (grad,) = torch.autograd.grad(loss, logits)
    return loss, grad


# --- the two pivots ----------------------------------------------------------------------------


@pytest.mark.parametrize("normalize", [False, True])
def test_released_pivot_is_the_bidirectional_loss(normalize):
    """The released ``_get_pivot_loss`` overwrites its pivot variable with the live clean
    embeddings: the same loss value and the same gradients as bidirectional."""
    released, g_released = loss_and_grad("pivot_released", normalize)
    bidirectional, g_bidirectional = loss_and_grad("bidirectional", normalize)
    assert released.item() == bidirectional.item()
    assert torch.equal(g_released, g_bidirectional)
    assert torch.count_nonzero(g_released[2:4]) > 0  # the clean twins move


def test_paper_pivot_gives_clean_rows_no_distance_gradient():
    """N18 section 3.2: the clean embedding is the pivot, a constant: the clean twins get
    only their cross-entropy gradient, the adversarial rows ``lam2 * (E_adv - E)`` more."""
    detached, g_detached = loss_and_grad("pivot_detached")
    released, _ = loss_and_grad("pivot_released")
    _, g_ce = loss_and_grad(None)
    assert detached.item() == released.item()  # the same value, another gradient
    assert torch.equal(g_detached[2:], g_ce[2:])
    torch.testing.assert_close(g_detached[:2] - g_ce[:2], 0.5 * (LOGITS[:2] - LOGITS[2:4]))
    # "pivot", the paper's word, is the detached one
    assert torch.equal(loss_and_grad("pivot")[1], g_detached)
    assert load_config(None, ["adversarial.mode=append",
                              "adversarial.distance=pivot"]).adversarial.distance == "pivot_detached"


def test_normalize_embedding_divides_by_clean_variance():
    """``normalize_embedding`` of the authors' code: both sides over the population
    variance (``tf.nn.moments``) of the clean embedding's entries."""
    e_adv, e_clean = LOGITS[:2], LOGITS[2:4]
    # clean row (1, 0, 0): mean 1/3, variance 2/9; row (0, 2, 1): mean 1, variance 2/3
    var = torch.tensor([[2 / 9], [2 / 3]], dtype=torch.float64)
    want = 0.5 * ((e_adv - e_clean) / var).pow(2).sum()
    got = embedding_distance(e_adv, e_clean, "pivot_detached", normalize=True)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    l1 = embedding_distance(e_adv, e_clean, "bidirectional", norm="l1", normalize=True)
    assert l1.item() == pytest.approx(((e_adv - e_clean) / var).abs().sum().item(), rel=1e-12)
    # detached: the variance is a constant too, so the clean rows get no gradient
    _, g = loss_and_grad("pivot_detached", normalize=True)
    _, g_ce = loss_and_grad(None)
    assert torch.equal(g[2:], g_ce[2:])


def test_unified_loss_keeps_float64_and_passes_gradcheck():
    loss, _ = loss_and_grad("bidirectional")
    assert loss.dtype == torch.float64
    for distance in ("bidirectional", "pivot_released"):  # the detached pivot is no gradient
        x = LOGITS.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda z, d=distance: unified_loss(z, LABELS, 2, lam2=0.5, distance=d,
                                               normalize_embedding=True), (x,))
    half = unified_loss(LOGITS.to(torch.bfloat16), LABELS, 2, distance="bidirectional")
    assert half.dtype == torch.float32


# --- weight-decay scope --------------------------------------------------------------------


def test_weight_decay_scope_weights_spares_biases_and_batchnorm():
    """One SGD step with zero loss gradient: only conv / linear weights shrink, by
    ``lr * wd * w`` (the step of the released code's ``wd * l2_loss(w)``)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, bias=True), nn.BatchNorm2d(2), nn.Flatten(),
                        nn.Linear(2, 3))
    with torch.no_grad():
        net[1].weight.fill_(1.5)
        net[1].bias.fill_(0.25)
    before = {k: v.clone() for k, v in net.named_parameters()}
    cfg = load_config(None, ["optim.lr=0.5", "optim.weight_decay=0.1", "optim.momentum=0.9",
                             "optim.weight_decay_scope=weights"])
    opt = make_optimizer(cfg, net)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    after = dict(net.named_parameters())
    for name in ("0.weight", "3.weight"):
        torch.testing.assert_close(after[name], before[name] * (1 - 0.5 * 0.1))
    for name in ("0.bias", "1.weight", "1.bias", "3.bias"):
        assert torch.equal(after[name], before[name]), name
    # scope all (the default) decays every parameter
    net_all = nn.Sequential(nn.Linear(2, 2))
    b = net_all[0].bias.detach().clone()
    opt = make_optimizer(load_config(None, ["optim.lr=0.5", "optim.weight_decay=0.1"]), net_all)
    for p in net_all.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(net_all[0].bias, b * 0.95)


# --- one schedule across pre-training ----------------------------------------------------------


def tiny(iterations, **over):
    base = ["data.dataset=digits", "model.depth=8", f"optim.iterations={iterations}",
            "optim.batch_size=32", "optim.lr_milestones=[6, 9]", "checkpoint.every=4",
            "log_every=2", "model.bn_momentum=0.001", "model.bn_eps=0.001",
            "optim.weight_decay_scope=weights"]
    return load_config(None, base + [f"{k}={v}" for k, v in over.items()])


def test_continue_from_pretraining_equals_one_uninterrupted_run(tmp_path):
    """``init_mode: continue`` goes on with the pre-training's iteration count, momentum
    buffers and BatchNorm statistics: bit for bit one run of the whole schedule."""
    whole = train(tiny(12), tmp_path / "whole", progress=False)
    train(tiny(5), tmp_path / "pre", progress=False)  # ends between checkpoints
    cont = train(tiny(12, init_from=tmp_path / "pre", init_mode="continue"), tmp_path / "cont",
                 progress=False)
    assert cont.resumed_from == 5
    a, b = whole.model.state_dict(), cont.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # init_mode weights (the default) restarts the schedule and the momentum: not equal
    fresh = train(tiny(12, init_from=tmp_path / "pre"), tmp_path / "fresh", progress=False)
    assert fresh.resumed_from == 0
    assert not torch.equal(fresh.model.fc.weight, whole.model.fc.weight)


def test_continue_refuses_what_does_not_fit(tmp_path):
    train(tiny(8), tmp_path / "pre", progress=False)
    with pytest.raises(ConfigError, match="ends at iteration 8.*optim.iterations=6"):
        train(tiny(6, init_from=tmp_path / "pre", init_mode="continue"), tmp_path / "a",
              progress=False)
    with pytest.raises(CheckpointError, match="another architecture.*depth"):
        train(tiny(12, init_from=tmp_path / "pre", init_mode="continue", **{"model.depth": 14}),
              tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="optimizer state.*weight_decay_scope"):
        train(tiny(12, init_from=tmp_path / "pre", init_mode="continue",
                   **{"optim.weight_decay_scope": "all"}), tmp_path / "c", progress=False)
    weights = tmp_path / "pre" / "final" / "model.safetensors"
    with pytest.raises(ConfigError, match="has none"):
        train(tiny(12, init_from=weights, init_mode="continue"), tmp_path / "d", progress=False)
    # a paper config with init_from=null starts from scratch: init_mode has no effect
    assert tiny(12, init_mode="continue").init_from is None
    for name in "abcd":
        assert not (tmp_path / name).exists()


@pytest.mark.parametrize("override,message", [
    (["model.arch=inception_v3", "data.dataset=imagenet", "model.shortcut=A"],
     "model.shortcut applies to model.arch resnet only"),
    (["model.shortcut=C"], "model.shortcut"),
    (["model.bn_momentum=0"], "model.bn_momentum"),
    (["model.bn_eps=-1"], "model.bn_eps"),
    (["optim.weight_decay_scope=biases"], "optim.weight_decay_scope"),
    (["adversarial.distance=pivot_paper"], "adversarial.distance"),
    (["init_mode=resume"], "init_mode"),
])
def test_bad_fidelity_options_are_one_line_exit_2(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--config", "configs/digits_baseline.yaml", "--out", str(tmp_path / "run"),
              "--quiet", *override])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_continue_longer_than_the_run_is_refused_before_work(tmp_path, capsys):
    pre = tmp_path / "pre"
    train(tiny(8), pre, progress=False)
    args = ["train", "--config", "configs/digits_baseline.yaml", "--out", str(tmp_path / "run"),
            "--quiet", "data.dataset=digits",
            "model.depth=8", "optim.batch_size=32", "model.bn_momentum=0.001",
            "model.bn_eps=0.001", "optim.weight_decay_scope=weights", f"init_from={pre}",
            "init_mode=continue", "optim.iterations=4"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "raise optim.iterations" in err and "\n" not in err
    assert not (tmp_path / "run").exists()
