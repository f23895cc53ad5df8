"""Figure 2: attack throughput (images/s) of ``step_fgsm`` and ``iter_fgsm`` (eps 16)
against torchattacks and Foolbox on the same model, inputs and device, with an agreement
check of the adversarial images, and against the floor (the model's own forward +
input-gradient pass times the number of steps)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from bench.common import (
    ATTACK_EPS,
    ATTACK_STEPS,
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
from cascade_adv.speed import prepare_input


def peer_attacks(peers, model: nn.Module, device: torch.device, eps_px: float, steps: int):
    """name -> {peer: callable(x, y) -> x_adv} for step_fgsm and iter_fgsm."""
    eps, alpha = eps_px / 255, 1 / 255
    out: dict[str, dict[str, Callable]] = {"step_fgsm": {}, "iter_fgsm": {}}
    ta = peers.get("torchattacks")
    if ta is not None:
        fgsm = ta.FGSM(model, eps=eps)
        bim = ta.BIM(model, eps=eps, alpha=alpha, steps=steps)
        out["step_fgsm"]["torchattacks"] = fgsm
        out["iter_fgsm"]["torchattacks"] = bim
    fb = peers.get("foolbox")
    if fb is not None:
        fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
        fgsm_fb = fb.attacks.LinfFastGradientAttack(random_start=False)
        bim_fb = fb.attacks.LinfBasicIterativeAttack(abs_stepsize=alpha, steps=steps,
                                                     random_start=False)
        # Attack.run is the attack proper; Attack.__call__ adds one forward pass per
        # epsilon to report success, which we leave out (this favours Foolbox).
        out["step_fgsm"]["foolbox"] = lambda x, y: fgsm_fb.run(fmodel, x, y, epsilon=eps)
        out["iter_fgsm"]["foolbox"] = lambda x, y: bim_fb.run(fmodel, x, y, epsilon=eps)
    return out


def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict[str, float]:
    diff = (ours.float() - theirs.float()).abs()
    return {"max_abs_diff": float(diff.max()),
            "max_abs_diff_pixels": float(diff.max()) * 255,
            "frac_pixels_diff_gt_1e-5": float((diff > 1e-5).float().mean())}


def bench_attacks(s: Settings, device: torch.device, seed: int, peers, speed_opts: dict,
                  log) -> dict:
    """Figure 2.  The peers get the plain float32 model; ours and the floor run on a copy
    with the library's speed options for this device (float32, as-is, by default on CPU)."""
    model, mine, speed = attack_models(device, seed, speed_opts)
    g = torch.Generator().manual_seed(seed)
    out: dict = {}
    for name, batch, steps in (("step_fgsm", s.attack_batch, 1),
                               ("iter_fgsm", s.iter_batch, ATTACK_STEPS)):
        x = torch.rand(batch, 3, 24, 24, generator=g).to(device)
        y = torch.randint(0, 10, (batch,), generator=g).to(device)
        xm = prepare_input(x, speed)
        fn = attacks.get(name).fn
        peer_fns = peer_attacks(peers, model, device, ATTACK_EPS, ATTACK_STEPS)[name]
        contenders: dict[str, Callable] = {
            "ours": functools.partial(ours_attack, fn, mine, xm, y, speed),
            "ours_unfused": functools.partial(ours_attack, fn, mine, xm, y, speed, False)}
        for peer, pf in peer_fns.items():
            contenders[peer] = functools.partial(pf, x, y)
        contenders["floor"] = functools.partial(floor_passes, mine, xm, y, steps, speed)
        contenders["floor_fused"] = functools.partial(
            floor_passes, fused_network(mine, xm, speed), xm, y, steps, speed)
        log(f"  {name}: batch {batch}, {s.attack_rounds} rounds of {', '.join(contenders)} ...")
        times = interleaved(contenders, s.attack_rounds, s.warmup, device)
        res = attack_result(batch, steps, times)
        ours_adv = ours_attack(fn, mine, xm, y, speed)
        unfused_adv = ours_attack(fn, mine, xm, y, speed, False)
        res["agreement"] = {"unfused": agreement(ours_adv, unfused_adv)}
        res["speedup_per_round"] = {
            peer: paired_ratios(times[peer], times["ours"]) for peer in peer_fns}
        res["overhead_per_round"] = paired_ratios(times["ours"], times["floor_fused"])
        for peer in ("torchattacks", "foolbox"):
            if peer in peer_fns:
                res["agreement"][peer] = agreement(ours_adv, peer_fns[peer](x, y))
                res["images_per_s"][peer] = batch / res["median_s"][peer]
            else:
                res["images_per_s"][peer] = None
                res["agreement"][peer] = None
        if "torchattacks" in peer_fns and "foolbox" in peer_fns:
            res["agreement"]["torchattacks_vs_foolbox"] = agreement(
                peer_fns["torchattacks"](x, y), peer_fns["foolbox"](x, y))
        out[name] = res
    return out


def attack_result(batch: int, steps: int, times: dict[str, list[float]]) -> dict:
    """One attack's medians, throughputs and ratios to the floor and to the unfused run."""
    med = {k: median(v) for k, v in times.items()}
    floor = med["floor"]
    return {"batch": batch, "steps": steps, "times_s": times, "median_s": med,
            "floor_s": floor, "floor_fused_s": med["floor_fused"],
            "images_per_s": {k: batch / v for k, v in med.items() if not k.startswith("floor")},
            "floor_images_per_s": batch / floor,
            "floor_fused_images_per_s": batch / med["floor_fused"],
            "fused_speedup_vs_unfused": med["ours_unfused"] / med["ours"],
            "overhead_over_floor_pct": 100 * (med["ours"] / med["floor_fused"] - 1)}


def speedups(attack_res: dict, peer: str) -> dict[str, float | None]:
    """Per attack: the peer's median time over ours (``None`` if it is not installed)."""
    out = {}
    for name, a in attack_res.items():
        theirs = a["median_s"].get(peer)
        out[name] = None if theirs is None else theirs / a["median_s"]["ours"]
    return out
