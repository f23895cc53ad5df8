"""Local worker pools in use (``pool_in_use``, as ``reproduce`` and the sharded audit use
them): a signal sent to the parent alone reaches its workers, so that no worker
outlives an interrupted run (executors.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

# A parent with one spawned worker that writes its pid, then sleeps far longer than the
# test waits: only a signal that reaches it ends it in time.
SCRIPT = """
import os, sys, time
from pathlib import Path
from cascade_adv.errors import TrainingInterrupted
from cascade_adv.executors import local_pool, pool_in_use

def work(path):
    Path(path).write_text(str(os.getpid()))
    time.sleep(300)

if __name__ == "__main__":
    try:
        with pool_in_use(local_pool(1, 1)) as pool:
            pool.submit(work, sys.argv[1]).result()
    except TrainingInterrupted as exc:
        print(exc, flush=True)
        sys.exit(exc.exit_code)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_parent_alone_ends_its_workers(tmp_path, sig):
    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: pid_file.is_file() and pid_file.read_text(), 120), \
            parent.stderr.read() if parent.poll() is not None else "no worker started"
        worker = int(pid_file.read_text())
        parent.send_signal(sig)  # the parent only, as `kill PID` or a scheduler sends it
        out, err = parent.communicate(timeout=60)
        assert parent.returncode == 128 + sig, err
        assert f"interrupted by {signal.Signals(sig).name}" in out
        assert _wait_for(lambda: not _alive(worker), 30), "the worker outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        if pid_file.is_file() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_outside_the_main_thread_the_block_runs_unchanged():
    import threading

    from cascade_adv.executors import signals_reach_workers

    seen = []

    def body():
        with signals_reach_workers():
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == [before] and signal.getsignal(signal.SIGTERM) is before
    with signals_reach_workers():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
