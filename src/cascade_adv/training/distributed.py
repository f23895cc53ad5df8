"""Data-parallel training and evaluation on several GPUs or machines (DDP under ``torchrun``).

K17 trained on 50 machines; here every process (a *rank*) of a ``torchrun`` launch
holds a full model copy, and PyTorch's ``DistributedDataParallel`` (DDP) averages
the gradients of the ranks after each backward pass (``nccl`` on CUDA, ``gloo``
on CPU)::

    torchrun --nproc_per_node=8 -m cascade_adv.cli.main train --config FILE

**What stays exactly as in one process with the same global batch.**  Every rank
draws the *same* global batch from the seeded, stateless sampler (same images,
crops, flips, per-example epsilons, saved cascade images and ensemble picks: all
random draws use the full batch's shapes, so the generators stay in step with a
single process) and then works on its share of the rows:

- N18's ``append`` layout (rows ``0..k-1`` adversarial, ``k..2k-1`` their clean
  twins, the rest clean) and K17's ``replace``: rank r takes the adversarial rows
  ``r, r + W, r + 2W, ...`` (so the cost of the attacks is shared evenly even when
  several sources mix cheap saved images with attacks on the current network),
  their clean twins, and a contiguous ``1/W`` of the other clean rows; the rank's
  own rows keep the layout that :func:`~cascade_adv.training.loss.unified_loss`
  expects.  This needs ``W | k`` and ``W | m`` (:func:`check_batch_split`);
- the loss: each rank computes the sum-form numerator over its rows divided by the
  *global* normaliser ``(m - k) + lam k``, plus ``lam2`` times its rows' distance
  terms; summed over ranks this is the single-process loss.  DDP *averages*
  gradients, so each rank back-propagates ``W`` times its share; the averaged
  gradient is the single-process gradient (up to the order of float additions);
- the one-step adversarial examples come from each rank's copy of the current
  network (identical weights) on its own rows; attacks that draw random numbers
  (step_rnd, random_sign, ...) run on the whole source block, as one process
  would, and keep the rank's rows, so their draws match too;
- clean training (and a user's ``objective``) gets a contiguous ``1/W`` of the
  batch; an objective that averages over its rows then gives the exact gradient.

**What is not exact: BatchNorm.**  In training mode each rank normalises with the
statistics of its own rows (``m / W`` of them), as in every DDP setup, so the
forward pass - and hence the trained weights - differ from one process with an
``m``-row batch (a step's gradient is that of one process normalising each rank's
group of rows separately).  In N18's layout every rank's rows have the same mix (``k/W``
adversarial, their twins, ``(m - 2k)/W`` clean), so the per-rank statistics are
unbiased estimates of the global ones.  ``distributed.sync_batchnorm: true`` makes
the statistics global - :class:`torch.nn.SyncBatchNorm` on CUDA,
:class:`AllReduceBatchNorm2d` elsewhere (``torch.nn.SyncBatchNorm`` is CUDA-only) -
and then the whole step equals the single-process one up to float summation
order (``tests/test_distributed.py`` checks the weights after three steps on two
gloo processes against one process).  Without it, DDP broadcasts rank 0's running
statistics at every forward pass and each rank then updates them from its own rows,
so the inference-mode attacks of the next step see slightly different statistics
on each rank, and the checkpoints hold rank 0's.
Dropout (Inception v3 only) draws each rank's masks from a per-rank seed.  Batched
kernels may round a row differently in a smaller batch (on CPU the one-step
examples of a rank's rows were bit-identical to the single-process rows).

Only rank 0 writes (config, metrics, checkpoints, final weights), followed by a
barrier; every rank resumes from the same ``latest`` checkpoint, so the run folder
must be on a filesystem that all nodes share (a mismatch is reported).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from cascade_adv.errors import ConfigError
from cascade_adv.parallel import all_reduce_max, all_reduce_sum, barrier, is_initialized

BACKENDS = ("auto", "gloo", "nccl")


def env_rank() -> int:
    """``RANK`` as set by ``torchrun`` (0 when not launched by it): 0 prints and writes."""
    return _env_int("RANK", 0)


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 when not launched by it)."""
    return _env_int("WORLD_SIZE", 1)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} is not an integer; "
                          "launch with torchrun, which sets it") from None


