#!/usr/bin/env python
"""Speed benchmarks of cascade_adv, measured side by side in one run.

    python benchmarks/run.py --device cpu|cuda [--quick] [--only apgd] [--json FILE]

Figures (docs/performance.md explains each one):

1. ``adv_clean_ratio``: one N18 adversarial-training iteration (pivot loss, step_ll,
   m = 128, k = 64, ResNet-20 on 24x24x3 crops) over one clean training iteration of
   the same model and batch size; both built and stepped by the library functions
   ``cascade_adv.training.train`` uses (``setup_training``, ``initial_model``,
   ``train_step``), timed forward + backward + optimizer step.
2. attack throughput (images/s) of ``step_fgsm`` and ``iter_fgsm`` (eps 16) against
   torchattacks 3.5.1 and Foolbox 3.3.4 on the same model, inputs and device, with an
   agreement check of the adversarial images, and against the floor: the model's own
   forward + input-gradient pass times the number of steps.
3. wall time of a whole white-box table (5 attacks x 4 epsilons x 10,000 images) and
   of the full N18 MNIST / CIFAR-10 recipes, extrapolated from measured per-image /
   per-iteration times (labelled as such), plus FLOP and kernel counts that project
   them to an H100 (labelled as projections).
4. ``apgd_ce`` (APGD, cross-entropy, 100 iterations, 1 restart, eps 16) against
   torchattacks 3.5.1's ``APGD(loss="ce")`` at the same settings, and the floor of its
   101 forward + input-gradient passes (``--only apgd`` runs this figure alone).

Contenders of one figure run interleaved (A B A B ...) after warm-up calls, and every
figure reports the median.  Random uint8 data stands in for MNIST / CIFAR-10: timing
does not depend on pixel values, and no dataset files are needed.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import math
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from cascade_adv import attacks
from cascade_adv.data import ImageDataset
from cascade_adv.evaluation import evaluate_whitebox
from cascade_adv.models import build_model
from cascade_adv.speed import prepare_input, prepare_model, resolve_speed
from cascade_adv.training import (
    initial_model,
    learning_rate,
    load_config,
    setup_training,
    train_step,
)
from cascade_adv.training.adversarial import one_step_examples
from cascade_adv.training.epsilon import sample_eps
from cascade_adv.training.optim import make_optimizer

ROOT = Path(__file__).resolve().parent.parent

# --- the workloads -------------------------------------------------------------------------

#: N18 table 2 "step_ll / Pivot" (configs/n18/table2_cifar10_step_ll_pivot.yaml) and its
#: shared pre-training (configs/n18/cifar10_pretrain.yaml): ResNet-20, random 24x24 crop
#: + flip of 32x32 images, m = 128, k = 64, max_e 16.
CIFAR = [
    "data.dataset=cifar10", "data.crop_size=24", "data.flip=true", "model.depth=20",
    "optim.batch_size=128", "optim.lr=0.1", "optim.lr_milestones=[48000,72000]",
]
#: N18 table 1 "Pivot" (configs/n18/table1_mnist_pivot.yaml) and configs/n18/mnist_pretrain.yaml.
MNIST = [
    "data.dataset=mnist", "data.crop_size=null", "data.flip=false", "model.depth=20",
    "optim.batch_size=128", "optim.lr=0.1", "optim.lr_milestones=[4000,6000]",
]
PIVOT = [
    "adversarial.mode=append", "adversarial.k=64", "adversarial.lam=0.3",
    "adversarial.lam2=1e-4", "adversarial.distance=pivot", "adversarial.norm=l2",
    "adversarial.method=step_ll", "adversarial.eps_sampler=n18",
]
#: (clean pre-training iterations, adversarial iterations) of the N18 recipes.
RECIPES = {"n18_mnist": (938, 8000), "n18_cifar10": (3907, 94000)}

#: The white-box table of one model (N18 table 2 layout).
TABLE_ATTACKS = ["step_ll", "step_fgsm", "step_rnd", "iter_ll", "iter_fgsm"]
TABLE_EPS = [2, 4, 8, 16]
TABLE_IMAGES = 10_000
TABLE_BATCH = 500  # evaluate_whitebox's default batch_size

#: ResNet-20 on CIFAR-10's 24x24 crops (N18 section 3.3).
RESNET20_CIFAR = {"depth": 20, "in_channels": 3, "input_size": 24, "num_classes": 10,
                  "dataset": "cifar10"}
ATTACK_EPS = 16  # pixels
ATTACK_STEPS = int(attacks.iterative_steps(ATTACK_EPS))  # floor(min(eps + 4, 1.25 eps)) = 20

#: Figure 4: APGD at AutoAttack's standard iterations.
APGD_STEPS = 100

TARGETS = {
    "adv_clean_ratio": ("<=", 1.35),
    "apgd_speedup_vs_torchattacks": (">=", 1.5),
    "speedup_vs_torchattacks": (">=", 1.5),
    "speedup_vs_foolbox": (">=", 2.0),
    "overhead_over_floor_pct": ("<=", 10.0),
    "h100_n18_mnist_recipe_s": ("<=", 60.0),
    "h100_n18_cifar10_recipe_s": ("<=", 300.0),
    "h100_whitebox_table_s": ("<=", 30.0),
}

#: H100 projection assumptions (stated in the JSON and in docs/performance.md).
H100 = {
    "bf16_dense_peak_flops": 989e12,  # H100 SXM5, dense (no sparsity)
    "sustained_fraction": 0.10,  # ResNet-20's 16-64-channel convolutions use tensor cores poorly
    "eager_host_s_per_kernel": 8e-6,  # eager: Python + dispatcher + launch, host side
    "graphed_s_per_kernel": 2e-6,  # CUDA graphs / torch.compile: launch gap + minimum kernel
    "flops_per_mac": 2,
    "backward_over_forward": 2.0,  # a backward pass costs 2 forwards (weights + inputs)
}


@dataclass
class Settings:
    train_rounds: int
    attack_rounds: int
    warmup: int
    attack_batch: int
    iter_batch: int
    table_images: int
    train_images: int
    apgd_rounds: int
    apgd_batch: int


QUICK = Settings(train_rounds=9, attack_rounds=5, warmup=1, attack_batch=128, iter_batch=128,
                 table_images=64, train_images=1024, apgd_rounds=3, apgd_batch=64)
FULL = Settings(train_rounds=25, attack_rounds=11, warmup=2, attack_batch=128, iter_batch=128,
                table_images=TABLE_IMAGES, train_images=4096, apgd_rounds=5, apgd_batch=128)


# --- timing ---------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: (process CPU seconds, wall seconds) of every timed call: on an idle CPU-only machine the
#: process keeps its threads busy (CPU / wall close to torch.get_num_threads()); a lower
#: ratio means another process took cores away and the timings are inflated.
USAGE: list[tuple[float, float]] = []


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call, contenders interleaved A B C A B C ... after warm-up calls."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            sync(device)
            wall = time.perf_counter() - t0
            USAGE.append((time.process_time() - c0, wall))
            times[name].append(wall)
    return times


def cpu_usage() -> float | None:
    """CPU seconds per wall second over every timed call (see ``USAGE``)."""
    wall = sum(w for _, w in USAGE)
    return sum(c for c, _ in USAGE) / wall if wall else None


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratios(num: list[float], den: list[float]) -> dict[str, float]:
    """Per-round ratios ``num[i] / den[i]`` of two interleaved contenders (same round, same
    machine state): their median, min and max show how much the ratio moves with noise."""
    r = [a / b for a, b in zip(num, den)]
    return {"median": median(r), "min": min(r), "max": max(r)}


# --- counting -----------------------------------------------------------------------------


class OpCounter(TorchDispatchMode):
    """Counts dispatched ATen ops; ``kernels`` leaves out pure views (no kernel on a GPU)."""

    def __init__(self):
        super().__init__()
        self.ops = 0
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        if not func.is_view and func.__name__.split(".")[0] not in ("detach", "alias"):
            self.kernels += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> dict[str, int]:
    with OpCounter() as counter:
        fn()
    return {"ops": counter.ops, "kernels": counter.kernels}


def forward_macs(model: nn.Module, shape: tuple[int, int, int], device: torch.device) -> int:
    """Multiply-accumulates of one image's forward pass (convolutions and linear layers)."""
    total = 0

    def hook(mod, inputs, out):
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            kh, kw = mod.kernel_size
            total += out[0].numel() * (mod.in_channels // mod.groups) * kh * kw
        elif isinstance(mod, nn.Linear):
            total += mod.in_features * mod.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with attacks.inference_mode(model), torch.no_grad():
            model(torch.rand(1, *shape, device=device))
    finally:
        for h in handles:
            h.remove()
    return total


# --- data, models, training steps -----------------------------------------------------------


def fake_dataset(name: str, n: int, shape: tuple[int, int, int], device: torch.device,
                 seed: int, split: str = "train") -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(images, labels, name, split, [str(i) for i in range(10)]).to(device)


class TrainStep:
    """One iteration of ``cascade_adv.training.train``'s loop, one process (no metrics or
    checkpoint files): its set-up (``setup_training``, ``initial_model``), its
    ``train_step`` and its loss read-back every ``log_every`` iterations."""

    def __init__(self, overrides: list[str], data: ImageDataset, device: torch.device,
                 foreach: bool | None = None):
        cfg = load_config(None, [*overrides, f"device={device}"])
        self.cfg = cfg
        setup = setup_training(cfg, device, train_set=data)
        self.speed, self.sampler, self.objective = setup.speed, setup.sampler, setup.objective
        self.model = initial_model(cfg, setup, device)
        prepare_model(self.model, self.speed)
        self.optimizer = make_optimizer(cfg, self.model)
        if foreach is not None:  # e.g. count kernels as CUDA's default (foreach) SGD runs them
            for group in self.optimizer.param_groups:
                group["foreach"] = foreach
        self.model.train()
        self.iteration = 0
        self.pending: list[torch.Tensor] = []

    def __call__(self) -> None:
        it = self.iteration
        self.iteration += 1
        x, y = self.sampler.batch(it)
        loss, _, _ = train_step(self.model, self.optimizer, self.objective, x, y, it,
                                self.sampler.generator(it, 3), lr=learning_rate(self.cfg, it),
                                speed=self.speed, fuse=self.cfg.speed.fuse)
        self.pending.append(loss)
        if self.iteration % self.cfg.log_every == 0:  # train() checks the losses here
            torch.stack(self.pending).tolist()
            self.pending.clear()


class AttackPart:
    """The attack alone inside an adversarial iteration: k one-step images, model in train
    mode (the attack switches it to inference mode itself)."""

    def __init__(self, step: TrainStep):
        self.step = step
        self.adv = step.cfg.adversarial

    def __call__(self):
        s = self.step
        x, y = s.sampler.batch(s.iteration)
        x = prepare_input(x, s.speed)
        g = s.sampler.generator(s.iteration, 3)
        eps = sample_eps(self.adv.eps_sampler, self.adv.k, self.adv.max_e, g, x.device)
        with s.speed.autocast():
            return one_step_examples(self.adv.method, s.model, x[: self.adv.k],
                                     y[: self.adv.k], eps, g)


# --- peers ---------------------------------------------------------------------------------


def load_peers() -> dict[str, object | None]:
    peers: dict[str, object | None] = {}
    try:
        import torchattacks

        peers["torchattacks"] = torchattacks
    except Exception:  # noqa: BLE001 - any import failure means "not installed"
        peers["torchattacks"] = None
    try:
        import foolbox

        peers["foolbox"] = foolbox
    except Exception:  # noqa: BLE001
        peers["foolbox"] = None
    return peers


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


def floor_passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, speed):
    """The floor: ``steps`` times the model's own forward + input-gradient pass (timed as one
    call, so that it sees the same machine noise as the attacks it is compared with)."""
    with speed.autocast():
        for _ in range(steps):
            xx = x.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xx).float(), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, xx)
    return g


