"""Figure 4: the strong attacks against torchattacks 3.5.1 at equal settings, on the same
model (ResNet-20, 24x24x3, the peers get the plain float32 model), inputs and device,
interleaved, with an agreement check of the accuracy after the attack:

* ``apgd_ce`` (100 iterations, 1 restart, eps 16) vs ``APGD(loss="ce")``, with our run on
  the unfused model and the floor of its 101 forward + input-gradient passes;
* ``apgd_t`` (100 iterations, 1 restart, T target classes) vs ``APGDT(n_classes=T + 1)``;
* ``square`` (the query budget, p_init 0.8, the p schedule at the query numbers
  themselves, ``rescale=False``, as AutoAttack and our audit run it) vs
  ``Square(loss="margin", resc_schedule=False)``; and ``ours_compiled``, our Square on
  the model compiled with inductor's freezing (``cascade-adv audit --compile``; where
  ``torch.compile`` works here; its compile happens in the warm-up call).

The labels are the model's own predictions, so that both sides attack every image (each
skips the images misclassified clean).  The network is untrained: at eps 16 it loses
every image within the first steps, so APGD-T (which runs its later targets on the
images still standing) and Square (which stops querying a broken image) would time
little more than their start; they run at ``STRONG_EPS`` (``--strong-eps``), where a
share of the images survives, as on a robust model.  torchattacks' Square draws a
window's corner from ``[0, h - s - 1]`` (never the last row and column), ours from all
``h - s + 1`` positions; ``torchattacks_widened`` (not timed) is theirs with that draw
widened, as in ``benchmarks/strong_check.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from bench.common import (
    ATTACK_EPS,
    Settings,
    attack_models,
    floor_passes,
    fused_network,
    interleaved,
    median,
    ours_attack,
    paired_ratios,
)
from cascade_adv import attacks
from cascade_adv.speed import compile_support, prepare_input

STRONG = ("apgd_ce", "apgd_t", "square")
#: Square's p schedule on both sides (AutoAttack's and the audit's: not rescaled).
SQUARE_RESCALE = False
#: eps (pixels) of APGD-T and Square; APGD-CE runs at the attack figures' eps 16.
STRONG_EPS = 2


def options(name: str, s: Settings) -> dict:
    """Our attack's options; the peer gets the same settings (``peer_attack``)."""
    if name == "apgd_ce":
        return {"steps": s.apgd_steps, "restarts": 1}
    if name == "apgd_t":
        return {"steps": s.apgd_steps, "restarts": 1, "targets": s.apgd_t_targets}
    return {"queries": s.square_queries, "p_init": 0.8, "rescale": SQUARE_RESCALE}


def peer_attack(ta, name: str, model: nn.Module, eps: float, s: Settings, seed: int,
                widen: bool = False):
    """torchattacks' version of ``name`` at our settings (``widen``: Square's corner draw
    widened to ``[0, h - s]``, as ours)."""
    kw = {"norm": "Linf", "eps": eps / 255, "seed": seed}
    if name == "apgd_ce":
        return ta.APGD(model, steps=s.apgd_steps, n_restarts=1, loss="ce", **kw)
    if name == "apgd_t":
        return ta.APGDT(model, steps=s.apgd_steps, n_restarts=1,
                        n_classes=s.apgd_t_targets + 1, **kw)
    atk = ta.Square(model, n_queries=s.square_queries, n_restarts=1, p_init=0.8,
                    loss="margin", resc_schedule=SQUARE_RESCALE, **kw)
    if widen:
        draw = type(atk).random_int
        atk.random_int = lambda low=0, high=1, shape=(1,): draw(atk, low, high + 1, list(shape))
    return atk


class Kept:
    """A contender that keeps its latest result (the agreement check reads it)."""

    def __init__(self, fn: Callable[[], torch.Tensor]):
        self.fn = fn
        self.out: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        self.out = self.fn()
        return self.out


