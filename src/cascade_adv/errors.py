"""User-facing errors.

Every problem a user can fix (bad config, missing dataset file, wrong checkpoint,
epsilon out of range, ...) raises :class:`CascadeAdvError` with a one-line
message that names the problem and the fix.  The command line prints that line
and exits with status 2, without a traceback.
"""


class CascadeAdvError(Exception):
    """A problem in the user's input, with a one-line message naming the fix."""


class ConfigError(CascadeAdvError):
    """An invalid configuration file or override."""


class DatasetError(CascadeAdvError):
    """A missing, corrupt or unknown dataset."""


class CheckpointError(CascadeAdvError):
    """A missing checkpoint, or one that does not fit the configured model."""


class AttackError(CascadeAdvError):
    """An unknown attack or an invalid attack argument (epsilon out of range...)."""


class TrainingDiverged(CascadeAdvError):
    """The training loss became non-finite; the last good checkpoint is kept."""
