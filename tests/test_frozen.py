"""Square on the model compiled with inductor's freezing (``attacks.compiled()``,
``AuditRun(compile=True)``, ``cascade-adv audit --compile``): the same answers as the
eager network within float rounding, never stale weights, and one line where
``torch.compile`` cannot work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cascade_adv import attacks, speed
from cascade_adv.errors import AttackError, ConfigError, InvalidArgument
from cascade_adv.evaluation import audit
from cascade_adv.evaluation.audit import AuditRun
from cascade_adv.models import frozen
from tests._cli import run_cli


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        net[1].running_mean.uniform_(-0.2, 0.2)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


def _data(net: nn.Module, n: int = 24):
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return x, net(x).argmax(dim=1)


def _square(net, x, y, compiled: bool):
    with attacks.compiled(compiled):
        return attacks.run("square", net, x, y, eps=8, queries=60,
                           generator=torch.Generator().manual_seed(2))


@pytest.fixture(scope="module")
def compile_works():
    why = speed.compile_support("cpu")
    if why is not None:
        pytest.skip(f"torch.compile is unsupported here ({why}); its error path is tested")


@pytest.mark.slow
def test_square_on_the_compiled_model_agrees_with_the_eager_network(compile_works):
    net = _net(0)
    x, y = _data(net)
    eager, comp = _square(net, x, y, False), _square(net, x, y, True)
    assert net in frozen._CACHE  # the compiled network ran
    for adv in (eager, comp):
        assert (adv - x).abs().max() <= 8 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        # the compiled forward is the model's within float rounding, at any batch size
        for n in (24, 7, 1):
            assert torch.allclose(frozen.frozen_network(net)(comp[:n]), net(comp[:n]),
                                  atol=1e-5)
        broken = [int((net(a).argmax(dim=1) != y).sum()) for a in (eager, comp)]
    # a margin that differs in the last bit can take another candidate: the same search,
    # within an image of the eager one's accuracy
    assert abs(broken[0] - broken[1]) <= 1 and 0 < broken[0] < len(y)


@pytest.mark.slow
def test_an_audit_asked_to_compile_runs_square_compiled(compile_works):
    net = _net(5)
    x, y = _data(net, 8)
    kw = {"version": "square:queries=20", "diagnostics": False}
    plain = audit(net, x, y, 8, **kw)
    assert net not in frozen._CACHE
    comp = audit(net, x, y, 8, run=AuditRun(compile=True), **kw)
    assert net in frozen._CACHE
    assert abs(plain.worst_case[8.0] - comp.worst_case[8.0]) <= 100 / len(y)


@pytest.mark.slow
def test_a_weight_changed_in_place_is_never_read_stale(compile_works):
    net, other = _net(3), _net(4)
    x, y = _data(net, 8)
    with torch.no_grad():
        assert torch.allclose(frozen.frozen_network(net)(x), net(x), atol=1e-5)
        # another model of the same class: compiled for its own weights
        assert torch.allclose(frozen.frozen_network(other)(x), other(x), atol=1e-5)
        net[0].weight.add_(0.5)  # the compiled constants are now stale
    assert frozen.frozen_network(net) is None
    with attacks.compiled():
        assert attacks.query_network(net, x) is attacks.attack_network(net, x)
    assert torch.equal(_square(net, x, y, True), _square(net, x, y, False))


def test_compile_is_checked_before_any_work(monkeypatch, tmp_path):
    net = _net(0)
    x, y = _data(net, 4)
    with pytest.raises(InvalidArgument, match="compile must be True or False"):
        audit(net, x, y, 8, version="quick", run=AuditRun(compile="yes"))
    with pytest.raises(AttackError, match="compiled takes True or False"), \
            attacks.compiled("yes"):
        pass
    monkeypatch.setattr(speed, "_cpp_compiler", lambda: None)
    speed.compile_support.cache_clear()
    try:
        with pytest.raises(ConfigError, match="unsupported.*C\\+\\+ compiler.*compile=False"):
            audit(net, x, y, 8, version="quick", run=AuditRun(compile=True))
        code, _, err = run_cli(["audit", "--checkpoint", "no/such/run", "--device", "cpu",
                                  "--compile", "--quiet"], tmp_path)
    finally:
        speed.compile_support.cache_clear()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "--no-compile" in lines[0]
    assert "no/such/run" not in lines[0]  # before the checkpoint is opened
