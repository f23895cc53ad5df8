"""Atomic file writes, content hashes and the checks of output paths.

Checkpoints, result files and saved adversarial sets are written to a temporary
file in the destination folder and moved into place with :func:`os.replace`, so a
crash never leaves a half-written file under the final name.  Temporary names are
``.cascade-adv.NAME.PID.XXXXXXXX.tmp`` (:data:`TEMP_PREFIX`, the writer's pid and
a random part, all required), so that :func:`remove_stale_temps` never mistakes a
user's file for one of ours.  Everything written gets the permissions a plain
``open`` / ``mkdir`` would give under the user's umask.  A symlinked output is
followed: its target is replaced, the link stays; a folder's lock file is the
exception (:func:`folder_lock` never follows a link, nor writes to anything but its own
file).  A full disk or a read-only folder ends in :class:`~cascade_adv.errors.DiskFull`
naming the folder and the space needed (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

#: The first part of every temporary file and folder name the project writes.
TEMP_PREFIX = ".cascade-adv."
#: Free space every output folder must have before a command starts (bytes): a
#: folder with less is full for any result file, store or set.
MIN_FREE_BYTES = 1 << 20
#: errno values that mean "no room" and "cannot write here".
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
NO_WRITE_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporary files for ``name``:
    ``.cascade-adv.NAME.PID.`` (the pid tells :func:`remove_stale_temps` whether the
    writer is still running; ``mkstemp`` / ``mkdtemp`` add the random part)."""
    return f"{TEMP_PREFIX}{name}.{os.getpid()}."


def _plain_mode(bits: int) -> int:
    """``bits`` less the process umask: the mode a plain open() / mkdir() would give
    (``mkstemp`` / ``mkdtemp`` make their results private)."""
    umask = os.umask(0)
    os.umask(umask)
    return bits & ~umask


def make_temp_dir(parent: str | os.PathLike, name: str, suffix: str = ".tmp") -> Path:
    """A new folder ``parent/.cascade-adv.NAME.PID.XXXXXXXX.tmp`` with the permissions
    a plain mkdir would give (``mkdtemp`` makes it private), to be renamed into place."""
    path = Path(tempfile.mkdtemp(prefix=temp_prefix(name), suffix=suffix, dir=parent))
    path.chmod(_plain_mode(0o777))
    return path


def make_temp_file(parent: str | os.PathLike, name: str) -> Path:
    """A new empty file ``parent/.cascade-adv.NAME.PID.XXXXXXXX.tmp`` (to be renamed
    into place); :func:`set_plain_mode` gives it its final permissions."""
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(name), suffix=".tmp", dir=parent)
    os.close(fd)
    return Path(tmp)


def set_plain_mode(path: str | os.PathLike) -> None:
    """Give a finished file the mode a plain ``open`` would have given it under the
    umask (0644 under 022): temporary files are private, and some writers (safetensors)
    recreate the file they are given, so this runs after the writer, before the rename."""
    os.chmod(path, _plain_mode(0o666))


def real_path(path: str | os.PathLike) -> Path:
    """``path`` absolute with every symlink followed (also a dangling one's target): where
    a write really lands.  A symlinked output is replaced at its target; the link stays."""
    return Path(os.path.realpath(path))


def swap_dir(tmp: str | os.PathLike, out: str | os.PathLike) -> None:
    """Move the complete folder ``tmp`` onto ``out``.  An existing ``out`` is first moved
    aside (``.cascade-adv.NAME.PID.XXXXXXXX.old.tmp``) and removed only once the new
    folder is in place, so no moment leaves neither; an empty ``out`` is replaced in one
    rename.  A symlinked ``out`` is replaced at its target (give ``tmp`` beside it)."""
    tmp, out = Path(tmp), Path(out)
    if out.is_symlink():
        out = real_path(out)
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


#: ``.cascade-adv.NAME.PID.XXXXXXXX[.old].tmp``: prefix, pid and the 8 random characters
#: of ``mkstemp`` / ``mkdtemp`` all required.
_TEMP = re.compile(r"^" + re.escape(TEMP_PREFIX) +
                   r"(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}(?P<old>\.old)?\.tmp$")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (this process counts)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


