"""Atomic file writes and content hashes.

Checkpoints, result files and saved adversarial sets are written to a temporary
file in the destination folder and moved into place with :func:`os.replace`, so a
crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporary files for ``name``: ``.NAME.PID.`` (the pid
    tells :func:`remove_stale_temps` whether the writer is still running)."""
    return f".{name}.{os.getpid()}."


def _plain_mode(bits: int) -> int:
    """``bits`` less the process umask: the mode a plain open() / mkdir() would give
    (``mkstemp`` / ``mkdtemp`` make their results private)."""
    umask = os.umask(0)
    os.umask(umask)
    return bits & ~umask


def make_temp_dir(parent: str | os.PathLike, name: str, suffix: str = ".tmp") -> Path:
    """A new folder ``parent/.NAME.PID.XXXX.tmp`` with the permissions a plain mkdir
    would give (``mkdtemp`` makes it private), to be renamed into place."""
    path = Path(tempfile.mkdtemp(prefix=temp_prefix(name), suffix=suffix, dir=parent))
    path.chmod(_plain_mode(0o777))
    return path


def swap_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the complete folder ``tmp`` onto ``out``.  An existing ``out`` is first moved
    aside (``.NAME.PID.XXXX.old.tmp``) and removed only once the new folder is in
    place, so no moment leaves neither; an empty ``out`` is replaced in one rename."""
    tmp, out = Path(tmp), Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.replace(tmp, out)
        return
    aside = make_temp_dir(out.parent, out.name, suffix=".old.tmp")
    aside.rmdir()
    os.replace(out, aside)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(aside, out)  # put the old folder back
        raise
    shutil.rmtree(aside, ignore_errors=True)


_TEMP = re.compile(r"^\.(?P<name>.+?)(\.(?P<pid>\d+)\.[A-Za-z0-9_]+)?(\.old)?\.tmp$")


def _writer_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(_plain_mode(0o666))
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


#: The lock file of :func:`folder_lock`, inside the folder it locks.
LOCK_FILE = ".lock"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: bool = True, what: str = "folder",
                fix: str = "wait for it to finish") -> Iterator[None]:
    """Hold an exclusive lock on the existing ``folder`` for the block: POSIX ``flock`` on
    ``folder/.lock``, into which the holder writes its pid (a no-op where there is no
    ``flock``).  The kernel drops the lock when its holder ends, however it ends, so a
    killed process leaves no stale lock.  ``wait``: block until the holder is done;
    otherwise raise :class:`~cascade_adv.errors.FolderInUse` naming ``what``, the folder,
    the holder's pid and ``fix``, having written nothing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    from cascade_adv.errors import FolderInUse

    fd = os.open(Path(folder) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)  # umask applies
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            holder = f"process {pid}" if pid.isdigit() else "another process"
            raise FolderInUse(f"{what} {folder} is in use by {holder}; {fix}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def file_md5(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


# --- output paths: checked before any work ----------------------------------------------


def _first_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _check_path_text(path: Path, what: str, kind: str) -> None:
    from cascade_adv.errors import OutputPathError

    if str(path).strip() == "" or "\0" in str(path):
        raise OutputPathError(f"{what} path {str(path)!r} is empty or invalid; pass a {kind}")


def check_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Raise :class:`OutputPathError` unless ``path`` can be written as a file:
    not a folder, its nearest existing ancestor a writable folder."""
    from cascade_adv.errors import OutputPathError

    path = Path(path)
    _check_path_text(path, what, "file path")
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder; pass a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{what} {path} is not writable; pass another path")
    _check_parent(path.parent, path, what)
    return path


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Raise :class:`OutputPathError` unless ``path`` is (or can be created as) a
    writable folder."""
    from cascade_adv.errors import OutputPathError

    path = Path(path)
    _check_path_text(path, what, "folder")
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{what} {path} is a file, not a folder; pass a folder path")
    if path.is_dir():
        if not _can_create_in(path):
            raise OutputPathError(f"{what} {path} is not writable; pass another folder")
        return path
    _check_parent(path.parent, path, what)
    return path


def _check_parent(parent: Path, path: Path, what: str) -> None:
    from cascade_adv.errors import OutputPathError

    base = _first_existing(parent)
    if not base.is_dir():
        raise OutputPathError(f"{what} {path} cannot be created: {base} is a file, not a "
                              "folder; pass another path")
    if not _can_create_in(base):
        raise OutputPathError(f"{what} {path} cannot be created: {base} is not writable; "
                              "pass another path")


def _can_create_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder`` (tried: permission bits do not tell
    for root, read-only mounts or /proc); the probe file is removed at once."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True when ``path`` is ``folder`` or lies inside it (symlinks resolved)."""
    p, f = Path(path).resolve(), Path(folder).resolve()
    return p == f or f in p.parents


def remove_stale_temps(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporary files and folders that a killed writer left in ``folder``
    (``.NAME.PID.XXXX.tmp`` of :func:`atomic_path` and the set / checkpoint writers)
    for ``name`` (a glob); those of a process still running are kept, and a folder
    that :func:`swap_dir` had moved aside when its writer was killed is put back
    where it was missing.  Returns the removed paths."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".{name}.tmp"):
        m = _TEMP.match(p.name)
        if m is None or (m.group("pid") and _writer_alive(int(m.group("pid")))):
            continue
        target = folder / m.group("name")
        if p.name.endswith(".old.tmp") and not target.exists():
            os.replace(p, target)  # killed between the two renames of swap_dir: put it back
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
