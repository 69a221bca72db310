"""What the stages read rows from and write them to, as protocols: the pixel store, a view of
it, or the in-memory path of ``--keep-pixels never``
(:mod:`stream_cluster.stages.keep_pixels_never`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

__all__ = ["RowReader", "RowSink", "RowSource"]


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
