"""Verified downloads (urllib only) and safe extraction of the CIFAR-10 archive.

Every download is streamed into a temporary file beside its destination
(:func:`cascade_adv.io.atomic_path`) and only moved under its final name once its
md5 matches the published checksum, so a failed or corrupt download never leaves a
file under the final name.  Base URLs come from the ``mirror`` argument, else the
``CASCADE_ADV_MIRROR`` environment variable (comma-separated list allowed), else
:data:`cascade_adv.data.sources.MIRRORS`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from cascade_adv.data import sources
from cascade_adv.errors import DatasetError, one_line
from cascade_adv.io import atomic_path, file_md5, make_temp_dir

_CHUNK = 1 << 16


class _DownloadFailed(Exception):
    """A download attempt that must be retried elsewhere (internal)."""


def resolve_mirrors(dataset: str, mirror: str | None = None) -> list[str]:
    """Base URLs (each ending in ``/``) to try for ``dataset``, in order."""
    if mirror is None:
        mirror = os.environ.get(sources.MIRROR_ENV) or None
    if mirror:
        bases = [m.strip() for m in mirror.split(",") if m.strip()]
    else:
        bases = list(sources.MIRRORS[dataset])
    return [b if b.endswith("/") else b + "/" for b in bases]


def _fetch(url: str, tmp: Path, desc: str, timeout: float) -> str:
    """Stream ``url`` into ``tmp``; return the md5 of what was received."""
    request = urllib.request.Request(url, headers={"User-Agent": "cascade-adv"})
    digest = hashlib.md5()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as resp, open(tmp, "wb") as fh:
        length = resp.headers.get("Content-Length")
        total = int(length) if length and length.strip().isdigit() else None
        with tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=desc,
            disable=None,
            leave=False,
        ) as bar:
            while chunk := resp.read(_CHUNK):
                fh.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise _DownloadFailed(f"received {received} of {total} bytes")
    return digest.hexdigest()


def download_file(
    file_name: str,
    dest: Path,
    md5: str,
    bases: list[str],
    timeout: float = 60.0,
) -> Path:
    """Download ``base + file_name`` from the first base that gives content with ``md5``.

    The file appears at ``dest`` only once verified; otherwise :class:`DatasetError`
    lists what went wrong at every base URL.
    """
    errors: list[str] = []
    for base in bases:
        url = base + file_name
        try:
            with atomic_path(dest) as tmp:
                actual = _fetch(url, tmp, file_name, timeout)
                if actual != md5:
                    raise _DownloadFailed(
                        f"content has md5 {actual}, not the published checksum {md5}"
                    )
            return dest
        except (_DownloadFailed, OSError, http.client.HTTPException, ValueError) as exc:
            errors.append(f"{url}: {one_line(exc) or type(exc).__name__}")
    raise DatasetError(
        f"could not download {file_name} ({'; '.join(errors)}); check the network or the "
        f"mirror (mirror= / {sources.MIRROR_ENV}), or place the verified file at {dest} yourself"
    )


def _safe_members(tf: tarfile.TarFile, archive: Path, subdir: str) -> list[tarfile.TarInfo]:
    """Regular-file members directly under ``subdir``; raise on any unsafe member."""
    keep: list[tarfile.TarInfo] = []
    for member in tf.getmembers():
        name = member.name
        parts = PurePosixPath(name).parts
        if name.startswith(("/", "\\")) or "\\" in name or ".." in parts or ":" in name:
            raise DatasetError(
                f"archive {archive} has an unsafe member path {name!r} (absolute or with '..'); "
                "refusing to extract it; delete the archive and download the official one"
            )
        if member.isdir():
            continue
        if not member.isfile():
            raise DatasetError(
                f"archive {archive} has a member {name!r} that is not a regular file "
                "(link or device); refusing to extract it; delete the archive and download "
                "the official one"
            )
        if len(parts) == 2 and parts[0] == subdir:
            keep.append(member)
    return keep


def extract_cifar10_bin(archive: Path, dest_dir: Path) -> None:
    """Extract ``cifar-10-batches-bin/*`` of the official archive into ``dest_dir``.

    Members are checked first (no absolute paths, no ``..``, no links or devices),
    extracted with ``filter="data"`` where Python supports it into a temporary folder
    beside ``dest_dir``, the ``.bin`` files checked against their published md5, and
    only then moved into ``dest_dir``.
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir = make_temp_dir(dest_dir.parent, "extract")
    try:
        try:
            with tarfile.open(archive, "r:gz") as tf:
                members = _safe_members(tf, archive, sources.CIFAR10_BIN_DIR)
                if hasattr(tarfile, "data_filter"):
                    tf.extractall(tmp_dir, members=members, filter="data")
                else:  # Python without extraction filters: members were checked above
                    tf.extractall(tmp_dir, members=members)
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DatasetError(
                f"archive {archive} is corrupt or truncated ({one_line(exc)}); delete it and "
                "download it again (download=True)"
            ) from exc
        src_dir = tmp_dir / sources.CIFAR10_BIN_DIR
        missing = [n for n in sources.CIFAR10_BIN_MD5 if not (src_dir / n).is_file()]
        if missing:
            raise DatasetError(
                f"archive {archive} lacks {', '.join(missing)}; delete it and download the "
                "official cifar-10-binary.tar.gz"
            )
        for name, expected in sources.CIFAR10_BIN_MD5.items():
            actual = file_md5(src_dir / name)
            if actual != expected:
                raise DatasetError(
                    f"{name} in archive {archive} has md5 {actual}, not the published "
                    f"{expected}; delete the archive and download it again"
                )
        for path in sorted(src_dir.iterdir()):
            if path.is_file():
                os.replace(path, dest_dir / path.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
