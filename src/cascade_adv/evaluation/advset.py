"""Crafting saved adversarial image sets (black-box sources, cascade training sources):
every image of a split attacked at every epsilon, written in the format of
:mod:`cascade_adv.results.advsets`."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cascade_adv import attacks
from cascade_adv.data import ImageDataset, to_float, to_uint8
from cascade_adv.errors import CascadeAdvError, ModelFault
from cascade_adv.evaluation.whitebox import true_class_rank
from cascade_adv.io import (
    atomic_write_text,
    check_free_space,
    disk_errors,
    file_sha256,
    make_temp_dir,
    real_path,
    remove_stale_temps,
    swap_dir,
)
from cascade_adv.results.advsets import ARRAYS, FORMAT, OPTIONAL_ARRAYS, check_set_output


def craft_adversarial_set(
    model: nn.Module,
    dataset: ImageDataset,
    out: str | os.PathLike,
    attack: str,
    eps: Sequence[float],
    *,
    prepare=None,
    batch_size: int = 500,
    source_name: str = "model",
    source_hash: str = "",
    attack_options: dict | None = None,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    protect: Sequence[str | os.PathLike] = (),
) -> Path:
    """Attack every image of ``dataset`` at every epsilon and save the set to ``out``.

    ``prepare`` maps uint8 images to the model's float input (e.g. a center crop);
    the saved images are those inputs, attacked.  The folder is written under a
    temporary name beside ``out`` and swapped into place when complete; an
    existing ``out`` must be an earlier set, or empty, unless ``overwrite``
    (see :func:`check_set_output`, which also never lets ``out`` be, hold or lie in
    a path of ``protect``).  Nothing is deleted before the new set is complete.  A
    symlinked ``out`` (a link to an earlier set) is followed: the set it points to is
    replaced, the link stays.  The set's size is checked against the free space
    before any attack runs, and the images are written with plain writes (no memory
    map, which a full disk would kill with SIGBUS): a full disk raises
    :class:`~cascade_adv.errors.DiskFull` naming the folder and the size.
    """
    out = check_set_output(out, overwrite=overwrite, protect=protect)
    attacks.get(attack)
    eps = attacks.validate_eps(eps, required=True)
    if len(dataset) == 0:
        raise CascadeAdvError(f"the {dataset.name}/{dataset.split} images to attack are empty; "
                              "pass a non-empty split (check --limit)")
    prepare = prepare or to_float
    device = attacks.model_device(model)
    out = real_path(out)  # a link to an earlier set: that set is replaced, the link stays
    shape = (len(dataset) * len(eps), *prepare(dataset.images[:1].to(device)).shape[1:])
    need = set_bytes(shape)
    with disk_errors(out.parent, f"the adversarial set {out.name}", need):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out.parent, glob_escape(out.name))  # left by a killed run
        check_free_space(out.parent, need, f"the adversarial set {out.name}")
        tmp = make_temp_dir(out.parent, out.name)
        try:
            _write_set(model, dataset, tmp, shape, attack, eps, prepare, batch_size,
                       source_name, source_hash, attack_options, seed, progress, device)
            swap_dir(tmp, out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return out


def set_bytes(shape: Sequence[int]) -> int:
    """About the bytes a set of ``shape[0]`` uint8 images of ``shape[1:]`` takes on disk:
    the images, the per-row arrays (labels, eps, index, the two ranks) and headers."""
    rows = int(shape[0])
    return rows * int(np.prod(shape[1:])) + rows * (8 + 4 + 8 + 2 + 2) + (64 << 10)


def _write_set(model, dataset, tmp, shape, attack, eps, prepare, batch_size, source_name,
               source_hash, attack_options, seed, progress, device) -> None:
    with open(tmp / "images.npy", "wb") as images:  # rows in order, appended
        np.lib.format.write_array_header_1_0(images, {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
            "fortran_order": False, "shape": tuple(shape)})
        arrays = _attack_rows(model, dataset, images, shape, attack, eps, prepare,
                              batch_size, source_name, attack_options, seed, progress, device)
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
    meta = {
        "format": FORMAT, "method": attack, "eps": eps, "dataset": dataset.name,
        "split": dataset.split, "image_shape": list(shape[1:]), "count": shape[0],
        "source": source_name, "source_hash": source_hash, "attack_options": attack_options or {},
        "sha256": {f"{a}.npy": file_sha256(tmp / f"{a}.npy") for a in ARRAYS + OPTIONAL_ARRAYS},
    }
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")


def _attack_rows(model, dataset, images, shape, attack, eps, prepare, batch_size,
                 source_name, attack_options, seed, progress, device) -> dict[str, np.ndarray]:
    """Attack every image at every epsilon, appending the uint8 images to the open file
    ``images`` row by row; returns the per-row arrays."""
    n = len(dataset)
    labels = np.empty(shape[0], np.int64)
    eps_arr = np.empty(shape[0], np.float32)
    index = np.empty(shape[0], np.int64)
    clean_rank = np.empty(shape[0], np.int16)
    adv_rank = np.empty(shape[0], np.int16)
    generator = torch.Generator(device).manual_seed(seed)
    bar = tqdm(total=shape[0], disable=not progress, desc=f"craft {attack}", unit="img")
    row = 0
    for start in range(0, n, batch_size):
        xb = prepare(dataset.images[start:start + batch_size].to(device))
        y_host = dataset.labels[start:start + batch_size].cpu()
        yb = y_host.to(device)
        m = xb.shape[0]
        with attacks.inference_mode(model), torch.no_grad():
            logits = model(xb)
            if not bool(torch.isfinite(logits).all()):
                raise ModelFault(f"source {source_name} gives non-finite outputs (inf / NaN); "
                                 "its adversarial images would be meaningless: use an earlier "
                                 "checkpoint or retrain it")
            rank_clean = true_class_rank(logits, yb).cpu().numpy()
        for e in eps:
            adv = to_uint8(attacks.run(attack, model, xb, yb, eps=e, generator=generator,
                                       **(attack_options or {})))
            # the source's verdict on the saved (uint8) image, as a target would see it
            rank_adv = true_class_rank(attacks.predict(model, to_float(adv)), yb)
            images.write(np.ascontiguousarray(adv.cpu().numpy()).tobytes())
            clean_rank[row:row + m] = rank_clean
            adv_rank[row:row + m] = rank_adv.cpu().numpy()
            labels[row:row + m] = y_host.numpy()
            eps_arr[row:row + m] = e
            index[row:row + m] = np.arange(start, start + m)
            row += m
            bar.update(m)
    bar.close()
    return {"labels": labels, "eps": eps_arr, "index": index,
            "source_clean_rank": clean_rank, "source_adv_rank": adv_rank}
