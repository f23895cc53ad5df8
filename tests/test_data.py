"""Tests of cascade_adv.data: IDX and CIFAR-10 parsing, checksums, digits, transforms.

Everything except the ``realdata`` tests runs on tiny synthetic files written into
``tmp_path``; the ``realdata`` tests need ``CASCADE_ADV_DATA`` (see the README of the
shared data folder) and are skipped without it.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from cascade_adv.data import (
    DATASETS,
    ImageDataset,
    _checks,
    center_crop,
    iterate_batches,
    load_dataset,
    per_pixel_mean,
    random_crop_flip,
    resolve_data_root,
    sources,
    to_float,
    to_uint8,
    transforms,
)
from cascade_adv.data.cifar import _parse_cifar_bin
from cascade_adv.data.mnist import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, parse_idx, read_idx
from cascade_adv.errors import CascadeAdvError, DatasetError

# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An unsigned-byte IDX blob of ``array`` (magic defaults to 0x0800 + ndim)."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 + array.ndim if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tiny_mnist(n: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, size=n, dtype=np.uint8),
    )


def write_mnist(
    folder: Path, monkeypatch: pytest.MonkeyPatch, split: str = "train", gz: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Write tiny MNIST-format files for ``split`` and patch the md5 tables to accept them."""
    images, labels = tiny_mnist(5 if split == "train" else 3, seed=0 if split == "train" else 1)
    folder.mkdir(parents=True, exist_ok=True)
    img_name, lbl_name = sources.MNIST_FILES[split]
    for name, blob in ((img_name, idx_bytes(images)), (lbl_name, idx_bytes(labels))):
        if gz:
            data = gzip.compress(blob, mtime=0)
            (folder / f"{name}.gz").write_bytes(data)
            monkeypatch.setitem(sources.MNIST_MD5, f"{name}.gz", md5(data))
        else:
            (folder / name).write_bytes(blob)
            monkeypatch.setitem(sources.MNIST_RAW_MD5, name, md5(blob))
    return images, labels