def check_batch_split(cfg, world: int) -> None:
    """Raise :class:`ConfigError` unless ``world`` ranks can share ``cfg``'s global batch.

    Each rank takes ``m / W`` rows of the batch of ``m = optim.batch_size`` and, in
    adversarial training, ``k / W`` of the ``k`` adversarial rows (with their twins):
    ``W`` must divide ``m`` and ``k``.
    """
    if world <= 1:
        return
    m = cfg.optim.batch_size
    adv = cfg.adversarial
    if adv.mode == "none":
        if m % world:
            raise ConfigError(
                f"torchrun world size {world} does not divide the global batch "
                f"optim.batch_size={m}; each rank takes m/W rows: launch a number of processes "
                f"that divides {m}, or change optim.batch_size"
            )
        return
    if m % world or adv.k % world:
        raise ConfigError(
            f"torchrun world size {world} does not divide the global batch: "
            f"optim.batch_size={m} and adversarial.k={adv.k} must both be multiples of {world} "
            f"(each rank takes k/W adversarial rows, their clean twins and its share of the "
            f"other clean rows); launch a number of processes that divides both, or change them"
        )


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``nccl`` for CUDA devices, ``gloo`` otherwise; ``nccl`` needs CUDA."""
    if backend not in BACKENDS:
        raise ConfigError(f"distributed.backend must be one of {', '.join(BACKENDS)}, "
                          f"got {backend!r}")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ConfigError("distributed.backend=nccl needs CUDA GPUs, but none is available "
                              "(torch.cuda.is_available() is False); use distributed.backend=gloo "
                              "or auto to train on CPUs")
        if device.type != "cuda":
            raise ConfigError(f"distributed.backend=nccl cannot train on device={device}; "
                              "use device=cuda (or auto), or distributed.backend=gloo")
    if backend == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    return backend


def check_device_available(device: torch.device) -> None:
    """Raise :class:`ConfigError` for a device this machine cannot run on."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device} asked for, but this PyTorch has no usable CUDA "
                              "GPU; use device=cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device} asked for, but this machine has "
                              f"{torch.cuda.device_count()} GPU(s); use cuda:0 or auto")
    elif device.type not in ("cpu", "meta") and device.type != "mps":
        raise ConfigError(f"device {device} is not supported here; use cpu, cuda, cuda:N or "
                          "auto")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device mps asked for, but MPS is not available; use cpu or auto")
    if device.type == "meta":
        raise ConfigError("device meta holds no data; use cpu, cuda, cuda:N or auto")


def pick_device(name: str, world: int, local_rank: int) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``auto`` / ``cuda`` under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device={name!r} is not a device; use cpu, cuda, cuda:1 or auto") \
            from None
    check_device_available(device)
    if world <= 1 or device.type != "cuda":
        return device
    if device.index is not None:
        raise ConfigError(f"device={name} would put all {world} torchrun processes on one GPU; "
                          "use device=cuda or auto (each rank takes cuda:LOCAL_RANK)")
    if not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available; use device=cpu or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"torchrun LOCAL_RANK={local_rank} but this node has {count} GPU(s); "
                          f"use --nproc_per_node={count} or fewer")
    return torch.device("cuda", local_rank)


