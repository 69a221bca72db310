"""Dask as an executor: shards run as Dask futures on a cluster (``--dask ADDRESS|local:N``).

:class:`DaskExecutor` implements the
:class:`~stream_cluster.parallel.executor.Executor` protocol with
``Client.map`` and ``as_completed`` (``pure=False``: every call is new work, never a cached
result), so stage code that maps over shards runs on a cluster unchanged. :func:`connect`
gives a client: a ``distributed.LocalCluster`` of N worker processes for ``local:N``, or the
running scheduler at an address. Dask is an optional extra; :func:`require_dask` says how to
install it.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from stream_cluster.config import format_bytes
from stream_cluster.errors import StreamClusterError
from stream_cluster.parallel.executor import ShardResult, WorkerDied
from stream_cluster.pca.streaming import StreamingPCA

__all__ = [
    "probe_worker",
    "worker_stats",
    "DaskConnectError",
    "DaskExecutor",
    "DaskUnavailableError",
    "SharedStorageError",
    "check_shared_storage",
    "connect",
    "local_workers",
    "require_dask",
]

logger = logging.getLogger(__name__)

S = TypeVar("S")
R = TypeVar("R")

INSTALL_HINT = "pip install 'stream-cluster[dask]'"
#: How long to wait for the first worker of a running scheduler.
WORKER_WAIT_SECONDS = 120.0
#: How long a local cluster waits for a restarted worker to rejoin before dropping it.
LOST_WORKER_SECONDS = "300s"


class DaskUnavailableError(StreamClusterError, ImportError):
    """``--dask`` was given but Dask's distributed scheduler is not installed."""


class DaskConnectError(StreamClusterError, ConnectionError):
    """The Dask scheduler cannot be reached, or it has no workers."""


class SharedStorageError(StreamClusterError):
    """The run folder or the images are not on storage that the client and every worker see."""


def _sizeof_pca(model: StreamingPCA) -> int:
    arrays = ("components_", "mean_", "var_", "singular_values_", "explained_variance_")
    return int(sum(getattr(model, a).nbytes for a in arrays if hasattr(model, a))) + 1000


try:  # Dask sizes objects with sizeof: a model is its arrays (the scheduler and the memory
    # manager would otherwise count ~100 bytes for 413 MB of components)
    from dask.sizeof import sizeof

    sizeof.register(StreamingPCA)(_sizeof_pca)  # type: ignore[no-untyped-call]
except ImportError:  # pragma: no cover - Dask runs need it installed
    pass


def require_dask() -> None:
    """Import ``distributed`` or raise :class:`DaskUnavailableError` saying how to install it."""
    try:
        import distributed  # noqa: F401
    except ImportError as exc:
        raise DaskUnavailableError(
            f"--dask needs Dask's distributed scheduler, which is not installed ({exc}). "
            f"Install the extra with: {INSTALL_HINT}"
        ) from None


def local_workers(address: str) -> int | None:
    """N for ``local:N`` (a local cluster of N worker processes), None for a scheduler address.

    >>> local_workers("local:4"), local_workers("tcp://10.0.0.5:8786")
    (4, None)
    """
    m = re.fullmatch(r"local:(\d+)", address.strip())
    return int(m.group(1)) if m else None


