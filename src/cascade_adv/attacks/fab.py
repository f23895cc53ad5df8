"""FAB-T, L-infinity (Croce & Hein 2020, ICML, "Minimally distorted adversarial examples
with a fast adaptive boundary attack", section 3 and Algorithm 1; the targeted version
that AutoAttack's standard ensemble runs after APGD-T).

FAB looks for the smallest perturbation that changes the prediction, then keeps it if it
lies in the eps-ball.  Towards a target class ``t`` (the 2nd to (T+1)-th largest clean
logits in turn, as APGD-T), it linearises ``f(z) = z_t - z_y`` at the iterate ``x_k``;
the boundary ``f(x_k) + grad f(x_k) . (z - x_k) = 0`` is a hyperplane, and

    d_k = the smallest L-inf step from x_k onto that hyperplane within [0, 1]
    e_k = the same from the clean image x_0
    a   = min(||d_k|| / (||d_k|| + ||e_k||), alpha_max)
    x_{k+1} = clip((1 - a)(x_k + eta d_k) + a (x_0 + eta e_k), 0, 1)

(the bias ``a`` towards the step from x_0 keeps the iterate close to the image).  When
``x_{k+1}`` is misclassified it is recorded if it is closer to ``x_0`` than the best so
far and pulled back: ``x_{k+1} = x_0 + beta (x_{k+1} - x_0)``.  The first run starts at
``x_0``; every further restart starts at ``x_0 + eps / 2 . u / ||u||_inf``, ``u``
uniform in [-1, 1]^d.  Per image the result is the closest misclassified point found
if it lies within eps, else the clean image.  Constants: AutoAttack's (``eta = 1.05``,
``beta = 0.9``, ``alpha_max = 0.1``, 100 steps, one run per target).  Tested against
torchattacks' ``FAB`` (multi-targeted) in ``tests/test_fab.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from cascade_adv.attacks import core
from cascade_adv.attacks.apgd import check_options, target_count

#: Extrapolation of each step beyond the linearised boundary.
ETA = 1.05
#: Pull-back towards the image after a misclassified iterate.
BETA = 0.9
#: The largest bias towards the step from the clean image.
ALPHA_MAX = 0.1


def boundary_step(x: torch.Tensor, w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per row of the flat ``[N, D]`` points ``x``, the perturbation ``d`` of smallest
    L-inf norm with ``w . d = r`` and ``x + d`` in [0, 1]; where no such ``d`` exists,
    the corner of [0, 1]^D that moves ``w . x`` furthest towards ``r``.

    Every coordinate moves by ``min(lam, room_i)`` in the direction ``sign(r w_i)``
    (``room_i``: the distance to the box's face in that direction), with ``lam`` the
    smallest value at which ``g(lam) = sum_i |w_i| min(lam, room_i)`` reaches ``|r|``:
    ``g`` is piecewise linear and nondecreasing, so ``lam`` lies on the segment after the
    last sorted ``room`` where ``g`` is still below ``|r|``.  Coordinates with
    ``w_i = 0`` do not move."""
    direction = torch.sign(w) * torch.sign(r)[:, None]
    room = torch.where(direction > 0, 1 - x, x).clamp_min(0)
    weight = w.abs()
    room_s, order = room.sort(dim=1)
    weight_s = weight.gather(1, order)
    covered = torch.cumsum(weight_s * room_s, dim=1)        # sum over rooms <= room_(k)
    passed = torch.cumsum(weight_s, dim=1)
    total = passed[:, -1:]
    reach = (covered + room_s * (total - passed)).cummax(dim=1).values  # g(room_(k))
    need = r.abs()[:, None]
    k = torch.searchsorted(reach, need).clamp_max(x.shape[1] - 1)  # first k: g >= |r|
    before = torch.where(k > 0, covered.gather(1, (k - 1).clamp_min(0)), 0)
    slope = total - torch.where(k > 0, passed.gather(1, (k - 1).clamp_min(0)), 0)
    lam = ((need - before) / slope.clamp_min(1e-30)).clamp_min(0)
    lam = torch.where(reach[:, -1:] < need, torch.inf, lam)  # out of reach: the corner
    return direction * torch.minimum(lam, room)


def run_once(net: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
             steps: int, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB-T run from ``start``: ``(closest misclassified point, its L-inf distance
    to x)`` per image; the distance is ``inf`` (and the point ``x``) where none was
    found."""
    n = x.shape[0]
    flat_x = x.flatten(1)
    best, dist = x.clone(), torch.full((n,), torch.inf, device=x.device, dtype=x.dtype)
    x1 = start

    def margin(z: torch.Tensor) -> torch.Tensor:          # f = z_t - z_y
        return (z.gather(1, target[:, None]) - z.gather(1, y[:, None])).squeeze(1)

    for _ in range(steps):
        f, _logits, g = core.loss_and_gradient(net, x1, margin)
        w = g.flatten(1)
        both = boundary_step(torch.cat([x1.flatten(1), flat_x]), torch.cat([w, w]),
                             torch.cat([-f, -f + (w * (x1.flatten(1) - flat_x)).sum(1)]))
        d1, d0 = both[:n].view_as(x), both[n:].view_as(x)
        size = both.abs().amax(dim=1).clamp_min(1e-8)
        a1, a0 = size[:n], size[n:]
        bias = core.rows_view((a1 / (a1 + a0)).clamp(0, ALPHA_MAX), x)
        x1 = ((x1 + ETA * d1) * (1 - bias) + (x + ETA * d0) * bias).clamp(0, 1)
        with torch.no_grad():
            wrong = core.float_logits(net, x1).argmax(dim=1) != y
        gap = (x1 - x).flatten(1).abs().amax(dim=1)
        closer = wrong & (gap < dist)
        best = torch.where(core.rows_view(closer, x), x1, best)
        dist = torch.where(closer, gap, dist)
        x1 = torch.where(core.rows_view(wrong, x), x + (x1 - x) * BETA, x1)
    return best, dist


def fab_t(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps, *,
          targets: int | None = None, steps: int = 100, restarts: int = 1,
          generator: torch.Generator | None = None) -> torch.Tensor:
    """FAB-T towards ``targets`` classes (by default ``min(9, classes - 1)``), each with
    ``restarts`` runs, every run only on the images no earlier run has broken within
    eps; images misclassified clean are returned unchanged."""
    check_options(steps, restarts)
    core.true_label(None, y)
    eps01 = core.pixel_eps(eps, x.shape[0], x)
    with core.search(model, x, y) as (net, clean, worst):
        ranked = clean.argsort(dim=1, descending=True)
        plan = [(rank, restart) for rank in range(1, target_count(targets, clean.shape[1]) + 1)
                for restart in range(restarts)]
        for idx, (rank, restart) in worst.runs(plan):
            xi, e = x[idx], eps01[idx]
            start = xi
            if restart > 0:
                u = 2 * torch.rand(xi.shape, device=x.device, dtype=x.dtype,
                                   generator=generator) - 1
                scale = core.rows_view(u.flatten(1).abs().amax(dim=1), xi)
                start = (xi + e * u / scale.clamp_min(1e-12) / 2).clamp(0, 1)
            point, dist = run_once(net, xi, y[idx], ranked[idx, rank], int(steps), start)
            inside = dist <= e.flatten()
            worst.update(idx, point, inside, torch.where(inside, 0.0, -torch.inf))
    return worst.x_adv
