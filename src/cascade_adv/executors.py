"""Where independent work runs: local worker processes or Ray tasks, behind the
``concurrent.futures`` interface (``submit(fn, *args) -> Future``, ``shutdown()``).

``reproduce`` runs its steps and the audit its image shards through them.  Local
workers are spawned (never forked: a forked torch process can deadlock in its thread
pools) and each sets its torch thread count first, so that N single-thread workers
use N cores without competing (one thread per process keeps its speed beside other
work; two threads in one process lose badly to anything running beside them).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from multiprocessing import get_context
from typing import Any

from cascade_adv.errors import InvalidArgument, TrainingInterrupted

#: Executors by name (``--executor``).
EXECUTORS = ("local", "ray")
#: Seconds a Ray address may take to answer before it is refused.
RAY_CONNECT_TIMEOUT = 30.0


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def local_pool(jobs: int, threads: int | None = None) -> ProcessPoolExecutor:
    """``jobs`` spawned worker processes, each with ``threads`` torch threads (``None``:
    torch's default)."""
    init = (_set_threads, (threads,)) if threads else (None, ())
    return ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"),
                               initializer=init[0], initargs=init[1])


@contextmanager
def signals_reach_workers() -> Iterator[None]:
    """While the block runs: SIGINT / SIGTERM sent to this process alone (``kill PID``,
    a scheduler's stop) are passed on to its worker processes, then raised here as
    :class:`~cascade_adv.errors.TrainingInterrupted` (exit status 128 + the signal), so
    that the pool's shutdown waits for them.  A worker that trains writes a checkpoint
    and stops; one that audits ends at once (its progress file keeps every finished
    attack x batch).  Without this a killed parent leaves its workers running, still
    holding their step folders.  Handlers can only be installed from the main thread;
    elsewhere the block runs as it is.  The previous handlers are restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame) -> None:
        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signum)
            except ProcessLookupError:  # ended meanwhile
                pass
        raise TrainingInterrupted(
            f"interrupted by {signal.Signals(signum).name}; the running steps were stopped "
            "(a training writes a checkpoint, an audit keeps its finished batches); rerun "
            "the same command to resume", exit_code=128 + signum)

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def pool_in_use(pool: Any) -> Iterator[Any]:
    """``with pool_in_use(pool):`` the block's work on ``pool`` (a :func:`local_pool` or a
    :class:`RayExecutor`), which is shut down at the end, its queued work cancelled; the
    workers of a local pool also get the SIGINT / SIGTERM sent to this process
    (:func:`signals_reach_workers`)."""
    local = isinstance(pool, ProcessPoolExecutor)
    with signals_reach_workers() if local else nullcontext():
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _ray_init(ray: Any, address: str | None, timeout: float) -> None:
    """``ray.init`` on ``address``, refused with one line if it does not answer within
    ``timeout`` seconds (the attempt goes on in a daemon thread, which the process does
    not wait for) or refuses; without an address, a local instance started here."""
    if not address:  # a local instance, started here: in this thread (Ray needs it)
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        return
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - reported below, one line
            outcome.append(exc)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    where = f"Ray address {address}" if address else "a local Ray instance"
    if not outcome:
        raise InvalidArgument(f"{where} did not answer within {timeout:g} s; start the "
                              "cluster (ray start --head) or give its address, e.g. auto")
    if outcome[0] is not None:
        from cascade_adv.errors import one_line

        raise InvalidArgument(f"cannot connect to {where} ({one_line(outcome[0])[:300]}); "
                              "start the cluster (ray start --head) or give its address")


class RayExecutor:
    """Tasks as Ray tasks (``pip install "cascade-adv[ray]"``): on a running cluster
    (``address``, e.g. ``auto``) or a local instance started here.  ``cpus`` and ``gpus``
    (a fraction: several tasks share one GPU) are what each task asks for; a task sets
    its torch threads to ``threads`` first."""

    def __init__(self, address: str | None = None, gpus: float = 0.0, cpus: float = 1.0,
                 threads: int | None = None, timeout: float = RAY_CONNECT_TIMEOUT):
        ray = require_ray()
        self._ray, self._options = ray, {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 0}
        self._threads = threads
        self._started = not ray.is_initialized()
        if self._started:
            _ray_init(ray, address, timeout)
        self._tasks: dict[Any, Any] = {}

    def submit(self, fn, *args) -> Future:
        if fn not in self._tasks:
            self._tasks[fn] = self._ray.remote(_with_threads).options(**self._options)
        return self._tasks[fn].remote(self._threads, fn, *args).future()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        if self._started:
            self._ray.shutdown()


def _with_threads(threads: int | None, fn, *args):
    if threads:
        _set_threads(threads)
    return fn(*args)


def require_ray():
    """The ``ray`` module, or one line naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise InvalidArgument("--executor ray needs Ray: pip install 'cascade-adv[ray]'"
                              ) from None
    return ray


def check_executor(executor: str) -> str:
    if executor not in EXECUTORS:
        raise InvalidArgument(f"executor must be one of {', '.join(EXECUTORS)}, got "
                              f"{executor!r}")
    return executor
