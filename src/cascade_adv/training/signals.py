"""Clean interruption of a training run.

Inside the training loop SIGINT (Ctrl-C) and SIGTERM only set a flag; the loop
finishes the current iteration, writes a checkpoint and raises
:class:`~cascade_adv.errors.TrainingInterrupted`, which the command line turns
into one line ("rerun the same command to resume") and the conventional exit
status, 128 + the signal number (130 for SIGINT, 143 for SIGTERM).  The previous
handlers are restored when the loop ends.  Handlers can only be installed from
the main thread; elsewhere (and under ``torchrun``, whose ranks would have to
agree on the iteration to stop at) the default behaviour is kept.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from cascade_adv.errors import TrainingInterrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """``with StopSignals(): ...``: ``requested`` becomes the signal number on SIGINT
    / SIGTERM; :meth:`interrupted` builds the exception to raise."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.requested = signum

    def __enter__(self) -> StopSignals:  # noqa: PYI034 - Python 3.10 has no typing.Self
        if self.enabled:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def interrupted(self, done: int, total: int, checkpoint: Path | None) -> TrainingInterrupted:
        name = signal.Signals(self.requested).name if self.requested else "signal"
        saved = f"checkpoint {checkpoint} written" if checkpoint else "no checkpoint written"
        return TrainingInterrupted(
            f"interrupted by {name} after iteration {done} of {total}; {saved}; "
            "rerun the same command to resume",
            exit_code=128 + int(self.requested or signal.SIGINT),
        )
