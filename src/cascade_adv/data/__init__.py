"""Datasets (digits, MNIST, CIFAR-10, ImageNet-style folders) as in-memory ``uint8``
tensors, and transforms.

``load_dataset(name, split, root, download)`` returns an :class:`ImageDataset`; files
are verified against published md5 sums (see :mod:`cascade_adv.data.sources`);
ImageNet folders are decoded with Pillow and cached (see
:mod:`cascade_adv.data.imagefolder`).
"""

from cascade_adv.data.dataset import DATASETS, SPLITS, ImageDataset
from cascade_adv.data.loading import load_dataset, resolve_data_root
from cascade_adv.data.transforms import (
    center_crop,
    iterate_batches,
    per_pixel_mean,
    random_crop_flip,
    to_float,
    to_uint8,
)

__all__ = [
    "DATASETS",
    "SPLITS",
    "ImageDataset",
    "center_crop",
    "iterate_batches",
    "load_dataset",
    "per_pixel_mean",
    "random_crop_flip",
    "resolve_data_root",
    "to_float",
    "to_uint8",
]
