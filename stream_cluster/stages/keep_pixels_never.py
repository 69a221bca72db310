"""The pixel path of ``--keep-pixels never``: no pixel store on disk.

The ingest stage hands decoded rows to the PCA through a :class:`PixelPipe`, which writes
only each segment's image names to disk (so a resumed run knows which rows exist and where the
ingest stopped) and passes the pixels over in memory, at most one segment waiting. The embed
stage and the report decode the images again through :class:`SourcePixels`. Decoding is
deterministic, so they see the bytes the PCA saw, and the labels equal a stored run's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.errors import SourceChangedError, StoreError
from stream_cluster.images.decode import DECODE_MEMORY_CAP, DecodeTask, decode_many
from stream_cluster.parallel.executor import Executor, InlineExecutor, LocalExecutor
from stream_cluster.stages.base import StageRecord
from stream_cluster.stages.ingest import CHUNK, decode_in_order
from stream_cluster.storage.atomic import atomic_write_bytes

__all__ = ["PixelPipe", "SourcePixels", "rewind_ingest"]

logger = logging.getLogger(__name__)

_SEG_FMT = "seg-{:06d}.json"


class PixelPipe:
    """Rows from the ingest (one writer thread) to the PCA (one reader), in order, once each.

    It has :class:`~stream_cluster.storage.RowStore`'s interface for the two stages: ``append``
    commits a segment's names to ``directory`` (atomically) and queues its rows; ``len`` counts
    committed rows; ``read`` hands over rows in order, dropping the rows before it. ``append``
    waits while ``capacity`` rows are queued, so memory holds one segment besides the
    ingest's own buffer. Rows before :meth:`start_at` are dropped as they arrive (a resumed
    PCA has them already).
    """

    def __init__(self, directory: Path, row_size: int, capacity: int) -> None:
        self.directory = Path(directory)
        self.row_size = int(row_size)
        self.dtype = np.dtype(np.uint8)
        self.capacity = max(1, int(capacity))
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob("*.partial"):
            stale.unlink()
        self._sizes: list[int] = []
        for i, path in enumerate(sorted(self.directory.glob("seg-*.json"))):
            if path.name != _SEG_FMT.format(i):
                raise StoreError(
                    f"{self.directory} has a gap: expected {_SEG_FMT.format(i)}, found "
                    f"{path.name}. Rerun with --fresh to start over."
                )
            self._sizes.append(len(self.segment_names(i)))
        self._rows = sum(self._sizes)  # committed rows (the reader asks after every slice)
        self._queue: deque[tuple[int, np.ndarray]] = deque()  # (first row, rows)
        self._head = len(self)  # first row not yet handed over (or dropped)
        self._closed = False
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return self._rows

    @property
    def n_segments(self) -> int:
        """Number of committed segments."""
        return len(self._sizes)

    @property
    def segment_sizes(self) -> list[int]:
        """Rows of each committed segment."""
        return list(self._sizes)

    def segment_names(self, index: int) -> list[bytes]:
        """Names of the rows of committed segment ``index``."""
        path = self.directory / _SEG_FMT.format(index)
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{path} is unreadable ({exc}); rerun with --fresh to start over."
            ) from exc
        return [os.fsencode(n) for n in names]

    def names(self) -> list[bytes]:
        """Name of every committed row, in order."""
        return [n for i in range(self.n_segments) for n in self.segment_names(i)]

    def start_at(self, row: int) -> None:
        """Hand over rows from ``row`` on (a resumed PCA continues there); clears the queue."""
        with self._cond:
            self._queue.clear()
            self._head = int(row)
            self._cond.notify_all()

    def truncate_segments(self, n_segments: int) -> None:
        """Drop committed segments past the first ``n_segments`` (their rows are re-decoded)."""
        with self._cond:
            for i in range(n_segments, self.n_segments):
                (self.directory / _SEG_FMT.format(i)).unlink(missing_ok=True)
            self._sizes = self._sizes[:n_segments]
            self._rows = sum(self._sizes)
            self._queue.clear()
            # The head stays: rows re-appended before it are dropped as they arrive, so the
            # queue only ever holds rows the reader takes next (no wait on both sides).

    def append(self, rows: np.ndarray, names: Sequence[bytes]) -> None:
        """Commit ``names`` as a new segment and queue ``rows`` (copied) for the reader."""
        if rows.shape != (len(names), self.row_size):
            raise StoreError(f"append got rows {rows.shape} for {len(names)} names")
        with self._cond:
            while self._queued() and self._queued() + len(names) > self.capacity:
                if self._closed:
                    break
                self._cond.wait(0.5)
            if self._closed:
                raise StoreError("the PCA stopped reading: no more rows are taken")
        data = json.dumps([os.fsdecode(n) for n in names]).encode("utf-8")
        atomic_write_bytes(self.directory / _SEG_FMT.format(self.n_segments), data)
        with self._cond:
            first = len(self)
            self._sizes.append(len(names))
            self._rows += len(names)
            keep = max(0, self._head - first)  # rows before the head are not needed again
            if keep < len(names):
                self._queue.append((first + keep, np.array(rows[keep:], copy=True)))
            self._cond.notify_all()

    def _queued(self) -> int:
        return sum(len(r) for _, r in self._queue)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Hand over committed rows ``[start, stop)``; rows before ``start`` are dropped."""
        with self._cond:
            if start < self._head:
                raise StoreError(
                    f"rows from {start} were already handed over (they are kept only once "
                    f"with --keep-pixels never)"
                )
            stop = min(stop, len(self))
            if out is None:
                out = np.empty((max(0, stop - start), self.row_size), dtype=self.dtype)
            pos = start
            while pos < stop:
                if not self._queue:
                    raise StoreError(f"row {pos} is not queued (read before it was committed)")
                first, rows = self._queue[0]
                if first + len(rows) <= pos:
                    self._queue.popleft()
                    continue
                lo, hi = pos - first, min(len(rows), stop - first)
                out[pos - start : pos - start + hi - lo] = rows[lo:hi]
                pos += hi - lo
                if hi == len(rows):
                    self._queue.popleft()
                else:
                    self._queue[0] = (first + hi, rows[hi:])
            self._head = max(self._head, stop)
            self._cond.notify_all()
        return out[: max(0, stop - start)]

    def close(self) -> None:
        """Stop taking rows: a waiting ``append`` raises (the reader has gone)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()


def rewind_ingest(
    pipe: PixelPipe, record: StageRecord, cursor: int, ordered: Sequence[str]
) -> None:
    """Make the ingest decode again from the segment holding row ``cursor`` (the PCA's resume
    point): the rows after it were in memory only. No-op when nothing the PCA needs was lost."""
    if record.done and cursor >= len(pipe):
        pipe.start_at(cursor)
        return
    keep, rows = 0, 0
    sizes = pipe.segment_sizes
    while keep < len(sizes) and rows + sizes[keep] <= cursor:
        rows += sizes[keep]
        keep += 1
    position = {rel: i for i, rel in enumerate(ordered)}
    # only the last kept name matters: the ingest starts again at the file after it
    restart = position[os.fsdecode(pipe.segment_names(keep - 1)[-1])] + 1 if rows else 0
    if record.data:
        skipped = [s for s in record.get("skipped", []) if position.get(s[0], 0) < restart]
        pipe.truncate_segments(keep)
        record.update(next_file=restart, segments=keep, skipped=skipped, done=False)
    pipe.start_at(cursor)
    if rows < sum(sizes):
        logger.info("decoding again from image %d (rows %d..%d were not kept)", restart, rows,
                    sum(sizes) - 1)  # fmt: skip


class SourcePixels:
    """Rows decoded again from the source images named by ``names`` (in that order).

    The read interface of :class:`~stream_cluster.storage.store.RowStore` (``read``, ``read_rows``,
    ``iter_batches``, ``names``, ``len``). Sequential reads stream: decoding runs ahead on
    ``workers`` processes (none: in this process), at most the executor's window of chunks.
    Call :meth:`close` to stop the workers (they start again on the next read).

    Raises SourceChangedError if an image that decoded before does not decode now.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        names: Sequence[bytes],
        width: int,
        height: int,
        *,
        workers: int = 0,
        memory_cap: int = DECODE_MEMORY_CAP,
        nice: int = 0,
        stderr_log: Path | None = None,
    ) -> None:
        self.root = os.fspath(root)
        self._names = list(names)
        self.row_size = width * height
        self.dtype = np.dtype(np.uint8)
        decode = partial(decode_many, memory_cap=memory_cap)
        self._task = DecodeTask(decode, self.root, width, height)
        self._workers, self._nice, self._log = workers, nice, stderr_log
        self._executor: Executor | None = None
        self._stream: Iterator[np.ndarray] | None = None
        self._buf = np.empty((0, self.row_size), dtype=np.uint8)
        self._pos = -1

    def __len__(self) -> int:
        return len(self._names)

    def names(self) -> list[bytes]:
        """Name of every row, in order."""
        return list(self._names)

    def _get_executor(self) -> Executor:
        if self._executor is None:
            log = None if self._log is None else os.fspath(self._log)
            self._executor = (
                LocalExecutor(self._workers, nice=self._nice, stderr_log=log)
                if self._workers
                else InlineExecutor()
            )
        return self._executor

    def _decode(self, rels: list[str]) -> Iterator[np.ndarray]:
        chunks = [rels[i : i + CHUNK] for i in range(0, len(rels), CHUNK)]
        for chunk, (rows, reasons) in zip(
            chunks, decode_in_order(self._get_executor(), self._task, chunks)
        ):
            for rel, why in zip(chunk, reasons):
                if why is not None:
                    raise SourceChangedError(
                        f"Image {os.path.join(self.root, rel)!r} was decoded when this run "
                        f"started but cannot be decoded now ({why}). With --keep-pixels never "
                        f"the images are read again after the PCA, so the folder must not "
                        f"change during a run. Restore the file and rerun (the run resumes), "
                        f"or use --keep-pixels always."
                    )
            yield rows

    def _end_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()  # type: ignore[attr-defined]
        self._stream, self._pos = None, -1
        self._buf = self._buf[:0]

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)``; consecutive calls continue one decode stream."""
        stop = min(stop, len(self))
        if not 0 <= start <= stop:
            raise IndexError(f"rows [{start}, {stop}) out of range for {len(self)} images")
        if start != self._pos:
            self._end_stream()
            self._stream = self._decode([os.fsdecode(n) for n in self._names[start:]])
            self._pos = start
        assert self._stream is not None
        if out is None:
            out = np.empty((stop - start, self.row_size), dtype=self.dtype)
        filled = 0
        while filled < stop - start:
            if not len(self._buf):
                self._buf = next(self._stream)
            take = min(stop - start - filled, len(self._buf))
            out[filled : filled + take] = self._buf[:take]
            self._buf = self._buf[take:]
            filled += take
        self._pos = stop
        return out[:filled]

    def read_rows(self, indices: Sequence[int]) -> np.ndarray:
        """Rows at arbitrary positions (montages), in the order given."""
        self._end_stream()
        out = np.empty((len(indices), self.row_size), dtype=self.dtype)
        pos = 0
        for rows in self._decode([os.fsdecode(self._names[int(i)]) for i in indices]):
            out[pos : pos + len(rows)] = rows
            pos += len(rows)
        return out

    def iter_batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(offset, rows)`` for consecutive batches from row ``start``."""
        for lo in range(start, len(self), batch_size):
            yield lo, self.read(lo, lo + batch_size)

    def close(self) -> None:
        """Stop the decode workers (a later read starts them again)."""
        self._end_stream()
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def __enter__(self) -> SourcePixels:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
