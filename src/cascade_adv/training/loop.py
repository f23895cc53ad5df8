"""Training by iterations with the paper's SGD recipe, atomic checkpoints and exact resume.

Randomness is stateless per iteration: the batch order of epoch ``e`` comes from a
generator seeded with ``(seed, e)`` and the augmentation of iteration ``t`` from
one seeded with ``(seed, t)``.  A resumed run therefore draws exactly the batches
and crops of an uninterrupted one, and with the weights, BatchNorm statistics and
momentum buffers restored from the checkpoint it reproduces the uninterrupted
weights (bit for bit on CPU).
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from torch import nn
from tqdm.auto import tqdm

from cascade_adv import attacks
from cascade_adv.data import ImageDataset, load_dataset, per_pixel_mean, random_crop_flip, to_float
from cascade_adv.errors import CheckpointError, ConfigError, TrainingDiverged
from cascade_adv.io import LOCK_FILE, atomic_write_text, folder_lock
from cascade_adv.models import (
    ModelConfig,
    ResNet,
    build_model,
    check_model_size,
    load_model,
    read_model_init,
    save_model,
    weights_hash,
)
from cascade_adv.models.serialize import WEIGHTS_FILE
from cascade_adv.speed import Speed, prepare_input, prepare_model, release_model, speed_from_config
from cascade_adv.textdata import load_json
from cascade_adv.training import distributed
from cascade_adv.training.adversarial import AdversarialObjective
from cascade_adv.training.checkpoint import (
    latest_checkpoint,
    nonfinite_state,
    read_state,
    remove_stale_run_temps,
    save_checkpoint,
)
from cascade_adv.training.config import TrainConfig, dump_config, format_validation_error
from cascade_adv.training.monitor import OverfitMonitor
from cascade_adv.training.optim import make_optimizer
from cascade_adv.training.provenance import record_leg
from cascade_adv.training.resume import check_resume, record_changes
from cascade_adv.training.signals import StopSignals

#: ``objective(model, x, y, iteration, generator) -> (loss, logits_for_accuracy, labels)``
Objective = Callable[[nn.Module, torch.Tensor, torch.Tensor, int, torch.Generator],
                     tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unknown or unavailable device
    raises :class:`ConfigError` (one line)."""
    return distributed.pick_device(str(name), 1, 0)


def model_config_for(cfg: TrainConfig, train_set: ImageDataset) -> ModelConfig:
    """The architecture implied by the config and the dataset's image shape."""
    c, h, _ = train_set.image_shape
    if cfg.data.crop_size is not None and cfg.data.crop_size > h:
        raise ConfigError(f"data.crop_size={cfg.data.crop_size} is larger than the {h}x{h} "
                          f"{train_set.name} images; use a crop size of at most {h}")
    normalize = cfg.model.normalize
    if normalize == "auto":
        normalize = {"cifar10": "per_pixel_mean", "imagenet": "inception"}.get(cfg.data.dataset,
                                                                              "none")
    try:
        model_cfg = ModelConfig(
            arch=cfg.model.arch, depth=cfg.model.depth, width=cfg.model.width,
            activation=cfg.model.activation, relu_decay_beta=cfg.model.relu_decay_beta,
            in_channels=c, input_size=cfg.data.crop_size or h,
            num_classes=train_set.num_classes, normalize=normalize, dataset=cfg.data.dataset,
            shortcut=cfg.model.shortcut, bn_momentum=cfg.model.bn_momentum,
            bn_eps=cfg.model.bn_eps, init=cfg.model.init,
        )
    except ValidationError as exc:  # the dataset's channels or classes out of range
        raise ConfigError(format_validation_error(exc, ModelConfig, "model")) from None
    check_model_size(model_cfg, fix="lower model.width or model.depth")  # before any memory
    return model_cfg


