"""Attacks of K17 (section 2.2, appendix A) and N18 (section 2), plus PGD.

Every test checks the implementation against a hand computation or a property
that follows from the papers' definitions:

* FGSM     X + eps sign(grad_X J(X, y_true))                       (K17 eq. 1)
* step_ll  X - eps sign(grad_X J(X, y_LL)), y_LL = argmin p(y|X)    (K17 eq. 2)
* iter     X_{N+1} = Clip_{X,eps}(X_N +- alpha sign(grad J(X_N, .))),
           alpha = 1, floor(min(eps + 4, 1.25 eps)) iterations       (K17 sec. 2.2)
* Clip_{X,eps} = [max(0, X - eps), min(1, X + eps)]                  (N18 sec. 2)

Models are tiny (a linear model, ResNet-8 on 1x8x8) and
everything is seeded.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cascade_adv import attacks
from cascade_adv.attacks import core
from cascade_adv.errors import AttackError
from cascade_adv.models import build_model

PAPER_ATTACKS = [
    "step_fgsm",
    "fgsm_pred",
    "step_ll",
    "step_rnd",
    "fast_entropy",
    "fast_grad_l2",
    "fast_grad_linf",
    "random_sign",
    "random_normal",
    "iter_fgsm",
    "iter_ll",
    "pgd",
]
ALL_ATTACKS = attacks.names()  # every registered attack, the papers' ones and any later one
ONE_STEP = ["step_fgsm", "fgsm_pred", "step_ll", "fast_entropy", "fast_grad_l2", "fast_grad_linf"]
ITERATIVE = ["iter_fgsm", "iter_ll"]
NUM_CLASSES = 10


# --- tiny models -------------------------------------------------------------------------


class LinearNet(nn.Module):
    """logits = W x_flat + b."""

    def __init__(self, shape=(1, 8, 8), num_classes=NUM_CLASSES, scale=1.0, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        d = int(np.prod(shape))
        self.fc = nn.Linear(d, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(num_classes, d, generator=g) * scale)
            self.fc.bias.copy_(torch.randn(num_classes, generator=g) * 0.1)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Counting(nn.Module):
    """Counts forward calls of the wrapped model."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def spy_labels(monkeypatch) -> list[torch.Tensor]:
    """Record the labels each input-gradient pass of an attack really used."""
    used: list[torch.Tensor] = []
    original = core.input_gradient

    def spy(*args, **kwargs):
        grad, labels = original(*args, **kwargs)
        used.append(labels.clone())
        return grad, labels

    monkeypatch.setattr(core, "input_gradient", spy)
    return used


def tiny_resnet(seed=0) -> nn.Module:
    """ResNet-8 on 1x8x8 with non-trivial BatchNorm running statistics."""
    torch.manual_seed(seed)
    model = build_model({"depth": 8, "in_channels": 1, "input_size": 8})
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(16, 1, 8, 8))
    model.eval()
    return model