@dataclass(frozen=True)
class BatchShard:
    """The batch selection under DDP: which rows of the global batch rank ``rank`` of
    ``world`` keeps (the module docstring says why these).  With ``world == 1`` every
    row.  Algorithm 1 itself never sees ranks: it composes the global batch, and
    :meth:`select` then keeps this rank's rows of it."""

    rank: int = 0
    world: int = 1

    def share(self, start: int, count: int) -> slice:
        """This rank's contiguous ``1/W`` of rows ``start .. start + count - 1``."""
        per = count // self.world
        return slice(start + self.rank * per, start + (self.rank + 1) * per)

    def adversarial(self, start: int, stop: int, device=None) -> torch.Tensor:
        """Of adversarial rows ``start .. stop - 1``, those this rank keeps (the global
        rows ``rank, rank + W, ...``), numbered from ``start``."""
        first = (self.rank - start) % self.world
        return torch.arange(first, max(first, stop - start), self.world, device=device)

    def clean(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's contiguous share of a batch without adversarial rows."""
        rows = self.share(0, x.shape[0])
        return x[rows], y[rows]

    def select(self, x: torch.Tensor, y: torch.Tensor, k: int,
               mode: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        """This rank's rows of Algorithm 1's batch ``B'`` (k adversarial rows first; with
        ``append`` their k clean twins next): its adversarial rows, their twins and a
        contiguous ``1/W`` of the other clean rows, in the layout
        :func:`~cascade_adv.training.loss.unified_loss` expects.  Returns ``(x, y, k)``
        with ``k`` the adversarial rows kept."""
        if self.world == 1:
            return x, y, k
        mine = self.adversarial(0, k, x.device)
        twins = k + mine if mode == "append" else mine[:0]
        start = 2 * k if mode == "append" else k
        others = torch.arange(x.shape[0], device=x.device)[self.share(start, x.shape[0] - start)]
        keep = torch.cat([mine, twins, others])
        return x[keep], y[keep], mine.numel()


@dataclass
class DistContext:
    """This process's place in the run: ``rank`` of ``world`` on ``device``.

    Outside ``torchrun`` (or with one process) ``world == 1`` and every helper is a
    no-op, so the single-process code path is unchanged.
    """

    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None
    created: bool = False  # this context initialised the process group (and ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def shard(self) -> BatchShard:
        """The rows of a global batch this rank keeps."""
        return BatchShard(self.rank, self.world)

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` inside DDP (gradients averaged over ranks), or ``model`` itself."""
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over ranks (a new tensor; ``tensor`` itself with W = 1)."""
        if not self.distributed:
            return tensor
        return all_reduce_sum(tensor)

    def barrier(self) -> None:
        if self.distributed:
            barrier()

    def check_same(self, value: int, message: str) -> None:
        """Raise ``ConfigError(message)`` on every rank unless all ranks pass the same ``value``."""
        if not self.distributed:
            return
        t = all_reduce_max(torch.tensor([value, -value], dtype=torch.int64, device=self.device))
        if int(t[0]) != -int(t[1]):
            raise ConfigError(message.format(low=-int(t[1]), high=int(t[0])))

    def close(self) -> None:
        """End the process group if this context started it."""
        if self.created and dist.is_initialized():
            dist.destroy_process_group()
            self.created = False


def setup(backend: str = "auto", device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group (if launched by it) and pick this rank's device.

    Reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` from the environment.  With one
    process nothing is initialised.  Invalid combinations (``nccl`` without CUDA, a
    fixed ``cuda:N`` for several ranks, more ranks than GPUs) raise
    :class:`ConfigError` before any process group exists.  An already initialised
    process group is reused (and left open by :meth:`DistContext.close`).
    """
    world = env_world_size()
    local_rank = _env_int("LOCAL_RANK", 0)  # RANK is read by init_process_group
    dev = pick_device(device, world, local_rank)
    if world <= 1:
        return DistContext(dev)  # one process: no backend is used, none is checked
    name = resolve_backend(backend, dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend=name)
        created = True
    name = dist.get_backend()
    return DistContext(dev, dist.get_rank(), dist.get_world_size(), local_rank, name, created)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (for attacks, saving, embeddings)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --- BatchNorm over the global batch -------------------------------------------------


class _SumOverRanks(torch.autograd.Function):
    """All-reduce (sum) whose backward is again a sum over ranks: every rank's loss
    depends on the summed tensor, so each input's gradient adds all ranks' terms."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the rows of *all* ranks.

    ``torch.nn.SyncBatchNorm`` runs on CUDA only; this is the same computation for
    CPU / gloo: the per-channel sums (in float64) and then the centred sums of
    squares are summed over ranks with a differentiable all-reduce (whose backward
    sums the gradients of every rank), so forward and backward equal BatchNorm on the whole
    global batch up to float rounding.  Running statistics are updated from the
    global mean and unbiased variance, as BatchNorm does.  Without a process group
    (or in eval mode) it is plain ``BatchNorm2d``; the state dict is identical.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        local = torch.cat([x.sum(dims, dtype=torch.float64),
                           x.new_full((1,), x.numel() // c, dtype=torch.float64)])
        total = _SumOverRanks.apply(local)
        n = total[c].detach()
        mean = total[:c] / n
        centred = x - mean.to(x.dtype).view(shape)
        var = _SumOverRanks.apply((centred * centred).sum(dims, dtype=torch.float64)) / n
        y = centred * torch.rsqrt(var + self.eps).to(x.dtype).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                f = (1.0 / float(self.num_batches_tracked) if self.momentum is None
                     else self.momentum)
                unbiased = var * (n / (n - 1).clamp(min=1))
                self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_(unbiased.to(self.running_var.dtype), alpha=f)
        return y


def _swap_batchnorm(module: nn.Module, make) -> nn.Module:
    new = make(module)
    if new is not None:
        return new
    for name, child in module.named_children():
        replaced = _swap_batchnorm(child, make)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def _copy_bn(src: nn.modules.batchnorm._BatchNorm, cls) -> nn.Module:
    """A ``cls`` BatchNorm sharing ``src``'s parameters and buffers (the optimizer's
    references stay valid)."""
    out = cls(src.num_features, src.eps, src.momentum, src.affine, src.track_running_stats)
    if src.affine:
        out.weight, out.bias = src.weight, src.bias
    if src.track_running_stats:
        out.running_mean, out.running_var = src.running_mean, src.running_var
        out.num_batches_tracked = src.num_batches_tracked
    out.train(src.training)
    return out


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Global-batch BatchNorm: ``torch.nn.SyncBatchNorm`` on CUDA, else
    :class:`AllReduceBatchNorm2d`.  Parameters and buffers are shared, not copied."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _swap_batchnorm(
        model, lambda m: _copy_bn(m, AllReduceBatchNorm2d) if type(m) is nn.BatchNorm2d else None
    )


def revert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Plain ``BatchNorm2d`` again (after training), sharing parameters and buffers."""
    synced = (nn.SyncBatchNorm, AllReduceBatchNorm2d)
    return _swap_batchnorm(
        model, lambda m: _copy_bn(m, nn.BatchNorm2d) if isinstance(m, synced) else None
    )
