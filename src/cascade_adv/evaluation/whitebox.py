"""White-box evaluation: accuracy of one model under every attack x epsilon.

This produces the papers' white-box tables (N18 tables 1-4, K17 tables 1-2):
top-1 (and top-5) accuracy on the test set, clean and under each attack at each
epsilon (pixel units of [0, 255]; N18 tests MNIST at 0, 16, 32 and CIFAR-10 at
0, 2, 4, 8, 16).  Adversarial examples are crafted against the model itself, in
inference mode (BatchNorm running statistics, dropout off).

It runs on the attack x epsilon engine (:mod:`cascade_adv.evaluation.engine`,
docs/design.md, "The attack x epsilon engine" and "Speed"): for each image batch and
attack the batch is stacked once per non-zero epsilon (at most ``max_batch`` rows per
call) and the attack is called once on the stacked batch with a per-example epsilon
tensor; iterative attacks then run each example's own step count
``floor(min(eps + 4, 1.25 eps))``, each leaving the batch when its count is done, so
the result and the work equal separate per-epsilon calls.  Correct predictions are
summed into counters on the device and read back once at the end (no host sync per
batch from the counting itself).  The steps are functions of their own: ``_plan``
(every check before any work, the shard, the device and speed), ``_count`` (the
batches on the engine) and ``_rows`` (the table).

Several processes (``torchrun``; docs/design.md, "Speed"): when a
``torch.distributed`` process group is initialised, rank r evaluates the r-th
contiguous ``1/W`` of the images and the counters are summed over ranks before
the read-back, so every rank returns the table of the whole set.  Deterministic
attacks give the same counts as one process (per-example attacks in inference
mode); random ones (random_sign, step_rnd, PGD's random start) draw their noise
per rank, from the same seed, so their draws - not their distribution - differ.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from cascade_adv import attacks as attack_registry
from cascade_adv import parallel
from cascade_adv.errors import CascadeAdvError, DatasetError, ModelFault
from cascade_adv.evaluation.engine import (
    attack_eps,
    image_batches,
    nonfinite_rows,
    predict,
    prepare_images,
    seeded_generator,
)
from cascade_adv.results.tables import CLEAN, WHITEBOX, ResultTable
from cascade_adv.speed import Speed, prepared, resolve_speed

__all__ = ["check_dataset_for_model", "count_correct", "evaluate_whitebox", "prepare_images",
           "true_class_rank"]


def check_dataset_for_model(model: nn.Module, dataset: Any) -> None:
    """The dataset must be the one the model was made for: the dataset it records
    (when both name one) and labels within its classes.  :class:`DatasetError`."""
    cfg = getattr(model, "config", None)
    want, got = getattr(cfg, "dataset", "") or "", str(getattr(dataset, "name", "") or "")
    if want and got and want != got:
        raise DatasetError(f"the model was trained on {want}, not {got}; evaluate it on {want}")
    classes = getattr(cfg, "num_classes", None)
    labels = getattr(dataset, "labels", None)
    if classes is not None and isinstance(labels, torch.Tensor) and labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            raise DatasetError(f"{got or 'the dataset'} has labels {low}..{high} but the model "
                               f"predicts {classes} classes; use the dataset it was trained on")


def _check_attacks(
    names: Sequence[str], options: Mapping[str, Mapping[str, Any]] | None
) -> tuple[list[str], dict[str, dict[str, Any]]]:
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        if name == CLEAN:
            continue  # the clean accuracy is always measured
        attack_registry.get(name)  # AttackError (one line) for an unknown name
        if name not in out:
            out.append(name)
    opts: dict[str, dict[str, Any]] = {}
    for name, o in (options or {}).items():
        if name not in out:
            raise CascadeAdvError(
                f"attack_options names attack {name!r}, which is not evaluated; "
                f"key attack_options by one of: {', '.join(out) or '(no attacks)'}"
            )
        opts[name] = attack_registry.check_options(attack_registry.get(name), o)
    return out, opts


def _check_topk(topk: Sequence[int]) -> list[int]:
    ks: list[int] = []
    for k in (topk,) if isinstance(topk, int) else topk:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise CascadeAdvError(f"topk values must be positive integers, got {k!r}")
        if k not in ks:
            ks.append(k)
    return sorted(ks)


def true_class_rank(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many classes score strictly above the true one (``int64 [N]``): the example
    is top-k correct when its rank is below k.  Storing ranks instead of hits keeps
    every k available (K17 reports top-1 and top-5 transfer rates)."""
    true = logits.gather(1, labels.view(-1, 1))
    return (logits > true).sum(dim=1)


