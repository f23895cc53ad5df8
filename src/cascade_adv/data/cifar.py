"""CIFAR-10 from the official binary version, or the python version as a fallback.

Binary version (``cifar-10-batches-bin/``): ``data_batch_1.bin`` .. ``data_batch_5.bin``
and ``test_batch.bin``, each plain or gzip-compressed (``.bin.gz``). Each ``.bin`` is
10000 records of 3073 bytes: a label byte (0-9), then 1024 red, 1024 green and 1024
blue bytes (each plane 32 x 32, row-major). The md5 of the (decompressed) content is
checked against the published md5 of the official ``.bin`` file.

Python version (``cifar-10-batches-py/``): pickled dicts. A batch is unpickled only
after its md5 matches the published checksum of the official file; any other
pickle is refused, since unpickling runs arbitrary code.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import torch

from cascade_adv.data import sources
from cascade_adv.data._checks import check_file_md5, read_maybe_gzip
from cascade_adv.data.dataset import ImageDataset
from cascade_adv.data.download import download_file, extract_cifar10_bin, resolve_mirrors
from cascade_adv.errors import DatasetError, one_line

RECORD_BYTES = 3073
_REFETCH = "delete it and download it again (download=True)"


def _parse_cifar_bin(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Parse binary-version records (NO checksum check): ``uint8 [N,3,32,32]``, ``int64 [N]``."""
    if len(data) == 0 or len(data) % RECORD_BYTES:
        raise DatasetError(
            f"CIFAR-10 file {source} has {len(data)} bytes, not a whole number of "
            f"{RECORD_BYTES}-byte records (truncated or corrupt); {_REFETCH}"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    if labels.max() >= len(sources.CIFAR10_CLASSES):
        raise DatasetError(
            f"CIFAR-10 file {source} has label {int(labels.max())} > 9 (corrupt); {_REFETCH}"
        )
    images = records[:, 1:].reshape(-1, 3, 32, 32).copy()  # writable, C-contiguous
    return images, labels


def _bin_path(folder: Path, batch: str) -> Path | None:
    for path in (folder / f"{batch}.bin", folder / f"{batch}.bin.gz"):
        if path.is_file():
            return path
    return None


def _read_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one (optionally gzipped) ``.bin`` batch, checking its content md5."""
    data = read_maybe_gzip(path, "CIFAR-10", _REFETCH)
    bin_name = path.name.removesuffix(".gz")
    expected = sources.CIFAR10_BIN_MD5.get(bin_name)
    if expected is None:
        raise DatasetError(f"{path} is not an official CIFAR-10 batch name; rename or remove it")
    actual = hashlib.md5(data).hexdigest()
    if actual != expected:
        raise DatasetError(
            f"CIFAR-10 file {path} content has md5 {actual} but the published checksum of "
            f"{bin_name} is {expected} (corrupt or not the official file); {_REFETCH}"
        )
    return _parse_cifar_bin(data, str(path))


def _read_classes(folder: Path) -> list[str]:
    """Class names from ``batches.meta.txt`` (blank lines skipped), else the standard ones."""
    meta = folder / sources.CIFAR10_META
    if not meta.is_file():
        return list(sources.CIFAR10_CLASSES)
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"cannot read {meta} ({one_line(exc)}); delete it to use the standard class names"
        ) from exc
    names = [line.strip() for line in lines if line.strip()]
    if len(names) != len(sources.CIFAR10_CLASSES):
        raise DatasetError(
            f"{meta} lists {len(names)} class names, expected {len(sources.CIFAR10_CLASSES)}; "
            "fix it or delete it to use the standard class names"
        )
    return names


def _load_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Unpickle one python-version batch, but only if its md5 is the published one."""
    expected = sources.CIFAR10_PY_MD5.get(path.name)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(
            f"cannot read CIFAR-10 file {path} ({one_line(exc)}); {_REFETCH}"
        ) from exc
    actual = hashlib.md5(data).hexdigest()
    if expected is None or actual != expected:
        raise DatasetError(
            f"refusing to unpickle {path}: it is a pickle whose md5 {actual} does not match "
            f"the official CIFAR-10 python-version checksum {expected}; delete it and use "
            "the official file or the binary version (cifar-10-batches-bin)"
        )
    # Safe: the bytes are exactly those of the official file (md5 checked just above).
    obj = pickle.loads(data, encoding="bytes")
    if not isinstance(obj, dict):
        raise DatasetError(f"CIFAR-10 python batch {path} is not a dict; {_REFETCH}")
    raw = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    try:
        images = np.asarray(raw, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"CIFAR-10 python batch {path} is malformed; {_REFETCH}") from exc
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"CIFAR-10 python batch {path} is malformed; {_REFETCH}")
    return np.ascontiguousarray(images), labels


