"""What the figures share: settings and targets, timing, op counting, fake data, the
peers, the model the attack figures run on, and small report helpers."""

from __future__ import annotations

import copy
import statistics
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
from cascade_adv.models import build_model
from cascade_adv.speed import prepare_model, resolve_speed

ROOT = Path(__file__).resolve().parent.parent.parent

#: The white-box table's size (figure 3); the full settings measure all of it.
TABLE_IMAGES = 10_000

#: ResNet-20 on CIFAR-10's 24x24 crops (N18 section 3.3).
RESNET20_CIFAR = {"depth": 20, "in_channels": 3, "input_size": 24, "num_classes": 10,
                  "dataset": "cifar10"}
ATTACK_EPS = 16  # pixels
ATTACK_STEPS = int(attacks.iterative_steps(ATTACK_EPS))  # floor(min(eps + 4, 1.25 eps)) = 20

TARGETS = {
    "adv_clean_ratio": ("<=", 1.35),
    "apgd_speedup_vs_torchattacks": (">=", 1.5),  # alias of apgd_ce_speedup_vs_torchattacks
    "apgd_ce_speedup_vs_torchattacks": (">=", 1.5),
    "apgd_t_speedup_vs_torchattacks": (">=", 1.5),
    "square_speedup_vs_torchattacks": (">=", 1.5),
    "square_compiled_speedup_vs_torchattacks": (">=", 1.5),
    "speedup_vs_torchattacks": (">=", 1.5),
    "speedup_vs_foolbox": (">=", 2.0),
    "overhead_over_floor_pct": ("<=", 10.0),
    "h100_n18_mnist_recipe_s": ("<=", 60.0),
    "h100_n18_cifar10_recipe_s": ("<=", 300.0),
    "h100_whitebox_table_s": ("<=", 30.0),
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
    apgd_rounds: int  # rounds of every strong attack (figure 4)
    apgd_batch: int  # images of every strong attack
    apgd_steps: int = 100  # APGD-CE and APGD-T iterations (AutoAttack's standard)
    apgd_t_targets: int = 9  # APGD-T target classes (torchattacks' n_classes - 1)
    square_queries: int = 5000  # Square's query budget (AutoAttack's standard)


QUICK = Settings(train_rounds=9, attack_rounds=5, warmup=1, attack_batch=128, iter_batch=128,
                 table_images=64, train_images=1024, apgd_rounds=3, apgd_batch=64,
                 apgd_t_targets=3, square_queries=1000)
FULL = Settings(train_rounds=25, attack_rounds=11, warmup=2, attack_batch=128, iter_batch=128,
                table_images=TABLE_IMAGES, train_images=4096, apgd_rounds=5, apgd_batch=128)
#: ``--smoke``: the fewest rounds, images, iterations and queries that still run every
#: code path; for testing the script, its numbers mean nothing.
SMOKE = Settings(train_rounds=1, attack_rounds=1, warmup=0, attack_batch=4, iter_batch=4,
                 table_images=8, train_images=256, apgd_rounds=1, apgd_batch=4,
                 apgd_steps=5, apgd_t_targets=2, square_queries=20)


def settings(quick: bool, smoke: bool) -> Settings:
    return copy.copy(SMOKE if smoke else QUICK if quick else FULL)


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


# --- data, peers, attack models ---------------------------------------------------------------


def fake_dataset(name: str, n: int, shape: tuple[int, int, int], device: torch.device,
                 seed: int, split: str = "train") -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=g)
    return ImageDataset(images, labels, name, split, [str(i) for i in range(10)]).to(device)


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


def attack_models(device: torch.device, seed: int, speed_opts: dict):
    """ResNet-20 (24x24x3) in eval mode as the peers get it (plain float32), and a copy
    with the library's speed options for this device, as ours and the floor run it."""
    torch.manual_seed(seed)
    model = build_model(RESNET20_CIFAR).to(device).eval()
    mine = copy.deepcopy(model)
    speed = resolve_speed(device, **speed_opts, model=mine)
    prepare_model(mine, speed)
    return model, mine, speed


def ours_attack(fn, model: nn.Module, x: torch.Tensor, y: torch.Tensor, speed, fuse=True,
                eps: float = ATTACK_EPS, compiled: bool = False):
    """Our attack as ``evaluate_whitebox`` runs it: under the speed options' autocast, on
    the folded inference network (``fuse``; in the layout ``--channels-last`` pins, else
    the one the library measures faster here) or the model as it is; ``compiled``: a
    forward-only attack on the model compiled with freezing (``audit --compile``)."""
    with (speed.autocast(), attacks.fusion(fuse), attacks.layout(speed.attack_layout),
          attacks.compiled(compiled)):
        return fn(model, x, y, eps)


def fused_network(model: nn.Module, x: torch.Tensor, speed) -> nn.Module:
    """The network our attacks run on for inputs like ``x`` (BatchNorm folded into the
    convolutions, in the layout :func:`ours_attack` uses)."""
    with attacks.inference_mode(model), attacks.layout(speed.attack_layout):
        return attacks.attack_network(model, x)


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


# --- report helpers ------------------------------------------------------------------------


def check(name: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    op, bound = TARGETS[name]
    ok = value <= bound if op == "<=" else value >= bound
    return f"{op} {bound:g} {'ok' if ok else 'MISSED'}"


def fmt(v: float | None, spec: str = ".2f", none: str = "not installed") -> str:
    return none if v is None else format(v, spec)
