"""Saved adversarial image sets (black-box sources, cascade training sources).

A set is a folder that loads without executing code::

    images.npy   uint8 [N, C, H, W]  (memory-mapped on load)
    labels.npy   int64 [N]           true labels
    eps.npy      float32 [N]         epsilon of each image, pixel units
    index.npy    int64 [N]           index of the clean image in its split
    source_clean_rank.npy, source_adv_rank.npy
                 int16 [N]           rank of the true class in the source model's
                                     logits on the clean and the adversarial image
                                     (0 = top-1 correct): K17's transfer rate counts
                                     only images the source gets right clean and
                                     wrong adversarial
    meta.json    method, epsilons, dataset, split, image shape, source model and
                 its weights hash, sha256 of each .npy file

Images are stored as uint8 (``round(255 x)``): for integer epsilons on uint8
source images this keeps every image inside its epsilon ball exactly.  Loading
checks the sha256 of every file, so a tampered or truncated set is refused, and
can check that the set was made for the expected dataset, split and image shape.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from cascade_adv import attacks
from cascade_adv.data import ImageDataset, to_float, to_uint8
from cascade_adv.errors import CascadeAdvError
from cascade_adv.evaluation.whitebox import true_class_rank
from cascade_adv.io import atomic_write_text, file_sha256

FORMAT = "cascade-adv/advset/1"
ARRAYS = ("images", "labels", "eps", "index")
#: Arrays written since the source ranks were added; older sets lack them.
OPTIONAL_ARRAYS = ("source_clean_rank", "source_adv_rank")


@dataclass
class AdversarialSet:
    images: np.ndarray  # uint8 [N, C, H, W], possibly memory-mapped
    labels: np.ndarray
    eps: np.ndarray
    index: np.ndarray
    meta: dict
    source_clean_rank: np.ndarray | None = None
    source_adv_rank: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def select(self, rows: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(uint8 images, labels, eps) of ``rows`` as tensors."""
        rows = np.asarray(rows)
        return (torch.from_numpy(np.ascontiguousarray(self.images[rows])),
                torch.from_numpy(self.labels[rows]), torch.from_numpy(self.eps[rows]))


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
) -> Path:
    """Attack every image of ``dataset`` at every epsilon and save the set to ``out``.

    ``prepare`` maps uint8 images to the model's float input (e.g. a center crop);
    the saved images are those inputs, attacked.  The folder is written under a
    temporary name and renamed into place when complete.
    """
    attacks.get(attack)
    eps = attacks.validate_eps(list(eps))
    if not eps:
        raise CascadeAdvError("no epsilon given; pass at least one, e.g. --eps 16")
    if len(dataset) == 0:
        raise CascadeAdvError(f"the {dataset.name}/{dataset.split} images to attack are empty; "
                              "pass a non-empty split (check --limit)")
    prepare = prepare or to_float
    device = next(model.parameters()).device
    out = Path(out)
    tmp = out.parent / f".{out.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    n = len(dataset)
    sample = prepare(dataset.images[:1].to(device))
    shape = (n * len(eps), *sample.shape[1:])
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=shape)
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
            rank_clean = true_class_rank(model(xb), yb).cpu().numpy()
        for e in eps:
            adv = to_uint8(attacks.run(attack, model, xb, yb, eps=e, generator=generator,
                                       **(attack_options or {})))
            with attacks.inference_mode(model), torch.no_grad():
                # the source's verdict on the saved (uint8) image, as a target would see it
                rank_adv = true_class_rank(model(to_float(adv)), yb)
            images[row:row + m] = adv.cpu().numpy()
            clean_rank[row:row + m] = rank_clean
            adv_rank[row:row + m] = rank_adv.cpu().numpy()
            labels[row:row + m] = y_host.numpy()
            eps_arr[row:row + m] = e
            index[row:row + m] = np.arange(start, start + m)
            row += m
            bar.update(m)
    bar.close()
    images.flush()
    del images
    for name, arr in (("labels", labels), ("eps", eps_arr), ("index", index),
                      ("source_clean_rank", clean_rank), ("source_adv_rank", adv_rank)):
        np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
    meta = {
        "format": FORMAT, "method": attack, "eps": eps, "dataset": dataset.name,
        "split": dataset.split, "image_shape": list(shape[1:]), "count": shape[0],
        "source": source_name, "source_hash": source_hash, "attack_options": attack_options or {},
        "sha256": {f"{a}.npy": file_sha256(tmp / f"{a}.npy") for a in ARRAYS + OPTIONAL_ARRAYS},
    }
    atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_adversarial_set(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    split: str | None = None,
    image_shape: Sequence[int] | None = None,
    verify: bool = True,
) -> AdversarialSet:
    """Load a saved set (memory-mapped), verifying hashes and what it was made for."""
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CascadeAdvError(f"{path} is not an adversarial set (no meta.json); "
                              "create one with 'cascade-adv attack'")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise CascadeAdvError(f"{meta_path} is not valid JSON; re-create the set") from None
    if meta.get("format") != FORMAT:
        raise CascadeAdvError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    for name, digest in meta["sha256"].items():
        file = path / name
        if not file.is_file():
            raise CascadeAdvError(f"{file} is missing; re-create the adversarial set")
        if verify and file_sha256(file) != digest:
            raise CascadeAdvError(f"{file} does not match its sha256 in meta.json (modified or "
                                  "damaged); re-create the adversarial set")
    for key, want in (("dataset", dataset), ("split", split)):
        if want is not None and meta[key] != want:
            raise CascadeAdvError(f"adversarial set {path} was made from {key} {meta[key]!r}, "
                                  f"not {want!r}; craft one from the {want} {key}")
    if image_shape is not None and list(meta["image_shape"]) != list(image_shape):
        raise CascadeAdvError(f"adversarial set {path} holds images of shape {meta['image_shape']}"
                              f", the model expects {list(image_shape)}; craft a matching set")
    present = [a for a in ARRAYS + OPTIONAL_ARRAYS
               if a in ARRAYS or f"{a}.npy" in meta["sha256"]]
    for a in ARRAYS:
        if f"{a}.npy" not in meta["sha256"]:
            raise CascadeAdvError(f"adversarial set {path} lacks {a}.npy in meta.json; "
                                  "re-create the set")
    arrays = {a: np.load(path / f"{a}.npy", mmap_mode="r" if a == "images" else None,
                         allow_pickle=False) for a in present}
    if meta["count"] == 0 or arrays["images"].shape[0] == 0:
        raise CascadeAdvError(f"adversarial set {path} is empty; craft it again from a non-empty split")
    return AdversarialSet(meta=meta, **arrays)