def init_id(init_from: str | Path | None, seed: int, model_cfg: ModelConfig) -> str:
    """Where a run's weights start, saved with every checkpoint: ``weights:HASH`` of the
    ``init_from`` model, or ``seed:N:ARCH`` for a random initialisation.  Black-box
    pairs that share it are the "same initialization" case of N18 appendix B."""
    if init_from is not None:
        return f"weights:{weights_hash(init_from)}"
    arch = hashlib.sha256(model_cfg.model_dump_json().encode()).hexdigest()[:8]
    return f"seed:{seed}:{arch}"


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    """Piecewise-constant LR: ``lr * gamma ** (number of milestones <= iteration)``."""
    o = cfg.optim
    return o.lr * o.lr_gamma ** bisect.bisect_right(o.lr_milestones, iteration)


def _seed(*parts: int) -> int:
    value = 0x9E3779B9
    for p in parts:
        value = (value * 1_000_003 + int(p)) & 0x7FFF_FFFF_FFFF_FFFF
    return value


class Sampler:
    """Device-resident batches: epoch permutations and augmentation from seeded generators."""

    def __init__(self, data: ImageDataset, cfg: TrainConfig, device: torch.device,
                 batch_size: int | None = None):
        self.data = data
        self.batch_size = batch_size or cfg.optim.batch_size
        if len(data) < self.batch_size:
            raise ConfigError(
                f"the {data.name} training split has {len(data)} images, fewer than "
                f"a batch of {self.batch_size}; lower optim.batch_size"
            )
        self.per_epoch = len(data) // self.batch_size
        self.seed = cfg.seed
        self.crop = cfg.data.crop_size
        self.flip = cfg.data.flip
        self.device = device
        self._epoch, self._perm = -1, None

    def generator(self, iteration: int, stream: int = 0) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(_seed(self.seed, iteration, stream))

    def batch(self, iteration: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] (augmented) and labels of iteration ``iteration``."""
        epoch, pos = divmod(iteration, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(_seed(self.seed, epoch, 1))
            self._perm = torch.randperm(len(self.data), generator=g).to(self.device)
            self._epoch = epoch
        idx = self._perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        x = self.data.images[idx]
        if self.crop is not None or self.flip:
            size = self.crop or x.shape[-1]
            x = random_crop_flip(x, size, self.generator(iteration, 2), flip=self.flip)
        return to_float(x), self.data.labels[idx]


def continue_from(init_from: str | Path, cfg: TrainConfig, model_cfg: ModelConfig,
                  device: torch.device) -> tuple[nn.Module, dict, int]:
    """``init_mode: continue``: the model, training state and iteration of the last
    checkpoint of run ``init_from``, so this run goes on with that run's schedule,
    momentum buffers and BatchNorm statistics, as the N18 authors' code restores its
    pre-trained checkpoint with the global step (``optimistic_restore`` in ``main.py``;
    docs/fidelity.md)."""
    ckpt = latest_checkpoint(init_from) if Path(init_from).is_dir() else None
    if ckpt is None:
        raise ConfigError(
            f"init_mode continue needs a run folder with checkpoints (written by "
            f"'cascade-adv train'), and {init_from} has none; pass such a run as init_from "
            "or use init_mode weights"
        )
    model = load_model(ckpt, expected=model_cfg, map_location=device)
    state = read_state(ckpt, device)
    state.pop("monitor", None)  # that run's overfitting monitor: this run starts its own
    if state["iteration"] >= cfg.optim.iterations:
        raise ConfigError(
            f"init_from {init_from} ends at iteration {state['iteration']}, and this run's "
            f"schedule stops at optim.iterations={cfg.optim.iterations}; raise "
            "optim.iterations or use init_mode weights"
        )
    return model, state, state["iteration"]


def clean_objective(model, x, y, iteration, generator):
    """Standard training: mean cross-entropy of the clean batch (the Baseline rows),
    in float32 also when the logits come from bf16 autocast."""
    logits = model(x)
    return F.cross_entropy(logits.float(), y), logits, y


@dataclass
class TrainingSetup:
    """What :func:`train` builds from a config before its first iteration."""

    train_set: ImageDataset
    model_cfg: ModelConfig
    sampler: Sampler
    objective: Objective
    speed: Speed
    divergence_hint: str | None  # the adversarial objective's advice, if it is one
    monitor: OverfitMonitor | None = None  # the catastrophic-overfitting monitor, when on


def setup_training(cfg: TrainConfig, device: torch.device, *,
                   shard: distributed.BatchShard | None = None,
                   objective: Objective | None = None,
                   train_set: ImageDataset | None = None) -> TrainingSetup:
    """Speed options, training split, architecture, objective and sampler of ``cfg``
    (the checks of everything but the starting weights, before any work): clean
    cross-entropy, or with ``adversarial.mode`` set Algorithm 1 with the loss of N18
    section 3.1 (:class:`AdversarialObjective`) keeping the rows of ``shard`` (one
    process: all), unless ``objective`` is given; the overfitting monitor when
    ``monitor.every`` is set.  ``train_set`` replaces the config's dataset (the
    benchmarks' stand-in data)."""
    speed = speed_from_config(cfg.speed, device)  # bad / unsupported options: before any work
    if train_set is None:
        train_set = load_dataset(cfg.data.dataset, "train", root=cfg.data.root,
                                 download=cfg.data.download,
                                 image_size=cfg.data.image_size).to(device)
    model_cfg = model_config_for(cfg, train_set)
    hint, batch = None, None
    if objective is None and cfg.adversarial.mode != "none":
        shard = shard or distributed.BatchShard()
        adv = AdversarialObjective(cfg, train_set, model_cfg, device, shard.rank, shard.world)
        for nets in adv.static.values():  # fixed ensemble sources: layout only
            for fixed in nets:
                prepare_model(fixed, Speed(device, channels_last=speed.channels_last))
        objective, hint, batch = adv, adv.divergence_hint(), adv.clean_per_batch
    sampler = Sampler(train_set, cfg, device, batch)
    monitor = None
    if cfg.monitor.every is not None:  # streams 5 and 6: none of training's draws
        monitor = OverfitMonitor(cfg, train_set, model_cfg, device, sampler.generator(0, 5),
                                 lambda it: sampler.generator(it, 6))
    return TrainingSetup(train_set, model_cfg, sampler, objective or clean_objective, speed,
                         hint, monitor)


