"""The executor seam: run a function over shards of work, yield the results as they finish.

Stages that map over shards of images (decoding, later transforming and assigning) call an
:class:`Executor` and never name a backend, as scikit-learn's estimators call joblib without
naming loky or Dask. :class:`LocalExecutor` runs the shards in local worker processes;
:class:`InlineExecutor` runs them in the calling process. A Dask implementation fits the same
interface (``Client.map`` + ``as_completed``): the stage code does not change.

Local workers are started by loky (shipped with scikit-learn's joblib), which launches fresh
interpreters without re-running the caller's ``__main__``: the library works from a script
without an ``if __name__ == "__main__":`` guard and from standard input. Each worker watches
its parent and exits when the parent is gone, however the parent died (``kill -9`` included),
so no worker outlives the run.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from stream_cluster.errors import StreamClusterError

__all__ = [
    "Executor",
    "InlineExecutor",
    "LocalExecutor",
    "ShardResult",
    "WorkerDied",
    "WorkerStartError",
]

logger = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")

#: How often a worker checks that its parent is still alive (seconds).
PARENT_POLL_SECONDS = 0.25
#: How long a new pool may take to run its first (empty) task before we give up on it.
START_TIMEOUT_SECONDS = 120.0


class WorkerStartError(StreamClusterError, RuntimeError):
    """Worker processes could not be started (not an image problem: nothing was decoded)."""


@dataclass(frozen=True)
class WorkerDied:
    """The process running a shard died (a crash in native code, a kill): no result."""

    reason: str


@dataclass(frozen=True)
class ShardResult(Generic[S, R]):
    """One finished shard: the shard as given, and its result or the worker's death."""

    index: int
    shard: S
    value: R | None
    died: WorkerDied | None = None


