"""The inference network of attacks (BatchNorm folded into the convolutions) and the
capture-safe hot paths (no host syncs)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cascade_adv import attacks
from cascade_adv.data import load_dataset
from cascade_adv.evaluation import evaluate_whitebox
from cascade_adv.models import build_model
from cascade_adv.models.fuse import FoldedConv, fold_batchnorm, inference_network
from cascade_adv.training import initial_model, load_config, setup_training, train, train_step
from cascade_adv.training.optim import make_optimizer

#: Documented tolerance (docs/performance.md): folded vs unfused logits in float32.
ATOL = 1e-4


def with_running_stats(model: nn.Module, shape, seed=0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, then inference mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.2, 0.2, generator=g)
    model.train()
    for _ in range(3):
        model(torch.rand(shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("cfg", [
    {"depth": 20, "input_size": 24},
    {"depth": 14, "input_size": 28, "in_channels": 1, "normalize": "none", "shortcut": "B"},
    {"depth": 8, "input_size": 8, "in_channels": 1, "bn_eps": 1e-3, "bn_momentum": 0.001},
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_resnet_equals_unfused(cfg, channels_last):
    model = build_model(cfg)
    shape = (8, model.config.in_channels, model.config.input_size, model.config.input_size)
    with_running_stats(model, shape)
    fused = fold_batchnorm(model, channels_last)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, FoldedConv) for m in fused.modules()) == n_bn  # every BN folded
    x = torch.rand(shape)
    torch.testing.assert_close(fused(x), model(x), atol=ATOL, rtol=0)
    # in float64 the fold is exact to float64 rounding
    model64 = model.double()
    fused64 = fold_batchnorm(model64, channels_last)
    torch.testing.assert_close(fused64(x.double()), model64(x.double()), atol=1e-10, rtol=0)


def test_folded_inception_and_user_modules():
    inc = build_model({"arch": "inception_v3", "input_size": 75, "width": 0.25}).eval()
    x = torch.rand(2, 3, 75, 75)
    fused = fold_batchnorm(inc)
    assert fused is not None
    torch.testing.assert_close(fused(x), inc(x), atol=ATOL, rtol=0)
    # a user's Sequential with a biased convolution, and a conv whose output is also used
    # elsewhere (not folded: the BatchNorm input is needed as it is)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(4, 4, 3, bias=True), nn.BatchNorm2d(4)

        def forward(self, x):
            h = self.conv(x)
            return self.bn(h) + h

    user = nn.Sequential(nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4), nn.ReLU(), Twice(),
                         nn.Flatten(), nn.LazyLinear(3))
    user(torch.rand(2, 3, 9, 9))
    with_running_stats(user, (4, 3, 9, 9))
    fused = fold_batchnorm(user)
    assert sum(isinstance(m, FoldedConv) for m in fused.modules()) == 1
    x = torch.rand(5, 3, 9, 9)
    torch.testing.assert_close(fused(x), user(x), atol=ATOL, rtol=0)


def test_fold_follows_weight_changes_and_shares_tensors():
    model = with_running_stats(build_model({"depth": 8, "input_size": 8, "in_channels": 1}),
                               (8, 1, 8, 8))
    fused = inference_network(model)
    assert inference_network(model) is fused  # built once per model
    # nothing is copied: the inference network holds the model's own parameters
    assert {id(p) for p in model.parameters()} <= {id(p) for p in fused.parameters()}
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(fused(x), model(x), atol=ATOL, rtol=0)
    with torch.no_grad():  # an optimizer step / new statistics: the next pass refolds
        model.bn1.running_var.mul_(3.0)
        model.conv1.weight.add_(0.1)
        model.fc.bias.add_(1.0)
    torch.testing.assert_close(fused(x), model(x), atol=ATOL, rtol=0)
    model.double()  # new tensors (buffers replaced): a new inference network
    assert inference_network(model) is not fused
    torch.testing.assert_close(inference_network(model)(x.double()), model(x.double()))


def test_untraceable_model_falls_back_with_one_log_line(caplog):
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = x * 2
            return self.bn(self.conv(x)).flatten(1)

    model = Branchy().eval()
    with caplog.at_level(logging.INFO, logger="cascade_adv.models.fuse"):
        assert inference_network(model) is model
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "Branchy cannot be traced" in lines[0] and "\n" not in lines[0]
    no_bn = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert inference_network(no_bn) is no_bn  # nothing to fold: not even traced


def test_fusion_switch_and_attacks_agree():
    model = with_running_stats(build_model({"depth": 8, "input_size": 8, "in_channels": 1}),
                               (16, 1, 8, 8))
    assert attacks.attack_network(model) is not model
    with attacks.fusion(False):
        assert attacks.attack_network(model) is model
    x, y = torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))
    for name in ("step_fgsm", "iter_ll"):
        fused = attacks.run(name, model, x, y, eps=8)
        with attacks.fusion(False):
            plain = attacks.run(name, model, x, y, eps=8)
        differ = (fused - plain).abs() > 1e-6
        assert differ.float().mean() < 0.01, name  # a sign flip of a near-zero gradient
        assert (fused - plain).abs().max() <= 2 * 8 / 255 + 1e-6
    assert model.training is False


def test_whitebox_table_fused_agrees_with_unfused_within_standard_error(tmp_path):
    cfg = load_config(None, ["data.dataset=digits", "model.depth=8", "optim.iterations=60",
                             "optim.batch_size=64", "optim.lr_milestones=[40]",
                             "checkpoint.every=60", "log_every=30"])
    model = train(cfg, tmp_path / "run", progress=False).model
    test = load_dataset("digits", "test")
    kwargs = {"attacks": ["step_ll", "step_fgsm", "iter_ll", "iter_fgsm"], "eps": [8, 16],
              "progress": False, "topk": (1,)}
    fused = evaluate_whitebox(model, test, **kwargs)
    plain = evaluate_whitebox(model, test, fuse=False, **kwargs)
    n = len(test)
    for row in plain.rows:
        other = fused.value("model", row["attack"], row["eps"])
        p = row["value"] / 100
        se = 100 * math.sqrt(max(p * (1 - p), 1 / n) / n)
        assert abs(other - row["value"]) <= se, (row, other, se)


class SyncCounter(TorchDispatchMode):
    """Counts the ops that read a device value back to the host (``.item()``,
    ``bool(t)``, ``int(t)``, ``.tolist()``: ``aten._local_scalar_dense``)."""

    def __init__(self):
        super().__init__()
        self.syncs = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.syncs += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["step_ll", "step_both", "step_fgsm"])
def test_adversarial_training_step_has_no_host_sync(method):
    """The hot loop of adversarial training (``train_step``: epsilons, the one-step attack
    on the folded network, the batch, the loss, backward and the optimizer step) never
    reads a value back to the host, so it can be captured (CUDA graphs) and never
    stalls the GPU."""
    cfg = load_config(None, ["data.dataset=digits", "model.depth=8", "optim.batch_size=32",
                             "adversarial.mode=append", "adversarial.k=16",
                             "adversarial.distance=pivot_detached", f"adversarial.method={method}",
                             "adversarial.max_e=16"])
    setup = setup_training(cfg, torch.device("cpu"))
    model = initial_model(cfg, setup, torch.device("cpu")).train()
    optimizer = make_optimizer(cfg, model)
    for it in range(3):  # the first iteration builds the folded network
        x, y = setup.sampler.batch(it)
        with SyncCounter() as counter:
            train_step(model, optimizer, setup.objective, x, y, it, setup.sampler.generator(it, 3),
                       lr=0.1, speed=setup.speed)
        assert counter.syncs == 0, f"iteration {it}: {counter.syncs} host syncs"