def ours_attack(fn, model: nn.Module, x: torch.Tensor, y: torch.Tensor, speed, fuse=True):
    """Our attack as ``evaluate_whitebox`` runs it: under the speed options' autocast, on
    the folded inference network (``fuse``) or the model as it is."""
    with speed.autocast(), attacks.fusion(fuse):
        return fn(model, x, y, ATTACK_EPS)


def fused_network(model: nn.Module) -> nn.Module:
    """The network our attacks run on (BatchNorm folded into the convolutions)."""
    with attacks.inference_mode(model):
        return attacks.attack_network(model)


# --- figures -------------------------------------------------------------------------------


def cuda_like_overrides(device: torch.device, speed: list[str]) -> list[str]:
    """Speed options to count kernels with for the H100 projection: the run's own on CUDA;
    on CPU, what ``auto`` gives on CUDA (bf16 autocast, channels_last) if CPU autocast
    supports bf16 here, else the run's own."""
    if device.type == "cuda" or not torch.amp.is_autocast_available("cpu"):
        return speed
    return [*speed, "speed.precision=bf16", "speed.channels_last=true"]


def bench_training(s: Settings, device: torch.device, seed: int, speed: list[str],
                   log) -> dict:
    """Figure 1 (CIFAR-sized) and the per-iteration times of both N18 recipes."""
    out: dict = {}
    for recipe, base, shape, max_e in (("n18_cifar10", CIFAR, (3, 32, 32), 16),
                                       ("n18_mnist", MNIST, (1, 28, 28), 32)):
        base = [*base, *speed]
        data = fake_dataset(recipe.split("_")[1], s.train_images, shape, device, seed)
        clean = TrainStep(base, data, device)
        adv = TrainStep([*base, *PIVOT, f"adversarial.max_e={max_e}"], data, device)
        unfused = TrainStep([*base, *PIVOT, f"adversarial.max_e={max_e}", "speed.fuse=false"],
                            data, device)
        contenders: dict[str, Callable] = {"adversarial": adv, "adversarial_unfused": unfused,
                                           "clean": clean}
        if recipe == "n18_cifar10":
            contenders["attack_part"] = AttackPart(adv)
        rounds = s.train_rounds if recipe == "n18_cifar10" else max(3, s.train_rounds // 2)
        log(f"  {recipe}: {rounds} rounds of {', '.join(contenders)} ...")
        times = interleaved(contenders, rounds, s.warmup, device)
        med = {k: median(v) for k, v in times.items()}
        # kernel counts for the projection, as CUDA runs them: its default speed options
        # and foreach SGD
        counted: dict[str, dict] = {}
        for kind, over in (("clean", base),
                           ("adversarial", [*base, *PIVOT, f"adversarial.max_e={max_e}"])):
            for label, extra in (("as_run", []), ("cuda_like", cuda_like_overrides(device, []))):
                step = TrainStep([*over, *extra], data, device, foreach=True)
                step()
                counted.setdefault(label, {})[kind] = count_ops(step)
        size = clean.model.config.input_size
        macs = forward_macs(clean.model, (shape[0], size, size), device)
        out[recipe] = {"times_s": times, "median_s": med, "ratio": med["adversarial"] / med["clean"],
                       "ratio_per_round": paired_ratios(times["adversarial"], times["clean"]),
                       "ratio_unfused": med["adversarial_unfused"] / med["clean"],
                       "op_counts": counted["cuda_like"], "op_counts_as_run": counted["as_run"],
                       "speed": clean.speed.describe(), "forward_macs_per_image": macs,
                       "rounds": rounds, "iterations": RECIPES[recipe]}
    return out


def attack_models(device: torch.device, seed: int, speed_opts: dict):
    """ResNet-20 (24x24x3) in eval mode as the peers get it (plain float32), and a copy
    with the library's speed options for this device, as ours and the floor run it."""
    torch.manual_seed(seed)
    model = build_model(RESNET20_CIFAR).to(device).eval()
    mine = copy.deepcopy(model)
    speed = resolve_speed(device, **speed_opts, model=mine)
    prepare_model(mine, speed)
    return model, mine, speed


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
        contenders["floor_fused"] = functools.partial(floor_passes, fused_network(mine), xm, y,
                                                      steps, speed)
        log(f"  {name}: batch {batch}, {s.attack_rounds} rounds of {', '.join(contenders)} ...")
        times = interleaved(contenders, s.attack_rounds, s.warmup, device)
        med = {k: median(v) for k, v in times.items()}
        floor = med["floor"]
        ours_adv = ours_attack(fn, mine, xm, y, speed)
        unfused_adv = ours_attack(fn, mine, xm, y, speed, False)
        res = {"batch": batch, "steps": steps, "times_s": times, "median_s": med,
               "floor_s": floor, "floor_fused_s": med["floor_fused"],
               "images_per_s": {k: batch / v for k, v in med.items()
                                if not k.startswith("floor")},
               "floor_images_per_s": batch / floor,
               "floor_fused_images_per_s": batch / med["floor_fused"],
               "fused_speedup_vs_unfused": med["ours_unfused"] / med["ours"],
               "overhead_over_floor_pct": 100 * (med["ours"] / med["floor_fused"] - 1),
               "agreement": {"unfused": agreement(ours_adv, unfused_adv)}}
        res["speedup_per_round"] = {
            peer: paired_ratios(times[peer], times["ours"]) for peer in peer_fns}
        res["overhead_per_round"] = paired_ratios(times["ours"], times["floor_fused"])
        for peer in ("torchattacks", "foolbox"):
            if peer in peer_fns:
                res["agreement"][peer] = agreement(ours_adv, peer_fns[peer](x, y))
                res["images_per_s"][peer] = batch / med[peer]
            else:
                res["images_per_s"][peer] = None
                res["agreement"][peer] = None
        if "torchattacks" in peer_fns and "foolbox" in peer_fns:
            res["agreement"]["torchattacks_vs_foolbox"] = agreement(
                peer_fns["torchattacks"](x, y), peer_fns["foolbox"](x, y))
        out[name] = res
    return out


def bench_apgd(s: Settings, device: torch.device, seed: int, peers, speed_opts: dict,
               log) -> dict:
    """Figure 4: ``apgd_ce`` at 100 iterations against torchattacks' ``APGD(loss="ce")`` at
    the same settings (eps 16, 1 restart, Linf), ResNet-20 on 24x24x3.  The labels are the
    model's own predictions, so that both attack every image (each skips the images
    misclassified clean)."""
    model, mine, speed = attack_models(device, seed, speed_opts)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(s.apgd_batch, 3, 24, 24, generator=g).to(device)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    xm = prepare_input(x, speed)
    fn = functools.partial(attacks.get("apgd_ce").fn, steps=APGD_STEPS)
    contenders: dict[str, Callable] = {
        "ours": functools.partial(ours_attack, fn, mine, xm, y, speed),
        "ours_unfused": functools.partial(ours_attack, fn, mine, xm, y, speed, False)}
    ta = peers.get("torchattacks")
    if ta is not None:
        peer = ta.APGD(model, norm="Linf", eps=ATTACK_EPS / 255, steps=APGD_STEPS,
                       n_restarts=1, seed=seed, loss="ce")
        contenders["torchattacks"] = functools.partial(peer, x, y)
    # the start's gradient pass and one per iteration
    contenders["floor_fused"] = functools.partial(floor_passes, fused_network(mine), xm, y,
                                                  APGD_STEPS + 1, speed)
    log(f"  apgd_ce: batch {s.apgd_batch}, {APGD_STEPS} iterations, {s.apgd_rounds} rounds of "
        f"{', '.join(contenders)} ...")
    times = interleaved(contenders, s.apgd_rounds, s.warmup, device)
    med = {k: median(v) for k, v in times.items()}

    def robust(adv: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(adv).argmax(dim=1) == y).float().mean())

    res = {"batch": s.apgd_batch, "steps": APGD_STEPS, "eps": ATTACK_EPS, "times_s": times,
           "median_s": med,
           "images_per_s": {k: s.apgd_batch / v for k, v in med.items()},
           "fused_speedup_vs_unfused": med["ours_unfused"] / med["ours"],
           "overhead_over_floor_pct": 100 * (med["ours"] / med["floor_fused"] - 1),
           "speedup_vs_torchattacks": None, "speedup_per_round": None,
           "robust_accuracy": {"ours": robust(ours_attack(fn, mine, xm, y, speed))}}
    if ta is not None:
        res["speedup_vs_torchattacks"] = med["torchattacks"] / med["ours"]
        res["speedup_per_round"] = paired_ratios(times["torchattacks"], times["ours"])
        res["robust_accuracy"]["torchattacks"] = robust(peer(x, y))
    return res


