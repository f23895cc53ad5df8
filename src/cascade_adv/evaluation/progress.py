"""The robustness audit's progress file: what an interrupted audit had done, so that a
rerun of the same audit skips it (:func:`cascade_adv.evaluation.audit`).

The file lies next to the results store (:func:`state_path`) and is rewritten
atomically after every attack x batch.  It records, besides the outcomes (per batch
the attacks finished, per image whether it was correct clean and per eps and image
the attack that flipped it), what it belongs to (the audit's key, its number of
images, epsilons, attacks and batch size, the model's name, dataset and split), the
process that wrote it and a SHA-256 of all of it.  A rerun takes it over only if every
field is what this audit would have written (:func:`problem`): the checksum, the key
and the audit's own settings, every value's type and range, and their consistency (an
image wrong clean is never broken; an attack breaks only images of a batch it ran on;
a batch not started holds no outcome; batches finish in order).  Anything else is
discarded with one :class:`~cascade_adv.errors.CascadeAdvWarning` and the audit starts
over; something at the path that is not a regular file (a folder, a link) is left as
it is, with one warning, and the audit keeps its progress in memory only.

The file is removed once the audit's rows are stored; when an audit starts, the
progress files beside the same store of the same model, dataset and split that belong
to another audit (its arguments changed) and to no running process are removed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import socket
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cascade_adv.errors import CascadeAdvError, CascadeAdvWarning, OutputPathError
from cascade_adv.io import atomic_write_text, non_regular_kind, process_alive

#: ``format`` of the progress files.
STATE_FORMAT = "cascade-adv audit progress"
#: ``layout`` of the files this version writes (files of another layout are discarded).
STATE_LAYOUT = 2
#: The largest progress file read (bytes) beside :func:`size_limit`'s own bound.
MAX_PEEK = 64 << 20

__all__ = ["STATE_FORMAT", "Plan", "Progress", "digest", "problem", "remove_progress",
           "state_path"]


def state_path(store_path: str | os.PathLike, key: str) -> Path:
    """The progress file of the audit ``key`` next to the results store
    ``store_path``: ``STORE.audit-KEY16.json``."""
    p = Path(store_path)
    return p.with_name(f"{p.name}.audit-{key[:16]}.json")


@dataclass(frozen=True)
class Plan:
    """What a progress file belongs to: the audit's ``key``, its ``n`` images in batches
    of ``batch_size``, its ``eps`` and attack labels, and ``owner`` (model, dataset and
    split: the rows it writes)."""

    key: str
    n: int
    batch_size: int
    eps: list[float]
    attacks: list[str]
    owner: dict[str, str] = field(default_factory=dict)

    @property
    def n_batches(self) -> int:
        return -(-self.n // self.batch_size)

    def header(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "layout": STATE_LAYOUT, "key": self.key,
                "owner": self.owner, "n": self.n, "batch_size": self.batch_size,
                "eps": self.eps, "attacks": self.attacks}

    def size_limit(self) -> int:
        """More bytes than any file of this audit can hold."""
        return 4096 + 32 * self.n * (len(self.eps) + 1) + 16 * self.n_batches


def digest(content: dict[str, Any]) -> str:
    """The SHA-256 a progress file carries: of its canonical JSON, ``digest`` left out."""
    rest = {k: v for k, v in content.items() if k != "digest"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()


def _warn(path: Path, text: str) -> None:
    warnings.warn(f"audit progress file {path} {text}", CascadeAdvWarning, stacklevel=4)


# --- checking a saved file -----------------------------------------------------------------


def _strict_equal(a: Any, b: Any) -> bool:
    """Equal as JSON (``true`` is not ``1``, ``16`` is not ``16.0``)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _header_problem(saved: Any, plan: Plan) -> str:
    if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
        return "is not an audit progress file"
    if saved.get("layout") != STATE_LAYOUT:
        return "was written by another version of cascade-adv"
    if saved.get("digest") != digest(saved):
        return "is damaged (its checksum does not match its content)"
    if saved.get("key") != plan.key:
        return "belongs to another audit"
    for name in ("n", "batch_size", "eps", "attacks"):
        if not _strict_equal(saved.get(name), getattr(plan, name)):
            return f"records {name} {json.dumps(saved.get(name))[:60]}, not this audit's"
    return ""


def _whole(values: Any, length: int, low: int, high: int, flags: bool = False) -> bool:
    """``values`` is a list of ``length`` JSON integers in [low, high] (``flags``:
    ``true`` / ``false`` too)."""
    kinds = (int, bool) if flags else (int,)
    return (isinstance(values, list) and len(values) == length
            and all(type(v) in kinds and low <= v <= high for v in values))


def _value_problem(saved: dict[str, Any], plan: Plan) -> str:
    attacks, n = len(plan.attacks), plan.n
    if not _whole(saved.get("finished"), plan.n_batches, 0, attacks):
        return (f"records finished attacks that are not {plan.n_batches} whole numbers in "
                f"[0, {attacks}]")
    if not _whole(saved.get("clean"), n, 0, 1, flags=True):
        return f"records clean results that are not {n} flags (0 or 1)"
    broken = saved.get("broken_by")
    if not (isinstance(broken, list) and len(broken) == len(plan.eps)
            and all(_whole(row, n, -1, attacks - 1) for row in broken)):
        return (f"records breaking attacks that are not {len(plan.eps)} x {n} attack "
                f"indices in [-1, {attacks - 1}]")
    return ""


