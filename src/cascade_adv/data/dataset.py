"""The in-memory image dataset returned by :func:`cascade_adv.data.load_dataset`."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cascade_adv.errors import DatasetError

#: Names accepted by :func:`cascade_adv.data.load_dataset`.
DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10", "imagenet")
#: Splits accepted by :func:`cascade_adv.data.load_dataset`.
SPLITS: tuple[str, ...] = ("train", "test")


@dataclass(eq=False)
class ImageDataset:
    """A whole labelled image set held as two tensors.

    ``images`` is ``uint8`` ``[N, C, H, W]`` (contiguous, values 0..255) and
    ``labels`` is ``int64`` ``[N]`` with values in ``0 .. len(classes) - 1``.
    Conversion to float happens in the model/attack code (see
    :mod:`cascade_adv.data.transforms`), so the dataset stays 4x smaller.
    """

    images: torch.Tensor
    labels: torch.Tensor
    name: str
    split: str
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"labels must be [N] with N = {self.images.shape[0]}, got "
                f"{tuple(self.labels.shape)}"
            )
        if self.labels.dtype != torch.int64:
            self.labels = self.labels.to(torch.int64)
        if self.labels.device != self.images.device:
            raise ValueError("images and labels must be on the same device")
        self.images = self.images.contiguous()
        self.labels = self.labels.contiguous()
        self.classes = list(self.classes)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes}, "
            f"device={self.images.device})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageDataset:
        """A copy on ``device`` (images stay ``uint8``); ``self`` if already there."""
        device = torch.device(device)
        images = self.images.to(device)
        labels = self.labels.to(device)
        if images is self.images and labels is self.labels:
            return self
        return ImageDataset(images, labels, self.name, self.split, list(self.classes))

    def subset(self, index: int | slice | torch.Tensor) -> ImageDataset:
        """The examples picked by ``index``.

        ``index`` is an ``int`` ``n`` (the first ``n`` examples, ``0 <= n <= len``),
        a ``slice``, or a 1-D ``int64``/``bool`` tensor (moved to the dataset's device).
        """
        if isinstance(index, bool):
            raise TypeError("subset index must be an int, a slice or a tensor, not bool")
        if isinstance(index, int):
            if not 0 <= index <= len(self):
                raise DatasetError(
                    f"cannot take the first {index} examples of {self.name} {self.split} "
                    f"({len(self)} examples); use a subset size between 0 and {len(self)}"
                )
            index = slice(0, index)
        if isinstance(index, slice):
            images, labels = self.images[index], self.labels[index]
        elif isinstance(index, torch.Tensor):
            if index.dim() != 1 or index.dtype not in (
                torch.int64,
                torch.int32,
                torch.bool,
            ):
                raise TypeError(
                    f"subset index tensor must be 1-D int64/int32/bool, got {index.dtype} "
                    f"{tuple(index.shape)}"
                )
            index = index.to(self.images.device)
            images, labels = self.images[index], self.labels[index]
        else:
            raise TypeError(f"subset index must be an int, a slice or a tensor, not {index!r}")
        return ImageDataset(
            images.contiguous(), labels.contiguous(), self.name, self.split, list(self.classes)
        )