def bench_strong(s: Settings, device: torch.device, seed: int, peers, speed_opts: dict,
                 log, names=STRONG, strong_eps: float = STRONG_EPS) -> dict:
    """Figure 4, one entry per attack of ``names``."""
    model, mine, speed = attack_models(device, seed, speed_opts)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(s.apgd_batch, 3, 24, 24, generator=g).to(device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    xm = prepare_input(x, speed)
    ctx = {"s": s, "device": device, "seed": seed, "ta": peers.get("torchattacks"),
           "model": model, "mine": mine, "speed": speed, "x": x, "xm": xm, "y": y, "log": log}
    return {name: bench_one(name, ATTACK_EPS if name == "apgd_ce" else strong_eps, **ctx)
            for name in names}


def bench_one(name: str, eps: float, *, s: Settings, device, seed: int, ta, model, mine,
              speed, x, xm, y, log) -> dict:
    """One attack: ours (and for APGD-CE ours unfused and the fused floor) against
    torchattacks, interleaved; medians, speedup, accuracies after the attack."""
    opts = options(name, s)
    fn = functools.partial(attacks.get(name).fn, **opts)
    ours = Kept(functools.partial(ours_attack, fn, mine, xm, y, speed, eps=eps))
    contenders: dict[str, Callable] = {"ours": ours}
    if name == "apgd_ce":
        contenders["ours_unfused"] = functools.partial(ours_attack, fn, mine, xm, y, speed,
                                                       False, eps=eps)
    compiled = None
    if name == "square" and compile_support(device.type) is None:
        compiled = Kept(functools.partial(ours_attack, fn, mine, xm, y, speed, eps=eps,
                                          compiled=True))
        contenders["ours_compiled"] = compiled
    theirs = None
    if ta is not None:
        theirs = Kept(functools.partial(peer_attack(ta, name, model, eps, s, seed), x, y))
        contenders["torchattacks"] = theirs
    if name == "apgd_ce":  # the start's gradient pass and one per iteration
        contenders["floor_fused"] = functools.partial(
            floor_passes, fused_network(mine, xm, speed), xm, y, s.apgd_steps + 1, speed)
    log(f"  {name}: batch {s.apgd_batch}, eps {eps:g}, {opts}, {s.apgd_rounds} rounds of "
        f"{', '.join(contenders)} ...")
    times = interleaved(contenders, s.apgd_rounds, s.warmup, device)
    med = {k: median(v) for k, v in times.items()}
    res = {"attack": name, "batch": s.apgd_batch, "eps": eps, "options": opts,
           "times_s": times, "median_s": med,
           "images_per_s": {k: s.apgd_batch / v for k, v in med.items()},
           "speedup_vs_torchattacks": None, "speedup_per_round": None}
    if name != "square":
        res["steps"] = s.apgd_steps
    if name == "apgd_ce":
        res["fused_speedup_vs_unfused"] = med["ours_unfused"] / med["ours"]
        res["overhead_over_floor_pct"] = 100 * (med["ours"] / med["floor_fused"] - 1)
    correct = {"ours": n_correct(model, ours.out, y)}
    if compiled is not None:
        correct["ours_compiled"] = n_correct(model, compiled.out, y)
    if theirs is not None:
        res["speedup_vs_torchattacks"] = med["torchattacks"] / med["ours"]
        res["speedup_per_round"] = paired_ratios(times["torchattacks"], times["ours"])
        if compiled is not None:
            res["compiled_speedup_vs_torchattacks"] = (med["torchattacks"]
                                                       / med["ours_compiled"])
        correct["torchattacks"] = n_correct(model, theirs.out, y)
        if name == "square":
            widened = peer_attack(ta, name, model, eps, s, seed, widen=True)
            correct["torchattacks_widened"] = n_correct(model, widened(x, y), y)
    res["robust_accuracy"] = {k: v / s.apgd_batch for k, v in correct.items()}
    res["agreement"] = agreement(correct)
    return res


def n_correct(model: nn.Module, adv: torch.Tensor, y: torch.Tensor) -> int:
    """Images the (plain float32) model still classifies correctly after the attack."""
    with torch.no_grad():
        return int((model(adv.float()).argmax(dim=1) == y).sum())


def agreement(correct: dict[str, int]) -> dict | None:
    """Ours against torchattacks: the accuracies must be equal or one image apart."""
    if "torchattacks" not in correct:
        return None
    apart = abs(correct["ours"] - correct["torchattacks"])
    return {"correct": correct, "images_apart": apart, "within_one_image": apart <= 1}


def speedup_keys(strong: dict) -> dict[str, float | None]:
    """The report's top-level keys: ``NAME_speedup_vs_torchattacks`` per attack, and
    ``apgd_speedup_vs_torchattacks``, the APGD-CE one under its former name."""
    out = {f"{name}_speedup_vs_torchattacks": res["speedup_vs_torchattacks"]
           for name, res in strong.items()}
    out.update({f"{name}_compiled_speedup_vs_torchattacks": res["compiled_speedup_vs_torchattacks"]
                for name, res in strong.items() if "compiled_speedup_vs_torchattacks" in res})
    if "apgd_ce" in strong:
        out["apgd_speedup_vs_torchattacks"] = strong["apgd_ce"]["speedup_vs_torchattacks"]
    return out
