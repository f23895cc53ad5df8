"""scikit-learn's bundled 8x8 handwritten digits (1797 images, no files needed).

Pixel values 0..16 are mapped to ``uint8`` by ``round(v * 255 / 16)``. The split is
fixed: a permutation drawn with ``numpy.random.default_rng(0)``; its last 360
indices are the test set, the other 1437 the training set (both in permutation order).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from cascade_adv.data.dataset import ImageDataset

DIGITS_TEST_SIZE = 360
DIGITS_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(np.asarray(bunch.images, dtype=np.float64) * 255.0 / 16.0)
    images = np.clip(images, 0, 255).astype(np.uint8)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels


def load_digits_dataset(split: str) -> ImageDataset:
    """The ``train`` (1437) or ``test`` (360) part of the digits set, ``uint8 [N,1,8,8]``."""
    images, labels = _digits_arrays()
    perm = np.random.default_rng(0).permutation(len(labels))
    index = perm[-DIGITS_TEST_SIZE:] if split == "test" else perm[:-DIGITS_TEST_SIZE]
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(images[index])),
        labels=torch.from_numpy(labels[index].copy()),
        name="digits",
        split=split,
        classes=list(DIGITS_CLASSES),
    )