def cifar_records(labels: list[int], seed: int = 0) -> tuple[bytes, np.ndarray]:
    """Binary-version records for ``labels`` and the matching [N, 3, 32, 32] images."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    rows = [bytes([lab]) + img.tobytes() for lab, img in zip(labels, images)]
    return b"".join(rows), images


def write_cifar_bin(
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    batches: dict[str, list[int]],
    gz: bool = False,
) -> dict[str, np.ndarray]:
    """Write synthetic ``<batch>.bin[.gz]`` files and patch their md5 into the table."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (batch, labels) in enumerate(batches.items()):
        data, images = cifar_records(labels, seed=i)
        monkeypatch.setitem(sources.CIFAR10_BIN_MD5, f"{batch}.bin", md5(data))
        if gz:
            (folder / f"{batch}.bin.gz").write_bytes(gzip.compress(data, mtime=0))
        else:
            (folder / f"{batch}.bin").write_bytes(data)
        out[batch] = images
    return out


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pass ``root`` explicitly; never fall back to the real data or a mirror."""
    monkeypatch.delenv(sources.DATA_ENV, raising=False)
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)


# --------------------------------------------------------------------------- IDX


def test_parse_idx_exact() -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = parse_idx(idx_bytes(arr), "x", expected_magic=IDX_IMAGES_MAGIC)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable  # a private copy, safe for torch.from_numpy


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_gz_and_raw(tmp_path: Path, gz: bool) -> None:
    images = np.arange(3 * 5 * 2, dtype=np.uint8).reshape(3, 5, 2)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    paths = []
    for name, arr in (("img", images), ("lbl", labels)):
        blob = idx_bytes(arr)
        path = tmp_path / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(blob) if gz else blob)
        paths.append(path)
    np.testing.assert_array_equal(read_idx(paths[0], IDX_IMAGES_MAGIC), images)
    np.testing.assert_array_equal(read_idx(paths[1], IDX_LABELS_MAGIC), labels)
    # magic defaults to 0x0800 + ndim: exactly the MNIST values
    assert idx_bytes(images)[:4] == (2051).to_bytes(4, "big")
    assert idx_bytes(labels)[:4] == (2049).to_bytes(4, "big")


def test_idx_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "weird-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros(3, np.uint8))))  # a labels file
    with pytest.raises(DatasetError, match="weird-images-idx3-ubyte.gz.*magic number 2049"):
        read_idx(path, IDX_IMAGES_MAGIC)
    path.write_bytes(gzip.compress(b"\x01\x02\x08\x01" + b"\0\0\0\x01" + b"\x05"))
    with pytest.raises(DatasetError, match="weird-images-idx3-ubyte.gz"):
        read_idx(path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 10, 10)))
    path = tmp_path / "cut-images-idx3-ubyte.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=r"cut-images-idx3-ubyte\.gz.*(truncated|corrupt)"):
        read_idx(path, IDX_IMAGES_MAGIC)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match=r"cut-images-idx3-ubyte\.gz"):
        read_idx(path, IDX_IMAGES_MAGIC)


@pytest.mark.parametrize("delta", [-1, 1])
def test_idx_size_mismatch(tmp_path: Path, delta: int) -> None:
    blob = idx_bytes(np.zeros((2, 4, 4), np.uint8))
    blob = blob[:delta] if delta < 0 else blob + b"\0"
    path = tmp_path / "short-images-idx3-ubyte"
    path.write_bytes(blob)
    with pytest.raises(DatasetError, match=r"short-images-idx3-ubyte header says 2x4x4 = 32"):
        read_idx(path, IDX_IMAGES_MAGIC)
    (tmp_path / "hdr").write_bytes(blob[:9])  # ends inside the 16-byte header
    with pytest.raises(DatasetError, match="hdr ends inside its header"):
        read_idx(tmp_path / "hdr", IDX_IMAGES_MAGIC)


# --------------------------------------------------------------------------- MNIST loader


@pytest.mark.parametrize("layout", ["mnist", "flat", "torchvision"])
def test_load_mnist_layouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    folder = {
        "mnist": tmp_path / "mnist",
        "flat": tmp_path,
        "torchvision": tmp_path / "MNIST" / "raw",
    }[layout]
    images, labels = write_mnist(folder, monkeypatch, "train")
    ds = load_dataset("mnist", "train", root=tmp_path)
    assert isinstance(ds, ImageDataset)
    assert (ds.name, ds.split, ds.classes) == ("mnist", "train", [str(i) for i in range(10)])
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (5, 1, 28, 28)
    assert ds.labels.dtype == torch.int64 and ds.images.is_contiguous()
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)


def test_load_mnist_raw_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = write_mnist(tmp_path / "mnist", monkeypatch, "test", gz=False)
    ds = load_dataset("mnist", "test", root=str(tmp_path))
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), images)
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    # a raw file whose md5 differs from the known content md5 is refused
    monkeypatch.setitem(sources.MNIST_RAW_MD5, "t10k-labels-idx1-ubyte", "0" * 32)
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte has md5"):
        load_dataset("mnist", "test", root=tmp_path)


def test_load_mnist_root_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "mnist", monkeypatch, "train")
    monkeypatch.setenv(sources.DATA_ENV, str(tmp_path))
    assert resolve_data_root() == tmp_path
    assert len(load_dataset("mnist")) == 5
    monkeypatch.delenv(sources.DATA_ENV)
    assert resolve_data_root() == Path("data")
    assert resolve_data_root(tmp_path / "x") == tmp_path / "x"


def test_load_mnist_md5_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "mnist", monkeypatch, "train")
    monkeypatch.setitem(sources.MNIST_MD5, "train-images-idx3-ubyte.gz", "f" * 32)
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "train", root=tmp_path)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and "published checksum" in msg
    assert "\n" not in msg and "download" in msg


def test_load_mnist_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "test", root=tmp_path)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte.gz" in msg and "--data-root" in msg and "\n" not in msg
    assert isinstance(info.value, CascadeAdvError)


def test_mnist_md5_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path / "mnist", monkeypatch, "train")
    calls: list[str] = []
    real = _checks.file_md5

    def counting(path: str) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(_checks, "file_md5", counting)
    _checks._md5_keyed.cache_clear()
    load_dataset("mnist", root=tmp_path)
    load_dataset("mnist", root=tmp_path)
    assert len(calls) == 2  # images + labels, hashed once each
    lbl = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    st = lbl.stat()
    os.utime(lbl, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "modified": hash again
    load_dataset("mnist", root=tmp_path)
    assert len(calls) == 3
    _checks._md5_keyed.cache_clear()


# --------------------------------------------------------------------------- CIFAR-10


def test_parse_cifar_bin_plane_order() -> None:
    n = 3
    records = []
    for i in range(n):
        red = (np.arange(1024) + i) % 256
        green = np.full(1024, 100 + i)
        blue = (np.arange(1024)[::-1] * 7 + i) % 256
        records.append(
            bytes([9 - i]) + np.concatenate([red, green, blue]).astype(np.uint8).tobytes()
        )
    images, labels = _parse_cifar_bin(b"".join(records))
    assert images.shape == (n, 3, 32, 32) and images.dtype == np.uint8
    assert images.flags.c_contiguous and images.flags.writeable
    np.testing.assert_array_equal(labels, [9, 8, 7])
    assert labels.dtype == np.int64
    for i in range(n):
        # first 32 bytes of the red plane are the top row
        np.testing.assert_array_equal(images[i, 0, 0], (np.arange(32) + i) % 256)
        np.testing.assert_array_equal(images[i, 0], ((np.arange(1024) + i) % 256).reshape(32, 32))
        assert (images[i, 1] == 100 + i).all()
        np.testing.assert_array_equal(
            images[i, 2], ((np.arange(1024)[::-1] * 7 + i) % 256).reshape(32, 32)
        )


def test_parse_cifar_bin_bad_sizes() -> None:
    data, _ = cifar_records([1, 2])
    with pytest.raises(DatasetError, match="not a whole number of 3073-byte records"):
        _parse_cifar_bin(data[:-1], "some.bin")
    with pytest.raises(DatasetError, match="0 bytes"):
        _parse_cifar_bin(b"", "empty.bin")
    bad = bytearray(data)
    bad[0] = 10
    with pytest.raises(DatasetError, match="label 10"):
        _parse_cifar_bin(bytes(bad), "bad.bin")


@pytest.mark.parametrize("gz", [False, True])
def test_cifar_md5_mismatch_on_real_name(tmp_path: Path, gz: bool) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    data, _ = cifar_records([3, 1])  # valid records, but not the official file
    name = "test_batch.bin.gz" if gz else "test_batch.bin"
    (folder / name).write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", "test", root=tmp_path)
    msg = str(info.value)
    assert name in msg and sources.CIFAR10_BIN_MD5["test_batch.bin"] in msg and "\n" not in msg


@pytest.mark.parametrize("sub", ["cifar10/cifar-10-batches-bin", "cifar-10-batches-bin", "."])
def test_load_cifar_bin_synthetic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sub: str
) -> None:
    folder = tmp_path / sub
    batches = {f"data_batch_{i}": [i, (i + 3) % 10] for i in range(1, 6)}
    batches["test_batch"] = [0, 9, 5]
    written = write_cifar_bin(folder, monkeypatch, batches, gz=(sub == "."))
    train = load_dataset("cifar10", "train", root=tmp_path)
    assert train.images.shape == (10, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [1, 4, 2, 5, 3, 6, 4, 7, 5, 8]  # batches 1..5 in order
    expected = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    np.testing.assert_array_equal(train.images.numpy(), expected)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert test.labels.tolist() == [0, 9, 5]
    np.testing.assert_array_equal(test.images.numpy(), written["test_batch"])
    assert test.classes == list(sources.CIFAR10_CLASSES) and test.num_classes == 10


def test_cifar_classes_from_meta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar_bin(folder, monkeypatch, {"test_batch": [1]})
    names = [f"c{i}" for i in range(10)]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    assert load_dataset("cifar-10", "test", root=tmp_path).classes == names
    (folder / "batches.meta.txt").write_text("a\nb\n")
    with pytest.raises(DatasetError, match="lists 2 class names"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_cifar_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", "train", root=tmp_path)
    msg = str(info.value)
    assert "data_batch_1.bin" in msg and "--data-root" in msg and "\n" not in msg


def _python_batch(labels: list[int]) -> tuple[bytes, np.ndarray]:
    images = np.random.default_rng(5).integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    obj = {b"batch_label": b"x", b"labels": labels, b"data": images.reshape(len(labels), -1)}
    return pickle.dumps(obj, protocol=2), images


def test_cifar_python_pickle_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data, _ = _python_batch([1, 2])
    (folder / "test_batch").write_bytes(data)

    def never(*args: object, **kwargs: object) -> object:
        raise AssertionError("an unverified pickle was unpickled")

    monkeypatch.setattr(pickle, "loads", never)
    monkeypatch.setattr(pickle, "load", never)
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", "test", root=tmp_path)
    msg = str(info.value)
    assert "refusing to unpickle" in msg and "test_batch" in msg
    assert sources.CIFAR10_PY_MD5["test_batch"] in msg and "official" in msg


def test_cifar_python_verified(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data, images = _python_batch([4, 0, 7])
    (folder / "test_batch").write_bytes(data)
    monkeypatch.setitem(sources.CIFAR10_PY_MD5, "test_batch", md5(data))  # "official" here
    ds = load_dataset("cifar10", "test", root=tmp_path)
    assert ds.labels.tolist() == [4, 0, 7]
    np.testing.assert_array_equal(ds.images.numpy(), images)
    # the binary version is preferred when both are there
    write_cifar_bin(tmp_path / "cifar10" / "cifar-10-batches-bin", monkeypatch, {"test_batch": [2]})
    assert load_dataset("cifar10", "test", root=tmp_path).labels.tolist() == [2]


# --------------------------------------------------------------------------- names, dataset


def test_unknown_name_and_split() -> None:
    with pytest.raises(DatasetError, match="unknown dataset 'svhn'; choose one of: digits"):
        load_dataset("svhn")
    with pytest.raises(DatasetError, match="unknown split 'val'; choose one of: train, test"):
        load_dataset("digits", "val")
    assert DATASETS == ("digits", "mnist", "cifar10", "imagenet")


def test_image_dataset_api() -> None:
    images = torch.arange(6 * 2 * 3 * 3, dtype=torch.int64).remainder(256).to(torch.uint8)
    ds = ImageDataset(
        images.reshape(6, 2, 3, 3), torch.tensor([0, 1, 2, 0, 1, 2]), "x", "train", ["a", "b", "c"]
    )
    assert len(ds) == 6 and ds.num_classes == 3 and ds.image_shape == (2, 3, 3)
    assert ds.to("cpu") is ds and ds.to(torch.device("cpu")).images.dtype == torch.uint8
    first = ds.subset(4)
    assert len(first) == 4 and torch.equal(first.labels, ds.labels[:4])
    assert torch.equal(ds.subset(slice(1, 6, 2)).labels, torch.tensor([1, 0, 2]))
    picked = ds.subset(torch.tensor([5, 0]))
    assert torch.equal(picked.images, ds.images[[5, 0]]) and picked.images.is_contiguous()
    assert len(ds.subset(ds.labels == 2)) == 2 and len(ds.subset(0)) == 0
    assert picked.classes == ds.classes and picked.classes is not ds.classes
    with pytest.raises(DatasetError, match="first 7 examples"):
        ds.subset(7)
    with pytest.raises(ValueError):
        ImageDataset(ds.images.float(), ds.labels, "x", "train", ["a"])
    with pytest.raises(ValueError):
        ImageDataset(ds.images, ds.labels[:3], "x", "train", ["a"])
    assert "n=6" in repr(ds)


# --------------------------------------------------------------------------- digits


def test_digits() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) == 1437 and len(test) == 360
    for ds in (train, test):
        assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (1, 8, 8)
        assert ds.labels.dtype == torch.int64 and ds.image_shape == (1, 8, 8)
        assert ds.labels.min() >= 0 and ds.labels.max() <= 9 and ds.num_classes == 10
        assert ds.classes == [str(i) for i in range(10)] and ds.name == "digits"
    assert train.images.max() == 255 and train.images.min() == 0
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(train.images).tolist()) <= allowed
    again = load_dataset("digits", "train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    # the split: last 360 of default_rng(0).permutation(1797) is the test set
    from sklearn.datasets import load_digits

    bunch = load_digits()
    perm = np.random.default_rng(0).permutation(1797)
    np.testing.assert_array_equal(test.labels.numpy(), bunch.target[perm[-360:]])
    expected = np.round(bunch.images[perm[:-360]] * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(train.images[:, 0].numpy(), expected)
    assert set(np.unique(train.labels.numpy())) == set(range(10))


# --------------------------------------------------------------------------- transforms


def test_to_float_to_uint8() -> None:
    x = torch.arange(256, dtype=torch.int64).to(torch.uint8).reshape(1, 1, 16, 16)
    f = to_float(x)
    assert f.dtype == torch.float32 and f.min() == 0 and f.max() == 1
    assert torch.equal(to_uint8(f), x)
    assert to_uint8(torch.tensor([-0.5, 0.5 / 255, 1.5 / 255, 2.0])).tolist() == [0, 0, 2, 255]
    with pytest.raises(TypeError):
        to_float(f)


def test_center_crop_offsets() -> None:
    x = torch.arange(2 * 1 * 7 * 6).reshape(2, 1, 7, 6)
    out = center_crop(x, 4)
    assert out.shape == (2, 1, 4, 4)
    assert torch.equal(out, x[:, :, 1:5, 1:5])  # (7-4)//2 = 1, (6-4)//2 = 1
    assert torch.equal(center_crop(x, 6), x[:, :, 0:6, :])
    assert torch.equal(center_crop(x, 2), x[:, :, 2:4, 2:4])
    with pytest.raises(ValueError):
        center_crop(x, 7)


def _identify_crops(x: torch.Tensor, out: torch.Tensor, size: int) -> list[tuple[int, int, bool]]:
    """For each example, the unique (top, left, flipped) whose crop of x equals out."""
    found = []
    h, w = x.shape[2:]
    for i in range(x.shape[0]):
        hits = []
        for top in range(h - size + 1):
            for left in range(w - size + 1):
                crop = x[i, :, top : top + size, left : left + size]
                for flipped in (False, True):
                    cand = crop.flip(-1) if flipped else crop
                    if torch.equal(cand, out[i]):
                        hits.append((top, left, flipped))
        assert len(hits) == 1, f"example {i}: output is not exactly one crop: {hits}"
        found.append(hits[0])
    return found


@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_random_crop_flip_is_a_crop(dtype: torch.dtype) -> None:
    n, c, h, w, size = 64, 2, 6, 7, 4
    x = torch.arange(n * c * h * w).reshape(n, c, h, w).to(dtype)
    out = random_crop_flip(x, size, generator=torch.Generator().manual_seed(0))
    assert out.shape == (n, c, size, size) and out.dtype == dtype
    found = _identify_crops(x, out, size)
    assert {f for _, _, f in found} == {False, True}
    assert len({t for t, _, _ in found}) >= 3 and len({lft for _, lft, _ in found}) >= 3
    again = random_crop_flip(x, size, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    other = random_crop_flip(x, size, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, other)
    no_flip = random_crop_flip(x, size, generator=torch.Generator().manual_seed(0), flip=False)
    assert not any(f for _, _, f in _identify_crops(x, no_flip, size))


def test_random_crop_flip_uint8_and_padding() -> None:
    x = torch.randint(0, 256, (50, 3, 8, 8), generator=torch.Generator().manual_seed(3))
    x = x.to(torch.uint8)
    out = random_crop_flip(x, 8, generator=torch.Generator().manual_seed(2))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(len(x)):  # size == H: the only crop is the image, maybe flipped
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
    padded = random_crop_flip(x, 8, generator=torch.Generator().manual_seed(2), padding=2)
    assert padded.shape == x.shape
    ref = torch.zeros(50, 3, 12, 12, dtype=torch.uint8)
    ref[:, :, 2:10, 2:10] = x  # zero padding by hand, then the same random draws
    assert torch.equal(padded, random_crop_flip(ref, 8, generator=torch.Generator().manual_seed(2)))
    assert not torch.equal(padded, out)


def test_per_pixel_mean(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randint(0, 256, (37, 3, 5, 4), generator=torch.Generator().manual_seed(0))
    x = x.to(torch.uint8)
    expected = x.numpy().astype(np.float64).mean(axis=0) / 255.0
    monkeypatch.setattr(transforms, "_MEAN_CHUNK", 8)  # exercise the chunked sum
    got = per_pixel_mean(x)
    assert got.dtype == torch.float32 and got.shape == (3, 5, 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-7)
    np.testing.assert_allclose(per_pixel_mean(to_float(x)).numpy(), expected, atol=1e-6)


def test_iterate_batches() -> None:
    n = 10
    ds = ImageDataset(
        torch.zeros(n, 1, 2, 2, dtype=torch.uint8),
        torch.arange(n),
        "x",
        "train",
        [str(i) for i in range(10)],
    )
    batches = list(iterate_batches(ds, 4))
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(b[0].dtype == torch.uint8 and b[0].shape[1:] == (1, 2, 2) for b in batches)
    assert len(list(iterate_batches(ds, 4, drop_last=True))) == 2
    s1 = [
        b[1]
        for b in iterate_batches(ds, 3, shuffle=True, generator=torch.Generator().manual_seed(0))
    ]
    s2 = [
        b[1]
        for b in iterate_batches(ds, 3, shuffle=True, generator=torch.Generator().manual_seed(0))
    ]
    assert all(torch.equal(a, b) for a, b in zip(s1, s2))
    flat = torch.cat(s1)
    assert sorted(flat.tolist()) == list(range(n)) and flat.tolist() != list(range(n))
    with pytest.raises(ValueError):
        list(iterate_batches(ds, 0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transforms_on_cuda() -> None:
    x = torch.randint(0, 256, (40, 3, 10, 10), dtype=torch.uint8)
    ds = ImageDataset(x, torch.arange(40) % 10, "x", "train", [str(i) for i in range(10)])
    gpu = ds.to("cuda")
    assert gpu.images.is_cuda and gpu.images.dtype == torch.uint8 and len(gpu.subset(5)) == 5
    gen = torch.Generator(device="cuda").manual_seed(0)
    out = random_crop_flip(gpu.images, 8, generator=gen, padding=1)
    assert out.is_cuda and out.shape == (40, 3, 8, 8)
    assert torch.equal(center_crop(gpu.images, 6).cpu(), center_crop(x, 6))
    torch.testing.assert_close(per_pixel_mean(gpu.images).cpu(), per_pixel_mean(x))
    torch.testing.assert_close(to_float(gpu.images).cpu(), to_float(x))
    batches = list(iterate_batches(gpu, 16, shuffle=True, generator=gen))
    assert all(b[0].is_cuda and b[1].is_cuda for b in batches)
    with pytest.raises(ValueError, match="generator"):
        random_crop_flip(gpu.images, 8, generator=torch.Generator())


# --------------------------------------------------------------------------- real data


# read at import: the autouse fixture above removes the variable during each test
_REAL_DATA = os.environ.get("CASCADE_ADV_DATA")


def _real_root(*parts: str) -> Path:
    value = _REAL_DATA
    if not value:
        pytest.skip("CASCADE_ADV_DATA is not set (folder with mnist/ and cifar10/ real data)")
    root = Path(value)
    missing = [p for p in parts if not (root / p).is_file()]
    if missing:
        pytest.skip(f"real data files missing under {root}: {', '.join(missing)}")
    return root


_MNIST_REAL = [f"mnist/{n}.gz" for pair in sources.MNIST_FILES.values() for n in pair]
_CIFAR_REAL = [
    f"cifar10/cifar-10-batches-bin/{b}.bin.gz"
    for bs in sources.CIFAR10_BATCHES.values()
    for b in bs
]


@pytest.mark.realdata
def test_real_mnist(monkeypatch: pytest.MonkeyPatch) -> None:
    root = _real_root(*_MNIST_REAL)
    train = load_dataset("mnist", "train", root=root)
    test = load_dataset("mnist", "test", root=root)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert torch.bincount(train.labels).tolist()[1] == 6742  # the count of "1"s in MNIST
    monkeypatch.setenv("CASCADE_ADV_DATA", str(root))  # root from the environment
    assert len(load_dataset("mnist", "test")) == 10000


@pytest.mark.realdata
def test_real_cifar10() -> None:
    root = _real_root(*_CIFAR_REAL)
    train = load_dataset("cifar10", "train", root=root)
    assert train.images.shape == (50000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert train.classes == list(sources.CIFAR10_CLASSES)
    mean = per_pixel_mean(train.images).to(torch.float64).mean(dim=(1, 2))
    np.testing.assert_allclose(mean.numpy(), [0.491400, 0.482158, 0.446531], atol=1e-4)
    test = load_dataset("cifar10", "test", root=root)
    assert test.images.shape == (10000, 3, 32, 32)
    assert test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert torch.bincount(test.labels).tolist() == [1000] * 10
