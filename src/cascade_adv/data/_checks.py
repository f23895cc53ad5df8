"""Cached md5 checks of dataset files (internal)."""

from __future__ import annotations

import functools
import gzip
import os
import zlib
from pathlib import Path

from cascade_adv.errors import DatasetError, one_line
from cascade_adv.io import file_md5


@functools.lru_cache(maxsize=64)
def _md5_keyed(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key only: a changed file is hashed again
    return file_md5(path)


def cached_file_md5(path: str | os.PathLike) -> str:
    """md5 of the file at ``path``, cached per process on (path, size, mtime)."""
    path = Path(path).resolve()
    st = path.stat()
    return _md5_keyed(str(path), st.st_size, st.st_mtime_ns)


def check_file_md5(path: Path, expected: str, what: str, fix: str) -> None:
    """Raise :class:`DatasetError` unless the md5 of the file at ``path`` is ``expected``."""
    try:
        actual = cached_file_md5(path)
    except OSError as exc:
        raise DatasetError(f"cannot read {what} file {path} ({exc.strerror}); {fix}") from exc
    if actual != expected:
        raise DatasetError(
            f"{what} file {path} has md5 {actual} but the published checksum is {expected} "
            f"(corrupt or not the official file); {fix}"
        )


def read_maybe_gzip(path: Path, what: str, fix: str) -> bytes:
    """The bytes of ``path``, gunzipped when its name ends in ``.gz``; a truncated or
    unreadable file raises :class:`DatasetError` naming it and ``fix``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DatasetError(f"gzip file {path} is truncated or corrupt ({one_line(exc)}); {fix}") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read {what} file {path} ({one_line(exc)}); {fix}") from exc
