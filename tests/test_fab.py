"""FAB-T (``attacks/fab.py``): the boundary step against a linear program, the attack
against the closed form of a linear model and against torchattacks' FAB (an independent
implementation of the authors' code, test-only dependency)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cascade_adv import attacks
from cascade_adv.attacks.fab import boundary_step


def _lp_norm(x: np.ndarray, w: np.ndarray, r: float) -> float | None:
    """min ||d||_inf s.t. w . d = r, 0 <= x + d <= 1, by scipy's LP (None: infeasible)."""
    from scipy.optimize import linprog

    n = x.size
    c = np.r_[np.zeros(n), 1.0]                       # variables d (n) and t
    a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
    bounds = [(-xi, 1 - xi) for xi in x] + [(0, None)]
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w, 0.0][None],
                  b_eq=[r], bounds=bounds, method="highs")
    return res.x[-1] if res.status == 0 else None


def test_boundary_step_is_the_smallest_linf_step_onto_the_plane_within_the_box():
    g = torch.Generator().manual_seed(0)
    n, d = 64, 12
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    x[:, :2] = torch.tensor([0.0, 1.0], dtype=torch.float64)       # on the box's faces
    w = torch.randn(n, d, generator=g, dtype=torch.float64)
    w[:, 3] = 0                                                    # a coordinate w ignores
    r = torch.randn(n, generator=g, dtype=torch.float64) * torch.linspace(0.01, 4, n,
                                                                           dtype=torch.float64)
    step = boundary_step(x, w, r)
    feasible = 0
    for i in range(n):
        best = _lp_norm(x[i].numpy(), w[i].numpy(), r[i].item())
        di = step[i]
        assert ((x[i] + di) >= -1e-12).all() and ((x[i] + di) <= 1 + 1e-12).all()
        assert di[3] == 0
        if best is None:           # out of reach: the corner that moves w . x furthest
            corner = torch.where(w[i] * torch.sign(r[i]) > 0, 1.0, 0.0).to(x.dtype)
            corner[3] = x[i, 3]
            assert torch.allclose(x[i] + di, corner)
        else:
            feasible += 1
            assert (w[i] @ di).item() == pytest.approx(r[i].item(), abs=1e-9)
            assert di.abs().max().item() == pytest.approx(best, abs=1e-9)
    assert 10 < feasible < n       # both cases were exercised


def test_boundary_step_with_nothing_to_cross_does_not_move():
    x = torch.rand(3, 5, dtype=torch.float64)
    assert torch.equal(boundary_step(x, torch.randn(3, 5, dtype=torch.float64),
                                     torch.zeros(3, dtype=torch.float64)), torch.zeros(3, 5,
                                                                                       dtype=torch.float64))


class Linear2(nn.Module):
    """Two classes, logits W x + b: the distance to the boundary is |f(x)| / ||w_1 - w_0||_1
    in the interior of the box."""

    def __init__(self, d: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(d, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(2, d, generator=g) * 0.05)
            self.fc.bias.copy_(torch.randn(2, generator=g) * 0.05)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_fab_t_finds_the_boundary_of_a_linear_model_within_eta_of_its_distance():
    model = Linear2(16)
    g = torch.Generator().manual_seed(1)
    x = 0.3 + 0.4 * torch.rand(200, 1, 4, 4, generator=g)          # interior points
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    dw = (model.fc.weight[1] - model.fc.weight[0]).abs().sum().item()
    exact = (z[:, 1] - z[:, 0]).abs().detach() / dw                 # closed form, in [0, 1]
    eps = float(exact.median()) * 255
    adv = attacks.run("fab_t", model, x, y, eps=eps, steps=20)
    moved = (adv - x).flatten(1).abs().amax(1)
    with torch.no_grad():
        broken = model(adv).argmax(1) != y
    assert (moved <= eps / 255 + 1e-6).all()                        # kept within eps
    assert torch.equal(broken, moved > 0)
    sure, never = exact * 1.05 < eps / 255 - 1e-6, exact > eps / 255 + 1e-6
    assert broken[sure].all() and not broken[never].any() and sure.sum() > 50
    assert ((moved[broken] >= exact[broken] - 1e-6)
            & (moved[broken] <= 1.05 * exact[broken] + 1e-6)).all()


def _digits_mlp():
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images / 16, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(d.target)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(300):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval(), x[:120], y[:120]


@pytest.mark.parametrize("eps", [0.05, 0.1])
def test_fab_t_matches_torchattacks_fab_multi_targeted(eps):
    torchattacks = pytest.importorskip("torchattacks")
    net, x, y = _digits_mlp()
    ours = attacks.run("fab_t", net, x, y, eps=eps * 255, steps=100)
    theirs = torchattacks.FAB(net, norm="Linf", eps=eps, steps=100, n_restarts=1,
                              multi_targeted=True, n_classes=10, seed=0)(x, y)
    with torch.no_grad():
        ours_broken, theirs_broken = net(ours).argmax(1) != y, net(theirs).argmax(1) != y
    assert torch.equal(ours_broken, theirs_broken)
    assert 0 < ours_broken.sum() < len(y)
    # the same points up to float rounding, which 100 steps of a nonlinear map amplify
    assert (ours - theirs).abs().max() < 1e-3
    assert (ours - theirs).abs().flatten(1).amax(1).median() < 1e-5


def test_fab_t_restarts_are_reproducible_from_the_seed_and_misclassified_stay():
    net, x, y = _digits_mlp()
    y = y.clone()
    y[0] = (net(x[:1]).argmax(1).item() + 1) % 10                   # misclassified clean

    def run(seed):
        return attacks.run("fab_t", net, x, y, eps=4, steps=10, targets=2, restarts=2,
                           generator=torch.Generator().manual_seed(seed))

    a, b = run(3), run(3)
    assert torch.equal(a, b) and torch.equal(a[0], x[0])
    assert ((a - x).abs() <= 4 / 255 + 1e-6).all() and a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("options, message", [
    ({"targets": 10}, "targets=10 is more target classes than the model has"),
    ({"steps": 0}, "steps"),
    ({"restarts": 0}, "restarts"),
])
def test_fab_t_bad_options_are_value_errors(options, message):
    net, x, y = _digits_mlp()
    with pytest.raises(ValueError, match=message):
        attacks.run("fab_t", net, x[:4], y[:4], eps=8, **options)