def apgd_rows(a: dict) -> list[tuple[str, str, str]]:
    """Figure 4's report lines: (figure, value, target)."""
    ips = a["images_per_s"]
    sp, q = a["speedup_vs_torchattacks"], a["speedup_per_round"]
    rob = a["robust_accuracy"]
    return [
        ((f"apgd_ce ({a['steps']} it.) images/s (batch {a['batch']}): ours | unfused | "
          "torchattacks | fused floor"),
         (f"{ips['ours']:.1f} | {ips['ours_unfused']:.1f} | "
          f"{fmt(ips.get('torchattacks'), '.1f')} | {ips['floor_fused']:.1f}"), ""),
        ("apgd_ce speedup vs torchattacks APGD",
         fmt(sp) if sp is None else f"{sp:.2f} (per round {q['min']:.2f}-{q['max']:.2f})",
         check("apgd_speedup_vs_torchattacks", sp)),
        ("apgd_ce overhead over the fused floor", f"{a['overhead_over_floor_pct']:+.1f} %", ""),
        ("apgd_ce robust accuracy (labels = predictions): ours | torchattacks",
         f"{rob['ours']:.3f} | {fmt(rob.get('torchattacks'), '.3f')}", ""),
    ]


def table_passes() -> dict[str, float]:
    """Gradient passes (forward + input-backward) and forward-only passes per image of the
    white-box table, as ``evaluate_whitebox`` runs it and as the minimum."""
    steps = [int(attacks.iterative_steps(e)) for e in TABLE_EPS]
    n_one, n_iter, n_eps = 3, 2, len(TABLE_EPS)
    minimum = n_one * n_eps + n_iter * sum(steps)
    return {
        # the iterative loop drops rows whose own step count is done (attacks.core.iterate),
        # so stacked epsilons cost exactly the minimum
        "grad_passes_as_run": minimum,
        "grad_passes_minimum": minimum,
        "forward_passes": 1 + len(TABLE_ATTACKS) * n_eps + n_eps,  # clean, adv, iter_ll labels
    }


