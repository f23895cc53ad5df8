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

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cascade_adv.errors import CascadeAdvError, OutputPathError
from cascade_adv.io import check_disjoint, check_writable_dir, file_sha256, is_within
from cascade_adv.textdata import load_json

FORMAT = "cascade-adv/advset/1"
ARRAYS = ("images", "labels", "eps", "index")
#: Arrays written since the source ranks were added; older sets lack them.
OPTIONAL_ARRAYS = ("source_clean_rank", "source_adv_rank")


def is_adversarial_set(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder written by :func:`craft_adversarial_set`."""
    meta = Path(path) / "meta.json"
    try:
        return meta.is_file() and load_json(meta.read_bytes(), str(meta)).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):  # textdata's ConfigError is a ValueError
        return False


def check_set_output(out: str | os.PathLike, *, overwrite: bool = False,
                     protect: Sequence[str | os.PathLike] = ()) -> Path:
    """Check, before any work, that a set may be written to ``out``.

    ``out`` may be missing, an empty folder, or an earlier adversarial set (this
    command's own output: replaced atomically); any other folder is refused
    unless ``overwrite``.  Never allowed, even with ``overwrite``: the current
    folder or one of its ancestors, and a folder that is, holds or lies inside one of
    ``protect`` (the model's run folder, the dataset;
    :func:`cascade_adv.io.check_disjoint`).  Raises :class:`OutputPathError`.
    """
    out = Path(out)
    check_writable_dir(out, "--out folder")
    resolved = out.resolve()
    if is_within(Path.cwd(), resolved):
        raise OutputPathError(f"--out {out} is the current folder or one of its parents; "
                              "pass a new folder, e.g. --out adv/NAME")
    check_disjoint([("--out", out)], [("input", p) for p in protect])
    if out.is_dir() and any(out.iterdir()) and not is_adversarial_set(out) and not overwrite:
        raise OutputPathError(f"--out {out} already exists and is not an adversarial set; "
                              "pass a new path or --overwrite to replace it")
    return out


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


def _bad(path: Path, what: str) -> CascadeAdvError:
    return CascadeAdvError(f"adversarial set {path} {what}; re-create it with "
                           "'cascade-adv craft' or 'cascade-adv attack'")


def _read_meta(path: Path) -> dict:
    meta_path = path / "meta.json"
    if not meta_path.is_file():
        raise CascadeAdvError(f"{path} is not an adversarial set (no meta.json); "
                              "create one with 'cascade-adv attack'")
    try:
        meta = load_json(meta_path.read_bytes(), str(meta_path), "re-create the set")
    except OSError:  # unreadable
        raise CascadeAdvError(f"{meta_path} cannot be read; re-create the set") from None
    if not isinstance(meta, dict):
        raise _bad(path, "has a meta.json that is not a JSON object")
    if meta.get("format") != FORMAT:
        raise CascadeAdvError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    checks = {
        "sha256": lambda v: isinstance(v, dict) and all(
            isinstance(k, str) and isinstance(d, str) for k, d in v.items()),
        "count": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
        "eps": lambda v: isinstance(v, list) and v and all(
            isinstance(e, (int, float)) and not isinstance(e, bool) and 0 <= e <= 255
            for e in v),
        "image_shape": lambda v: isinstance(v, list) and len(v) == 3 and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v),
        "dataset": lambda v: isinstance(v, str),
        "split": lambda v: isinstance(v, str),
    }
    for key, ok in checks.items():
        if key not in meta or not ok(meta[key]):
            raise _bad(path, f"has a missing or malformed {key!r} in meta.json")
    for name in meta["sha256"]:
        if name not in {f"{a}.npy" for a in ARRAYS + OPTIONAL_ARRAYS}:
            raise _bad(path, f"lists an unexpected file {name!r} in meta.json")
    return meta


def _check_contents(path: Path, meta: dict, arrays: dict) -> None:
    """Shapes, dtypes, lengths and value ranges of a set's arrays against its meta."""
    n = meta["count"]
    images = arrays["images"]
    if images.dtype != np.uint8 or images.ndim != 4:
        raise _bad(path, f"holds images of dtype {images.dtype} and {images.ndim} dimensions, "
                         "not uint8 [N, C, H, W]")
    if list(images.shape[1:]) != list(meta["image_shape"]):
        raise _bad(path, f"holds images of shape {list(images.shape[1:])}, but its meta.json "
                         f"says {meta['image_shape']}")
    for name, arr in arrays.items():
        if arr.shape[:1] != (n,) or (name != "images" and arr.ndim != 1):
            raise _bad(path, f"has {name}.npy of shape {list(arr.shape)}, expected {n} rows "
                             "(meta.json count)")
        if name != "images" and name != "eps" and not np.issubdtype(arr.dtype, np.integer):
            raise _bad(path, f"has {name}.npy of dtype {arr.dtype}, not integers")
    if not np.issubdtype(arrays["eps"].dtype, np.floating):
        raise _bad(path, f"has eps.npy of dtype {arrays['eps'].dtype}, not floats")
    eps = arrays["eps"].astype(np.float64)
    allowed = np.asarray(sorted(float(e) for e in meta["eps"]))
    if n and (not np.isfinite(eps).all()
              or not np.isclose(eps[:, None], allowed[None, :], atol=1e-4).any(axis=1).all()):
        raise _bad(path, f"has epsilons outside its meta.json list {meta['eps']}")
    for name in ("labels", "index"):
        if n and int(arrays[name].min()) < 0:
            raise _bad(path, f"has negative values in {name}.npy")


def check_epsilon_ball(adv: AdversarialSet, clean_images: torch.Tensor | np.ndarray,
                       clean_labels: torch.Tensor | np.ndarray | None = None, *,
                       path: str | os.PathLike | None = None, chunk: int = 4096) -> None:
    """Every saved image must lie inside its epsilon ball around its clean twin.

    ``clean_images`` are the split's uint8 images ``[N, C, H, W]`` (larger ones are
    center-cropped to the set's size, as :func:`prepare_images` does); row ``i`` is
    compared with ``clean_images[index[i]]``: ``|adv - clean| <= eps + 0.5`` in pixel
    units (the uint8 rounding of an image inside the ball), and, with
    ``clean_labels``, its label must be the twin's.  Raises :class:`CascadeAdvError`
    naming the first row outside.
    """
    from cascade_adv.data.transforms import center_crop

    where = path or adv.meta.get("source", "set")
    clean = torch.as_tensor(np.asarray(clean_images) if not isinstance(clean_images, torch.Tensor)
                            else clean_images).cpu()
    n_clean = int(clean.shape[0])
    if len(adv) and int(adv.index.max()) >= n_clean:
        raise _bad(Path(str(where)), f"indexes image {int(adv.index.max())} of a "
                                     f"{n_clean}-image split")
    size = adv.images.shape[-1]
    if clean.shape[1] != adv.images.shape[1] or clean.shape[-1] < size:
        raise _bad(Path(str(where)), f"holds images of shape {list(adv.images.shape[1:])}, which "
                                     f"do not fit the clean images {list(clean.shape[1:])}")
    labels = None if clean_labels is None else torch.as_tensor(np.asarray(clean_labels)).cpu()
    for lo in range(0, len(adv), chunk):
        hi = min(lo + chunk, len(adv))
        idx = torch.from_numpy(np.asarray(adv.index[lo:hi], dtype=np.int64))
        twin = clean[idx]
        if twin.shape[-1] != size:
            twin = center_crop(twin, size)
        diff = (torch.from_numpy(np.array(adv.images[lo:hi], dtype=np.int16))
                - twin.to(torch.int16)).abs().flatten(1).amax(dim=1)
        bound = torch.floor(torch.from_numpy(np.asarray(adv.eps[lo:hi], dtype=np.float64))
                            + 0.5 + 1e-6)
        out = (diff.double() > bound).nonzero()
        if out.numel():
            r = lo + int(out[0])
            raise _bad(Path(str(where)), f"row {r} lies {int(diff[r - lo])} pixel levels from "
                                         f"its clean image, outside its epsilon "
                                         f"{float(adv.eps[r]):g} (tampered)")
        if labels is not None:
            wrong = (torch.from_numpy(np.asarray(adv.labels[lo:hi], dtype=np.int64))
                     != labels[idx]).nonzero()
            if wrong.numel():
                r = lo + int(wrong[0])
                raise _bad(Path(str(where)), f"row {r} has label {int(adv.labels[r])}, its "
                                             f"clean image {int(labels[idx[r - lo]])}")


def load_adversarial_set(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    split: str | None = None,
    image_shape: Sequence[int] | None = None,
    verify: bool = True,
    num_classes: int | None = None,
) -> AdversarialSet:
    """Load a saved set (memory-mapped), verifying hashes, contents and what it was
    made for.

    Beyond the sha256 of every file: the arrays' dtypes, shapes and lengths must
    match ``meta.json``, epsilons be among its list, labels and indices be
    non-negative (labels below ``num_classes`` when given).  Whether every image
    lies in its epsilon ball needs the clean images: :func:`check_epsilon_ball`.
    Anything else raises :class:`CascadeAdvError` (one line), never a traceback.
    """
    path = Path(path)
    meta = _read_meta(path)
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
    arrays = {}
    for a in present:
        try:
            arrays[a] = np.load(path / f"{a}.npy", mmap_mode="r" if a == "images" else None,
                                allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # object arrays, truncated files
            why = "holds Python objects" if "allow_pickle" in str(exc) else "cannot be read"
            raise _bad(path, f"has {a}.npy that {why}") from None
    if meta["count"] == 0 or arrays["images"].shape[0] == 0:
        raise CascadeAdvError(f"adversarial set {path} is empty; craft it again from a non-empty split")
    _check_contents(path, meta, arrays)
    if num_classes is not None and int(arrays["labels"].max()) >= num_classes:
        raise _bad(path, f"has label {int(arrays['labels'].max())} but the model has "
                         f"{num_classes} classes")
    return AdversarialSet(meta=meta, **arrays)
