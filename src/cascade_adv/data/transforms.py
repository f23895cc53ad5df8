"""Vectorised image transforms on ``[N, C, H, W]`` tensors, on whatever device they are.

Images are stored as ``uint8`` (0..255) and converted to ``float32`` in [0, 1] with
:func:`to_float` right before use; :func:`to_uint8` is its rounding inverse.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cascade_adv.data.dataset import ImageDataset

_MEAN_CHUNK = 4096


def _check_images(x: torch.Tensor, what: str) -> tuple[int, int, int, int]:
    if x.dim() != 4:
        raise ValueError(f"{what} expects [N, C, H, W] images, got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    return int(n), int(c), int(h), int(w)


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """``uint8`` 0..255 -> ``float32`` in [0, 1] (``x / 255``)."""
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects a uint8 tensor, got {x_uint8.dtype}")
    return x_uint8.to(torch.float32).div_(255.0)


def to_uint8(x_float: torch.Tensor) -> torch.Tensor:
    """Float in [0, 1] -> ``uint8`` as ``round(clamp(x, 0, 1) * 255)`` (half to even)."""
    if not x_float.is_floating_point():
        raise TypeError(f"to_uint8 expects a floating-point tensor, got {x_float.dtype}")
    return x_float.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


def per_pixel_mean(images: torch.Tensor) -> torch.Tensor:
    """Mean image of ``uint8 [N, C, H, W]`` as ``float32 [C, H, W]`` in [0, 1].

    Sums exactly in ``int64`` over chunks of images (no full-size copy), then divides
    in ``float64``. Floating-point input is taken as already in [0, 1] and summed in
    ``float64``.
    """
    n, _, _, _ = _check_images(images, "per_pixel_mean")
    if n == 0:
        raise ValueError("per_pixel_mean needs at least one image")
    is_uint8 = images.dtype == torch.uint8
    acc_dtype = torch.int64 if is_uint8 else torch.float64
    total = torch.zeros(images.shape[1:], dtype=acc_dtype, device=images.device)
    for start in range(0, n, _MEAN_CHUNK):
        total += images[start : start + _MEAN_CHUNK].sum(dim=0, dtype=acc_dtype)
    scale = n * (255.0 if is_uint8 else 1.0)
    return (total.to(torch.float64) / scale).to(torch.float32)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """``[N, C, H, W]`` -> ``[N, C, size, size]`` at offset ``((H-size)//2, (W-size)//2)``."""
    _, _, h, w = _check_images(x, "center_crop")
    if not 0 < size <= min(h, w):
        raise ValueError(f"crop size {size} does not fit images of {h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return x[:, :, top : top + size, left : left + size]


def random_crop_flip(
    x: torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    flip: bool = True,
    *,
    padding: int = 0,
) -> torch.Tensor:
    """Per-example random ``size x size`` crop and (if ``flip``) horizontal flip, p = 0.5.

    Works for any dtype. With ``padding > 0`` the images are first zero-padded on all
    four sides (the usual "pad 4, crop 32" CIFAR augmentation). Offsets are uniform in
    ``[0, H' - size]`` x ``[0, W' - size]`` (``H', W'`` after padding). Random numbers
    are drawn from ``generator`` (which must live on ``x.device``) or torch's default
    generator: rows offsets, then column offsets, then flips. One gather, no loop.
    """
    n, c, h, w = _check_images(x, "random_crop_flip")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding:
        padded = x.new_zeros((n, c, h + 2 * padding, w + 2 * padding))
        padded[:, :, padding : padding + h, padding : padding + w] = x
        x, h, w = padded, h + 2 * padding, w + 2 * padding
    if not 0 < size <= min(h, w):
        raise ValueError(f"crop size {size} does not fit images of {h}x{w}")
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(
            f"generator is on {generator.device} but the images are on {x.device}; "
            "create the generator on the images' device"
        )
    dev = x.device
    top = torch.randint(0, h - size + 1, (n,), generator=generator, device=dev)
    left = torch.randint(0, w - size + 1, (n,), generator=generator, device=dev)
    steps = torch.arange(size, device=dev)
    rows = top[:, None] + steps  # [N, size]
    cols = left[:, None] + steps  # [N, size]
    if flip:
        flipped = torch.randint(0, 2, (n,), generator=generator, device=dev).bool()
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n, device=dev)[:, None, None, None]
    idx_c = torch.arange(c, device=dev)[None, :, None, None]
    return x[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def iterate_batches(
    ds: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images_uint8, labels)`` batches on the dataset's device.

    In order, or (``shuffle=True``) in the order of one ``torch.randperm`` drawn from
    ``generator`` (which must live on the dataset's device). The last, smaller batch
    is dropped if ``drop_last``.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(ds)
    order = torch.randperm(n, generator=generator, device=ds.images.device) if shuffle else None
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        if drop_last and end - start < batch_size:
            break
        if order is None:
            yield ds.images[start:end], ds.labels[start:end]
        else:
            idx = order[start:end]
            yield ds.images[idx], ds.labels[idx]