def bench_table(s: Settings, device: torch.device, seed: int, speed_opts: dict, log) -> dict:
    torch.manual_seed(seed)
    model = build_model(RESNET20_CIFAR).to(device).eval()
    n = s.table_images
    data = fake_dataset("cifar10", n, (3, 32, 32), device, seed, split="test")
    batch = min(TABLE_BATCH, n)
    warm = data.subset(min(8, n))

    def run(d, b, max_batch=None, opts=speed_opts, fuse=True):
        return evaluate_whitebox(model, d, TABLE_ATTACKS, TABLE_EPS, batch_size=b,
                                 max_batch=max_batch, progress=False, seed=seed, fuse=fuse,
                                 **opts)

    run(warm, 8)
    run(warm, 8, 8)
    run(warm, 8, fuse=False)
    log(f"  white-box table: {len(TABLE_ATTACKS)} attacks x {len(TABLE_EPS)} eps x {n} images "
        f"(batch {batch}), as run and with one epsilon per attack call ...")
    # the default stacks the 4 epsilons into one attack call (iterative attacks then run
    # all rows to the largest step count); max_batch=batch_size calls once per epsilon
    times = interleaved({"default": functools.partial(run, data, batch),
                         "unfused": functools.partial(run, data, batch, fuse=False),
                         "per_epsilon_calls": functools.partial(run, data, batch, batch)},
                        rounds=1, warmup=0, device=device)
    seconds = times["default"][0]
    per_eps = times["per_epsilon_calls"][0]
    unfused = times["unfused"][0]
    # kernels for the projection, with CUDA's default speed options (see cuda_like_overrides)
    cuda_like = dict(speed_opts)
    if device.type == "cpu" and torch.amp.is_autocast_available("cpu"):
        cuda_like.update(precision="bf16", channels_last=True)
    run(warm, 8, opts=cuda_like)
    per_batch = count_ops(lambda: run(warm, 8, opts=cuda_like))
    return {"images": n, "batch_size": batch, "seconds": seconds,
            "images_per_s": n / seconds,
            "full_table_s": seconds * TABLE_IMAGES / n,
            "extrapolated": n != TABLE_IMAGES,
            "per_epsilon_calls": {"seconds": per_eps, "full_table_s": per_eps * TABLE_IMAGES / n},
            "unfused": {"seconds": unfused, "full_table_s": unfused * TABLE_IMAGES / n},
            "passes_per_image": table_passes(),
            "op_counts_per_batch": per_batch}