def count_correct(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """Number of examples whose label is among the top-k logits, for each k: ``int64 [len(ks)]``.

    ``labels`` may be ``[N]`` or ``[G, N]`` with logits ``[G * N, classes]``; then the
    result is ``[G, len(ks)]`` (one row per group).
    """
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # [M, kmax]
    hit = top == labels.reshape(-1, 1)  # at most one True per row
    cum = hit.cumsum(dim=1)  # cum[:, k-1] = label within top k
    per_example = torch.stack([cum[:, min(k, kmax) - 1] for k in ks], dim=1)  # [M, K], 0/1
    if labels.dim() == 2:
        return per_example.view(labels.shape[0], labels.shape[1], -1).sum(dim=1)
    return per_example.sum(dim=0)


@dataclass
class _Plan:
    """What :func:`evaluate_whitebox` checked and set up before any work: the attacks
    (names and options), the non-zero epsilons, the top-k, this rank's shard of the
    images, the batching and the device with its speed options."""

    names: list[str]
    options: dict[str, dict[str, Any]]
    adv_eps: list[float]
    ks: list[int]
    n_total: int
    shard: Any
    batch_size: int
    max_rows: int
    world: int
    rank: int
    device: torch.device
    speed: Speed


def _check_dataset(model: nn.Module, dataset: Any, batch_size: int) -> int:
    """The dataset's images and labels against the model, before any work; returns
    the number of images."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise CascadeAdvError(f"batch_size must be a positive integer, got {batch_size!r}")
    images = getattr(dataset, "images", None)
    labels = getattr(dataset, "labels", None)
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise CascadeAdvError(
            "dataset must be an ImageDataset (uint8 images, int64 labels); "
            "load one with cascade_adv.data.load_dataset"
        )
    n_total = int(images.shape[0])
    if n_total == 0:
        raise CascadeAdvError("the dataset is empty; evaluate on a dataset with images")
    prepare_images(model, images[:1])  # shape / channel check
    check_dataset_for_model(model, dataset)
    return n_total


def _plan(model: nn.Module, dataset: Any, attacks: Sequence[str], eps: Sequence[float], *,
          batch_size: int, device: torch.device | str | None, topk: Sequence[int],
          attack_options: Mapping[str, Mapping[str, Any]] | None, max_batch: int | None,
          distributed: bool | None, precision: str, channels_last: bool | str,
          compile: bool) -> _Plan:
    """Validate every argument (one-line errors, before any work), shard the images
    over the ranks, move the model to ``device`` and resolve the speed options."""
    eps_values = attack_registry.validate_eps(eps)
    names, opts = _check_attacks(attacks, attack_options)
    ks = _check_topk(topk)
    n_total = _check_dataset(model, dataset, batch_size)
    limit = batch_size * max(len(eps_values), 1) if max_batch is None else int(max_batch)
    if limit < 1:
        raise CascadeAdvError(f"max_batch must be a positive integer, got {max_batch!r}")
    rank, world = (0, 1) if distributed is False else parallel.rank_and_world()
    if n_total < world:
        raise CascadeAdvError(f"the dataset has {n_total} images, fewer than the {world} "
                              "processes that share it; evaluate more images or fewer processes")
    shard = dataset
    if world > 1:  # rank r: the r-th contiguous 1/W of the images
        shard = dataset.subset(slice(n_total * rank // world, n_total * (rank + 1) // world))
    if device is None:
        device = attack_registry.model_device(model)
    else:
        device = torch.device(device)
        model.to(device)
    speed = resolve_speed(device, precision, channels_last, compile, model=model)
    num_classes = getattr(getattr(model, "config", None), "num_classes", None)
    if num_classes is not None:
        ks = [k for k in ks if k == 1 or k < num_classes]
    return _Plan(names, opts, [e for e in eps_values if e != 0.0], ks, n_total, shard,
                 batch_size, limit, world, rank, device, speed)


def _count(model: nn.Module, plan: _Plan, *, seed: int, fuse: bool, progress: bool,
           model_name: str) -> torch.Tensor:
    """Top-k hits on the device, ``int64 [2 + attacks * adv_eps, len(ks)]``: the clean
    row, then per attack one row per eps, then the rows with non-finite logits (in
    every column).  ``plan.ks`` loses the k the model's classes cannot have (first batch)."""
    generators = {name: seeded_generator(seed, plan.device) for name in plan.names}
    n_eps = len(plan.adv_eps)
    counts: torch.Tensor | None = None
    bar = tqdm(image_batches(model, plan.shard, plan.batch_size, plan.device, plan.speed),
               total=math.ceil(len(plan.shard.images) / plan.batch_size),
               disable=not progress or plan.rank != 0,
               desc=f"white-box {model_name}", unit="batch", leave=False)
    with prepared(model, plan.speed):  # channels_last / compile on the model
        for x, y in bar:
            logits = predict(model, x, fuse=fuse, speed=plan.speed)
            if counts is None:  # the first batch fixes the metrics
                plan.ks = [k for k in plan.ks if k == 1 or k < logits.shape[1]]
                counts = torch.zeros(2 + len(plan.names) * n_eps, len(plan.ks),
                                     dtype=torch.int64, device=plan.device)
            counts[0] += count_correct(logits, y, plan.ks)
            counts[-1] += nonfinite_rows(logits)
            for i, name in enumerate(plan.names):
                for part in attack_eps(model, x, y, plan.adv_eps, name,
                                       options=plan.options.get(name),
                                       generator=generators[name], fuse=fuse, speed=plan.speed,
                                       max_rows=plan.max_rows):
                    logits = predict(model, part.x_adv, fuse=fuse, speed=plan.speed)
                    row = 1 + i * n_eps + part.first
                    counts[row:row + len(part.eps)] += count_correct(logits, part.per_eps(part.y),
                                                                     plan.ks)
                    counts[-1] += nonfinite_rows(logits)
    bar.close()
    assert counts is not None
    return counts


def _rows(plan: _Plan, host: list[list[int]], dataset: Any, model_name: str,
          model_hash: str) -> ResultTable:
    """The counts read back -> the table (or :class:`ModelFault` for non-finite logits)."""
    bad = host[-1][0]
    if bad:
        raise ModelFault(
            f"model {model_name} gives non-finite outputs (inf / NaN) on {bad} of the "
            f"evaluated images; its accuracy would be meaningless, so nothing is reported: "
            "evaluate an earlier checkpoint or retrain it")
    common = {"model": model_name, "model_hash": model_hash,
              "dataset": str(getattr(dataset, "name", "")),
              "split": str(getattr(dataset, "split", "")), "source": WHITEBOX, "n": plan.n_total}
    cells = [(CLEAN, 0.0)] + [(name, e) for name in plan.names for e in plan.adv_eps]
    return ResultTable([{**common, "attack": attack, "eps": e, "metric": f"top{k}",
                         "value": 100.0 * c / plan.n_total}
                        for (attack, e), counts in zip(cells, host) for k, c in zip(plan.ks, counts)])


def evaluate_whitebox(
    model: nn.Module,
    dataset: Any,
    attacks: Sequence[str],
    eps: Sequence[float],
    *,
    batch_size: int = 500,
    device: torch.device | str | None = None,
    topk: Sequence[int] = (1, 5),
    attack_options: Mapping[str, Mapping[str, Any]] | None = None,
    seed: int = 0,
    model_name: str = "model",
    model_hash: str = "",
    progress: bool = True,
    max_batch: int | None = None,
    distributed: bool | None = None,
    precision: str = "auto",
    channels_last: bool | str = "auto",
    compile: bool = False,
    fuse: bool = True,
) -> ResultTable:
    """Top-1 / top-5 accuracy (percent) of ``model`` on ``dataset`` under white-box attacks.

    Returns one row per metric for the clean images (``attack="clean"``, ``eps=0``)
    and for every ``attack`` x non-zero ``eps`` (``source="whitebox"``).  ``eps`` is
    in pixel units of [0, 255]; ``eps=0`` needs no attack (it is the clean column of
    the papers' tables).  Top-k is reported for each ``k`` in ``topk`` that is 1 or
    smaller than the number of classes (no top-5 for 5 classes or fewer).  A model whose
    logits are inf or NaN on any image raises :class:`~cascade_adv.errors.ModelFault`.

    ``dataset`` is an :class:`~cascade_adv.data.ImageDataset` (uint8 images; see
    :func:`prepare_images` for the center crop).  ``device`` defaults to the
    model's device; when given, the model is moved there (in place).
    ``attack_options`` maps an attack name to its keyword options (e.g.
    ``{"pgd": {"restarts": 2}}``).  Random attacks draw from a ``torch.Generator``
    seeded with ``seed`` (one per attack, so results do not depend on the order of
    ``attacks``).  ``max_batch`` caps the images sent to one attack call (default
    ``batch_size * len(eps)``: the whole batch at every epsilon at once; never less
    than one epsilon's batch); lower it if the stacked batch does not fit in memory.

    ``distributed``: ``None`` shards the images over the ranks of an initialised
    ``torch.distributed`` process group (every rank must call this function) and
    sums the counts; ``False`` evaluates the whole set in this process.

    ``precision`` (``auto``: bf16 autocast on CUDA, float32 elsewhere; ``float32``;
    ``bf16``), ``channels_last`` (``auto``: on for CUDA) and ``compile``
    (``torch.compile`` of the model's forward) are :mod:`cascade_adv.speed`'s options,
    applied around every forward pass and attack and undone afterwards; an unsupported
    choice raises :class:`~cascade_adv.errors.ConfigError` before any work.  ``fuse``
    runs the attacks and the accuracy passes on the model's inference network with
    BatchNorm folded into the convolutions (equal up to float rounding).  Every batch
    runs on the attack x epsilon engine (:mod:`cascade_adv.evaluation.engine`).
    """
    plan = _plan(model, dataset, attacks, eps, batch_size=batch_size, device=device, topk=topk,
                 attack_options=attack_options, max_batch=max_batch, distributed=distributed,
                 precision=precision, channels_last=channels_last, compile=compile)
    counts = _count(model, plan, seed=seed, fuse=fuse, progress=progress, model_name=model_name)
    if plan.world > 1:  # the counts of every rank's shard
        counts = parallel.all_reduce_sum(counts)
    host = counts.tolist()  # the only device -> host sync of the counting
    return _rows(plan, host, dataset, model_name, model_hash)