def images(n=6, seed=0, shape=(1, 8, 8)):
    """Random images in [0, 1] with some pixels exactly 0 and exactly 1."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    flat = x.view(n, -1)
    flat[:, :5] = 0.0
    flat[:, 5:10] = 1.0
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g)
    return x, y


#: Small budgets for the search attacks (APGD, Square), so that the tests over every
#: attack stay fast; tests/test_strong_attacks.py runs their defaults.
BUDGETS = {"apgd_ce": {"steps": 10}, "apgd_dlr": {"steps": 10},
           "apgd_t": {"steps": 10, "targets": 3}, "square": {"queries": 50},
           "fab_t": {"steps": 10, "targets": 3, "restarts": 2}}


def options(name, seed=0):
    """A seeded generator for every attack that takes one (a no-op for the deterministic
    ones), and a small budget for the search attacks."""
    opts = dict(BUDGETS.get(name, {}))
    if "generator" in attacks.get(name).options:
        opts["generator"] = torch.Generator().manual_seed(seed)
    return opts


def hand_grad_ce(model: LinearNet, x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """grad_x CE(W x + b, labels) = W^T (softmax - onehot), in numpy float64, [N, D]."""
    w = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()
    xf = x.detach().double().numpy().reshape(x.shape[0], -1)
    z = xf @ w.T + b
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.eye(w.shape[0])[labels.numpy()]
    return (p - onehot) @ w


def np_logits(model: LinearNet, x: torch.Tensor) -> np.ndarray:
    w = model.fc.weight.detach().double().numpy()
    b = model.fc.bias.detach().double().numpy()
    return x.detach().double().numpy().reshape(x.shape[0], -1) @ w.T + b


def assert_in_ball(x, x_adv, eps, tol=1e-6):
    n = x.shape[0]
    e = torch.as_tensor(eps, dtype=torch.float64).expand(n).view(n, 1, 1, 1) / 255.0
    xd, ad = x.double(), x_adv.double()
    lower = torch.clamp(xd - e, min=0.0)
    upper = torch.clamp(xd + e, max=1.0)
    assert bool((ad >= lower - tol).all()), float((lower - ad).max())
    assert bool((ad <= upper + tol).all()), float((ad - upper).max())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0


# --- registry ------------------------------------------------------------------------------


def test_registry_lists_every_attack_of_the_papers():
    assert set(PAPER_ATTACKS) <= set(attacks.names())
    assert {"iter_fgsm", "iter_ll", "pgd"} <= set(attacks.names("iterative"))
    assert {"random_normal", "random_sign"} <= set(attacks.names("random"))
    assert set(ONE_STEP) | {"step_rnd"} <= set(attacks.names("one_step"))
    assert {"alpha", "steps"} <= set(attacks.get("iter_fgsm").options)
    assert {"alpha", "steps", "restarts", "generator"} <= set(attacks.get("pgd").options)


# --- 1. every attack stays inside Clip_{X,eps} and [0, 1] -----------------------------------


EPS_CASES = [
    0,
    1,
    16.5,
    64,
    torch.tensor([0.0, 0.5, 3.0, 16.0, 64.0, 255.0]),
    torch.tensor([32, 1, 0, 8, 2, 4], dtype=torch.int64),
]


@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_attack_stays_in_clip_ball_and_image_range(name):
    model = tiny_resnet()
    x, y = images()
    for eps in EPS_CASES:
        x_adv = attacks.run(name, model, x, y, eps=eps, **options(name))
        assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
        assert not x_adv.requires_grad
        assert_in_ball(x, x_adv, eps)
    # eps = 0 leaves the images untouched
    assert torch.equal(attacks.run(name, model, x, y, eps=0, **options(name)), x)


@pytest.mark.parametrize("name", ["step_fgsm", "iter_ll", "random_normal", "pgd"])
def test_attack_keeps_float64_dtype(name):
    model = tiny_resnet().double()
    x, y = images()
    x = x.double()
    x_adv = attacks.run(name, model, x, y, eps=torch.tensor([0, 1, 2, 4, 8, 16]), **options(name))
    assert x_adv.dtype == torch.float64 and x_adv.shape == x.shape
    assert_in_ball(x, x_adv, torch.tensor([0, 1, 2, 4, 8, 16]))


# --- 2. iteration counts of the basic iterative and iter_ll methods --------------------------


def test_iterative_steps_rule():
    eps = torch.tensor([0, 1, 2, 4, 8, 16, 32, 255], dtype=torch.float64)
    assert attacks.iterative_steps(eps).tolist() == [0, 1, 2, 5, 10, 20, 36, 259]
    # fractional eps where 1.25 eps is a whole number must not lose a step to rounding
    frac = [0.8, 1.6, 3.2, 4.8, 12.8]
    expected = [1, 2, 4, 6, 16]
    assert attacks.iterative_steps(torch.tensor(frac, dtype=torch.float64)).tolist() == expected
    assert attacks.iterative_steps(torch.tensor(frac, dtype=torch.float32)).tolist() == expected
    assert attacks.iterative_steps(torch.tensor([0.5, 2.5])).tolist() == [0, 3]


@pytest.mark.parametrize(
    "eps,steps", [(1, 1), (2, 2), (4, 5), (8, 10), (16, 20), (32, 36), (0.8, 1), (3.2, 4)]
)
@pytest.mark.parametrize("name,label_passes", [("iter_fgsm", 0), ("iter_ll", 1)])
def test_iterative_attack_runs_k17_number_of_steps(name, label_passes, eps, steps):
    model = Counting(LinearNet())
    x, y = images(n=3)
    attacks.run(name, model, x, y, eps=eps)
    assert model.calls == steps + label_passes


@pytest.mark.parametrize("name,label_passes", [("iter_fgsm", 0), ("iter_ll", 1)])
def test_iterative_steps_override(name, label_passes):
    model = Counting(LinearNet())
    x, y = images(n=3)
    attacks.run(name, model, x, y, eps=16, steps=3)
    assert model.calls == 3 + label_passes
    model.calls = 0
    # steps=0 is refused by the option check (the result would be the clean image); the
    # attack function itself returns the clean image
    assert torch.equal(attacks.get(name).fn(model, x, y, 16, steps=0), x)
    for steps in (0, -1):
        with pytest.raises(AttackError, match=r"steps.*\[1, 10000\]"):
            attacks.run(name, model, x, y, eps=16, steps=steps)


@pytest.mark.parametrize("alpha", [1.0, 3.0, 0.5])
def test_iter_fgsm_alpha_override_is_the_step_size(alpha):
    """One step of size alpha from an interior image: X + alpha/255 sign(grad J)."""
    model = LinearNet()
    x = torch.full((4, 1, 8, 8), 0.5)
    y = torch.tensor([0, 3, 5, 9])
    opts = {} if alpha == 1.0 else {"alpha": alpha}  # alpha = 1 is K17's default
    x_adv = attacks.run("iter_fgsm", model, x, y, eps=16, steps=1, **opts)
    sign = torch.from_numpy(np.sign(hand_grad_ce(model, x, y))).float().view_as(x)
    torch.testing.assert_close(x_adv, x + alpha / 255.0 * sign, rtol=0, atol=1e-7)
    # iter_ll moves against the gradient of J(X, y_LL)
    y_ll = torch.from_numpy(np_logits(model, x).argmin(axis=1))
    x_ll = attacks.run("iter_ll", model, x, y, eps=16, steps=1, **opts)
    sign_ll = torch.from_numpy(np.sign(hand_grad_ce(model, x, y_ll))).float().view_as(x)
    torch.testing.assert_close(x_ll, x - alpha / 255.0 * sign_ll, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name,label_passes", [("iter_fgsm", 0), ("iter_ll", 1)])
def test_per_example_eps_runs_each_example_for_its_own_count(name, label_passes):
    # alpha small enough that no example reaches its ball: an example that kept
    # moving after its own count would end up elsewhere.
    model = Counting(LinearNet(scale=0.3))
    x = torch.full((3, 1, 8, 8), 0.5)
    y = torch.tensor([1, 4, 7])
    eps = torch.tensor([2.0, 4.0, 16.0])  # 2, 5, 20 steps
    own_steps = [2, 5, 20]
    x_adv = attacks.run(name, model, x, y, eps=eps, alpha=0.25)
    assert model.calls == max(own_steps) + label_passes
    for i in range(3):
        single = attacks.run(name, model, x[i : i + 1], y[i : i + 1], eps=float(eps[i]), alpha=0.25)
        torch.testing.assert_close(x_adv[i : i + 1], single, rtol=0, atol=1e-6)
        # never more than own_steps * alpha away, and the linear model's gradient keeps
        # the sign of its largest components, so that distance is reached
        moved = float((x_adv[i] - x[i]).abs().max()) * 255.0
        assert moved == pytest.approx(own_steps[i] * 0.25, abs=1e-4)


def reference_iterative(model: LinearNet, x, labels, eps, steps, alpha=1.0, sign=+1.0):
    """K17 section 2.2 by hand (numpy float64):
    X_{N+1} = Clip_{X,eps}(X_N + sign * alpha sign(W^T (softmax(W X_N + b) - onehot)))."""
    x0 = x.double().numpy().reshape(x.shape[0], -1)
    e, a = eps / 255.0, alpha / 255.0
    lo, hi = np.maximum(x0 - e, 0.0), np.minimum(x0 + e, 1.0)
    xn = x0.copy()
    smallest = np.inf
    for _ in range(steps):
        g = hand_grad_ce(model, torch.from_numpy(xn), labels)
        smallest = min(smallest, np.abs(g).min())
        xn = np.minimum(np.maximum(xn + sign * a * np.sign(g), lo), hi)
    return torch.from_numpy(xn).view_as(x), smallest


@pytest.mark.parametrize("eps", [2.0, 8.0, 16.0])
def test_iterative_attacks_equal_hand_computation(eps):
    model = LinearNet(scale=0.5).double()
    x, y = images(n=6, seed=9)
    x = x.double()
    steps = math.floor(min(eps + 4, 1.25 * eps))
    ref, smallest = reference_iterative(model, x, y, eps, steps)
    assert smallest > 1e-5  # no sign decided by rounding
    torch.testing.assert_close(
        attacks.run("iter_fgsm", model, x, y, eps=eps), ref, rtol=0, atol=1e-12
    )
    # iter_ll: towards the least likely class of the CLEAN image, held fixed
    y_ll = torch.from_numpy(np_logits(model, x).argmin(axis=1))
    ref_ll, smallest = reference_iterative(model, x, y_ll, eps, steps, sign=-1.0)
    assert smallest > 1e-5
    torch.testing.assert_close(
        attacks.run("iter_ll", model, x, y, eps=eps), ref_ll, rtol=0, atol=1e-12
    )


# --- 3. least-likely class of the clean image --------------------------------------------------


def test_step_ll_targets_clean_least_likely_class_and_lowers_its_loss(monkeypatch):
    model = LinearNet(scale=0.2)
    g = torch.Generator().manual_seed(1)
    x = 0.1 + 0.8 * torch.rand(8, 1, 8, 8, generator=g)
    y = torch.randint(0, NUM_CLASSES, (8,), generator=g)
    y_ll = torch.from_numpy(np_logits(model, x).argmin(axis=1))

    used = spy_labels(monkeypatch)
    x_adv = attacks.run("step_ll", model, x, y, eps=1)
    assert len(used) == 1 and torch.equal(used[0], y_ll)
    with torch.no_grad():
        before = F.cross_entropy(model(x), y_ll, reduction="none")
        after = F.cross_entropy(model(x_adv), y_ll, reduction="none")
    assert bool((after < before).all())


def test_iter_ll_keeps_clean_least_likely_class_fixed(monkeypatch):
    model = LinearNet(scale=1.0)
    x = torch.full((4, 1, 8, 8), 0.5)
    x[1] = 0.3
    x[2] = 0.7
    y = torch.tensor([0, 1, 2, 3])
    y_ll = torch.from_numpy(np_logits(model, x).argmin(axis=1))

    seen_inputs, seen_labels = [], []
    original = core.input_gradient

    def spy(model_, x_in, labels, *args, **kwargs):
        grad, used = original(model_, x_in, labels, *args, **kwargs)
        seen_inputs.append(x_in.detach().clone())
        seen_labels.append(None if used is None else used.clone())  # the labels really used
        return grad, used

    monkeypatch.setattr(core, "input_gradient", spy)
    x_adv = attacks.run("iter_ll", model, x, y, eps=16)
    assert len(seen_labels) == 20
    assert all(lab is not None and torch.equal(lab, y_ll) for lab in seen_labels)
    # the test is meaningful: the least likely class of the iterates changes, so an
    # implementation re-choosing y_LL per step would use other targets
    with torch.no_grad():
        later_ll = [model(xi).argmin(dim=1) for xi in seen_inputs[1:]]
    assert any(not torch.equal(ll, y_ll) for ll in later_ll)
    with torch.no_grad():
        assert bool(
            (
                F.cross_entropy(model(x_adv), y_ll, reduction="none")
                < F.cross_entropy(model(x), y_ll, reduction="none")
            ).all()
        )


# --- 4, 5. fast gradient L2 / L-infinity ------------------------------------------------------


def test_fast_grad_l2_perturbation_has_l2_norm_eps():
    # float64 so that x + delta - x recovers delta to ~1e-16
    model = LinearNet(scale=0.5).double()
    x = torch.full((4, 1, 8, 8), 0.5, dtype=torch.float64)
    y = torch.tensor([2, 3, 5, 7])
    eps = torch.tensor([0.5, 1.0, 2.0, 4.0])
    x_adv = attacks.run("fast_grad_l2", model, x, y, eps=eps)
    delta = (x_adv - x).view(4, -1)
    torch.testing.assert_close(delta.norm(dim=1), eps.double() / 255.0, rtol=1e-9, atol=0)
    # and its direction is grad J / ||grad J||_2
    g = torch.from_numpy(hand_grad_ce(model, x, y))
    expected = eps.double().view(4, 1) / 255.0 * g / g.norm(dim=1, keepdim=True)
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-6)


def test_fast_grad_linf_perturbation_has_max_abs_eps():
    # float64 so that x + delta - x recovers delta to ~1e-16
    model = LinearNet(scale=0.5).double()
    x = torch.full((4, 1, 8, 8), 0.5, dtype=torch.float64)
    y = torch.tensor([2, 3, 5, 7])
    eps = torch.tensor([0.5, 1.0, 2.0, 4.0])
    x_adv = attacks.run("fast_grad_linf", model, x, y, eps=eps)
    delta = (x_adv - x).view(4, -1)
    torch.testing.assert_close(delta.abs().amax(dim=1), eps.double() / 255.0, rtol=1e-9, atol=0)
    g = torch.from_numpy(hand_grad_ce(model, x, y))
    expected = eps.double().view(4, 1) / 255.0 * g / g.abs().amax(dim=1, keepdim=True)
    torch.testing.assert_close(delta, expected, rtol=0, atol=1e-6)
    # unlike FGSM, not every pixel moves by eps
    assert float((delta.abs() < 0.5 * eps.double().view(4, 1) / 255.0).float().mean()) > 0.1


# --- 6. per-example epsilon equals separate calls ------------------------------------------------


@pytest.mark.parametrize("name", ONE_STEP + ITERATIVE)
def test_per_example_eps_equals_separate_calls(name):
    model = tiny_resnet()
    x, y = images(n=5, seed=3)
    eps = torch.tensor([0.0, 2.0, 8.0, 16.0, 32.0])
    batch = attacks.run(name, model, x, y, eps=eps)
    for i in range(5):
        single = attacks.run(name, model, x[i : i + 1], y[i : i + 1], eps=float(eps[i]))
        torch.testing.assert_close(batch[i : i + 1], single, rtol=0, atol=1e-6)
    # the examples really got different budgets
    budgets = (batch - x).abs().flatten(1).amax(dim=1)
    assert float(budgets[0]) == 0.0 and bool((budgets[1:] > budgets[:-1]).all())


# --- 7. BatchNorm statistics, modes and gradients ----------------------------------------------


@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_attack_leaves_model_state_untouched(name):
    model = tiny_resnet()
    model.train()
    model.blocks[0].bn2.eval()  # one sub-module in its own mode: must come back as it was
    modes_before = {n: m.training for n, m in model.named_modules()}
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}
    params_before = {k: v.detach().clone() for k, v in model.named_parameters()}

    modes_during = []
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: modes_during.append(mod.training))
        for m in model.modules()
    ]
    x, y = images()
    attacks.run(name, model, x, y, eps=8, **options(name))
    for h in hooks:
        h.remove()

    for k, v in model.named_buffers():  # running_mean, running_var, num_batches_tracked
        assert torch.equal(v, buffers_before[k]), k
    for k, p in model.named_parameters():
        assert p.grad is None, k
        assert torch.equal(p.detach(), params_before[k]), k
    assert {n: m.training for n, m in model.named_modules()} == modes_before
    assert not any(modes_during)  # inference mode during the attack
    if attacks.get(name).kind != "random":
        assert modes_during  # the model was called


# --- 8. hand-computed one-step attacks on a linear model -----------------------------------------


@pytest.mark.parametrize("eps", [1.0, 4.0, 16.0])
def test_one_step_attacks_equal_hand_computation(eps, monkeypatch):
    model = LinearNet(scale=0.5)
    x, y = images(n=8, seed=5)
    e = torch.tensor(eps / 255.0, dtype=torch.float32)

    def expected(direction):
        d = torch.from_numpy(direction).float().view_as(x)
        return torch.clamp(x + e * d, 0.0, 1.0)

    # FGSM: + sign(W^T (softmax - onehot(y_true)))
    g = hand_grad_ce(model, x, y)
    assert np.abs(g).min() > 1e-4  # no sign decided by rounding
    assert torch.equal(attacks.run("step_fgsm", model, x, y, eps=eps), expected(np.sign(g)))

    # FGSM-pred: the predicted label instead of the true one
    y_pred = torch.from_numpy(np_logits(model, x).argmax(axis=1))
    assert not torch.equal(y_pred, y)
    g_pred = hand_grad_ce(model, x, y_pred)
    assert torch.equal(attacks.run("fgsm_pred", model, x, y, eps=eps), expected(np.sign(g_pred)))

    # step_ll: - sign(grad J(X, y_LL)), y_LL = argmin of the logits
    y_ll = torch.from_numpy(np_logits(model, x).argmin(axis=1))
    g_ll = hand_grad_ce(model, x, y_ll)
    assert torch.equal(attacks.run("step_ll", model, x, y, eps=eps), expected(-np.sign(g_ll)))

    # step_rnd: - sign(grad J(X, y_rnd)) for the random target it drew
    targets = spy_labels(monkeypatch)
    x_rnd = attacks.run(
        "step_rnd", model, x, y, eps=eps, generator=torch.Generator().manual_seed(0)
    )
    (t,) = targets
    assert bool((t != y).all())
    assert torch.equal(x_rnd, expected(-np.sign(hand_grad_ce(model, x, t))))


def test_step_rnd_targets_every_other_class_uniformly_never_the_true_one(monkeypatch):
    model = LinearNet()
    n = 3000
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 8, 8, generator=g)
    y = torch.arange(n) % NUM_CLASSES
    targets = spy_labels(monkeypatch)
    a = attacks.run("step_rnd", model, x, y, eps=4, generator=torch.Generator().manual_seed(7))
    b = attacks.run("step_rnd", model, x, y, eps=4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and torch.equal(targets[0], targets[1])  # seeded
    t = targets[0]
    assert bool((t != y).all())
    counts = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.int64)
    counts.index_put_((y, t), torch.ones(n, dtype=torch.int64), accumulate=True)
    off_diag = counts[~torch.eye(NUM_CLASSES, dtype=torch.bool)]
    assert bool((counts.diagonal() == 0).all())
    # 300 examples per true class, 9 possible targets: about 33 each
    assert int(off_diag.min()) > 10 and int(off_diag.max()) < 65
    c = attacks.run("step_rnd", model, x, y, eps=4, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(targets[2], t)  # another seed, other targets
    assert not torch.equal(c, a)


# --- 9. random perturbations ----------------------------------------------------------------------


def test_random_normal_is_truncated_normal_with_std_half_eps():
    eps = 16.0
    e = eps / 255.0
    x = torch.full((64, 1, 32, 32), 0.5)
    x_adv = attacks.run(
        "random_normal", None, x, None, eps=eps, generator=torch.Generator().manual_seed(0)
    )
    t = (x_adv - x).double().flatten() / e
    assert float(t.abs().max()) <= 1.0 + 1e-5
    assert abs(float(t.mean())) < 0.01
    # normal(0, 0.5) truncated to [-1, 1]: std = 0.5 sqrt(1 - 2*2 phi(2) / (2 Phi(2) - 1))
    phi2 = math.exp(-2.0) / math.sqrt(2 * math.pi)
    cdf_mass = math.erf(2 / math.sqrt(2))
    truncated_std = 0.5 * math.sqrt(1 - 4 * phi2 / cdf_mass)  # 0.4398
    assert float(t.std()) == pytest.approx(truncated_std, abs=0.01)
    # bell-shaped, not uniform or sign: P(|T| < 0.5 eps | truncated) = erf(1/sqrt2) / cdf_mass
    inner = float((t.abs() < 0.5).double().mean())
    assert inner == pytest.approx(math.erf(1 / math.sqrt(2)) / cdf_mass, abs=0.01)
    assert float((t.abs() > 0.999).double().mean()) < 0.01


def test_random_normal_scales_with_per_example_eps():
    eps = torch.tensor([0.0, 4.0, 32.0])
    x = torch.full((3, 1, 64, 64), 0.5)
    x_adv = attacks.run(
        "random_normal", None, x, None, eps=eps, generator=torch.Generator().manual_seed(1)
    )
    stds = (x_adv - x).double().flatten(1).std(dim=1) * 255.0
    assert float(stds[0]) == 0.0
    assert float(stds[1]) == pytest.approx(0.4398 * 4.0, rel=0.05)
    assert float(stds[2]) == pytest.approx(0.4398 * 32.0, rel=0.05)


def test_random_sign_moves_every_pixel_by_eps_unless_clipped():
    x, _ = images(n=32, seed=2)
    eps = torch.linspace(1, 32, 32)
    x_adv = attacks.run(
        "random_sign", None, x, None, eps=eps, generator=torch.Generator().manual_seed(0)
    )
    e = (eps / 255.0).view(-1, 1, 1, 1).expand_as(x)
    delta = x_adv - x
    up = torch.isclose(delta, e, atol=1e-6, rtol=0)
    down = torch.isclose(delta, -e, atol=1e-6, rtol=0)
    clipped_up = (x + e > 1.0) & (x_adv == 1.0)
    clipped_down = (x - e < 0.0) & (x_adv == 0.0)
    assert bool((up | down | clipped_up | clipped_down).all())
    interior = (x - e > 0) & (x + e < 1)
    assert bool((up | down)[interior].all())
    frac_up = float(up[interior].float().mean())
    assert 0.45 < frac_up < 0.55  # sign of N(0, I)
    assert torch.equal(x_adv[:, :, 0, :5], torch.clamp(x[:, :, 0, :5] + delta[:, :, 0, :5], 0, 1))


# --- 10. errors --------------------------------------------------------------------------------------


def test_unknown_attack_name_lists_valid_names():
    with pytest.raises(AttackError) as info:
        attacks.run("fgsm_typo", LinearNet(), *images())
    msg = str(info.value)
    assert "fgsm_typo" in msg
    for name in ALL_ATTACKS:
        assert name in msg


@pytest.mark.parametrize(
    "eps", [-1, 256, float("nan"), float("inf"), torch.tensor([1, 2, 3, 4, 5, 300])]
)
def test_eps_outside_pixel_range_is_rejected(eps):
    with pytest.raises(AttackError, match=r"\[0, 255\]"):
        attacks.run("step_fgsm", LinearNet(), *images(), eps=eps)


def test_eps_of_wrong_shape_is_rejected():
    with pytest.raises(AttackError, match="shape"):
        attacks.run("iter_fgsm", LinearNet(), *images(), eps=torch.tensor([1.0, 2.0]))


@pytest.mark.parametrize("bad", [-0.01, 1.01, 255.0, float("nan")])
def test_images_outside_unit_range_are_rejected(bad):
    x, y = images()
    x[0, 0, 3, 3] = bad
    with pytest.raises(AttackError, match=r"\[0, 1\]"):
        attacks.run("step_fgsm", LinearNet(), x, y, eps=8)


def test_integer_images_and_bad_labels_are_rejected():
    x, y = images()
    with pytest.raises(AttackError, match="float"):
        attacks.run("step_fgsm", LinearNet(), (x * 255).to(torch.uint8), y, eps=8)
    with pytest.raises(AttackError, match="labels"):
        attacks.run("step_fgsm", LinearNet(), x, y[:3], eps=8)
    with pytest.raises(AttackError, match="labels"):
        attacks.run("step_fgsm", LinearNet(), x, y.float(), eps=8)
    with pytest.raises(AttackError, match="y"):
        attacks.run("step_fgsm", LinearNet(), x, None, eps=8)


@pytest.mark.parametrize("name", ["step_fgsm", "iter_fgsm", "random_sign"])
def test_unknown_option_is_rejected(name):
    with pytest.raises(AttackError, match="bogus") as info:
        attacks.run(name, LinearNet(), *images(), eps=8, bogus=1)
    for opt in attacks.get(name).options:
        assert opt == "generator" or opt in str(info.value)


def test_invalid_iterative_options_are_rejected():
    x, y = images()
    with pytest.raises(AttackError, match="alpha"):
        attacks.run("iter_fgsm", LinearNet(), x, y, eps=8, alpha=0)
    with pytest.raises(AttackError, match="restarts"):
        attacks.run("pgd", LinearNet(), x, y, eps=8, restarts=0)


# --- 11. PGD ----------------------------------------------------------------------------------------


def test_pgd_is_seeded_random_start_inside_ball():
    model = tiny_resnet()
    x, y = images()
    a = attacks.run("pgd", model, x, y, eps=8, generator=torch.Generator().manual_seed(0))
    b = attacks.run("pgd", model, x, y, eps=8, generator=torch.Generator().manual_seed(0))
    c = attacks.run("pgd", model, x, y, eps=8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert_in_ball(x, a, 8)
    # zero steps (the function itself; attacks.run refuses steps=0): the uniform random
    # start, inside the ball and not the clean image
    start = attacks.get("pgd").fn(
        model, x, y, 8, steps=0, generator=torch.Generator().manual_seed(0)
    )
    assert_in_ball(x, start, 8)
    assert float((start - x).abs().max()) > 4 / 255


def test_pgd_increases_loss_over_clean_images():
    model = LinearNet(scale=0.3)
    x, y = images(n=16, seed=4)
    x_adv = attacks.run("pgd", model, x, y, eps=8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y, reduction="none")
        adv = F.cross_entropy(model(x_adv), y, reduction="none")
    assert bool((adv > clean).all())


def test_pgd_restarts_keep_the_restart_with_the_highest_loss():
    model = tiny_resnet()
    x, y = images(n=8, seed=6)

    def loss(z):
        with torch.no_grad():
            return F.cross_entropy(model(z), y, reduction="none")

    # the restarts are consecutive draws from the one generator
    g = torch.Generator().manual_seed(11)
    runs = [attacks.run("pgd", model, x, y, eps=4, generator=g) for _ in range(3)]
    losses = torch.stack([loss(r) for r in runs])  # [3, N]
    assert not torch.equal(runs[0], runs[1])
    best = losses.argmax(dim=0)  # first maximum on ties, like the implementation
    expected = torch.stack([runs[int(best[i])][i] for i in range(8)])

    x3 = attacks.run(
        "pgd", model, x, y, eps=4, restarts=3, generator=torch.Generator().manual_seed(11)
    )
    torch.testing.assert_close(x3, expected, rtol=0, atol=0)
    x1 = attacks.run(
        "pgd", model, x, y, eps=4, restarts=1, generator=torch.Generator().manual_seed(11)
    )
    assert torch.equal(x1, runs[0])
    assert bool((loss(x3) >= loss(x1)).all())
    assert_in_ball(x, x3, 4)


# --- 12. fast entropy ------------------------------------------------------------------------------


def test_fast_entropy_increases_predictive_entropy():
    model = LinearNet(scale=0.3)
    x, y = images(n=16, seed=8)

    def entropy(z):
        with torch.no_grad():
            logp = F.log_softmax(model(z).double(), dim=1)
        return -(logp.exp() * logp).sum(dim=1)

    for eps in (0.5, 1.0):
        x_adv = attacks.run("fast_entropy", model, x, y, eps=eps)
        assert bool((entropy(x_adv) > entropy(x)).all())
    # and it needs no labels
    x_adv = attacks.run("fast_entropy", model, x, None, eps=1.0)
    assert bool((entropy(x_adv) > entropy(x)).all())


@pytest.mark.parametrize("eps", [1.0, 8.0])
def test_fast_entropy_equals_hand_computation(eps):
    """H = -sum_k p_k log p_k;  dH/dz_k = -p_k (log p_k + H);  grad_x H = W^T dH/dz."""
    model = LinearNet(scale=0.3)
    x, y = images(n=8, seed=8)
    z = np_logits(model, x)
    logp = z - z.max(axis=1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    h = -(p * logp).sum(axis=1, keepdims=True)
    g = (-p * (logp + h)) @ model.fc.weight.detach().double().numpy()
    assert np.abs(g).min() > 1e-5
    d = torch.from_numpy(np.sign(g)).float().view_as(x)
    expected = torch.clamp(x + torch.tensor(eps / 255.0) * d, 0.0, 1.0)
    assert torch.equal(attacks.run("fast_entropy", model, x, y, eps=eps), expected)
    # not FGSM with the predicted label (a different direction)
    assert not torch.equal(expected, attacks.run("fgsm_pred", model, x, y, eps=eps))


def test_bad_values_are_value_errors_and_unknown_names_key_errors():
    """Python habits: ``except ValueError`` catches a bad epsilon, ``except KeyError`` an
    unknown name; the message stays one line without KeyError's quotes."""
    model = LinearNet()
    x, y = images(n=2)
    with pytest.raises(ValueError, match="outside"):
        attacks.run("step_fgsm", model, x, y, eps=-1)
    with pytest.raises(KeyError) as err:
        attacks.get("fgsm_typo")
    assert str(err.value).startswith("unknown attack 'fgsm_typo'")
    with pytest.raises(ValueError):
        attacks.run("fgsm_typo", model, x, y, eps=8)
    from cascade_adv.training import load_config

    with pytest.raises(ValueError, match="optim.lr"):
        load_config(None, ["optim.lr=-1"])


@pytest.mark.parametrize("name", attacks.names())
def test_registry_declares_which_attacks_draw_random_numbers(name):
    """An attack's ``stochastic`` flag says whether it draws from its generator."""
    model = LinearNet()
    x, _ = images(n=2)
    with torch.no_grad():  # labels the model gets right: the search attacks skip the others
        y = model(x).argmax(dim=1)
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    # FAB-T draws only for a restart's random start, which runs on the images its first
    # run (from the clean image) left unbroken: an eps below their distance to the boundary
    eps = 0.5 if name == "fab_t" else 8
    attacks.run(name, model, x, y, eps=eps, generator=g,
                **{k: v for k, v in options(name).items() if k != "generator"})
    assert attacks.get(name).stochastic == (not torch.equal(before, g.get_state())), name
