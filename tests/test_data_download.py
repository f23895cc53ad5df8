"""Tests of ``download=True``: tiny MNIST / CIFAR-10 files served by a local HTTP server.

The md5 tables in :mod:`cascade_adv.data.sources` are patched to the tiny files' md5,
and every download goes to ``http://127.0.0.1:PORT/`` (never the internet).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import struct
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cascade_adv.data import load_dataset, sources
from cascade_adv.data.download import extract_cifar10_bin, resolve_mirrors
from cascade_adv.errors import DatasetError


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def idx_gz(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """(folder, base URL) of a local HTTP server; shut down after the test."""
    folder = tmp_path / "served"
    folder.mkdir()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv(sources.DATA_ENV, raising=False)
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def serve_mnist(folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Tiny valid MNIST .gz files for both splits, md5 table patched to accept them."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 4), ("test", 2)):
        img_name, lbl_name = sources.MNIST_FILES[split]
        arrays[img_name] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[lbl_name] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, arr in arrays.items():
        data = idx_gz(arr)
        (folder / f"{name}.gz").write_bytes(data)
        monkeypatch.setitem(sources.MNIST_MD5, f"{name}.gz", md5(data))
    return arrays


def test_resolve_mirrors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(sources.MIRROR_ENV, raising=False)
    assert resolve_mirrors("mnist")[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert resolve_mirrors("mnist")[1] == "http://yann.lecun.com/exdb/mnist/"
    assert resolve_mirrors("cifar10") == ["https://www.cs.toronto.edu/~kriz/"]
    assert resolve_mirrors("mnist", "http://a/x, http://b/") == ["http://a/x/", "http://b/"]
    monkeypatch.setenv(sources.MIRROR_ENV, "http://env/")
    assert resolve_mirrors("cifar10") == ["http://env/"]
    assert resolve_mirrors("cifar10", "http://arg") == ["http://arg/"]
    monkeypatch.setitem(sources.MIRRORS, "mnist", ["http://patched/"])
    monkeypatch.delenv(sources.MIRROR_ENV)
    assert resolve_mirrors("mnist") == ["http://patched/"]


def test_mnist_download(
    served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, url = served
    arrays = serve_mnist(folder, monkeypatch)
    root = tmp_path / "root"
    ds = load_dataset("mnist", "train", root=root, download=True, mirror=url)
    assert ds.images.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.labels.numpy(), arrays["train-labels-idx1-ubyte"])
    assert sorted(p.name for p in (root / "mnist").iterdir()) == [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
    ]
    # now present: loads without download; the test split comes via the env mirror
    assert len(load_dataset("mnist", "train", root=root)) == 4
    monkeypatch.setenv(sources.MIRROR_ENV, url)
    test = load_dataset("mnist", "test", root=root, download=True)
    np.testing.assert_array_equal(test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_mnist_download_falls_back_to_next_mirror(
    served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, url = served
    serve_mnist(folder, monkeypatch)
    (folder / "empty").mkdir()
    mirrors = f"{url}empty/,{url}"  # the first has no files (HTTP 404)
    ds = load_dataset("mnist", "test", root=tmp_path / "r", download=True, mirror=mirrors)
    assert len(ds) == 2


def test_mnist_download_wrong_content(
    served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, url = served
    serve_mnist(folder, monkeypatch)
    good = folder / "train-images-idx3-ubyte.gz"
    good.write_bytes(good.read_bytes()[:-3] + b"xyz")  # served content no longer matches
    root = tmp_path / "root"
    with pytest.raises(DatasetError) as info:
        load_dataset("mnist", "train", root=root, download=True, mirror=url)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and "md5" in msg and "\n" not in msg
    assert not (root / "mnist" / "train-images-idx3-ubyte.gz").exists()
    assert list((root / "mnist").iterdir()) == []  # no temporary file left either


def test_mnist_download_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with pytest.raises(DatasetError, match="could not download t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", "test", root=tmp_path, download=True, mirror="http://127.0.0.1:1/")
    assert not (tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz").exists()


# --------------------------------------------------------------------------- CIFAR-10


def _bin_batches(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Two-record synthetic .bin contents for all six batches, md5 table patched."""
    rng = np.random.default_rng(1)
    out = {}
    for i, batch in enumerate([*sources.CIFAR10_BATCHES["train"], "test_batch"]):
        labels = [i, 9 - i]
        pixels = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        data = b"".join(bytes([lab]) + row.tobytes() for lab, row in zip(labels, pixels))
        out[f"{batch}.bin"] = data
        monkeypatch.setitem(sources.CIFAR10_BIN_MD5, f"{batch}.bin", md5(data))
    return out


