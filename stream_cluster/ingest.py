"""Ingest stage: decode images in parallel worker processes into the pixel RowStore.

Workers are *spawned* (not forked) so each holds only its interpreter, the decoders and the
image it is working on; a forked child would count the parent's pages in its RSS. Results come
back in file order, so the store's row order is the sorted file order whatever the timing.
A file that cannot be decoded is skipped with its reason; a decoder that kills its worker
process is isolated by retrying its chunk one file at a time in a fresh pool.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .decode import DECODE_MEMORY_CAP, decode_image
from .errors import DecodeError
from .store import RowStore

__all__ = ["IngestProgress", "decode_many", "ingest"]

logger = logging.getLogger(__name__)

CHUNK = 8


def _init_worker(stderr_log: str | None = None, nice: int = 0) -> None:
    # Ctrl-C goes to the whole process group; only the parent decides how to stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)
    if stderr_log is not None:
        # libpng/libjpeg inside OpenCV print straight to fd 2 ("libpng error: ..."); keep those
        # lines out of the progress bars but on record next to the run.
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


def decode_many(
    root: str,
    rel_paths: Sequence[str],
    width: int,
    height: int,
    memory_cap: int = DECODE_MEMORY_CAP,
) -> tuple[np.ndarray, list[str | None]]:
    """Decode several files; returns stacked rows and, per file, None or the skip reason."""
    out = np.full((len(rel_paths), width * height), 255, dtype=np.uint8)
    reasons: list[str | None] = []
    for i, rel in enumerate(rel_paths):
        try:
            path = os.path.join(root, rel)
            out[i] = decode_image(path, width, height, memory_cap=memory_cap).reshape(-1)
            reasons.append(None)
        except DecodeError as exc:
            reasons.append(exc.reason)
        except MemoryError:
            reasons.append("out of memory while decoding")
        except Exception as exc:  # a decoder bug must not end the run: record and go on
            reasons.append(f"unexpected decoder error: {type(exc).__name__}: {exc}"[:300])
    return out, reasons


@dataclass(frozen=True)
class IngestProgress:
    """Emitted after each store segment: files handled so far and the skips among them."""

    next_file: int
    n_segments: int
    rows: int
    skipped: list[tuple[str, str]]


class _Decoder:
    """Ordered, bounded-in-flight parallel map of :func:`decode_many` over chunks of files."""

    def __init__(
        self,
        root: str,
        width: int,
        height: int,
        workers: int,
        stderr_log: str | None = None,
        nice: int = 0,
        decode_chunk: Callable[
            [str, Sequence[str], int, int], tuple[np.ndarray, list[str | None]]
        ] = decode_many,
    ) -> None:
        self.root, self.width, self.height, self.workers = root, width, height, workers
        self.stderr_log = stderr_log
        self.nice = nice
        # A module-level function (workers are spawned and import it by name).
        self.decode_chunk = decode_chunk
        self.pool: ProcessPoolExecutor | None = None

    def _new_pool(self, workers: int | None = None) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=workers or self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.stderr_log, self.nice),
        )

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def _isolate(self, chunk: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        # The chunk broke a worker: retry file by file, each in a fresh single-worker pool.
        rows = np.full((len(chunk), self.width * self.height), 255, dtype=np.uint8)
        reasons: list[str | None] = []
        for i, rel in enumerate(chunk):
            with self._new_pool(1) as pool:
                try:
                    r, why = pool.submit(
                        self.decode_chunk, self.root, [rel], self.width, self.height
                    ).result()
                    rows[i] = r[0]
                    reasons.append(why[0])
                except BrokenProcessPool:
                    reasons.append("decoder crashed: the worker process died on this file")
        return rows, reasons

    def map(self, chunks: Sequence[Sequence[str]]) -> Iterator[tuple[np.ndarray, list[str | None]]]:
        if self.workers == 0:
            for chunk in chunks:
                yield self.decode_chunk(self.root, chunk, self.width, self.height)
            return
        self.pool = self._new_pool()
        pending: deque[tuple[Sequence[str], Future[tuple[np.ndarray, list[str | None]]]]] = deque()
        it = iter(chunks)
        try:
            while True:
                while len(pending) < 2 * self.workers:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    try:
                        fut = self.pool.submit(
                            self.decode_chunk, self.root, nxt, self.width, self.height
                        )
                    except BrokenProcessPool:
                        self.pool = self._new_pool()
                        fut = self.pool.submit(
                            self.decode_chunk, self.root, nxt, self.width, self.height
                        )
                    pending.append((nxt, fut))
                if not pending:
                    return
                chunk, fut = pending.popleft()
                try:
                    yield fut.result()
                except BrokenProcessPool:
                    logger.warning("a decode worker died; isolating the files of its chunk")
                    yield self._isolate(chunk)
                    # Every other in-flight chunk died with the pool: resubmit them in order.
                    self.close()
                    self.pool = self._new_pool()
                    redo = [c for c, _ in pending]
                    pending.clear()
                    for c in redo:
                        pending.append(
                            (
                                c,
                                self.pool.submit(
                                    self.decode_chunk, self.root, c, self.width, self.height
                                ),
                            )
                        )
        finally:
            self.close()


def ingest(
    root: Path,
    files: Sequence[str],
    store: RowStore,
    *,
    width: int,
    height: int,
    workers: int,
    segment_rows: int,
    start_file: int = 0,
    skipped: Sequence[tuple[str, str]] = (),
    on_images: Callable[[int], None] | None = None,
    stderr_log: Path | None = None,
    memory_cap: int = DECODE_MEMORY_CAP,
    nice: int = 0,
) -> Iterator[IngestProgress]:
    """Decode ``files[start_file:]`` into ``store``, one atomic segment at a time.

    Yields an :class:`IngestProgress` after every segment is durable; that is the resume point.
    ``on_images(n)`` is called as decoded chunks arrive (for progress bars). Decoder messages
    that worker processes print to stderr go to ``stderr_log`` when given.

    Memory: ``segment_rows`` rows of uint8 in the parent, plus ``2 * workers`` chunks in flight,
    plus each worker's decode workspace (see :func:`stream_cluster.decode.decode_worker_bytes`),
    which ``memory_cap`` bounds: images whose modelled decode cost is higher are skipped.
    Workers run at niceness ``nice`` (decoding beside the PCA uses only the CPU it leaves idle).
    """
    d = width * height
    skipped_all = list(skipped)
    chunks = [list(files[i : i + CHUNK]) for i in range(start_file, len(files), CHUNK)]
    buf = np.empty((segment_rows, d), dtype=np.uint8)
    names: list[bytes] = []
    next_file = start_file
    decoder = _Decoder(
        os.fspath(root),
        width,
        height,
        workers,
        None if stderr_log is None else os.fspath(stderr_log),
        nice=nice,
        decode_chunk=partial(decode_many, memory_cap=memory_cap),
    )
    for chunk, (rows, reasons) in zip(chunks, decoder.map(chunks)):
        for rel, row, why in zip(chunk, rows, reasons):
            if why is None:
                buf[len(names)] = row
                names.append(os.fsencode(rel))
            else:
                logger.warning("skipped %s: %s", rel, why)
                skipped_all.append((rel, why))
        next_file += len(chunk)
        if on_images is not None:
            on_images(len(chunk))
        # Segments close on chunk boundaries so the resume point is a file index.
        if len(names) + CHUNK > segment_rows or next_file == len(files):
            if names:
                store.append(buf[: len(names)], names)
                names = []
            yield IngestProgress(next_file, store.n_segments, len(store), list(skipped_all))
    if next_file != len(files) or start_file == len(files):
        yield IngestProgress(next_file, store.n_segments, len(store), list(skipped_all))