# --- projections ---------------------------------------------------------------------------


def project_h100(training: dict, table: dict) -> dict:
    """Seconds on an H100 from FLOP and kernel counts (projections, not measurements).

    ``eager``: the host issues one launch per kernel-running ATen op and the GPU overlaps
    with it, so the time is ``max(FLOP time, kernels x host cost)``.  ``graphed`` (CUDA
    graphs / ``torch.compile(mode="reduce-overhead")``): the host cost is gone and each
    kernel costs a small fixed GPU time on top of its FLOPs.
    """
    flops_s = H100["bf16_dense_peak_flops"] * H100["sustained_fraction"]
    eager_k, graphed_k = H100["eager_host_s_per_kernel"], H100["graphed_s_per_kernel"]
    passes = 1 + H100["backward_over_forward"]  # forward + backward, in forwards

    def times(flops: float, kernels: float) -> dict:
        return {"flop_term_s": flops / flops_s, "kernels": kernels,
                "eager_s": max(flops / flops_s, kernels * eager_k),
                "graphed_s": flops / flops_s + kernels * graphed_k}

    out: dict = {"assumptions": dict(H100), "sustained_flops": flops_s}
    for recipe, res in training.items():
        fwd = res["forward_macs_per_image"] * H100["flops_per_mac"]
        clean_it, adv_it = RECIPES[recipe]
        clean_flops = 128 * passes * fwd
        adv_flops = (128 + 64) * passes * fwd  # 128 training passes + 64 attack passes
        k_clean = res["op_counts"]["clean"]["kernels"]
        k_adv = res["op_counts"]["adversarial"]["kernels"]
        out[f"{recipe}_recipe"] = {
            **times(clean_it * clean_flops + adv_it * adv_flops,
                    clean_it * k_clean + adv_it * k_adv),
            "clean_iteration": times(clean_flops, k_clean),
            "adversarial_iteration": times(adv_flops, k_adv)}
    fwd = training["n18_cifar10"]["forward_macs_per_image"] * H100["flops_per_mac"]
    p = table["passes_per_image"]
    flops = TABLE_IMAGES * fwd * (p["grad_passes_as_run"] * passes + p["forward_passes"])
    batches = math.ceil(TABLE_IMAGES / TABLE_BATCH)
    out["whitebox_table"] = times(flops, batches * table["op_counts_per_batch"]["kernels"])
    return out


