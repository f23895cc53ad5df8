"""Atomic, resumable checkpoints.

Layout of a run folder::

    run/
      .lock                       held by the process training into it (its pid inside)
      config.yaml                 resolved training config (of the latest session)
      history.jsonl               config changes made on resume (training/resume.py)
      metrics.jsonl               one JSON object per logged iteration
      checkpoints/ckpt-0001000/   model.safetensors + state.pt
      checkpoints/latest          name of the newest complete checkpoint
      final/model.safetensors     the trained model (written at the end)
      best_pgd/                   with the overfitting monitor on: the weights of its best
                                  PGD accuracy (model.safetensors) and monitor.json

A checkpoint folder is written under a temporary name and renamed into place,
then ``latest`` is replaced atomically, so a crash at any moment leaves the
previous checkpoint intact.  ``state.pt`` holds only tensors and plain values
(iteration, optimizer state) and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from cascade_adv.errors import CheckpointError
from cascade_adv.io import (
    atomic_write_bytes,
    atomic_write_text,
    check_free_space,
    disk_errors,
    make_temp_dir,
    remove_stale_temps,
    swap_dir,
)
from cascade_adv.models import WEIGHTS_FILE, save_model

STATE_FILE = "state.pt"
CHECKPOINTS = "checkpoints"
#: The weights of the best PGD accuracy the overfitting monitor measured.
BEST_PGD = "best_pgd"


def save_checkpoint(run_dir: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer,
                    iteration: int, keep: int = 2, init: str = "",
                    extra: dict | None = None) -> Path:
    """Write checkpoint ``ckpt-{iteration}`` and point ``latest`` at it; ``extra``: more
    plain values for ``state.pt`` (the overfitting monitor's best, ...).

    Its size (weights and optimizer state) is checked against the free space first; a
    full disk or a read-only folder raises :class:`~cascade_adv.errors.DiskFull` naming
    the folder and that size, and the previous checkpoints stay as they were."""
    root = Path(run_dir) / CHECKPOINTS
    name = f"ckpt-{iteration:07d}"
    state = io.BytesIO()  # in memory first: torch's writer fails obscurely on ENOSPC
    torch.save({**(extra or {}), "iteration": iteration, "optimizer": optimizer.state_dict()},
               state)
    final = write_model_folder(root / name, model, {STATE_FILE: state.getvalue()}, init=init,
                               what=f"checkpoint {name}",
                               need=checkpoint_bytes(model, optimizer))
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("ckpt-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_model_folder(folder: Path, model: nn.Module, files: dict[str, bytes], *, init: str,
                       what: str, need: int | None = None) -> Path:
    """Write ``folder`` with the model's weights and ``files`` (name -> bytes) at once:
    built under a temporary name beside it, then swapped into place, so a crash leaves
    the previous folder whole.  ``need`` bytes (default: the model's) are checked
    against the free space first (:class:`~cascade_adv.errors.DiskFull`)."""
    root = folder.parent
    need = checkpoint_bytes(model) if need is None else need
    with disk_errors(root, what, need):
        root.mkdir(parents=True, exist_ok=True)
        check_free_space(root, need, what)
        tmp = make_temp_dir(root, folder.name)
        try:
            save_model(model, tmp / WEIGHTS_FILE, init=init)
            for name, data in files.items():
                atomic_write_bytes(tmp / name, data)
            swap_dir(tmp, folder)  # an earlier folder of this name is replaced, not deleted
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


def checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    """About the bytes one checkpoint takes: every tensor of the model's state and of the
    optimizer's state (the files add a few KB of headers)."""
    tensors = list(model.state_dict().values())
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values()]
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)) \
        + (64 << 10)


def remove_stale_run_temps(run_dir: str | os.PathLike) -> list[Path]:
    """Temporary files and folders that a killed run left in ``run_dir`` (a half-written
    checkpoint, ``latest``, config, metrics or final weights); removed, and returned."""
    run_dir = Path(run_dir)
    removed = []
    for folder, names in ((run_dir, ("config.yaml", "metrics.jsonl", BEST_PGD)),
                          (run_dir / CHECKPOINTS, ("latest", "ckpt-*")),
                          (run_dir / "final", (WEIGHTS_FILE,))):
        for name in names:
            removed += remove_stale_temps(folder, name)
    return removed


def nonfinite_state(model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    ctx=None) -> list[str]:
    """Names of the floating-point parameters, buffers and optimizer state tensors that
    hold inf or NaN; ``[]`` when all are finite.

    One fused reduction on the device (the max-abs of every tensor, stacked) and one
    read-back; the names are looked up only when something is wrong.  ``ctx`` (a
    :class:`~cascade_adv.training.distributed.DistContext`) sums the verdict over
    ranks, so every rank stops together.
    """
    named = [(n, t) for n, t in model.state_dict(keep_vars=True).items()]
    if optimizer is not None:
        ids = {id(p): n for n, p in model.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                for key, value in optimizer.state.get(p, {}).items():
                    named.append((f"optimizer.{ids.get(id(p), '?')}.{key}", value))
    named = [(n, t.detach()) for n, t in named
             if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not named:
        return []
    tensors = [t for _, t in named]
    try:
        peaks = torch._foreach_norm(tensors, float("inf"))  # fused multi-tensor kernel
    except (AttributeError, RuntimeError, TypeError):
        peaks = [t.abs().max() for t in tensors]
    bad = ~torch.isfinite(torch.stack([p.float() for p in peaks]))
    flag = bad.any().to(torch.float32).reshape(1)
    if ctx is not None and getattr(ctx, "distributed", False):
        flag = ctx.all_reduce_sum(flag)
    if not flag.item():
        return []
    return [n for (n, _), b in zip(named, bad.tolist()) if b] or ["(another rank's state)"]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    pointer = Path(run_dir) / CHECKPOINTS / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / WEIGHTS_FILE).is_file() or not (path / STATE_FILE).is_file():
        raise CheckpointError(
            f"checkpoint {path} named by {pointer} is incomplete; delete {pointer} to start over"
        )
    return path


def read_state(path: Path, device: torch.device | str = "cpu") -> dict:
    """The training state of a checkpoint folder (``weights_only=True``: no code runs)."""
    try:
        with warnings.catch_warnings():  # torch warns (several lines) about odd pickles
            warnings.simplefilter("ignore")
            state = torch.load(path / STATE_FILE, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state is the same user problem
        raise CheckpointError(
            f"cannot read {path / STATE_FILE} ({type(exc).__name__}); "
            "delete this checkpoint folder to resume from the previous one"
        ) from None
    if not isinstance(state, dict) or "iteration" not in state or "optimizer" not in state:
        raise CheckpointError(f"{path / STATE_FILE} is not a cascade-adv training state")
    return state
