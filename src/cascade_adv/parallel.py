"""The ``torch.distributed`` primitives that training and evaluation share: this
process's rank and the world size of an initialised process group, sums and maxima
over ranks, a barrier.  Every helper is a no-op without a process group, so one
process runs the same code.  Setting up a run under ``torchrun`` (device, backend,
DDP, the rows each rank trains on) is :mod:`cascade_adv.training.distributed`."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the initialised process group; ``(0, 1)`` without one."""
    if not is_initialized():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def _comm_device(tensor: torch.Tensor) -> torch.device:
    # nccl reduces CUDA tensors only; gloo is most at home with CPU tensors
    return tensor.device if dist.get_backend() == "nccl" else torch.device("cpu")


def _all_reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    if not is_initialized():
        return tensor
    out = tensor.detach().to(_comm_device(tensor), copy=True)
    dist.all_reduce(out, op=op)
    return out.to(tensor.device)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (no autograd; a copy)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def barrier() -> None:
    if not is_initialized():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()