# --- report --------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def load_average() -> list[float] | None:
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def check(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    op, bound = TARGETS[name]
    ok = value <= bound if op == "<=" else value >= bound
    return f"{op} {bound:g} {'ok' if ok else 'MISSED'}"


def fmt(v: float | None, spec: str = ".2f", none: str = "not installed") -> str:
    return none if v is None else format(v, spec)


def spread(res: dict, peer: str, value: float | None) -> str:
    if value is None:
        return fmt(value)
    q = res["speedup_per_round"][peer]
    return f"{value:.2f} (per round {q['min']:.2f}-{q['max']:.2f})"


def print_report(r: dict) -> None:
    rows: list[tuple[str, str, str]] = []
    tr = r["training"]["n18_cifar10"]
    med = tr["median_s"]
    rows.append(("adv/clean iteration ratio (N18 CIFAR, m 128, k 64)",
                 (f"{r['adv_clean_ratio']:.3f} ({med['adversarial']*1e3:.0f} / "
                  f"{med['clean']*1e3:.0f} ms; attack part {med['attack_part']*1e3:.0f} ms)"),
                 check("adv_clean_ratio", r["adv_clean_ratio"])))
    rows.append(("  same, attack unfused (speed.fuse=false)",
                 f"{tr['ratio_unfused']:.3f} ({med['adversarial_unfused']*1e3:.0f} ms)", ""))
    for name, a in r["attacks"].items():
        ips = a["images_per_s"]
        rows.append(((f"{name} images/s: ours | unfused | torchattacks | foolbox | floor | "
                      "fused floor"),
                     (f"{ips['ours']:.0f} | {ips['ours_unfused']:.0f} | "
                      f"{fmt(ips['torchattacks'], '.0f')} | {fmt(ips['foolbox'], '.0f')} | "
                      f"{a['floor_images_per_s']:.0f} | {a['floor_fused_images_per_s']:.0f}"), ""))
        rows.append((f"{name} fused / unfused speedup", f"{a['fused_speedup_vs_unfused']:.2f}",
                     ""))
        st = r["attack_speedup_vs_torchattacks"][name]
        sf = r["attack_speedup_vs_foolbox"][name]
        rows.append((f"{name} speedup vs torchattacks", spread(a, "torchattacks", st),
                     check("speedup_vs_torchattacks", st)))
        rows.append((f"{name} speedup vs foolbox", spread(a, "foolbox", sf),
                     check("speedup_vs_foolbox", sf)))
        rows.append((f"{name} overhead over fused floor (fwd + input grad x {a['steps']})",
                     f"{a['overhead_over_floor_pct']:+.1f} %",
                     check("overhead_over_floor_pct", a["overhead_over_floor_pct"])))
        for peer in ("unfused", "torchattacks", "foolbox"):
            ag = a["agreement"][peer]
            rows.append((f"{name} agreement with {peer}",
                         "not installed" if ag is None else
                         f"max |diff| {ag['max_abs_diff']:.2e}, "
                         f"{100 * ag['frac_pixels_diff_gt_1e-5']:.3f} % pixels > 1e-5", ""))
    t = r["whitebox_table"]
    label = f"extrapolated from {t['images']} images" if t["extrapolated"] else "measured"
    rows.append((f"white-box table {len(TABLE_ATTACKS)}x{len(TABLE_EPS)}x{TABLE_IMAGES}",
                 f"{t['full_table_s']:.0f} s ({label}; {t['images_per_s']:.1f} images/s)", ""))
    rows.append(("  same, unfused (fuse=False)",
                 f"{t['unfused']['full_table_s']:.0f} s ({label})", ""))
    rows.append(("  same, one epsilon per attack call (max_batch=batch_size)",
                 f"{t['per_epsilon_calls']['full_table_s']:.0f} s ({label})", ""))
    fl = t["floor_grad_passes_s"]
    rows.append(("  its floor: gradient passes x floor pass time (as run | minimum)",
                 f"{fl['as_run']:.0f} s | {fl['minimum']:.0f} s (derived)", ""))
    for recipe, res in r["training"].items():
        rc = r["recipes"][recipe]
        rows.append(((f"{recipe} recipe ({rc['clean_iterations']} clean + "
                      f"{rc['adversarial_iterations']} adv it)"),
                     (f"{rc['seconds'] / 3600:.2f} h (extrapolated; "
                      f"{res['median_s']['clean']*1e3:.0f} / "
                      f"{res['median_s']['adversarial']*1e3:.0f} ms per clean / adv it, "
                      f"ratio {res['ratio']:.3f})"), ""))
    p = r["h100_projection"]
    for key, target in (("n18_mnist_recipe", "h100_n18_mnist_recipe_s"),
                        ("n18_cifar10_recipe", "h100_n18_cifar10_recipe_s"),
                        ("whitebox_table", "h100_whitebox_table_s")):
        q = p[key]
        rows.append((f"H100 PROJECTION {key}, eager",
                     (f"{q['eager_s']:.1f} s (FLOPs alone {q['flop_term_s']:.1f} s, "
                      f"{q['kernels']:.3g} kernels)"), check(target, q["eager_s"])))
        rows.append((f"H100 PROJECTION {key}, CUDA graphs", f"{q['graphed_s']:.1f} s",
                     check(target, q["graphed_s"])))
    rows += apgd_rows(r["apgd"])
    print_rows(r, rows)


def print_rows(r: dict, rows: list[tuple[str, str, str]]) -> None:
    """The report's header line and its (figure, value, target) rows as a table."""
    w1 = max(len(a) for a, _, _ in rows)
    w2 = max(len(b) for _, b, _ in rows)
    print()
    print(f"device {r['device']} | torch {r['torch']} | threads {r['num_threads']} | "
          f"commit {r['git_commit']} | {r['date']}")
    print(f"{'figure':<{w1}}  {'value':<{w2}}  target")
    print("-" * (w1 + w2 + 20))
    for a, b, c in rows:
        print(f"{a:<{w1}}  {b:<{w2}}  {c}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds, the white-box table on 64 images (extrapolated) "
                         "and APGD on 64 (under 3 minutes on 2 CPU cores, plus about 4 "
                         "for APGD)")
    ap.add_argument("--json", metavar="FILE", help="also write every figure and timing here")
    ap.add_argument("--table-images", type=int, default=None,
                    help=f"images for the white-box table (default {TABLE_IMAGES}, quick "
                         f"{QUICK.table_images}); fewer than {TABLE_IMAGES} are extrapolated")
    ap.add_argument("--precision", choices=["auto", "float32", "bf16"], default="auto",
                    help="the library's speed option (auto: bf16 autocast on CUDA, float32 on "
                         "CPU); peers always run float32")
    ap.add_argument("--channels-last", choices=["auto", "true", "false"], default="auto",
                    help="the library's speed option (auto: on for CUDA)")
    ap.add_argument("--compile", action="store_true",
                    help="torch.compile the model (the library's speed option); compile time "
                         "falls in the warm-up calls, recompiles for new shapes do not")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["all", "apgd"], default="all",
                    help="apgd: figure 4 alone (APGD-CE against torchattacks' APGD)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    s = copy.copy(QUICK if args.quick else FULL)
    if args.table_images is not None:
        if args.table_images < 1:
            ap.error("--table-images must be positive")
        s.table_images = args.table_images

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    cl = {"auto": "auto", "true": True, "false": False}[args.channels_last]
    speed_opts = {"precision": args.precision, "channels_last": cl, "compile": args.compile}
    speed_overrides = [f"speed.precision={args.precision}",
                       f"speed.channels_last={args.channels_last}",
                       f"speed.compile={str(args.compile).lower()}"]
    resolve_speed(device, **speed_opts)  # unsupported options: one line, before any work
    started = time.perf_counter()
    load_before = load_average()
    peers = load_peers()
    log(f"cascade_adv benchmarks on {device_name(device)}, "
        f"{'quick' if args.quick else 'full'} mode")
    context = run_context(args, device, peers, s, speed_opts, load_before)
    if args.only == "apgd":
        log("4. APGD-CE vs torchattacks APGD, interleaved")
        report = {**context, "apgd": bench_apgd(s, device, args.seed, peers, speed_opts, log)}
        return finish(report, started, args.json, device,
                      lambda: print_rows(report, apgd_rows(report["apgd"])))
    log("1. training iterations (adversarial vs clean), interleaved")
    training = bench_training(s, device, args.seed, speed_overrides, log)
    log("2. attack throughput vs peers and the floor, interleaved")
    attack_res = bench_attacks(s, device, args.seed, peers, speed_opts, log)
    log("3. white-box table wall time")
    table = bench_table(s, device, args.seed, speed_opts, log)
    log("4. APGD-CE vs torchattacks APGD, interleaved")
    apgd_res = bench_apgd(s, device, args.seed, peers, speed_opts, log)

    recipes = {}
    for recipe, res in training.items():
        clean_it, adv_it = RECIPES[recipe]
        med = res["median_s"]
        recipes[recipe] = {"clean_iterations": clean_it, "adversarial_iterations": adv_it,
                           "seconds": clean_it * med["clean"] + adv_it * med["adversarial"],
                           "extrapolated": True}

    def speedup(peer: str) -> dict[str, float | None]:
        out = {}
        for name, a in attack_res.items():
            theirs = a["median_s"].get(peer)
            out[name] = None if theirs is None else theirs / a["median_s"]["ours"]
        return out

    report = {
        "adv_clean_ratio": training["n18_cifar10"]["ratio"],
        "attack_speedup_vs_torchattacks": speedup("torchattacks"),
        "attack_speedup_vs_foolbox": speedup("foolbox"),
        "apgd_speedup_vs_torchattacks": apgd_res["speedup_vs_torchattacks"],
        "overhead_over_floor_pct": {k: v["overhead_over_floor_pct"]
                                    for k, v in attack_res.items()},
        **context,
        "training": training,
        "attacks": attack_res,
        "whitebox_table": table,
        "recipes": recipes,
        "apgd": apgd_res,
    }
    # the table's floor: its gradient passes at the measured per-image floor pass time
    per_image_pass = attack_res["step_fgsm"]["floor_fused_s"] / attack_res["step_fgsm"]["batch"]
    passes = table["passes_per_image"]
    table["floor_grad_passes_s"] = {
        "as_run": TABLE_IMAGES * passes["grad_passes_as_run"] * per_image_pass,
        "minimum": TABLE_IMAGES * passes["grad_passes_minimum"] * per_image_pass}
    report["h100_projection"] = project_h100(training, table)
    return finish(report, started, args.json, device, lambda: print_report(report))


def run_context(args, device: torch.device, peers, s: Settings, speed_opts: dict,
                load_before) -> dict:
    """What a run records about where and how it ran."""
    return {
        "device": device_name(device),
        "device_type": device.type,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "git_commit": git_commit(),
        "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1],
                                                      *sys.argv]),
        "quick": args.quick,
        "only": args.only,
        "num_threads": torch.get_num_threads(),
        "speed": resolve_speed(device, **speed_opts).describe(),
        "python": platform.python_version(),
        "peers": {k: (getattr(v, "__version__", "?") if v is not None else None)
                  for k, v in peers.items()},
        "settings": s.__dict__,
        "load_average_before": load_before,
        "targets": {k: f"{op} {b:g}" for k, (op, b) in TARGETS.items()},
    }


def finish(report: dict, started: float, json_path: str | None, device: torch.device,
           print_table: Callable[[], None]) -> int:
    """Close the run: load, CPU use and wall time, the table, the JSON file."""
    report["load_average_after"] = load_average()
    report["cpu_seconds_per_wall_second"] = cpu_usage()
    report["wall_s"] = time.perf_counter() - started
    print_table()
    print(f"\ntotal {report['wall_s']:.0f} s; load average before "
          f"{report['load_average_before']}, after {report['load_average_after']}")
    usage = report["cpu_seconds_per_wall_second"]
    if device.type == "cpu" and usage is not None:
        print(f"timed calls used {usage:.2f} CPU seconds per second with "
              f"{torch.get_num_threads()} threads"
              + (" - LOW: another process competed for the cores; timings are inflated"
                 if usage < 0.8 * torch.get_num_threads() else ""))
    if json_path:
        Path(json_path).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
