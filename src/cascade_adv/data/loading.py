"""The single entry point :func:`load_dataset` and data-root resolution."""

from __future__ import annotations

import os
from pathlib import Path

from cascade_adv.data import sources
from cascade_adv.data.cifar import load_cifar10
from cascade_adv.data.dataset import DATASETS, SPLITS, ImageDataset
from cascade_adv.data.digits import load_digits_dataset
from cascade_adv.data.imagefolder import DEFAULT_IMAGE_SIZE, load_imagenet
from cascade_adv.data.mnist import load_mnist
from cascade_adv.errors import DatasetError

_ALIASES = {"cifar-10": "cifar10", "cifar_10": "cifar10"}


def resolve_data_root(root: str | os.PathLike | None = None) -> Path:
    """``root`` if given, else ``$CASCADE_ADV_DATA`` if set and non-empty, else ``./data``."""
    if root is None or str(root) == "":
        root = os.environ.get(sources.DATA_ENV) or "data"
    return Path(root).expanduser()


def dataset_inputs(name: str, root: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """``(label, path)`` of the existing folders (or, where a reader also looks directly
    in the data root, files) that the reader of dataset ``name`` reads under ``root``
    (:func:`resolve_data_root`): ``ROOT/mnist`` or ``ROOT/MNIST/raw`` or the IDX files in
    ``ROOT``; ``ROOT/cifar10`` or the batch folders or files in ``ROOT``;
    ``ROOT/imagenet``.  Nothing for the bundled digits and unknown names.  What commands
    must never write into (docs/reliability.md)."""
    key = _ALIASES.get(str(name).strip().lower(), str(name).strip().lower())
    data_root = resolve_data_root(root)
    if key == "mnist":
        folders = [data_root / "mnist", data_root / "MNIST" / "raw"]
        files = [f"{n}{gz}" for pair in sources.MNIST_FILES.values() for n in pair
                 for gz in ("", ".gz")]
    elif key == "cifar10":
        folders = [data_root / "cifar10", data_root / sources.CIFAR10_BIN_DIR,
                   data_root / sources.CIFAR10_PY_DIR]
        files = [*sources.CIFAR10_BIN_MD5, *sources.CIFAR10_PY_MD5]
    elif key == "imagenet":
        folders, files = [data_root / "imagenet"], []
    else:
        return []
    found = [("the dataset folder", f) for f in folders if f.is_dir()]
    return found or [("a dataset file", data_root / n) for n in files
                     if (data_root / n).is_file()]


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike | None = None,
    download: bool = False,
    mirror: str | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Load a whole split into memory (CPU) as an :class:`ImageDataset`.

    ``name`` is one of :data:`DATASETS`, ``split`` ``"train"`` or ``"test"``. Files are
    looked up under :func:`resolve_data_root` (``root/mnist/``, ``root/cifar10/
    cifar-10-batches-bin/``, ``root/imagenet/{train,val}/<class>/``, ... see the
    loaders) and verified against published md5 sums (not ImageNet folders). With
    ``download=True`` missing files are fetched from ``mirror`` (a base URL, or several
    comma-separated), else ``$CASCADE_ADV_MIRROR``, else the official locations
    (not ImageNet). ``image_size`` is the side of ImageNet images after resizing and
    center cropping (default 299, K17's Inception v3 input; see
    :mod:`cascade_adv.data.imagefolder`); the other datasets have fixed sizes. Every
    user-fixable problem raises :class:`DatasetError`.
    """
    if not isinstance(name, str) or not isinstance(split, str):
        raise DatasetError(
            f"dataset name and split must be strings, got {name!r} and {split!r}; use one of "
            f"{', '.join(DATASETS)} and one of {', '.join(SPLITS)}"
        )
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    split_key = split.strip().lower()
    if split_key not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    if image_size is not None and key != "imagenet":
        raise DatasetError(f"image_size applies to the imagenet dataset only, not {key}; "
                           "leave it unset")
    if key == "digits":
        return load_digits_dataset(split_key)
    data_root = resolve_data_root(root)
    if key == "imagenet":
        if download:
            raise DatasetError("ImageNet cannot be downloaded automatically; put its images "
                               f"under {data_root}/imagenet/{{train,val}}/<class>/")
        size = DEFAULT_IMAGE_SIZE if image_size is None else image_size
        return load_imagenet(split_key, data_root, size)
    if key == "mnist":
        return load_mnist(split_key, data_root, download=download, mirror=mirror)
    return load_cifar10(split_key, data_root, download=download, mirror=mirror)
