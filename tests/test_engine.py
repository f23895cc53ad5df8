"""The attack x epsilon engine (evaluation/engine.py): the rows of its users on fixed
seeds, as stored before it existed (tests/engine_golden.py); its stacking; and its
independence of ambient state (fusion, trusted epsilons, autocast)."""

from __future__ import annotations

import engine_golden
import pytest
import torch

from cascade_adv import attacks
from cascade_adv.analysis import gradient_correlation, softmax_argument
from cascade_adv.attacks import core
from cascade_adv.attacks.registry import _REGISTRY, AttackSpec
from cascade_adv.evaluation import engine, evaluate_whitebox
from cascade_adv.speed import Speed


def test_rows_equal_the_stored_ones():
    """evaluate_whitebox, softmax_argument, gradient_correlation and a short audit on two
    models of digits (the cases of tests/engine_golden.py): accuracies (counts) exactly,
    the analyses' logits and correlations within 1e-5 (tests/engine_golden.py: REL, ABS)."""
    diff = engine_golden.differences(engine_golden.stored(), engine_golden.compute())
    assert not diff, "\n".join(diff[:20])


# --- a probe attack: what the attack core sees during an engine call -------------------


class Probe:
    """An attack that leaves the images as they are and records, per call, the rows'
    eps, the stacked images, whether it ran on the fused network, whether the epsilons
    were trusted and whether autocast was on."""

    def __init__(self, model: torch.nn.Module | None = None) -> None:
        self.model = model
        self.calls: list[dict] = []

    def __call__(self, model, x, y, eps, *, generator=None):
        with attacks.inference_mode(model):
            fused = attacks.attack_network(model) is not model
        self.calls.append({"eps": eps.tolist(), "x": x.clone(), "y": y.clone(), "fused": fused,
                           "trusted": core._TRUSTED.get(),
                           "autocast": torch.is_autocast_enabled("cpu")})
        return x.clone()

    def spec(self, name: str = "probe") -> AttackSpec:
        return AttackSpec(name, self, "one_step", "records what it sees")


def test_attack_eps_stacks_epsilon_major_within_max_rows():
    x = torch.rand(3, 1, 2, 2)
    y = torch.tensor([0, 1, 2])
    probe = Probe()
    parts = list(engine.attack_eps(torch.nn.Identity(), x, y, [1, 2, 3, 4, 5], probe.spec(),
                                   max_rows=7))  # 7 // 3 = 2 epsilons per call
    assert [p.first for p in parts] == [0, 2, 4]
    assert [p.eps for p in parts] == [[1.0, 2.0], [3.0, 4.0], [5.0]]
    assert [c["eps"] for c in probe.calls] == [[1.0] * 3 + [2.0] * 3, [3.0] * 3 + [4.0] * 3,
                                               [5.0] * 3]
    for part, call in zip(parts, probe.calls):
        assert torch.equal(call["x"], x.repeat(len(part.eps), 1, 1, 1))
        assert torch.equal(call["y"], y.repeat(len(part.eps)))
        assert part.per_eps(part.x_adv).shape == (len(part.eps), 3, 1, 2, 2)
        assert torch.equal(part.per_eps(part.y)[-1], y)
    # no cap: one call; a cap below one eps's batch: one eps per call
    assert len(list(engine.attack_eps(torch.nn.Identity(), x, y, [1, 2, 3], probe.spec()))) == 1
    assert len(list(engine.attack_eps(torch.nn.Identity(), x, y, [1, 2], probe.spec(),
                                      max_rows=2))) == 2


# --- no ambient state ------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet():
    """The golden ResNet (BatchNorm: its fused network is another module) and images."""
    model, ds = engine_golden.load_models()["resnet"]
    return model, ds.images[:6].float() / 255.0, ds.labels[:6]


@pytest.mark.parametrize("fuse", [True, False])
def test_engine_takes_fusion_from_its_argument_not_the_ambient_setting(resnet, fuse):
    model, x, y = resnet
    alone = engine.predict(model, x, fuse=fuse)
    other = engine.predict(model, x, fuse=not fuse)
    assert not torch.equal(alone, other)  # the two networks differ in the last bits
    probe = Probe()
    with attacks.fusion(not fuse):  # the opposite outer setting
        inside = engine.predict(model, x, fuse=fuse)
        grad = engine.input_gradient(model, x, y, core.loss_true, fuse=fuse)
        list(engine.attack_eps(model, x, y, [2, 4], probe.spec(), fuse=fuse))
        out = engine.attack_rows(model, x, y, torch.full((6,), 2.0), probe.spec(), fuse=fuse)
        with attacks.inference_mode(model):  # and the outer setting is back
            assert (attacks.attack_network(model) is not model) == (not fuse)
    assert torch.equal(inside, alone) and torch.equal(out.logits, alone)
    assert torch.equal(grad, engine.input_gradient(model, x, y, core.loss_true, fuse=fuse))
    assert [c["fused"] for c in probe.calls] == [fuse, fuse]
    assert all(c["trusted"] for c in probe.calls) and not core._TRUSTED.get()


def test_engine_takes_autocast_from_its_speed_argument(resnet):
    model, x, y = resnet
    probe = Probe()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an outer autocast is ignored
        logits = engine.predict(model, x)
        list(engine.attack_eps(model, x, y, [2], probe.spec()))
    assert logits.dtype == torch.float32 and torch.equal(logits, engine.predict(model, x))
    bf16 = Speed(torch.device("cpu"), torch.bfloat16)
    assert engine.predict(model, x, speed=bf16).dtype == torch.bfloat16
    list(engine.attack_eps(model, x, y, [2], probe.spec(), speed=bf16))
    assert [c["autocast"] for c in probe.calls] == [False, True]


def test_users_pass_fusion_explicitly(resnet, monkeypatch):
    """evaluate_whitebox, softmax_argument and gradient_correlation run their attacks
    with their own ``fuse``, whatever the outer block set."""
    model, _, _ = resnet
    ds = engine_golden.load_models()["resnet"][1].subset(4)
    probe = Probe()
    monkeypatch.setitem(_REGISTRY, "probe", probe.spec())
    monkeypatch.setitem(_REGISTRY, "step_fgsm", probe.spec("step_fgsm"))
    for fuse in (True, False):
        with attacks.fusion(not fuse):
            evaluate_whitebox(model, ds, ["probe"], [0, 2], fuse=fuse, progress=False)
            softmax_argument(model, ds, methods=["step_fgsm"], eps=(0, 2), n_images=4,
                             fuse=fuse)
            gradient_correlation(model, ds, pairs=["clean~step_fgsm"], eps=(0, 2), n_images=4,
                                 fuse=fuse)
        assert [c["fused"] for c in probe.calls] == [fuse] * 3
        probe.calls.clear()