# --- free space, full disks and read-only folders --------------------------------------


def format_bytes(n: float) -> str:
    """``1.5 MB``, ``320 KB``, ``12 B`` (powers of 1024)."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space (bytes) of the filesystem of ``folder`` (or of its nearest existing
    ancestor); None where the system cannot tell."""
    try:
        return int(shutil.disk_usage(_first_existing(Path(folder))).free)
    except OSError:
        return None


def check_free_space(folder: str | os.PathLike, need: int, what: str) -> None:
    """Raise :class:`~cascade_adv.errors.DiskFull` (before any work) unless ``folder``
    has ``need`` bytes free for ``what``."""
    from cascade_adv.errors import DiskFull

    free = free_bytes(folder)
    if free is not None and free < need:
        raise DiskFull(f"{what} needs {format_bytes(need)} in {folder}, which has "
                       f"{format_bytes(free)} free; free some space there or pass another path",
                       folder=folder, errno_value=errno.ENOSPC)


@contextlib.contextmanager
def disk_errors(folder: str | os.PathLike, what: str, need: int | None = None) -> Iterator[None]:
    """Turn a full disk (``ENOSPC``, quota) or a read-only folder met while writing
    ``what`` into ``folder`` into :class:`~cascade_adv.errors.DiskFull`: one line naming
    the folder and ``need`` bytes (when known); the caller keeps what was complete.  A
    :class:`~cascade_adv.errors.DiskFull` of a temporary folder inside ``folder`` is said
    of ``folder`` and ``what``."""
    from cascade_adv.errors import DiskFull

    try:
        yield
    except DiskFull as exc:
        inner = real_path(exc.folder) if exc.folder is not None else None
        if inner is None or real_path(folder) not in inner.parents:
            raise
        raise _disk_full(exc.errno_value, str(exc), folder, what, need) from None
    except OSError as exc:
        if exc.errno not in NO_SPACE_ERRNOS | NO_WRITE_ERRNOS:
            raise
        raise _disk_full(exc.errno, exc.strerror, folder, what, need) from None


