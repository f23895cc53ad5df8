"""ImageNet-style class folders, decoded with Pillow into ``uint8`` tensors.

Layout (K17 trains on ImageNet's training set and evaluates on its 50,000
validation images)::

    ROOT/imagenet/train/<class>/*.JPEG     (also .jpg, .jpeg, .png; any case)
    ROOT/imagenet/val/<class>/*.JPEG

Split ``train`` reads ``train/``, split ``test`` reads ``val/``.  The classes are the
sorted names of the class folders (e.g. WordNet ids ``n01440764``), and both splits
must have the same ones, so a label means the same class in each.  The official
validation archive is flat (one folder plus a labels file); sort it into class
folders first (the usual ``valprep.sh`` does).  Hidden files and files with other
extensions are ignored.  Within a split the images are ordered round-robin over the
classes (the first image of every class, then the second, ...), so the first N images
(``--limit N``) cover the classes evenly.

Each image is decoded with Pillow, converted to RGB, resized (bilinear, antialiased)
so that its shorter side is ``image_size / 0.875`` and center-cropped to
``image_size`` x ``image_size``: the 87.5% central crop of the Inception evaluation
preprocessing (TF-slim's ``central_fraction=0.875``; torchvision's 342 -> 299).  K17's
Inception v3 takes 299x299 (:data:`DEFAULT_IMAGE_SIZE`).  JPEGs larger than needed are
decoded at a reduced DCT scale first (Pillow's ``draft``), which is faster and changes
pixels only slightly.

Decoding a split once writes a ``uint8`` ``[N, 3, S, S]`` ``.npy`` file into
``ROOT/imagenet/.cascade_adv_cache/``, named after the split, the size and a hash of
the file list (relative paths, labels, file sizes and modification times); later loads
memory-map it (``allow_pickle=False``, nothing is unpickled) instead of decoding
again.  A changed, added or removed image gives another hash, hence a new cache file
(delete old ones by hand).  If the folder is read-only the images are decoded into
memory on every load.  The cache takes ``3 * S * S`` bytes per image: full ImageNet
(1.28 M training images) at 299x299 needs about 344 GB (320 GiB), and training keeps
the whole split in (device) memory, so this path is meant for subsets of ImageNet
(e.g. 100 classes at a reduced size); full-scale ImageNet training needs a streaming
loader, which this package does not have.

Every user-fixable problem raises :class:`~cascade_adv.errors.DatasetError` with one
line before any decoding starts (missing folders, a class folder without images, a
class missing from one split); an image Pillow cannot decode is named when it is met.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from cascade_adv.data.dataset import ImageDataset
from cascade_adv.errors import DatasetError, one_line
from cascade_adv.io import check_free_space, temp_prefix

#: Folder under the data root.
FOLDER = "imagenet"
#: Split name -> folder under ``ROOT/imagenet``.
SPLIT_FOLDERS = {"train": "train", "test": "val"}
#: File name extensions read as images (compared in lower case).
EXTENSIONS = (".jpeg", ".jpg", ".png")
#: K17's Inception v3 input size.
DEFAULT_IMAGE_SIZE = 299
#: The center crop keeps this fraction of the resized shorter side (Inception preprocessing).
CENTER_FRACTION = 0.875
#: Cache folder under ``ROOT/imagenet``.
CACHE_DIR = ".cascade_adv_cache"
_CACHE_VERSION = 1
_LAYOUT = "ROOT/imagenet/{train,val}/<class>/*.JPEG"


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DatasetError(
            "the imagenet folder reader needs Pillow: pip install 'cascade-adv[imagenet]'"
        ) from None
    return Image


def _class_folders(split_dir: Path) -> list[str]:
    if not split_dir.is_dir():
        raise DatasetError(f"ImageNet split folder {split_dir} is missing; lay the images out as "
                           f"{_LAYOUT} (val sorted into class folders)")
    names = sorted(e.name for e in os.scandir(split_dir)
                   if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DatasetError(f"ImageNet split folder {split_dir} has no class folders; lay the "
                           f"images out as {_LAYOUT}")
    return names


def _image_files(class_dir: Path) -> list[str]:
    files = sorted(e.name for e in os.scandir(class_dir)
                   if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower()
                   in EXTENSIONS and e.is_file())
    if not files:
        raise DatasetError(
            f"ImageNet class folder {class_dir} holds no images (*.JPEG, *.jpg, *.jpeg, *.png); "
            "add its images or remove the class from both train and val"
        )
    return files


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def scan_imagenet(root: str | os.PathLike) -> tuple[list[str], dict[str, list[tuple[str, int]]]]:
    """Check the folder layout under ``root/imagenet`` and list both splits.

    Returns the sorted class names and, for ``"train"`` and ``"test"``, the image paths
    relative to ``root/imagenet`` with their labels, ordered round-robin over the
    classes.  Raises :class:`DatasetError` naming the first problem.
    """
    base = Path(root) / FOLDER
    if not base.is_dir():
        raise DatasetError(f"no ImageNet folder at {base}; lay the images out as {_LAYOUT} "
                           "(set data.root or --data-root to ROOT)")
    per_split = {split: _class_folders(base / folder) for split, folder in SPLIT_FOLDERS.items()}
    train, val = set(per_split["train"]), set(per_split["test"])
    for a, b, names in (("train", "val", sorted(train - val)), ("val", "train", sorted(val - train))):
        if names:
            raise DatasetError(
                f"ImageNet class folder(s) {_few(names)} in {base / a} have no folder in "
                f"{base / b}; both splits need the same classes (add or remove them)"
            )
    classes = per_split["train"]
    listing: dict[str, list[tuple[str, int]]] = {}
    for split, folder in SPLIT_FOLDERS.items():
        per_class = [[f"{folder}/{name}/{f}" for f in _image_files(base / folder / name)]
                     for name in classes]
        longest = max(len(files) for files in per_class)
        listing[split] = [(files[i], label) for i in range(longest)
                          for label, files in enumerate(per_class) if i < len(files)]
    return classes, listing


def decode_image(path: str | os.PathLike, image_size: int,
                 center_fraction: float = CENTER_FRACTION) -> np.ndarray:
    """One image file as ``uint8 [3, S, S]``: RGB, shorter side resized (bilinear) to
    ``round(S / center_fraction)``, center crop ``S`` x ``S``."""
    image_mod = _pillow()
    short = max(image_size, round(image_size / center_fraction))
    try:
        with image_mod.open(path) as img:
            img.draft("RGB", (short, short))  # JPEG only: decode at a smaller scale >= short
            rgb = img.convert("RGB")
        w, h = rgb.size
        scale = short / min(w, h)
        nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
        rgb = rgb.resize((nw, nh), image_mod.Resampling.BILINEAR)
        left, top = (nw - image_size) // 2, (nh - image_size) // 2
        rgb = rgb.crop((left, top, left + image_size, top + image_size))
        arr = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, EOFError, image_mod.DecompressionBombError) as exc:
        raise DatasetError(f"cannot decode image {path} ({one_line(exc)}); replace or remove "
                           "the file") from None
    return arr.transpose(2, 0, 1)


def _cache_key(base: Path, files: list[tuple[str, int]], image_size: int,
               center_fraction: float) -> str:
    digest = hashlib.sha256(f"v{_CACHE_VERSION}\n{image_size}\n{center_fraction!r}\n".encode())
    for rel, label in files:
        st = os.stat(base / rel)
        digest.update(f"{rel}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _open_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The memory-mapped cache at ``path`` if it holds ``uint8`` images of ``shape``."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="c", allow_pickle=False)  # copy-on-write: writable
    except (OSError, ValueError):
        return None
    if arr.dtype != np.uint8 or arr.shape != shape:
        return None
    return arr


def _decode_all(base: Path, files: list[tuple[str, int]], out: np.ndarray, image_size: int,
                center_fraction: float, what: str) -> None:
    def work(i: int) -> None:
        out[i] = decode_image(base / files[i][0], image_size, center_fraction)

    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding
        results = pool.map(work, range(len(files)), chunksize=16)
        for _ in tqdm(results, total=len(files), desc=f"decode {what}", unit="img",
                      disable=True if len(files) < 1000 else None):
            pass


def load_imagenet(split: str, root: str | os.PathLike, image_size: int = DEFAULT_IMAGE_SIZE,
                  *, cache: bool = True,
                  center_fraction: float = CENTER_FRACTION) -> ImageDataset:
    """Split ``"train"`` (``train/``) or ``"test"`` (``val/``) of ``root/imagenet`` as an
    :class:`ImageDataset` of ``uint8 [N, 3, image_size, image_size]`` images.

    With ``cache`` (default) the decoded images are kept in a memory-mapped ``.npy``
    file beside the data and reused by later loads (see the module docs).
    """
    if split not in SPLIT_FOLDERS:
        raise DatasetError(f"unknown split {split!r}; choose one of: {', '.join(SPLIT_FOLDERS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise DatasetError(f"image_size must be a positive integer, got {image_size!r}")
    if not 0 < center_fraction <= 1:
        raise DatasetError(f"center_fraction must be in (0, 1], got {center_fraction!r}")
    _pillow()
    classes, listing = scan_imagenet(root)
    files = listing[split]
    base = Path(root) / FOLDER
    shape = (len(files), 3, image_size, image_size)
    what = f"imagenet {SPLIT_FOLDERS[split]}"
    images: np.ndarray | None = None
    if cache:
        key = _cache_key(base, files, image_size, center_fraction)
        path = base / CACHE_DIR / f"{SPLIT_FOLDERS[split]}-{image_size}-{key}.npy"
        images = _open_cache(path, shape)
        if images is None:
            tmp = path.with_name(f"{temp_prefix(path.name)}{os.urandom(4).hex()}.tmp")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                check_free_space(path.parent, int(np.prod(shape)) + (64 << 10),
                                 "the decoded-image cache")  # a memory map on a full disk
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            except OSError as exc:  # DiskFull too
                tmp.unlink(missing_ok=True)
                warnings.warn(f"cannot write the decoded-image cache in {path.parent} "
                              f"({one_line(exc)}); decoding {what} into memory", stacklevel=2)
            else:
                try:
                    _decode_all(base, files, out, image_size, center_fraction, what)
                    out.flush()
                    del out
                    os.replace(tmp, path)  # atomic: concurrent loaders each write a whole file
                finally:
                    tmp.unlink(missing_ok=True)
                images = _open_cache(path, shape)
    if images is None:
        images = np.empty(shape, dtype=np.uint8)
        _decode_all(base, files, images, image_size, center_fraction, what)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return ImageDataset(torch.from_numpy(images), labels, FOLDER, split, classes)
