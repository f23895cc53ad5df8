"""Square attack, L-infinity (Andriushchenko et al. 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search", Algorithm 1 and
section 3.1): random search on the margin loss ``z_y - max_{j != y} z_j``, using the
model's scores only (no gradient).

Start: vertical stripes, every column of every channel at ``x +- eps`` (random sign).
Each query sets one random square window of side ``s`` of one image to ``x +- eps``
(a random sign per channel), clipped to [0, 1]; the candidate is kept if it lowers the
margin or is misclassified, and a misclassified image keeps its point. ``s`` is
``round(sqrt(p h w))`` for the fraction ``p`` of the paper's schedule: ``p_init`` halved
at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of 10,000, rescaled
to the query budget as in the authors' code (``rescale=True``, also torchattacks') or,
as AutoAttack runs it (``rescale=False``), at those query numbers whatever the budget.

Each image draws its own window and signs (the paper's Algorithm 1; AutoAttack's
version shares one window per batch). Every image's state stays on the device: the
window side is a host-side integer known from the query index. Broken images are
frozen; they leave the batch when the window side changes (one host read per side, at
most ten) and, on a CPU, after every query that broke one, while the random draws stay
those of the whole batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cascade_adv.attacks import core
from cascade_adv.errors import AttackError

#: Devices on which broken images leave the batch after every query (a host read costs
#: nothing there); elsewhere only when the window side changes.
COMPACT_EVERY_QUERY = ("cpu",)
#: The paper's schedule over 10,000 iterations: (last iteration, divisor of p_init).
P_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
              (6000, 128), (8000, 256))


def p_selection(i: int, queries: int, p_init: float, rescale: bool = True) -> float:
    """The fraction of pixels changed at query ``i`` (0-based) of ``queries``: the paper's
    schedule at iteration ``int(i / queries * 10000)`` (``rescale``), else at ``i``."""
    it = int(i / queries * 10000) if rescale else i
    for last, div in P_SCHEDULE:
        if it <= last:
            return p_init / div
    return p_init / 512


def window_side(p: float, h: int, w: int) -> int:
    """``s = round(sqrt(p h w))``, at least 1 and at most the image's shorter side."""
    return min(max(round(math.sqrt(p * h * w)), 1), h, w)


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``z_y - max_{j != y} z_j`` per example (negative once misclassified)."""
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    return z_y - logits.scatter(1, y[:, None], -torch.inf).amax(dim=1)


def random_signs(shape, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform +-1 of ``shape`` in ``x``'s dtype and device."""
    bits = torch.randint(0, 2, shape, device=x.device, generator=generator)
    return (2 * bits - 1).to(x.dtype)


def window_draws(n: int, s: int, h: int, w: int, c: int, x: torch.Tensor,
                 generator: torch.Generator | None):
    """One query's random draws for ``n`` images: the top and left corners ``[n, 1]`` of
    an ``s x s`` window and a sign per channel ``[n, c, 1, 1]``."""
    top = torch.randint(0, h - s + 1, (n, 1), device=x.device, generator=generator)
    left = torch.randint(0, w - s + 1, (n, 1), device=x.device, generator=generator)
    return top, left, random_signs((n, c, 1, 1), x, generator)


def window_mask(top: torch.Tensor, left: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """``[n, 1, h, w]`` boolean masks of the ``s x s`` windows at corners ``[n, 1]``."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top) & (rows < top + s)
    in_cols = (cols >= left) & (cols < left + s)
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def search(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps01: torch.Tensor,
           queries: int, p_init: float, generator: torch.Generator | None,
           rescale: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One run; returns ``(points, misclassified, -margin)`` per image.

    Broken images are frozen, so they leave the batch and the model sees only the live
    ones: on a GPU whenever the window side changes (at most ten times, one host read
    each), on a CPU, where reading a flag back costs nothing, after any query that broke
    one. The draws stay those of the whole batch, so the result does not depend on when
    an image left, and the generator ends where it would have."""
    n, c, h, w = x.shape
    every_query = x.device.type in COMPACT_EVERY_QUERY
    x_best = core.project(x + eps01 * random_signs((n, c, 1, w), x, generator), x, eps01)
    logits = net(x_best)
    best = margin(logits, y)
    broken = logits.argmax(dim=1) != y
    full = (x_best, best, broken)
    live = torch.arange(n, device=x.device)
    state, side = tuple(t[live] for t in full), None
    for i in range(queries):
        s = window_side(p_selection(i, queries, p_init, rescale), h, w)
        if s != side or (every_query and bool(state[2].any())):
            store(full, live, state)
            live, side = live[~state[2]], s  # the unbroken rows: one host read
            fixed = x[live], y[live], eps01[live]
            state = tuple(t[live] for t in full)
        draws = window_draws(n, s, h, w, c, x, generator)
        if live.numel():
            state = query(net, *fixed, state, [d[live] for d in draws], s)
    store(full, live, state)
    return x_best, broken, -best


def store(full: tuple[torch.Tensor, ...], live: torch.Tensor,
          state: tuple[torch.Tensor, ...]) -> None:
    """Write ``state`` (points, margins, broken) of the ``live`` rows into ``full``."""
    for t, v in zip(full, state):
        t[live] = v


def query(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps01: torch.Tensor,
          state: tuple[torch.Tensor, torch.Tensor, torch.Tensor], draws, s: int):
    """One query of the live images: ``state`` is ``(points, margins, broken)``; the
    candidate replaces the point if it lowers the margin or is misclassified."""
    x_best, best, broken = state
    top, left, signs = draws
    mask = window_mask(top, left, s, x.shape[2], x.shape[3])
    cand = core.project(torch.where(mask, x + eps01 * signs, x_best), x, eps01)
    logits = net(cand)
    m = margin(logits, y)
    wrong = logits.argmax(dim=1) != y
    take = ~broken & (wrong | (m < best))
    return (torch.where(core.rows_view(take, x), cand, x_best), torch.where(take, m, best),
            broken | (take & wrong))


def square(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps, *, queries: int = 5000,
           p_init: float = 0.8, rescale: bool = True,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Square attack on the images the model classifies correctly (the others are
    returned unchanged): per image a misclassified point if the search found one,
    otherwise the point of the lowest margin."""
    if int(queries) != queries or queries < 0:
        raise AttackError(f"queries must be a whole number >= 0, got {queries}")
    if not 0 < p_init <= 1:
        raise AttackError(f"p_init must lie in (0, 1], got {p_init}")
    if x.dim() != 4:
        raise AttackError(f"the Square attack needs images [N, C, H, W], got shape "
                          f"{list(x.shape)}")
    core.true_label(None, y)
    eps01 = core.pixel_eps(eps, x.shape[0], x)
    with core.inference_mode(model), torch.no_grad():
        net = core.query_network(model, x)
        clean = core.float_logits(net, x)
        worst = core.WorstCase(x, y, clean)
        idx = worst.rows()
        if idx is not None:
            found = search(lambda z: core.float_logits(net, z), x[idx], y[idx], eps01[idx],
                           int(queries), p_init, generator, bool(rescale))
            worst.update(idx, *found)
    return worst.x_adv
