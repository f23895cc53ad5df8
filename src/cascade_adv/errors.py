"""User-facing errors.

Every problem a user can fix (bad config, missing dataset file, wrong checkpoint,
epsilon out of range, ...) raises :class:`CascadeAdvError` with a one-line
message that names the problem and the fix.  The command line prints that line
and exits with status 2, without a traceback.
"""


#: The longest error line a user is shown; a longer one keeps its start and its end
#: (the fix), so that no echoed input (an 800 KB YAML value) floods the terminal.
MAX_LINE = 2000


def shorten(text: str, limit: int) -> str:
    """``text`` at most ``limit`` characters long (``limit`` >= 40): a longer one keeps its
    start and end around a note of how much was left out."""
    if len(text) <= limit:
        return text
    keep = limit - len(f" [... {len(text):,} characters ...] ")  # the note's longest form
    head = keep * 2 // 3
    return (f"{text[:head]} [... {len(text) - keep:,} characters ...] "
            f"{text[len(text) - (keep - head):]}")


def echo(value: object, limit: int = 80) -> str:
    """``repr(value)`` for an error message, at most ``limit`` characters (an input
    echoed back may be a file's whole content)."""
    return shorten(repr(value), limit)


def one_line(text: object) -> str:
    """``str(text)`` with all whitespace runs (newlines included) collapsed to one space
    and at most :data:`MAX_LINE` characters (:func:`shorten`): how an error message
    reaches the user."""
    return shorten(" ".join(str(text).split()), MAX_LINE)


class CascadeAdvError(Exception):
    """A problem in the user's input, with a one-line message naming the fix."""


class CascadeAdvWarning(UserWarning):
    """Something the library worked around (a damaged progress file it discarded...),
    said in one line through :func:`warnings.warn`; the command line prints it as
    ``warning: ...`` on stderr."""


class ConfigError(CascadeAdvError, ValueError):
    """An invalid configuration file or override (also a :class:`ValueError`)."""


class DatasetError(CascadeAdvError):
    """A missing, corrupt or unknown dataset."""


class CheckpointError(CascadeAdvError):
    """A missing checkpoint, or one that does not fit the configured model."""


class AttackError(CascadeAdvError, ValueError):
    """An invalid attack argument (epsilon out of range...); also a :class:`ValueError`,
    as Python, torch and numpy raise for bad argument values."""


class UnknownAttackError(AttackError, KeyError):
    """An attack name that is not registered; also a :class:`KeyError`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TrainingDiverged(CascadeAdvError):
    """The training loss became non-finite; the last good checkpoint is kept."""


class OutputPathError(CascadeAdvError, ValueError):
    """An output path that cannot be written, or that holds something a command
    would have to overwrite without being asked to (``--overwrite``)."""


class PathCollision(OutputPathError):
    """An output that is, holds or lies inside an input or another output of the same
    command (:func:`cascade_adv.io.check_disjoint`); ``--overwrite`` does not lift it."""


class DiskFull(CascadeAdvError, OSError):
    """No space left (or a read-only folder) where a command writes: the message names
    the folder and the space needed; what was complete before is kept.  Also an
    :class:`OSError`, as the failed write was.  ``folder`` is where it happened and
    ``errno_value`` the system's reason (``ENOSPC``, ``EROFS``...)."""

    def __init__(self, message: str, *, folder=None, errno_value: int | None = None):
        super().__init__(message)
        self.folder = folder
        self.errno_value = errno_value


class StoreWriteError(CascadeAdvError):
    """The results store could not be written (locked past its timeout, full disk); the
    rows were kept in a file that ``cascade-adv store import`` reads."""


class StoreConflict(CascadeAdvError, ValueError):
    """Rows to import that would replace a row of another model hash, or a newer row;
    nothing was imported.  ``conflicts`` holds one line per conflicting row or model."""

    def __init__(self, message: str, conflicts: list[str]):
        super().__init__(message)
        self.conflicts = conflicts


class InvalidArgument(CascadeAdvError, ValueError):
    """A bad argument to a command or a library function (empty list, non-positive limit...)."""


class UnknownName(InvalidArgument, KeyError):
    """A name that is not one of the valid choices (an analysis' method or pair...); also
    a :class:`KeyError`, as an unknown key is."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class FolderInUse(CascadeAdvError):
    """A folder that another running process holds locked (a run folder that a
    ``train`` is writing); the message names the folder and that process."""


class ModelFault(CascadeAdvError):
    """A model whose weights or outputs are not finite."""


class TrainingInterrupted(CascadeAdvError):
    """SIGINT / SIGTERM during training: a checkpoint was written, the run can resume.

    ``exit_code`` is the conventional status (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code
