"""The attack network's memory layout: chosen by measurement on a CPU, cached per machine
and model shape, pinned by an option, and equal in value up to float32 rounding
(cascade_adv.models.layout, docs/performance.md)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from torch import nn

from cascade_adv import attacks
from cascade_adv.errors import InvalidArgument
from cascade_adv.evaluation import AuditRun, Workers, audit
from cascade_adv.models import fuse, layout


def _convnet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    for m in net.modules():  # non-trivial running statistics to fold
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    layout.forget_layouts()
    fuse._AUTO.clear()
    yield tmp_path / "cascade-adv" / "layout.json"
    layout.forget_layouts()
    fuse._AUTO.clear()


def _timed(monkeypatch, seconds: dict[bool, float], calls: list):
    """measure_layout answers ``seconds``; ``_pass_seconds`` says the pass is long enough."""
    def fake(contiguous, channels_last, sample):
        calls.append(sample.shape)
        return dict(seconds)

    monkeypatch.setattr(layout, "measure_layout", fake)
    monkeypatch.setattr(layout, "_pass_seconds", lambda net, x: 1.0)


def test_the_two_layouts_agree_within_float32_rounding():
    """Input gradients, an iterative attack's images and the audit's outcomes of the NHWC
    and the NCHW network agree: the layout moves float rounding only."""
    net = _convnet()
    x = torch.rand(32, 1, 12, 12)
    y = torch.randint(0, 10, (32,))
    grads, advs = {}, {}
    for cl in (False, True):
        with attacks.layout(cl), attacks.inference_mode(net):
            folded = attacks.attack_network(net, x)
            assert any(isinstance(m, fuse.FoldedConv) for m in folded.modules())
            assert any(p.dim() == 4 for p in folded.parameters())
            xg = x.clone().requires_grad_(True)
            loss = nn.functional.cross_entropy(folded(xg), y, reduction="sum")
            grads[cl] = torch.autograd.grad(loss, xg)[0]
            advs[cl] = attacks.run("iter_fgsm", net, x, y, eps=8, steps=5)
    torch.testing.assert_close(grads[True], grads[False], rtol=1e-4, atol=1e-6)
    differ = (advs[True] != advs[False]).float().mean().item()
    assert differ < 0.01  # a sign flips only where the gradient is ~0
    outcomes = [audit(net, x, y, [8], version="apgd_ce:steps=5", diagnostics=False,
                      run=AuditRun(batch_size=16, channels_last=cl)).broken_by
                for cl in (False, True)]
    assert (outcomes[0] != outcomes[1]).float().mean().item() <= 1 / 32


def test_the_layout_is_really_switched():
    """True gives NHWC folded weights and inputs, False NCHW (so the test above compares
    two layouts, not one twice)."""
    net = _convnet()
    x = torch.rand(4, 1, 12, 12)
    with attacks.inference_mode(net):
        nhwc = fuse.inference_network(net, True, x)
        nhwc(x)  # the folded weights are built on the first pass
        weights = [m._weight for m in nhwc.modules() if isinstance(m, fuse.FoldedConv)
                   and m._weight.shape[1] > 1]  # one input channel: both layouts coincide
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last)
                               and not w.is_contiguous() for w in weights)
        nchw = fuse.inference_network(net, False, x)
        nchw(x)
        assert all(m._weight.is_contiguous() for m in nchw.modules()
                   if isinstance(m, fuse.FoldedConv))


@pytest.mark.parametrize("seconds, expected", [
    ({False: 1.0, True: 0.6}, True),     # channels_last clearly faster
    ({False: 1.0, True: 0.97}, False),   # within the noise margin: contiguous stays
    ({False: 0.6, True: 1.0}, False),
])
def test_a_cpu_picks_the_measured_faster_layout_and_keeps_it(cache, monkeypatch, seconds,
                                                             expected):
    net, x = _convnet(), torch.rand(140, 1, 12, 12)
    calls = []
    _timed(monkeypatch, seconds, calls)
    with attacks.inference_mode(net):
        assert fuse.auto_layout(net, x) is expected
        assert fuse.auto_layout(net, x) is expected
    assert len(calls) == 1 and calls[0][0] == layout.BATCH  # measured once, on 128 images
    stored = json.loads(cache.read_text())
    assert stored == {layout.layout_key(net, x): expected}
    # a new process (nothing in memory) reads the file instead of measuring
    layout.forget_layouts()
    fuse._AUTO.clear()
    with attacks.inference_mode(net):
        assert fuse.auto_layout(net, x) is expected
    assert len(calls) == 1
    # another image shape is another key: measured again
    with attacks.inference_mode(net):
        fuse.auto_layout(net, torch.rand(8, 1, 16, 16))
    assert len(calls) == 2


def test_the_key_names_machine_threads_architecture_and_shape():
    a, x = _convnet(0), torch.rand(2, 1, 12, 12)
    assert layout.layout_key(a, x) == layout.layout_key(_convnet(1), x)  # values do not count
    assert layout.layout_key(a, x) != layout.layout_key(a, torch.rand(2, 1, 14, 14))
    wider = nn.Sequential(nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16))
    assert layout.layout_key(a, x) != layout.layout_key(wider, x)
    before = torch.get_num_threads()
    key = layout.layout_key(a, x)
    torch.set_num_threads(before + 1)
    try:
        assert layout.layout_key(a, x) != key
    finally:
        torch.set_num_threads(before)


def test_a_pinned_layout_or_a_tiny_network_measures_nothing(cache, monkeypatch):
    net, x = _convnet(), torch.rand(8, 1, 12, 12)
    monkeypatch.setattr(layout, "measure_layout", lambda *a: pytest.fail("measured"))
    for pinned in (True, False):
        with attacks.layout(pinned), attacks.inference_mode(net):
            folded = attacks.attack_network(net, x)
        assert folded._to_channels_last if pinned else not hasattr(folded, "_to_channels_last")
    # a pass under MIN_PASS: contiguous without timing channels_last
    monkeypatch.setattr(layout, "_pass_seconds", lambda net, x: layout.MIN_PASS / 2)
    with attacks.inference_mode(net):
        assert fuse.auto_layout(net, x) is False
    # nothing to fold, another device type, no sample: nothing to measure
    plain = nn.Sequential(nn.Flatten(), nn.Linear(144, 10))
    assert fuse.auto_layout(plain, x) is False
    assert layout.preferred_layout(net, None, None) is False
    assert layout.preferred_layout(net, torch.empty(2, 1, 12, 12, device="meta"), None) is False


def test_the_audit_chooses_once_with_the_shards_thread_count_and_keys_it(cache, monkeypatch):
    """The parent picks the layout before any attack (with the workers' one thread), the
    shards run it, and it is part of the progress key; a bad value is refused."""
    net, x = _convnet(), torch.rand(16, 1, 12, 12)
    y = torch.randint(0, 10, (16,))
    seen = []

    def fake(contiguous, channels_last, sample):
        seen.append(torch.get_num_threads())
        return {False: 1.0, True: 0.5}

    monkeypatch.setattr(layout, "measure_layout", fake)
    monkeypatch.setattr(layout, "_pass_seconds", lambda net, x: 1.0)
    audit_mod = importlib.import_module("cascade_adv.evaluation.audit")  # not audit()

    shards = []
    real = audit_mod._audit_shard
    monkeypatch.setattr(audit_mod, "_audit_shard", lambda *a, **k: (shards.append(a[4]),
                                                                     real(*a, **k))[1])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        audit(net, x, y, [8], version="apgd_ce:steps=2", diagnostics=False)
    finally:
        torch.set_num_threads(before)
    assert seen == [2] and shards[0].channels_last is True
    assert shards[0].settings(0)["channels_last"] is True
    # sharded: measured with the workers' thread count (a new key: measured again)
    monkeypatch.setattr(audit_mod, "audit_shards", lambda *a: (shards.append(a[4]),
                                                               pytest.fail("stop"))[1])
    layout.forget_layouts()
    fuse._AUTO.clear()
    cache.unlink()
    torch.set_num_threads(2)
    try:
        with pytest.raises(pytest.fail.Exception, match="stop"):
            audit(net, x, y, [8], version="apgd_ce:steps=2", diagnostics=False,
                  run=AuditRun(batch_size=8, workers=Workers(jobs=2, threads=1)))
    finally:
        torch.set_num_threads(before)
    assert seen == [2, 1] and shards[-1].channels_last is True
    # a shard alone (as in a worker process) runs the layout it was given, unmeasured
    monkeypatch.setattr(fuse, "auto_layout", lambda *a: pytest.fail("measured in a shard"))
    fuse._CACHE.clear()
    real(net, x, y, None, shards[0], 0)
    assert fuse._CACHE[net][0][1] is True  # the network built NHWC
    with pytest.raises(InvalidArgument, match="channels_last"):
        audit(net, x, y, [8], run=AuditRun(channels_last="yes"))
    with pytest.raises(ValueError, match="channels_last"), attacks.layout("yes"):
        pass