def _tar_gz(members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        dir_info = tarfile.TarInfo("cifar-10-batches-bin")
        dir_info.type = tarfile.DIRTYPE
        dir_info.mode = 0o755
        tf.addfile(dir_info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info)
    return buf.getvalue()


def _official_like_archive(monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, dict[str, bytes]]:
    batches = _bin_batches(monkeypatch)
    members = {f"cifar-10-batches-bin/{n}": d for n, d in batches.items()}
    members["cifar-10-batches-bin/batches.meta.txt"] = (
        "\n".join(sources.CIFAR10_CLASSES) + "\n\n"
    ).encode()
    members["cifar-10-batches-bin/readme.html"] = b"<html></html>"
    archive = _tar_gz(members)
    monkeypatch.setitem(sources.CIFAR10_BIN_ARCHIVE, "cifar-10-binary.tar.gz", md5(archive))
    return archive, batches


def test_cifar_download(
    served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, url = served
    archive, batches = _official_like_archive(monkeypatch)
    (folder / "cifar-10-binary.tar.gz").write_bytes(archive)
    root = tmp_path / "root"
    train = load_dataset("cifar10", "train", root=root, download=True, mirror=url)
    assert train.images.shape == (10, 3, 32, 32)
    assert train.labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5]
    first = np.frombuffer(batches["data_batch_1.bin"], np.uint8)[1:3073].reshape(3, 32, 32)
    np.testing.assert_array_equal(train.images[0].numpy(), first)
    bin_dir = root / "cifar10" / "cifar-10-batches-bin"
    assert (bin_dir / "test_batch.bin").read_bytes() == batches["test_batch.bin"]
    assert (root / "cifar10" / "cifar-10-binary.tar.gz").is_file()
    assert [p.name for p in (root / "cifar10").iterdir() if p.name.startswith(".")] == []
    # test split is already there: no second download
    (folder / "cifar-10-binary.tar.gz").unlink()
    test = load_dataset("cifar10", "test", root=root, download=True, mirror=url)
    assert test.labels.tolist() == [5, 4]


def test_cifar_download_wrong_content(
    served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, url = served
    archive, _ = _official_like_archive(monkeypatch)
    (folder / "cifar-10-binary.tar.gz").write_bytes(archive + b"junk")
    root = tmp_path / "root"
    with pytest.raises(DatasetError, match="cifar-10-binary.tar.gz.*md5"):
        load_dataset("cifar10", "test", root=root, download=True, mirror=url)
    assert not (root / "cifar10" / "cifar-10-binary.tar.gz").exists()
    assert not (root / "cifar10" / "cifar-10-batches-bin").exists()
    assert list((root / "cifar10").iterdir()) == []


def test_cifar_archive_with_bad_batch_is_not_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive, _ = _official_like_archive(monkeypatch)
    monkeypatch.setitem(sources.CIFAR10_BIN_MD5, "data_batch_3.bin", "0" * 32)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(archive)
    with pytest.raises(DatasetError, match="data_batch_3.bin in archive"):
        extract_cifar10_bin(path, tmp_path / "out" / "cifar-10-batches-bin")
    assert list((tmp_path / "out" / "cifar-10-batches-bin").iterdir()) == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["cifar-10-batches-bin"]


@pytest.mark.parametrize(
    "bad",
    ["../evil.bin", "/tmp/cascade_adv_evil.bin", "cifar-10-batches-bin/../../evil.bin", "link"],
)
def test_unsafe_archive_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad: str) -> None:
    batches = _bin_batches(monkeypatch)
    members = {f"cifar-10-batches-bin/{n}": d for n, d in batches.items()}
    extra = []
    if bad == "link":
        info = tarfile.TarInfo("cifar-10-batches-bin/data_batch_9.bin")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        extra.append(info)
    else:
        members[bad] = b"evil"
    path = tmp_path / "x" / "a.tar.gz"
    path.parent.mkdir()
    path.write_bytes(_tar_gz(members, extra))
    dest = tmp_path / "x" / "out" / "cifar-10-batches-bin"
    with pytest.raises(DatasetError, match="refusing to extract"):
        extract_cifar10_bin(path, dest)
    assert list(dest.iterdir()) == []
    assert not (tmp_path / "evil.bin").exists() and not (tmp_path / "x" / "evil.bin").exists()
    assert not Path("/tmp/cascade_adv_evil.bin").exists()


def test_corrupt_archive(tmp_path: Path) -> None:
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(b"not a tar file" * 100)[:-10])
    with pytest.raises(DatasetError, match="corrupt or truncated"):
        extract_cifar10_bin(path, tmp_path / "out")