def _bin_dirs(root: Path) -> list[Path]:
    return [
        root / "cifar10" / sources.CIFAR10_BIN_DIR,
        root / sources.CIFAR10_BIN_DIR,
        root / "cifar10",
        root,
    ]


def _py_dirs(root: Path) -> list[Path]:
    return [
        root / "cifar10" / sources.CIFAR10_PY_DIR,
        root / sources.CIFAR10_PY_DIR,
        root / "cifar10",
        root,
    ]


def _find_bin(root: Path, batches: tuple[str, ...]) -> tuple[Path, list[Path]] | None:
    for folder in _bin_dirs(root):
        paths = [_bin_path(folder, b) for b in batches]
        if all(p is not None for p in paths):
            return folder, [p for p in paths if p is not None]
    return None


def _find_py(root: Path, batches: tuple[str, ...]) -> list[Path] | None:
    for folder in _py_dirs(root):
        paths = [folder / b for b in batches]
        if all(p.is_file() for p in paths):
            return paths
    return None


def _download_bin(root: Path, mirror: str | None) -> None:
    """Fetch (or reuse) the verified official archive and extract it under ``root/cifar10``."""
    ((name, md5),) = sources.CIFAR10_BIN_ARCHIVE.items()
    folder = root / "cifar10"
    archive = folder / name
    if archive.is_file():
        check_file_md5(archive, md5, "CIFAR-10 archive", "delete it and run again")
    else:
        download_file(name, archive, md5, resolve_mirrors("cifar10", mirror))
    extract_cifar10_bin(archive, folder / sources.CIFAR10_BIN_DIR)


def load_cifar10(
    split: str, root: Path, download: bool = False, mirror: str | None = None
) -> ImageDataset:
    """CIFAR-10 ``split`` as ``uint8`` ``[N, 3, 32, 32]`` (train: batches 1-5 in order)."""
    batches = sources.CIFAR10_BATCHES[split]
    found = _find_bin(root, batches)
    py_paths = None if found is not None else _find_py(root, batches)
    if found is None and py_paths is None:
        if not download:
            raise DatasetError(
                f"CIFAR-10 {split} batches ({', '.join(b + '.bin[.gz]' for b in batches)}) "
                f"not found in {', '.join(map(str, _bin_dirs(root)))}, nor the python version "
                f"in {sources.CIFAR10_PY_DIR}/; pass --data-root DIR pointing to a folder with "
                f"{sources.CIFAR10_BIN_DIR}/ (or set {sources.DATA_ENV}), or download=True"
            )
        _download_bin(root, mirror)
        found = _find_bin(root, batches)
        if found is None:  # pragma: no cover - extract_cifar10_bin checks the files
            raise DatasetError(f"CIFAR-10 extraction under {root} failed; delete it and retry")
    if found is not None:
        folder, paths = found
        parts = [_read_bin_batch(p) for p in paths]
        classes = _read_classes(folder)
    else:
        assert py_paths is not None
        parts = [_load_py_batch(p) for p in py_paths]
        classes = list(sources.CIFAR10_CLASSES)
    images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        name="cifar10",
        split=split,
        classes=classes,
    )
