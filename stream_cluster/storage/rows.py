"""What the stages read rows from and write them to, as protocols: the pixel store, a view of
it, or the in-memory path of ``--keep-pixels never``
(:mod:`stream_cluster.stages.keep_pixels_never`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

__all__ = ["RowReader", "RowSink", "RowSource", "RowsOf"]


class RowReader(Protocol):
    """Rows the PCA reads in order: a RowStore, or the pipe of ``--keep-pixels never``."""

    row_size: int
    dtype: np.dtype

    def __len__(self) -> int: ...

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray: ...


class RowSink(Protocol):
    """Where the ingest writes segments: a RowStore, or the pipe of ``--keep-pixels never``."""

    def __len__(self) -> int: ...

    @property
    def n_segments(self) -> int: ...

    def append(self, rows: np.ndarray, names: Sequence[bytes]) -> None: ...

    def truncate_segments(self, n_segments: int) -> None: ...


class RowSource(RowReader, Protocol):
    """Rows the embed stage and the report read: a RowStore, a view of one (:class:`RowsOf`),
    or images decoded again (``transient.SourcePixels``)."""

    def read_rows(self, indices: Sequence[int]) -> np.ndarray: ...

    def iter_batches(
        self, batch_size: int, start: int = 0
    ) -> Iterator[tuple[int, np.ndarray]]: ...

    def names(self) -> list[bytes]: ...


class RowsOf:
    """A read-only view of some rows of a RowStore (ascending indices), read as if contiguous.

    After a run grows, the current images are a subset of the pixel store's rows; the report
    reads them through this view. Consecutive rows are read together.
    """

    def __init__(self, store: RowSource, rows: np.ndarray) -> None:
        self.store = store
        self.rows = np.asarray(rows, dtype=np.int64)
        self.row_size = store.row_size
        self.dtype = store.dtype

    def __len__(self) -> int:
        return len(self.rows)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """View rows ``[start, stop)``."""
        idx = self.rows[start:stop]
        if out is None:
            out = np.empty((len(idx), self.row_size), dtype=self.dtype)
        breaks = np.nonzero(np.diff(idx) != 1)[0] + 1
        for run in np.split(np.arange(len(idx)), breaks):
            if len(run):
                lo = int(idx[run[0]])
                self.store.read(lo, lo + len(run), out=out[run[0] : run[-1] + 1])
        return out[: len(idx)]

    def names(self) -> list[bytes]:
        """Names of the view's rows."""
        names = self.store.names()
        return [names[i] for i in self.rows]

    def read_rows(self, indices: Sequence[int]) -> np.ndarray:
        """View rows at arbitrary positions, in the order given."""
        return self.store.read_rows([int(self.rows[i]) for i in indices])

    def iter_batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(offset, rows)`` for consecutive batches of the view."""
        for lo in range(start, len(self), batch_size):
            yield lo, self.read(lo, lo + batch_size)