def _consistency_problem(finished: torch.Tensor, clean: torch.Tensor,
                         broken_by: torch.Tensor, plan: Plan) -> str:
    open_batches = (finished < len(plan.attacks)).nonzero().flatten()
    if len(open_batches) and bool((finished[int(open_batches[0]) + 1:] != 0).any()):
        return f"records a batch after the unfinished batch {int(open_batches[0])} as started"
    done = finished[torch.arange(plan.n) // plan.batch_size]  # attacks finished, per image
    broken = broken_by >= 0
    if bool((broken & ~clean).any()):
        return "records an image as broken by an attack although it was wrong clean"
    if bool((broken & (broken_by >= done)).any()):
        return "records an image as broken by an attack that had not run on its batch"
    if bool((clean & (done == 0)).any()):
        return "records clean results of a batch it had not started"
    return ""


def problem(saved: Any, plan: Plan) -> str:
    """Why the parsed progress file ``saved`` cannot continue the audit ``plan`` (a
    phrase such as ``"belongs to another audit"``), or ``""`` when it can."""
    reason = _header_problem(saved, plan) or _value_problem(saved, plan)
    if reason:
        return reason
    finished, clean, broken_by = _tensors(saved)
    return _consistency_problem(finished, clean, broken_by, plan)


def _tensors(saved: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.tensor(saved["finished"], dtype=torch.int64),
            torch.tensor(saved["clean"], dtype=torch.bool),
            torch.tensor(saved["broken_by"], dtype=torch.int64))


def _regular(path: Path) -> str:
    """``""`` for a regular file (not a link) or nothing at ``path``, else what is
    there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"cannot be examined ({exc.strerror or type(exc).__name__})"
    kind = non_regular_kind(mode)
    return f"is {kind}, not a file an audit wrote" if kind else ""


def _read(path: Path, limit: int) -> tuple[Any, str]:
    """The parsed JSON of the regular file ``path`` of at most ``limit`` bytes, or
    ``(None, why not)``."""
    try:  # never follows a link nor waits on a FIFO put there since it was examined
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None, "is not a regular file"
            data = fh.read(limit + 1)
        if len(data) > limit:
            return None, f"is larger than any progress file of this audit ({limit} bytes)"
        return json.loads(data.decode("utf-8")), ""
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or type(exc).__name__})"
    except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deep
        return None, "is not valid JSON"


# --- the progress of one audit ---------------------------------------------------------------


class Progress:
    """Per image and eps, which attack flipped it, and per batch how many attacks are
    done; saved atomically to ``path`` after every attack x batch (``None``: kept in
    memory only), taken over from there by a rerun (``resume``) when valid."""

    def __init__(self, path: Path | None, plan: Plan, resume: bool) -> None:
        self.plan = plan
        self.finished = [0] * plan.n_batches
        self.clean = torch.zeros(plan.n, dtype=torch.bool)
        self.broken_by = torch.full((len(plan.eps), plan.n), -1, dtype=torch.int64)
        self.writer = {"pid": os.getpid(), "host": socket.gethostname()}
        self.path = path
        there = "" if path is None else _regular(path)
        if there:
            _warn(path, f"{there}; it is left as it is and this audit keeps its progress in "
                        "memory only (move it away to make the audit resumable)")
            self.path = None
        if resume and self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        saved, reason = _read(self.path, self.plan.size_limit())
        reason = reason or problem(saved, self.plan)
        if reason:
            _warn(self.path, f"{reason}; it is discarded and the audit starts over")
            return
        finished, self.clean, self.broken_by = _tensors(saved)
        self.finished = finished.tolist()

    def save(self) -> None:
        if self.path is None:
            return
        content = {**self.plan.header(), "writer": self.writer, "finished": self.finished,
                   "clean": self.clean.to(torch.int64).tolist(),
                   "broken_by": self.broken_by.tolist()}
        content["digest"] = digest(content)
        try:
            atomic_write_text(self.path, json.dumps(content, separators=(",", ":")))
        except CascadeAdvError:
            raise  # a full disk, a read-only folder: named by the writer
        except OSError as exc:
            raise OutputPathError(
                f"cannot write the audit progress file {self.path} "
                f"({exc.strerror or type(exc).__name__}); move away what is at that path "
                "and run the audit again") from None

    def remove(self) -> None:
        """Remove the file (the audit is finished)."""
        remove_progress(self.path)

    def remove_superseded(self) -> list[Path]:
        """Remove the progress files beside the same store of the same owner (model,
        dataset and split) that belong to another audit and to no running process:
        audits whose arguments changed since.  Returns them."""
        if self.path is None:
            return []
        store = self.path.name.rsplit(".audit-", 1)[0]
        removed = []
        for other in sorted(self.path.parent.glob(f"{glob.escape(store)}.audit-*.json")):
            if other != self.path and _superseded(other, self.plan, self.writer):
                _unlink(other)
                removed.append(other)
        return removed


def remove_progress(path: Path | None) -> None:
    """Remove the progress file at ``path`` once its audit is finished (its rows stored);
    something there that is not a regular file is left as it is."""
    if path is not None and not _regular(path):
        _unlink(path)


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        _warn(path, f"cannot be removed ({exc.strerror or type(exc).__name__}); remove it "
                    "by hand")


def _superseded(path: Path, plan: Plan, writer: dict[str, Any]) -> bool:
    """``path`` is a progress file of ``plan``'s owner, of another audit, whose writer
    is not running (on this host; a file written elsewhere is kept)."""
    if _regular(path):
        return False
    saved, reason = _read(path, MAX_PEEK)
    if (reason or not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT
            or saved.get("owner") != plan.owner or saved.get("key") == plan.key):
        return False
    other = saved.get("writer")
    if not isinstance(other, dict):
        return True  # damaged: no writer recorded
    if other.get("host") != writer["host"]:
        return False  # its writer may be running elsewhere
    pid = other.get("pid")
    if type(pid) is not int or pid <= 0 or pid == writer["pid"]:
        return True  # damaged, or this process (which runs one audit at a time)
    return not process_alive(pid)
