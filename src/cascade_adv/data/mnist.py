"""MNIST from the original IDX files (gzip-compressed or raw).

IDX format (big-endian): 2 zero bytes, a type byte (``0x08`` = ``uint8``), the
number of dimensions ``d``, then ``d`` 32-bit sizes and the row-major payload.
Images have magic 2051 (``[N, 28, 28]``), labels magic 2049 (``[N]``).
``.gz`` files are checked against the published md5 sums, raw files against the
md5 of the published files' decompressed content (:mod:`cascade_adv.data.sources`).
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import torch

from cascade_adv.data import sources
from cascade_adv.data._checks import check_file_md5, read_maybe_gzip
from cascade_adv.data.dataset import ImageDataset
from cascade_adv.data.download import download_file, resolve_mirrors
from cascade_adv.errors import DatasetError

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049
MNIST_CLASSES: tuple[str, ...] = tuple(str(i) for i in range(10))

_REFETCH = "delete it and download it again (download=True)"


def parse_idx(
    data: bytes, source: str = "<bytes>", expected_magic: int | None = None
) -> np.ndarray:
    """Parse an uncompressed ``uint8`` IDX blob into an array of the header's shape.

    Raises :class:`DatasetError` (naming ``source``) on a bad magic number, an
    unsupported type, or a payload whose length differs from the header's sizes.
    """
    if len(data) < 4:
        raise DatasetError(f"IDX file {source} is only {len(data)} bytes (truncated); {_REFETCH}")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise DatasetError(
            f"IDX file {source} has magic number {magic}, expected {expected_magic} "
            f"(wrong or corrupt file); {_REFETCH}"
        )
    ndim = data[3]
    if data[:2] != b"\0\0" or data[2] != 0x08 or ndim == 0:
        raise DatasetError(
            f"IDX file {source} has magic number {magic}, not an unsigned-byte IDX header "
            f"(wrong or corrupt file); {_REFETCH}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"IDX file {source} ends inside its header (truncated); {_REFETCH}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DatasetError(
            f"IDX file {source} header says {'x'.join(map(str, dims))} = {expected} bytes but "
            f"the payload has {len(data) - header} bytes (truncated or corrupt); {_REFETCH}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read an IDX file, gunzipping it when its name ends in ``.gz`` (no md5 check)."""
    path = Path(path)
    data = read_maybe_gzip(path, "IDX", _REFETCH)
    return parse_idx(data, str(path), expected_magic)


def _candidate_dirs(root: Path) -> list[Path]:
    return [root / "mnist", root / "MNIST" / "raw", root]


def _find(folder: Path, name: str) -> Path | None:
    for path in (folder / f"{name}.gz", folder / name):
        if path.is_file():
            return path
    return None


def _verify(path: Path) -> None:
    """Check ``path`` against the published (``.gz``) or derived (raw) md5."""
    fix = "delete it and download it again (download=True) or replace it with the original"
    table = sources.MNIST_MD5 if path.suffix == ".gz" else sources.MNIST_RAW_MD5
    expected = table.get(path.name)
    if expected is not None:
        check_file_md5(path, expected, "MNIST", fix)


def find_mnist_files(
    split: str, root: Path, download: bool = False, mirror: str | None = None
) -> tuple[Path, Path]:
    """``(images, labels)`` paths for ``split``, downloading them if asked and missing."""
    img_name, lbl_name = sources.MNIST_FILES[split]
    for folder in _candidate_dirs(root):
        img, lbl = _find(folder, img_name), _find(folder, lbl_name)
        if img is not None and lbl is not None:
            return img, lbl
    if not download:
        where = " or ".join(str(d) for d in _candidate_dirs(root))
        raise DatasetError(
            f"MNIST {split} files {img_name}.gz and {lbl_name}.gz not found in {where}; pass "
            f"--data-root DIR pointing to a folder with the MNIST .gz files (or set "
            f"{sources.DATA_ENV}), or download=True"
        )
    folder = root / "mnist"
    bases = resolve_mirrors("mnist", mirror)
    paths = []
    for name in (img_name, lbl_name):
        found = _find(folder, name)
        if found is None:
            gz = f"{name}.gz"
            found = download_file(gz, folder / gz, sources.MNIST_MD5[gz], bases)
        paths.append(found)
    return paths[0], paths[1]


def load_mnist(
    split: str, root: Path, download: bool = False, mirror: str | None = None
) -> ImageDataset:
    """MNIST ``split`` as ``uint8`` ``[N, 1, 28, 28]`` images and ``int64`` labels."""
    img_path, lbl_path = find_mnist_files(split, root, download, mirror)
    _verify(img_path)
    _verify(lbl_path)
    images = read_idx(img_path, IDX_IMAGES_MAGIC)
    labels = read_idx(lbl_path, IDX_LABELS_MAGIC)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"MNIST files {img_path} ({'x'.join(map(str, images.shape))}) and {lbl_path} "
            f"({'x'.join(map(str, labels.shape))}) do not match; replace them with the "
            "original files"
        )
    if labels.size and labels.max() >= len(MNIST_CLASSES):
        raise DatasetError(
            f"MNIST labels file {lbl_path} has label {int(labels.max())} > 9; replace it with "
            "the original file"
        )
    return ImageDataset(
        images=torch.from_numpy(images).unsqueeze(1).contiguous(),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name="mnist",
        split=split,
        classes=list(MNIST_CLASSES),
    )
