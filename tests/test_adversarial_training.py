"""Adversarial training: N18's loss, batch composition, epsilon samplers, Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch

from cascade_adv.errors import ConfigError
from cascade_adv.training import load_config
from cascade_adv.training.adversarial import compose_batch, one_step_examples
from cascade_adv.training.epsilon import sample_eps
from cascade_adv.training.loss import unified_loss

# A fixed tiny batch: m = 6 rows, k = 2 adversarial rows (0, 1), twins (2, 3), clean (4, 5).
LOGITS = torch.tensor([
    [2.0, 0.0, -1.0],
    [0.5, 1.5, 0.0],
    [1.0, 0.0, 0.0],
    [0.0, 2.0, 1.0],
    [0.0, 0.0, 3.0],
    [1.0, 1.0, 1.0],
])
LABELS = torch.tensor([1, 1, 0, 1, 2, 0])


def ce_by_hand(row, label):
    z = LOGITS[row].tolist()
    return math.log(sum(math.exp(v) for v in z)) - z[label]


def expected(k, lam, lam2, norm, with_distance):
    m = LOGITS.shape[0]
    clean = sum(ce_by_hand(i, LABELS[i]) for i in range(k, m))
    adv = sum(ce_by_hand(i, LABELS[i]) for i in range(k))
    value = (clean + lam * adv) / ((m - k) + lam * k)
    if with_distance:
        dist = 0.0
        for i in range(k):
            diff = [a - b for a, b in zip(LOGITS[i].tolist(), LOGITS[k + i].tolist())]
            dist += 0.5 * sum(d * d for d in diff) if norm == "l2" else sum(abs(d) for d in diff)
        value += lam2 * dist
    return value


@pytest.mark.parametrize("distance", [None, "pivot", "bidirectional"])
@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_unified_loss_matches_hand_computation(distance, norm):
    got = unified_loss(LOGITS, LABELS, k=2, lam=0.3, lam2=0.05, distance=distance, norm=norm)
    want = expected(2, 0.3, 0.05, norm, distance is not None)
    assert got.item() == pytest.approx(want, rel=1e-6)


def test_replace_mode_loss_is_k17_weighted_loss():
    # K17 section 3 with m = 6, k = 3, no twins: (sum clean + lam sum adv) / ((m-k) + lam k)
    got = unified_loss(LOGITS, LABELS, k=3, lam=0.3, distance=None)
    assert got.item() == pytest.approx(expected(3, 0.3, 0.0, "l2", False), rel=1e-6)
    # lam = 1 and k = 0 are plain mean cross-entropy
    mean_ce = torch.nn.functional.cross_entropy(LOGITS, LABELS)
    assert unified_loss(LOGITS, LABELS, k=0, distance=None).item() == pytest.approx(mean_ce.item())
    assert unified_loss(LOGITS, LABELS, k=3, lam=1.0, distance=None).item() == pytest.approx(
        mean_ce.item())


def test_pivot_detaches_clean_embedding_and_bidirectional_does_not():
    for distance, clean_moves in (("pivot", False), ("bidirectional", True)):
        logits = LOGITS.clone().requires_grad_(True)
        # only the distance term: lam2 = 1, and subtract the CE part's gradient
        loss = unified_loss(logits, LABELS, 2, lam2=1.0, distance=distance)
        ce_only = unified_loss(logits, LABELS, 2, distance=None)
        (g,) = torch.autograd.grad(loss - ce_only, logits)
        diff = (LOGITS[:2] - LOGITS[2:4])
        assert torch.allclose(g[:2], diff)                # d/dE_adv 0.5|E_adv - E|^2
        if clean_moves:
            assert torch.allclose(g[2:4], -diff)
        else:
            assert torch.count_nonzero(g[2:4]) == 0
        assert torch.count_nonzero(g[4:]) == 0


def test_distance_on_another_embedding_layer():
    """adversarial.embedding=features: CE on the logits, the distance on the features."""
    feats = torch.tensor([[1.0, 2.0], [0.0, 1.0], [1.0, 0.0], [2.0, 2.0], [5.0, 5.0], [9.0, 9.0]])
    got = unified_loss(LOGITS, LABELS, 2, lam=0.3, lam2=0.5, distance="pivot", embeddings=feats)
    ce = unified_loss(LOGITS, LABELS, 2, lam=0.3, distance=None)
    # 0.5 * (|(1,2) - (1,0)|^2 + |(0,1) - (2,2)|^2) = 0.5 * (4 + 5)
    assert (got - ce).item() == pytest.approx(0.5 * 0.5 * 9.0)
    cfg = load_config(None, ["adversarial.mode=append", "adversarial.distance=pivot",
                             "adversarial.embedding=features"])
    assert cfg.adversarial.embedding == "features"
    with pytest.raises(ConfigError, match="embedding"):
        load_config(None, ["adversarial.embedding=pool5"])


def test_append_needs_k_at_most_half():
    with pytest.raises(ValueError, match="2k"):
        unified_loss(LOGITS, LABELS, k=4, distance="pivot")
    with pytest.raises(ConfigError, match="k <= m/2"):
        load_config(None, ["adversarial.mode=append", "adversarial.k=65"])
    with pytest.raises(ConfigError, match="mode append"):
        load_config(None, ["adversarial.mode=replace", "adversarial.distance=pivot"])
    with pytest.raises(ConfigError, match="sum to k"):
        load_config(None, ["adversarial.mode=append",
                           "adversarial.sources=[{kind: current, count: 10}]"])


def test_compose_batch_layouts():
    x = torch.arange(6.0).view(6, 1, 1, 1)        # clean images 0..5
    y = torch.arange(6)
    x_adv = 100 + x[:2]                            # adversarial versions of clean 0, 1
    bx, by = compose_batch("replace", x, y, x_adv, y[:2])
    assert bx.flatten().tolist() == [100, 101, 2, 3, 4, 5]
    assert by.tolist() == [0, 1, 2, 3, 4, 5]
    bx, by = compose_batch("append", x, y, x_adv, y[:2])
    assert bx.flatten().tolist() == [100, 101, 0, 1, 2, 3, 4, 5]
    # every adversarial row i has its clean twin at row k + i, with the same label
    assert torch.equal(by[:2], by[2:4]) and torch.equal(bx[:2] - 100, bx[2:4])


def _z_cdf(z):
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_eps_samplers_match_their_definitions():
    g = torch.Generator().manual_seed(0)
    n, max_e = 200_000, 16.0
    sigma = max_e / 2
    n18 = sample_eps("n18", n, max_e, g)
    assert n18.min() >= 0 and n18.max() <= max_e
    # E[min(|Z| sigma, 2 sigma)] = sigma (E|Z| 1{|Z|<2} + 2 P(|Z| > 2))
    phi2 = math.exp(-2) / math.sqrt(2 * math.pi)
    e_abs_below = 2 * (1 / math.sqrt(2 * math.pi) - phi2)
    tail = 2 * (1 - _z_cdf(2))
    assert n18.mean().item() == pytest.approx(sigma * (e_abs_below + 2 * tail), rel=0.01)
    assert (n18 == max_e).float().mean().item() == pytest.approx(tail, abs=0.003)
    k17 = sample_eps("k17", n, max_e, g)
    assert k17.min() >= 0 and k17.max() <= max_e
    # |Z| truncated to 2 sigma: mean sigma E[|Z| | |Z| < 2], no mass at the bound
    assert k17.mean().item() == pytest.approx(sigma * e_abs_below / (1 - tail), rel=0.01)
    assert (k17 == max_e).float().mean().item() < 1e-3
    assert torch.all(sample_eps("fixed", 10, max_e, g) == max_e)
    uni = sample_eps("uniform", n, max_e, g)
    assert uni.min() >= 0 and uni.max() <= max_e
    assert uni.mean().item() == pytest.approx(max_e / 2, rel=0.01)


def test_step_both_splits_half_ll_half_fgsm():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x = torch.rand(4, 1, 2, 2) * 0.5 + 0.25
    y = torch.tensor([0, 1, 2, 0])
    eps = torch.full((4,), 8.0)
    g = torch.Generator().manual_seed(0)
    both = one_step_examples("step_both", model, x, y, eps, g)
    ll = one_step_examples("step_ll", model, x[:2], y[:2], eps[:2], g)
    fgsm = one_step_examples("step_fgsm", model, x[2:], y[2:], eps[2:], g)
    assert torch.equal(both, torch.cat([ll, fgsm]))


def test_logits_and_features_is_the_models_own_forward():
    """One process computes the network DDP computes: Inception v3's dropout before
    ``fc`` applies, and the features are what ``fc`` received."""
    from cascade_adv.models import build_model
    from cascade_adv.training.adversarial import logits_and_features

    model = build_model({"arch": "inception_v3", "input_size": 75, "width": 0.25}).train()
    x = torch.rand(2, 3, 75, 75)
    torch.manual_seed(5)
    logits, feats = logits_and_features(model, x)
    torch.manual_seed(5)
    assert torch.equal(logits, model(x))
    torch.testing.assert_close(model.fc(feats), logits)


def test_adversarial_batch_is_algorithm_1_for_any_module():
    """K17 / N18 Algorithm 1 on a plain ``nn.Sequential``: k adversarial images of the
    first k clean ones, each inside its own epsilon ball, then the clean images
    (``append``: the twins follow) or the rest of them (``replace``)."""
    from cascade_adv.training import adversarial_batch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).train()
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    g = torch.Generator().manual_seed(1)
    xb, yb = adversarial_batch(model, x, y, 3, mode="append", max_e=16, generator=g)
    assert xb.shape == (11, 1, 4, 4) and torch.equal(xb[3:], x) and torch.equal(yb[:3], y[:3])
    moved = (xb[:3] - x[:3]).abs().flatten(1).amax(1)
    assert (moved <= 16 / 255 + 1e-6).all() and (moved > 0).any()
    assert model.training  # its mode is restored
    xr, yr = adversarial_batch(model, x, y, 3, mode="replace", method="step_fgsm",
                               eps_sampler="fixed", max_e=8)
    assert xr.shape == x.shape and torch.equal(xr[3:], x[3:]) and torch.equal(yr, y)
    assert torch.allclose((xr[:3] - x[:3]).abs().flatten(1).amax(1), torch.full((3,), 8 / 255))
    # given epsilons, one per example, instead of drawn ones
    xe, _ = adversarial_batch(model, x, y, 3, mode="replace", method="step_fgsm",
                              eps=torch.tensor([2.0, 4.0, 8.0]))
    assert torch.allclose((xe[:3] - x[:3]).abs().flatten(1).amax(1),
                          torch.tensor([2.0, 4.0, 8.0]) / 255)
    # a craft callable (how train() mixes its sources) gets the k rows and their eps
    seen = {}

    def craft(net, xk, yk, eps, generator):
        seen.update(rows=xk.shape[0], eps=eps)
        return torch.zeros_like(xk)

    xc, _ = adversarial_batch(model, x, y, 3, method=craft, eps=torch.ones(3))
    assert seen["rows"] == 3 and torch.equal(seen["eps"], torch.ones(3))
    assert torch.equal(xc[:3], torch.zeros(3, 1, 4, 4)) and torch.equal(xc[3:], x)
    with pytest.raises(ValueError, match="mode"):
        adversarial_batch(model, x, y, 3, mode="prepend")
    with pytest.raises(ValueError, match="k=9"):
        adversarial_batch(model, x, y, 9)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        adversarial_batch(model, x, y, 3, eps=torch.ones(2))