def _disk_full(errno_value, strerror, folder, what, need):
    from cascade_adv.errors import DiskFull

    if errno_value in NO_SPACE_ERRNOS:
        free = free_bytes(folder)
        size = f"{format_bytes(need)}" if need else "more space than is free"
        left = f", {format_bytes(free)} free" if free is not None else ""
        return DiskFull(f"no space left in {folder} for {what} (needs {size}{left}); free "
                        "some space there or pass another path, and run it again",
                        folder=folder, errno_value=errno_value)
    return DiskFull(f"cannot write {what} in {folder} ({strerror}); make the folder "
                    "writable or pass another path", folder=folder, errno_value=errno_value)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` on success, with the
    permissions of a plain ``open`` under the umask.  A symlinked ``path`` is replaced at
    its target.  ``size`` (bytes, when the caller knows it) is checked against the free
    space first; a full disk or a read-only folder raises
    :class:`~cascade_adv.errors.DiskFull` and leaves the old file as it was."""
    path = Path(path)
    if path.is_symlink():
        path = real_path(path)
    what = path.name
    with disk_errors(path.parent, what, size):
        path.parent.mkdir(parents=True, exist_ok=True)
        if size:
            check_free_space(path.parent, size, what)
        tmp_path = make_temp_file(path.parent, path.name)
        try:
            yield tmp_path
            set_plain_mode(tmp_path)
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, path)
        finally:
            if tmp_path.exists():
                tmp_path.unlink()


#: The lock file of :func:`folder_lock`, inside the folder it locks.
LOCK_FILE = ".lock"
#: What a lock file holds: nothing, or the pid of the process that holds (held) it.
_LOCK_TEXT = re.compile(rb"\d{0,20}\n?")
#: ``os.open`` errors that mean something other than a regular file is at the lock's path
#: (a link, a folder, a socket, a device).
_NOT_A_FILE_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK, errno.EISDIR, errno.ENXIO,
                                errno.ENODEV, errno.EOPNOTSUPP})


def non_regular_kind(mode: int) -> str | None:
    """What is at a path whose ``lstat`` / ``fstat`` mode is ``mode`` ("a symbolic link",
    "a folder", "a named pipe (FIFO)"...), or None for a regular file: how a refusal
    names a thing a command will not read or write through."""
    kinds = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
             (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device file"), (stat.S_ISBLK, "a device file"))
    kind = next((k for test, k in kinds if test(mode)), None)
    return kind or (None if stat.S_ISREG(mode) else "not a regular file")


def _not_a_lock(st: os.stat_result) -> str | None:
    """What the file at a lock's path is (``st`` from ``lstat`` / ``fstat``) when it cannot
    be a lock file; None for a regular file with one link."""
    kind = non_regular_kind(st.st_mode)
    if kind is None and st.st_nlink != 1:
        kind = f"a file with {st.st_nlink} hard links (another name shares its content)"
    return kind


def _lock_refused(path: Path, kind: str, what: str, folder) -> Exception:
    from cascade_adv.errors import OutputPathError

    target = f" to {os.readlink(path)}" if kind == "a symbolic link" else ""
    return OutputPathError(f"{what} {folder}: {path} is {kind}{target}, not a cascade-adv lock "
                           "file, and was left as it is; remove it (or move it elsewhere) and "
                           "run the command again")


def _open_lock(path: Path, flags: int, what: str, folder) -> int:
    """``path`` opened with ``flags`` once it is known to be a lock file (else
    :class:`~cascade_adv.errors.OutputPathError`, nothing written): never through a link
    (``O_NOFOLLOW``), never opening a FIFO, socket or device found there (``lstat``
    first), and checked again on the open file (``fstat``: type, one link, content)."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    kind = _not_a_lock(found) if found else None
    if kind:
        raise _lock_refused(path, kind, what, folder)
    safe = (getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
            | getattr(os, "O_NOCTTY", 0))
    try:
        fd = os.open(path, flags | safe, 0o666)  # umask applies
    except OSError as exc:  # something else appeared there meanwhile
        if exc.errno not in _NOT_A_FILE_ERRNOS:
            raise
        raise _lock_refused(path, _not_a_lock(os.lstat(path)) or "not a regular file", what,
                            folder) from None
    kind = _not_a_lock(os.fstat(fd)) or (  # a regular file: read its start
        None if _LOCK_TEXT.fullmatch(os.pread(fd, 32, 0))
        else "a file that holds something other than a process id")
    if kind:
        os.close(fd)
        raise _lock_refused(path, kind, what, folder)
    return fd


def check_lock_file(folder: str | os.PathLike, what: str = "folder") -> None:
    """Raise :class:`~cascade_adv.errors.OutputPathError` (before any work) when
    ``folder/.lock`` exists and is not a lock file that :func:`folder_lock` may take: a
    symlink, a folder, a FIFO, a socket, a device, a hard link, a file with other
    content.  Nothing is written, created or followed."""
    if os.name == "nt":  # folder_lock takes no lock file there
        return
    try:
        os.close(_open_lock(Path(folder) / LOCK_FILE, os.O_RDONLY, what, folder))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return  # nothing there (a lock file we cannot read: folder_lock says so)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, wait: bool = True, what: str = "folder",
                fix: str = "wait for it to finish") -> Iterator[None]:
    """Hold an exclusive lock on the existing ``folder`` for the block: POSIX ``flock`` on
    ``folder/.lock``, into which the holder writes its pid (a no-op where there is no
    ``flock``).  The kernel drops the lock when its holder ends, however it ends, so a
    killed process leaves no stale lock.  ``wait``: block until the holder is done;
    otherwise raise :class:`~cascade_adv.errors.FolderInUse` naming ``what``, the folder,
    the holder's pid and ``fix``, having written nothing.  Anything at ``folder/.lock``
    that is not a lock file (:func:`check_lock_file`: a symlink to a user's file, a
    folder, a FIFO...) raises :class:`~cascade_adv.errors.OutputPathError` naming it,
    having written nothing to it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    from cascade_adv.errors import FolderInUse

    fd = _open_lock(Path(folder) / LOCK_FILE, os.O_RDWR | os.O_CREAT, what, folder)
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


def lock_holder(folder: str | os.PathLike) -> int | None:
    """The pid of the process holding :func:`folder_lock` on ``folder`` now (0 where the
    lock file names none), else ``None``; reads only: a shared, non-blocking ``flock``
    on ``folder/.lock`` opened read-only, released at once.  ``None`` also where there
    is no lock file, it is not a lock file, or there is no ``flock``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    from cascade_adv.errors import OutputPathError

    path = Path(folder) / LOCK_FILE
    if not path.is_file():
        return None
    try:
        fd = _open_lock(path, os.O_RDONLY, "folder", folder)
    except (OSError, OutputPathError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(pid) if pid.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def read_json_lines(path: str | os.PathLike) -> list[dict]:
    """The JSON objects of a JSON-lines file (``metrics.jsonl``, ``legs.jsonl``), one per
    line; a line that is not a JSON object (cut by a crash, damaged) is skipped, and a
    file that cannot be read gives ``[]``."""
    try:
        lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, size=len(data)) as tmp:
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
    check_free_space(base, MIN_FREE_BYTES, f"{what} {path}")


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
    p, f = real_path(path), real_path(folder)
    return p == f or f in p.parents


def check_disjoint(outputs: Sequence[tuple[str, str | os.PathLike | None]],
                   inputs: Sequence[tuple[str, str | os.PathLike | None]] = ()) -> None:
    """The rule for every command that writes, checked before any work: with every path
    resolved (symlinks followed), no output may be, contain or lie inside an input of
    the same command (the model, its run folder, the dataset folder, the results store,
    saved sets, configs), nor another of its outputs (``--csv X --json X``).  Raises
    :class:`~cascade_adv.errors.PathCollision` naming both paths; ``--overwrite`` does
    not lift it.  ``outputs`` / ``inputs`` are ``(label, path)`` pairs; ``None`` paths are
    skipped."""
    from cascade_adv.errors import PathCollision

    outs = [(label, Path(p), real_path(p)) for label, p in outputs if p]
    ins = [(label, Path(p), real_path(p)) for label, p in inputs if p]
    for i, (label, path, real) in enumerate(outs):
        others = [(o, op, orl, "writes") for o, op, orl in outs[i + 1:]] + \
            [(o, op, orl, "reads") for o, op, orl in ins]
        hits = [(rank, how, other, opath, kind) for other, opath, oreal, kind in others
                for rank, how, hit in ((0, "is", real == oreal),
                                       (1, "holds", real in oreal.parents),
                                       (2, "lies inside", oreal in real.parents)) if hit]
        if hits:
            _, how, other, opath, kind = min(hits, key=lambda h: h[0])
            where = f" (-> {real})" if os.path.abspath(path) != str(real) else ""
            raise PathCollision(f"{label} {path}{where} {how} {other} {opath}, which this "
                                f"command {kind}; pass a new path for {label} (--overwrite "
                                "does not apply)")


def remove_stale_temps(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete the temporary files and folders that a killed writer left in ``folder``:
    exactly the names :func:`atomic_path`, :func:`make_temp_dir` and :func:`swap_dir`
    give (``.cascade-adv.NAME.PID.XXXXXXXX[.old].tmp``, prefix, pid and random part all
    required), for a ``NAME`` matching ``name`` (a glob on the final name).  A user's
    ``.NAME.notes.tmp`` never matches.  Those of a process still running are kept, and a
    folder that :func:`swap_dir` had moved aside when its writer was killed is put back
    where it was missing.  Returns the removed paths."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m is None or not fnmatchcase(m.group("name"), name) \
                or process_alive(int(m.group("pid"))):
            continue
        target = folder / m.group("name")
        if m.group("old") and not target.exists() and not target.is_symlink():
            os.replace(p, target)  # killed between the two renames of swap_dir: put it back
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def processor_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``, else the platform's)."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"
