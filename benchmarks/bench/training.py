"""Figure 1: one N18 adversarial-training iteration over one clean iteration of the same
model and batch size, both built and stepped by the library functions
``cascade_adv.training.train`` uses; and the per-iteration times of both N18 recipes."""

from __future__ import annotations

from collections.abc import Callable

import torch

from bench.common import (
    Settings,
    count_ops,
    fake_dataset,
    forward_macs,
    interleaved,
    median,
    paired_ratios,
)
from cascade_adv.data import ImageDataset
from cascade_adv.speed import prepare_input, prepare_model
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


def cuda_like_overrides(device: torch.device, speed: list[str]) -> list[str]:
    """Speed options to count kernels with for the H100 projection: the run's own on CUDA;
    on CPU, what ``auto`` gives on CUDA (bf16 autocast, channels_last) if CPU autocast
    supports bf16 here, else the run's own."""
    if device.type == "cuda" or not torch.amp.is_autocast_available("cpu"):
        return speed
    return [*speed, "speed.precision=bf16", "speed.channels_last=true"]


def kernel_counts(base: list[str], adv: list[str], data: ImageDataset,
                  device: torch.device) -> dict[str, dict]:
    """Op and kernel counts of one clean and one adversarial iteration, as run and as CUDA
    runs them (its default speed options and foreach SGD), for the projection."""
    counted: dict[str, dict] = {}
    for kind, over in (("clean", base), ("adversarial", adv)):
        for label, extra in (("as_run", []), ("cuda_like", cuda_like_overrides(device, []))):
            step = TrainStep([*over, *extra], data, device, foreach=True)
            step()
            counted.setdefault(label, {})[kind] = count_ops(step)
    return counted


def bench_training(s: Settings, device: torch.device, seed: int, speed: list[str],
                   log) -> dict:
    """Figure 1 (CIFAR-sized) and the per-iteration times of both N18 recipes."""
    out: dict = {}
    for recipe, base, shape, max_e in (("n18_cifar10", CIFAR, (3, 32, 32), 16),
                                       ("n18_mnist", MNIST, (1, 28, 28), 32)):
        base = [*base, *speed]
        adv_over = [*base, *PIVOT, f"adversarial.max_e={max_e}"]
        data = fake_dataset(recipe.split("_")[1], s.train_images, shape, device, seed)
        clean = TrainStep(base, data, device)
        adv = TrainStep(adv_over, data, device)
        unfused = TrainStep([*adv_over, "speed.fuse=false"], data, device)
        contenders: dict[str, Callable] = {"adversarial": adv, "adversarial_unfused": unfused,
                                           "clean": clean}
        if recipe == "n18_cifar10":
            contenders["attack_part"] = AttackPart(adv)
        rounds = s.train_rounds if recipe == "n18_cifar10" else max(3, s.train_rounds // 2)
        log(f"  {recipe}: {rounds} rounds of {', '.join(contenders)} ...")
        times = interleaved(contenders, rounds, s.warmup, device)
        med = {k: median(v) for k, v in times.items()}
        counted = kernel_counts(base, adv_over, data, device)
        size = clean.model.config.input_size
        macs = forward_macs(clean.model, (shape[0], size, size), device)
        out[recipe] = {"times_s": times, "median_s": med,
                       "ratio": med["adversarial"] / med["clean"],
                       "ratio_per_round": paired_ratios(times["adversarial"], times["clean"]),
                       "ratio_unfused": med["adversarial_unfused"] / med["clean"],
                       "op_counts": counted["cuda_like"], "op_counts_as_run": counted["as_run"],
                       "speed": clean.speed.describe(), "forward_macs_per_image": macs,
                       "rounds": rounds, "iterations": RECIPES[recipe]}
    return out


def recipe_times(training: dict) -> dict:
    """Wall time of each full N18 recipe, extrapolated from the median iteration times."""
    recipes = {}
    for recipe, res in training.items():
        clean_it, adv_it = RECIPES[recipe]
        med = res["median_s"]
        recipes[recipe] = {"clean_iterations": clean_it, "adversarial_iterations": adv_it,
                           "seconds": clean_it * med["clean"] + adv_it * med["adversarial"],
                           "extrapolated": True}
    return recipes