@contextmanager
def _environment_kept() -> Iterator[None]:
    """Undo what starting a local cluster writes into this process's environment.

    The nanny sets ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and ``MKL_NUM_THREADS`` to 1
    (and more) in ``os.environ`` to start its workers, and leaves them there: every process
    this one starts afterwards would run single-threaded BLAS, with other rounding on some
    CPUs than a run started before.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


@contextmanager
def connect(address: str, mem_budget: int) -> Iterator[Any]:
    """A ``distributed.Client`` for ``address``, closed (with its local cluster) on exit.

    ``local:N`` starts a ``LocalCluster`` of N worker processes with one thread each and
    ``memory_limit=mem_budget`` each (the nanny restarts a worker past 95% of it); any other
    address is a running scheduler, whose workers keep their own memory limits (a warning
    names those below ``mem_budget``).
    """
    require_dask()
    import dask
    from distributed import Client, LocalCluster

    n = local_workers(address)
    if n is not None:
        # A worker the nanny restarts must rejoin before the cluster gives up on it (default
        # 15 s, which a restart on a busy machine can exceed: the cluster would then shrink).
        # No spilling on process memory: the plan sizes every task, a PCA task's arrays are
        # not spillable results, and Dask would warn at 70% of the budget on every fit; the
        # pause at 80% and the restart at 95% stay.
        settings = {"distributed.deploy.lost-worker-timeout": LOST_WORKER_SECONDS,
                    "distributed.worker.memory.spill": False}  # fmt: skip
        with dask.config.set(settings), _environment_kept():
            with LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                memory_limit=mem_budget,
                dashboard_address=None,
            ) as cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
                yield client
        return
    try:
        client = Client(address, timeout="30s")  # type: ignore[no-untyped-call]
    except (OSError, TimeoutError) as exc:
        raise DaskConnectError(
            f"Cannot reach the Dask scheduler at {address} ({exc}). Check the address and that "
            f"the scheduler runs (dask scheduler), or use --dask local:N for workers on this "
            f"machine."
        ) from None
    with client:
        try:
            client.wait_for_workers(1, timeout=WORKER_WAIT_SECONDS)
        except TimeoutError:
            raise DaskConnectError(
                f"The Dask scheduler at {address} has no workers (waited "
                f"{WORKER_WAIT_SECONDS:.0f} s). Start some with: dask worker {address}"
            ) from None
        _warn_small_workers(client, mem_budget)
        yield client


def _warn_small_workers(client: Any, mem_budget: int) -> None:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    small = {a: w.get("memory_limit") for a, w in workers.items()}
    small = {a: lim for a, lim in small.items() if lim and lim < mem_budget}
    if small:
        addr, lim = next(iter(small.items()))
        logger.warning(
            "%d Dask worker(s) have a memory limit below --mem-budget %s (e.g. %s: %s); the "
            "plan assumes each worker may use the budget, so the nanny may restart them",
            len(small), format_bytes(mem_budget), addr, format_bytes(lim),
        )  # fmt: skip


class DaskExecutor:
    """Shards run as Dask futures: ``Client.map(fn, shards, pure=False)`` + ``as_completed``.

    Parameters
    ----------
    client : distributed.Client
        A connected client; the executor does not close it.
    max_in_flight : int, optional
        Shards submitted but not yet consumed (default: twice the cluster's threads).

    A shard that raised propagates its exception (a bug). A shard whose worker died more than
    ``distributed.scheduler.allowed-failures`` times (Dask reruns it on another worker after each
    death, so ``fn`` must be idempotent) runs once more by itself, and is reported as
    :class:`WorkerDied` if it dies again: a shard that only shared a worker with the killing one
    is not blamed.

    Memory: on the client, at most ``max_in_flight`` results waiting to be consumed; shards
    may hold futures (e.g. a model scattered once), which Dask resolves on the worker.
    """

    def __init__(self, client: Any, *, max_in_flight: int | None = None) -> None:
        self.client = client
        threads = sum(client.nthreads().values())
        self.max_in_flight = max_in_flight or 2 * max(int(threads), 1)

    def map_unordered(
        self, fn: Callable[[S], R], shards: Iterable[S], *, window: int | None = None
    ) -> Iterator[ShardResult[S, R]]:
        """Yield each shard's result as it finishes; see the :class:`Executor` protocol."""
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        pending: dict[Any, tuple[int, S]] = {}
        it = enumerate(shards)
        exhausted = False
        submitted = 0
        limit = window or 2**62
        done = as_completed()  # type: ignore[no-untyped-call]

        def fill() -> None:
            nonlocal exhausted, submitted
            batch: list[tuple[int, S]] = []
            while not exhausted:
                oldest = min([i for i, _ in pending.values()] + [i for i, _ in batch],
                             default=submitted)  # fmt: skip
                if len(pending) + len(batch) >= self.max_in_flight or submitted - oldest >= limit:
                    break
                nxt = next(it, None)
                if nxt is None:
                    exhausted = True
                    break
                batch.append(nxt)
                submitted += 1
            if batch:
                futures = self.client.map(fn, [s for _, s in batch], pure=False)
                for fut, item in zip(futures, batch):
                    pending[fut] = item
                    done.add(fut)  # type: ignore[no-untyped-call]

        try:
            fill()
            while pending:
                fut = next(done)
                index, shard = pending.pop(fut)
                if fut.status == "error":
                    exc = fut.exception()
                    if not isinstance(exc, KilledWorker):
                        fut.result()  # raises the task's exception with its traceback
                    result: ShardResult[S, R] = self._alone(fn, index, shard)
                else:
                    result = ShardResult(index, shard, fut.result())
                fut.release()
                fill()
                yield result
        finally:
            if pending:
                self.client.cancel(list(pending))

    def _alone(self, fn: Callable[[S], R], index: int, shard: S) -> ShardResult[S, R]:
        """Run a shard Dask gave up on once more, by itself: a shard that only shared a worker
        with the one that killed it then succeeds; one that dies again is reported."""
        from distributed.scheduler import KilledWorker

        fut = self.client.submit(fn, shard, pure=False)
        try:
            return ShardResult(index, shard, fut.result())
        except KilledWorker as exc:
            died = WorkerDied(f"the Dask worker running it died ({exc})"[:300])
            return ShardResult(index, shard, None, died)
        finally:
            fut.release()

    def close(self) -> None:
        """Nothing to release: the client belongs to the caller."""

    def __enter__(self) -> DaskExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_shared_storage(client: Any, out_dir: Path, images: Sequence[Path]) -> int:
    """Check that every worker writes where the client reads, and sees the images.

    Each worker (``Client.run``, outside the task system) writes a probe file into
    ``out_dir/dask/probe`` that this process must read back, and checks that ``images`` exist.
    Returns the number of workers; raises :class:`SharedStorageError` naming each worker that
    fails, with what to do.
    """
    token = uuid.uuid4().hex
    probe_dir = Path(out_dir).resolve() / "dask" / "probe"
    try:
        answers = client.run(probe_worker, os.fspath(probe_dir), token,
                             [os.fspath(Path(p).resolve()) for p in images])  # fmt: skip
    except Exception as exc:  # e.g. the package is missing on the workers
        raise SharedStorageError(
            f"Could not run the storage check on the Dask workers ({type(exc).__name__}: "
            f"{exc}). Every worker needs the same stream-cluster installed as this client "
            f"({INSTALL_HINT})."
        ) from exc
    problems = []
    for addr, a in sorted(answers.items()):
        who = f"worker {addr} (host {a['host']})"
        if a["error"]:
            problems.append(f"{who} cannot write into the run folder: {a['error']}")
        elif not _reads_back(Path(a["path"]), token):
            problems.append(
                f"{who} wrote its probe file {a['path']}, which this client cannot read"
            )
        if a["missing"]:
            problems.append(f"{who} cannot see the image {a['missing'][0]}")
    shutil.rmtree(probe_dir, ignore_errors=True)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise SharedStorageError(
            f"The run folder {out_dir} is not on storage shared by this client and every Dask "
            f"worker: {'; '.join(problems[:3])}{more}. Workers write the store segments and PCA "
            f"states into the run folder and read the images themselves, so put the run folder "
            f"(--out) and the images on a filesystem every machine mounts at the same path (NFS, "
            f"Lustre, ...), or use --dask local:N to run on this machine only."
        )
    return len(answers)


def _reads_back(path: Path, token: str) -> bool:
    try:
        return path.read_text(encoding="utf-8") == token
    except OSError:
        return False


def worker_stats() -> dict[str, Any]:
    """Which worker this is (address, host, pid) and its peak RSS so far (bytes, from the
    kernel's high-water mark, so a peak between samples is not missed)."""
    address = ""
    try:
        from distributed import get_worker

        address = str(get_worker().address)
    except (ImportError, ValueError):  # not inside a Dask task (tests call tasks directly)
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"worker": address, "host": socket.gethostname(), "pid": os.getpid(), "peak": peak}


def probe_worker(probe_dir: str, token: str, images: list[str]) -> dict[str, Any]:
    """Write a probe file the client must read, and check that this worker sees ``images``.

    Runs through ``Client.run`` on every worker (outside the task system).
    """
    info = worker_stats()
    name = f"{token}-{info['host']}-{info['pid']}.txt"
    path = os.path.join(probe_dir, name)
    error = ""
    try:
        os.makedirs(probe_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(token)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        error = f"{type(exc).__name__}: {exc}"
    missing = [p for p in images if not os.path.exists(p)]
    return {**info, "path": path, "error": error, "missing": missing}