class Executor(Protocol):
    """Run ``fn`` over shards; yield each :class:`ShardResult` as it finishes (any order).

    ``fn`` must be a module-level function (it is sent to other processes by reference). At
    most :attr:`max_in_flight` shards are submitted at once, so the results waiting to be
    consumed stay bounded; with ``window``, no shard is submitted ``window`` or more places after
    the oldest unfinished one, which bounds what a caller that restores the order must hold.
    A shard whose worker died is reported, not raised: the caller
    decides (split it, skip it). An exception raised by ``fn`` itself is a bug and propagates.
    """

    max_in_flight: int

    def map_unordered(
        self, fn: Callable[[S], R], shards: Iterable[S], *, window: int | None = None
    ) -> Iterator[ShardResult[S, R]]: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Run every shard in the calling process, in order (``workers=0``; tests, tiny runs)."""

    max_in_flight = 1

    def map_unordered(
        self, fn: Callable[[S], R], shards: Iterable[S], *, window: int | None = None
    ) -> Iterator[ShardResult[S, R]]:
        """Yield ``fn(shard)`` for each shard, in order."""
        for i, shard in enumerate(shards):
            yield ShardResult(i, shard, fn(shard))

    def close(self) -> None:
        """Nothing to release."""

    def __enter__(self) -> InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(parent: int, nice: int, stderr_log: str | None) -> None:
    """Prepare a worker: exit with the parent, ignore stop signals, lower priority, quiet stderr."""
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    if os.getppid() != parent:  # the parent died while this worker started
        os._exit(1)
    # Ctrl-C, and SIGTERM/SIGHUP from batch systems or a closing terminal, reach the whole
    # process group; only the parent decides how to stop (it shuts the pool down).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    if stderr_log is not None:
        # Native decoders print straight to fd 2 ("libpng error: ..."); keep those lines out of
        # the progress bars but on record next to the run.
        fd = os.open(stderr_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass


def _ready() -> int:
    return os.getpid()


class LocalExecutor:
    """Shards run in ``workers`` local processes started by loky.

    Parameters
    ----------
    workers : int
        Worker processes (>= 1).
    nice : int
        Niceness of the workers (19: only the CPU the main process leaves idle).
    stderr_log : str or None
        File that receives the workers' stderr.

    When a worker dies, every shard in flight on the pool is run again alone in a fresh
    one-worker pool, so only the shard that really kills a worker is reported as
    :class:`WorkerDied`. If the workers cannot start at all, :class:`WorkerStartError` is
    raised at once, before any shard is blamed.

    Memory: each worker is a fresh interpreter (see ``budget.WORKER_BASE_BYTES``) plus what
    ``fn`` allocates; at most ``2 * workers`` results wait in the parent.
    """

    def __init__(self, workers: int, *, nice: int = 0, stderr_log: str | None = None) -> None:
        if workers < 1:
            raise ValueError(f"LocalExecutor needs workers >= 1. Got {workers} instead.")
        self.workers = workers
        self.nice = nice
        self.stderr_log = stderr_log
        self.max_in_flight = 2 * workers
        self._pool: Any = None

    def _new_pool(self, workers: int) -> Any:
        from joblib.externals.loky.process_executor import ProcessPoolExecutor

        pool = ProcessPoolExecutor(
            max_workers=workers,
            initializer=_init_worker,
            initargs=(os.getpid(), self.nice, self.stderr_log),
        )
        try:
            pool.submit(_ready).result(timeout=START_TIMEOUT_SECONDS)
        except Exception as exc:
            pool.shutdown(wait=False, kill_workers=True)
            raise WorkerStartError(
                f"Could not start decode worker processes ({type(exc).__name__}: {exc}). "
                f"Nothing was decoded. Check that this Python can start subprocesses "
                f"(memory limits, process limits), or use workers=0 (--workers 0) to decode "
                f"in the main process."
            ) from exc
        return pool

    def _pool_or_new(self) -> Any:
        if self._pool is None:
            self._pool = self._new_pool(self.workers)
        return self._pool

    def close(self) -> None:
        """Stop the workers (pending shards are cancelled)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, kill_workers=True)
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _alone(self, fn: Callable[[S], R], index: int, shard: S) -> ShardResult[S, R]:
        pool = self._new_pool(1)
        try:
            return ShardResult(index, shard, pool.submit(fn, shard).result())
        except BrokenProcessPool as exc:
            died = WorkerDied(f"the worker process died ({exc})"[:300])
            return ShardResult(index, shard, None, died)
        finally:
            pool.shutdown(wait=True, kill_workers=True)

    def map_unordered(
        self, fn: Callable[[S], R], shards: Iterable[S], *, window: int | None = None
    ) -> Iterator[ShardResult[S, R]]:
        """Yield each shard's result as it finishes; at most ``2 * workers`` in flight."""
        pending: dict[Future[R], tuple[int, S]] = {}
        it = enumerate(shards)
        exhausted = False
        submitted = 0
        limit = window or 2**62

        def room() -> bool:
            oldest = min((i for i, _ in pending.values()), default=submitted)
            return len(pending) < self.max_in_flight and submitted - oldest < limit

        try:
            while True:
                while not exhausted and room():
                    nxt = next(it, None)
                    if nxt is None:
                        exhausted = True
                        break
                    pending[self._pool_or_new().submit(fn, nxt[1])] = nxt
                    submitted += 1
                if not pending:
                    return
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                broken: list[tuple[int, S]] = []
                for fut in done:
                    index, shard = pending.pop(fut)
                    try:
                        value = fut.result()
                    except BrokenProcessPool:
                        broken.append((index, shard))
                        continue
                    yield ShardResult(index, shard, value)
                if broken:
                    # A worker died and took the pool down: every shard in flight failed with
                    # it. Run each alone to find the one that kills a worker; the rest finish.
                    logger.warning("a worker process died; rerunning its shards one at a time")
                    broken.extend(pending.values())
                    pending.clear()
                    self.close()
                    for index, shard in sorted(broken, key=lambda p: p[0]):
                        yield self._alone(fn, index, shard)
        finally:
            for fut in pending:
                fut.cancel()