def initial_model(cfg: TrainConfig, setup: TrainingSetup, device: torch.device) -> ResNet:
    """A new network of ``cfg`` from its seed (the per-pixel mean image set when the
    architecture normalises with it)."""
    torch.manual_seed(cfg.seed)
    model = build_model(setup.model_cfg).to(device)
    if setup.model_cfg.normalize == "per_pixel_mean":
        model.set_mean_image(per_pixel_mean(setup.train_set.images))
    return model


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, objective: Objective,
               x: torch.Tensor, y: torch.Tensor, iteration: int, generator: torch.Generator,
               *, lr: float, speed: Speed, fuse: bool = True):
    """One iteration: ``objective``'s loss of the batch under the speed options (bf16
    autocast, channels_last input; the attacks inside run under them too, on the folded
    network unless ``fuse`` is false), backward and an optimizer step at ``lr``.
    Returns the detached float32 loss (left on the device), the logits and labels."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    x = prepare_input(x, speed)
    # the layout of the config (contiguous on a CPU unless asked), never measured: a
    # resumed training crafts as it did before
    with speed.autocast(), attacks.fusion(fuse), attacks.layout(speed.channels_last):
        loss, logits, labels = objective(model, x, y, iteration, generator)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach().float(), logits, labels


@dataclass
class TrainResult:
    run_dir: Path
    model: ResNet
    iterations: int
    final_loss: float
    seconds: float
    resumed_from: int


def _accuracy(logits: torch.Tensor, labels: torch.Tensor, ctx: distributed.DistContext) -> float:
    """Training accuracy (percent) of the batch; under DDP over every rank's rows."""
    hits = (logits.detach().argmax(1) == labels).float()
    if not ctx.distributed:
        return hits.mean().item() * 100
    total = ctx.all_reduce_sum(torch.stack([hits.sum(), hits.new_tensor(hits.numel())]))
    return (total[0] / total[1]).item() * 100


class _Metrics:
    """Appends one JSON line per logged iteration; on resume drops lines past the checkpoint."""

    def __init__(self, path: Path, start: int):
        self.path = path
        self.last_loss = math.nan  # of the last kept record
        if path.exists():
            keep = []
            for ln in path.read_text(errors="replace").splitlines():
                try:  # a line cut short by a kill (or damaged) is dropped
                    record = load_json(ln, "a metrics line")
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("iteration", 0) <= start:
                    keep.append(ln)
                    self.last_loss = record.get("loss", self.last_loss)
            atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")


@dataclass
class OpenRun:
    """A run folder opened for training by :func:`open_run`."""

    model: nn.Module  # prepared for the speed options (and SyncBatchNorm under DDP)
    optimizer: torch.optim.Optimizer  # with the checkpoint's state when resuming
    start: int  # the first iteration to run
    init: str  # where the weights started (:func:`init_id`), saved with every checkpoint
    metrics: _Metrics | None  # None on the ranks that write no files
    monitor: dict | None = None  # the overfitting monitor's state in the resumed checkpoint


def _empty_ancestor(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (None: it exists)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


@contextmanager
def _writer_lock(run_dir: Path, ctx: distributed.DistContext) -> Iterator[None]:
    """One writer per run folder: rank 0 creates ``run_dir`` and holds its lock
    (:func:`cascade_adv.io.folder_lock`, the lock of the reproduce steps) for the block;
    a second writer gets :class:`~cascade_adv.errors.FolderInUse` naming the holder,
    having written nothing.  Folders created here are removed again if the block fails
    before anything but the lock file was written (a refused config, a bad init_from)."""
    if not ctx.is_main:  # under torchrun the other ranks write no files
        yield
        return
    created = _empty_ancestor(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with folder_lock(run_dir, wait=False, what="run folder",
                     fix="wait for that run to finish, or train into another --out folder"):
        try:
            yield
        except BaseException:
            if created is not None and {p.name for p in run_dir.iterdir()} <= {LOCK_FILE}:
                (run_dir / LOCK_FILE).unlink(missing_ok=True)
                for folder in (run_dir, *run_dir.parents):
                    try:
                        folder.rmdir()
                    except OSError:  # someone else's file appeared meanwhile: keep it
                        break
                    if folder == created:
                        break
            raise


def _starting_point(cfg: TrainConfig, run_dir: Path, setup: TrainingSetup, device, *,
                    resume: bool, init_from) -> tuple[nn.Module, dict | None, int, dict, Any]:
    """The model, training state (None: a fresh optimizer) and first iteration: the run's
    last checkpoint (its recorded config checked, :func:`check_resume`), else the last
    checkpoint of ``init_from`` (``init_mode: continue``), its weights, or a new
    network; the config changes a resume makes (to record) and where the state is from."""
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is not None:
        state = read_state(ckpt, device)
        changes = check_resume(run_dir, cfg, state["iteration"], same_init=lambda: (
            cfg.init_from is not None and read_model_init(ckpt)
            == init_id(cfg.init_from, cfg.seed, setup.model_cfg)))
        model = load_model(ckpt, expected=setup.model_cfg, map_location=device)
        return model, state, state["iteration"], changes, ckpt
    if not resume and (run_dir / "checkpoints" / "latest").exists():
        raise CheckpointError(f"{run_dir} already holds a run; pick a new --out folder or "
                              "resume it")
    if init_from is not None and cfg.init_mode == "continue":
        return (*continue_from(init_from, cfg, setup.model_cfg, device), {}, init_from)
    if init_from is not None:
        model = load_model(init_from, expected=setup.model_cfg, map_location=device)
        return model, None, 0, {}, init_from
    return initial_model(cfg, setup, device), None, 0, {}, None


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict, source) -> None:
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as exc:
        raise ConfigError(
            f"the optimizer state of {source} does not fit this run's optimizer "
            f"({str(exc).splitlines()[0]}); use the optim.name and "
            "optim.weight_decay_scope it was written with, or init_mode weights"
        ) from None


@contextmanager
def open_run(cfg: TrainConfig, run_dir: Path, setup: TrainingSetup,
             ctx: distributed.DistContext, *, resume: bool = True,
             init_from: str | Path | None = None) -> Iterator[OpenRun]:
    """Open ``run_dir`` for training with ``cfg`` and hold it for the block: lock it
    (one writer), remove what a killed run left half-written, pick the starting point
    (resume with the recorded config checked, ``init_from``, ``init_mode: continue``
    or a new network), build the optimizer with its state, then record the session
    (``config.yaml``, changes in ``history.jsonl``, ``metrics.jsonl`` trimmed to the
    checkpoint).  Everything that can be refused is refused before that record."""
    device = ctx.device
    with _writer_lock(run_dir, ctx):
        if ctx.is_main:
            remove_stale_run_temps(run_dir)  # what a killed run left half-written
        model, state, start, changes, source = _starting_point(
            cfg, run_dir, setup, device, resume=resume, init_from=init_from)
        ctx.check_same(start, f"the torchrun processes see different checkpoints in {run_dir} "
                              "(iterations {low} to {high}); put the run folder on a "
                              "filesystem that every node shares")
        if ctx.distributed and cfg.distributed.sync_batchnorm:
            model = distributed.convert_sync_batchnorm(model, device)
        prepare_model(model, setup.speed)  # channels_last / compile, in place (parameters kept)
        init = init_id(init_from, cfg.seed, setup.model_cfg)
        optimizer = make_optimizer(cfg, model)
        if state is not None:
            _load_optimizer_state(optimizer, state, source)
        metrics = None
        if ctx.is_main:  # under torchrun only rank 0 writes files
            atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
            record_changes(run_dir, start, changes)
            if start < cfg.optim.iterations:  # a leg that trains
                record_leg(run_dir, start, device, ctx.world)
            metrics = _Metrics(run_dir / "metrics.jsonl", start)
        yield OpenRun(model, optimizer, start, init, metrics,
                      (state or {}).get("monitor"))


class DivergenceGuard:
    """Training stops at the first non-finite loss, weight, BatchNorm statistic or
    optimizer state, before it becomes a checkpoint.

    The losses stay on the device (:meth:`add`) and are read back together, one host
    sync, at each check (:meth:`losses`); the weights are checked with one fused
    reduction (:meth:`weights`, :func:`nonfinite_state`).  Either raises
    :class:`TrainingDiverged` naming the iteration (losses) or the range since the last
    check (weights), the last good checkpoint that is kept, and ``hint``."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, run: OpenRun,
                 ctx: distributed.DistContext, hint: str):
        self.cfg, self.run_dir, self.run, self.ctx, self.hint = cfg, run_dir, run, ctx, hint
        self.finite_at = run.start  # weights last found finite after this iteration
        self.pending: list[torch.Tensor] = []  # this rank's losses since the last check

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss)

    def _kept(self, what: str) -> str:
        last = latest_checkpoint(self.run_dir)
        return f"the last {what} checkpoint {last} is kept" if last else \
            "no checkpoint was written yet"

    def losses(self, done: int) -> float:
        """The global losses of iterations ``done - len(pending) .. done - 1`` in one
        read-back: the last one, or :class:`TrainingDiverged` at the first non-finite."""
        first = done - len(self.pending)
        losses = self.ctx.all_reduce_sum(torch.stack(self.pending)) / self.ctx.world
        self.pending.clear()
        values = losses.tolist()  # the host sync of the loss, once per check
        for i, value in enumerate(values):
            if not math.isfinite(value):
                bad = first + i
                raise TrainingDiverged(
                    f"training diverged: loss is {value} at iteration {bad} "
                    f"(lr {learning_rate(self.cfg, bad):g}; found when checking iterations "
                    f"{first}-{done - 1}); {self._kept('good')}; {self.hint}"
                )
        return values[-1]

    def weights(self, done: int) -> None:
        """Weights, buffers and optimizer state finite, else :class:`TrainingDiverged`."""
        bad = nonfinite_state(self.run.model, self.run.optimizer, self.ctx)
        if bad:
            raise TrainingDiverged(
                f"training diverged: {len(bad)} weight / optimizer tensors became non-finite "
                f"(first {bad[0]}) between iterations {self.finite_at} and {done} "
                f"(lr {learning_rate(self.cfg, done - 1):g}); {self._kept('finite')}; "
                f"{self.hint}")
        self.finite_at = done


def _watch(cfg: TrainConfig, run_dir: Path, setup: TrainingSetup, run: OpenRun, done: int,
           progress: bool) -> dict:
    """The overfitting monitor on the model after ``done`` iterations (rank 0), under the
    run's speed options: a new best PGD accuracy writes ``best_pgd/``, a collapse is
    reported in one line when progress is shown.  Returns its ``metrics.jsonl`` fields."""
    monitor = setup.monitor
    with (setup.speed.autocast(), attacks.fusion(cfg.speed.fuse),
          attacks.layout(setup.speed.channels_last)):
        reading = monitor.check(run.model, done)
    if reading.best:
        monitor.save_best(run_dir, run.model, reading, run.init)
    if reading.collapse and progress:
        tqdm.write(monitor.message(reading, run_dir), file=sys.stderr)
    return reading.metrics()


def _iterate(cfg: TrainConfig, run_dir: Path, setup: TrainingSetup,
             ctx: distributed.DistContext, run: OpenRun, guard: DivergenceGuard, *,
             progress: bool, on_step, t0: float) -> float:
    """Iterations ``run.start .. optim.iterations - 1``: a step each, the divergence checks,
    metrics, the overfitting monitor (each of its points also writes a metrics line) and
    checkpoints at their points, a checkpoint and
    :class:`~cascade_adv.errors.TrainingInterrupted` on SIGINT / SIGTERM.  Returns the
    last loss checked."""
    model, optimizer, metrics, sampler = run.model, run.optimizer, run.metrics, setup.sampler
    total = cfg.optim.iterations
    model.train()
    net = ctx.wrap(model)  # DDP under torchrun: averages the ranks' gradients
    if ctx.distributed:  # dropout (Inception v3): independent masks on each rank's rows
        torch.manual_seed(_seed(cfg.seed, run.start, ctx.rank, 4))
    loss_value = metrics.last_loss if metrics is not None else math.nan  # a finished run
    stop = StopSignals(enabled=not ctx.distributed)
    bar = tqdm(range(run.start, total), initial=run.start, total=total,
               disable=not (progress and ctx.is_main), desc=f"train {cfg.name}", unit="it",
               dynamic_ncols=True)
    # SIGINT / SIGTERM inside the block: finish the iteration, checkpoint, stop;
    # the previous handlers come back however the block ends
    with stop:
        for it in bar:
            x, y = sampler.batch(it)  # the global batch, the same on every rank
            if ctx.distributed and not getattr(setup.objective, "shards_batch", False):
                x, y = ctx.shard.clean(x, y)
            lr = learning_rate(cfg, it)
            loss, logits, labels = train_step(net, optimizer, setup.objective, x, y, it,
                                              sampler.generator(it, 3), lr=lr,
                                              speed=setup.speed, fuse=cfg.speed.fuse)
            guard.add(loss)
            done = it + 1
            monitored = setup.monitor is not None and setup.monitor.due(done)
            logged = done % cfg.log_every == 0 or done == total or monitored
            saving = done % cfg.checkpoint.every == 0 or done == total or bool(stop.requested)
            if logged or saving or on_step is not None:
                loss_value = guard.losses(done)  # before any checkpoint is written
            if logged or saving:
                guard.weights(done)
            if logged:
                acc = _accuracy(logits, labels, ctx)
                if metrics is not None:  # rank 0
                    watched = _watch(cfg, run_dir, setup, run, done, progress) \
                        if monitored else {}
                    metrics.write({"iteration": done, "loss": loss_value, "lr": lr,
                                   "train_acc": acc,
                                   "max_abs_logit": logits.detach().abs().max().item(),
                                   **watched, "seconds": round(time.perf_counter() - t0, 3)})
                bar.set_postfix(loss=f"{loss_value:.4f}", acc=f"{acc:.1f}", lr=f"{lr:g}")
            if saving:
                if ctx.is_main:
                    save_checkpoint(run_dir, model, optimizer, done, keep=cfg.checkpoint.keep,
                                    init=run.init, extra=None if setup.monitor is None else
                                    {"monitor": setup.monitor.state()})
                ctx.barrier()
            if stop.requested and done < total:
                bar.close()
                raise stop.interrupted(done, total, latest_checkpoint(run_dir))
            if on_step is not None:
                on_step(done, loss_value)
    bar.close()
    return loss_value


def _finish(cfg: TrainConfig, run_dir: Path, ctx: distributed.DistContext,
            run: OpenRun) -> nn.Module:
    """Save the final weights (rank 0) and return the model in eval mode, eager, with
    plain BatchNorm; the process group is left as it was found."""
    model = run.model
    if ctx.is_main:
        save_model(model, run_dir / "final" / WEIGHTS_FILE, init=run.init)
    ctx.barrier()
    release_model(model)  # eager forward, contiguous weights
    if ctx.distributed and cfg.distributed.sync_batchnorm:
        model = distributed.revert_sync_batchnorm(model)
    ctx.close()
    return model.eval()


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = True,
    progress: bool = True,
    objective: Objective | None = None,
    init_from: str | Path | None = None,
    divergence_hint: str = "lower optim.lr",
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a ResNet with ``cfg`` into ``run_dir``; resume from its last checkpoint.

    Set-up (:func:`setup_training`, :func:`open_run`), the iterations, the final weights.
    A run folder has one writer: a second ``train`` into it raises
    :class:`~cascade_adv.errors.FolderInUse` naming the process that holds it.  A
    resume whose config differs from the run's recorded one in anything but the
    options of :mod:`cascade_adv.training.resume` (more iterations, logging,
    checkpointing, device, speed...) raises :class:`ConfigError` naming the keys;
    allowed changes are recorded in the run's ``history.jsonl``.

    ``objective`` computes the loss of one batch; by default it is clean
    cross-entropy, or with ``adversarial.mode`` set, Algorithm 1 with the loss of
    N18 section 3.1 (:class:`AdversarialObjective`).  ``init_from`` (or the
    config's ``init_from``) starts from the weights of another run, e.g. a shared
    pre-trained start; the optimizer starts fresh at iteration 0, unless
    ``cfg.init_mode`` is ``continue``: then the run goes on from that run's last
    checkpoint, its iteration count and optimizer state (:func:`continue_from`).
    Each logged metrics line also records the largest absolute logit of the batch.
    With ``monitor.every`` set, the catastrophic-overfitting monitor
    (:mod:`cascade_adv.training.monitor`) adds its PGD and clean accuracy to the metrics
    line of every ``monitor.every``-th iteration, keeps the weights of its best PGD
    accuracy in ``best_pgd/`` and reports a collapse in one line (with ``progress``);
    it draws from generators of its own, so the weights are those of a run without it.

    A non-finite loss stops the run with :class:`TrainingDiverged`; the last good
    checkpoint is kept.  So do non-finite weights, BatchNorm statistics or optimizer
    state (an overflowing step after a finite loss): they are checked with one fused
    reduction at each log and checkpoint point, before a checkpoint is written, and
    the message names the range of iterations since the last check.  SIGINT / SIGTERM
    finish the current iteration, write a checkpoint and raise
    :class:`~cascade_adv.errors.TrainingInterrupted` (see :mod:`.signals`).  The
    losses stay on the device and are read back together (one host sync) at each
    log point, checkpoint point and the end, so divergence
    is detected at the next such point after it happens - the message names the
    first bad iteration and the range checked - and every checkpoint is written
    only after the losses since the previous check were found finite.  ``on_step``
    gets each iteration's loss as a float, which costs a host sync per iteration.

    ``cfg.speed`` (:mod:`cascade_adv.speed`): the objective - forward passes, its
    attacks and the loss - runs under bf16 autocast when ``precision`` resolves to
    bf16 (auto on CUDA); weights, optimizer state and the loss stay float32.
    ``channels_last`` and ``compile`` are applied to the model in place and undone
    on the returned model.  An unsupported ``compile`` or ``bf16`` raises
    :class:`ConfigError` before any work.

    Launched by ``torchrun``, every process trains its share of each global batch
    under DDP (:mod:`cascade_adv.training.distributed`); only rank 0 writes files.
    A user's ``objective`` then gets a contiguous ``1/W`` of the batch and its loss
    is averaged over ranks.  A world size that does not divide the batch, or
    ``nccl`` without CUDA, raises :class:`ConfigError` before any work.
    """
    run_dir = Path(run_dir)
    distributed.check_batch_split(cfg, distributed.env_world_size())
    ctx = distributed.setup(cfg.distributed.backend, cfg.device)
    setup = setup_training(cfg, ctx.device, shard=ctx.shard, objective=objective)
    hint = setup.divergence_hint or divergence_hint
    with open_run(cfg, run_dir, setup, ctx, resume=resume,
                  init_from=init_from or cfg.init_from) as run:
        t0 = time.perf_counter()
        guard = DivergenceGuard(cfg, run_dir, run, ctx, hint)
        if setup.monitor is not None:
            setup.monitor.restore(run.monitor)  # a resumed run keeps its best
        loss = _iterate(cfg, run_dir, setup, ctx, run, guard, progress=progress,
                        on_step=on_step, t0=t0)
        model = _finish(cfg, run_dir, ctx, run)
    return TrainResult(run_dir, model, cfg.optim.iterations, loss, time.perf_counter() - t0,
                       run.start)


def preflight(cfgs: list[TrainConfig]) -> None:
    """What :func:`train` checks before it writes anything - device, speed options,
    dataset, crop and batch sizes, adversarial sources (:func:`setup_training`) and the
    ``init_from`` weights - for every config, without training: commands that train
    several networks (the sweeps) call it before they create any file.  Raises the
    same one-line errors as :func:`train`."""
    loaded: dict[tuple, ImageDataset] = {}
    for cfg in cfgs:
        device = resolve_device(cfg.device)
        key = (cfg.data.dataset, cfg.data.root, cfg.data.image_size, cfg.data.download)
        if key not in loaded:
            loaded[key] = load_dataset(cfg.data.dataset, "train", root=cfg.data.root,
                                       download=cfg.data.download,
                                       image_size=cfg.data.image_size)
        setup = setup_training(cfg, device, train_set=loaded[key])
        if cfg.init_from is not None:
            load_model(cfg.init_from, expected=setup.model_cfg, map_location="cpu")
