"""PCA stage: fit :class:`~stream_cluster.pca.StreamingPCA` over the pixel store, resumably.

Batches sit at fixed offsets of the store (``batch`` rows each), so a resumed run replays
exactly the same ``partial_fit`` calls and ends with the same model. The stage can run beside
a background ingest: it then reads only rows whose segment is committed (:class:`RowsFeed`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Generator
from pathlib import Path

import numpy as np

from stream_cluster.images.decode import PIXEL_SCALE
from stream_cluster.memory.stage_bytes import READ_ROWS
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.stages.base import Background, Progress, StageRecord, same_key
from stream_cluster.storage.checkpoint import open_arrays, save_arrays
from stream_cluster.storage.rows import RowReader

__all__ = [
    "RowsFeed",
    "fit_pca",
    "kept_components",
    "load_pca",
    "read_scaled",
    "resume_cursor",
]

logger = logging.getLogger(__name__)

def read_scaled(
    pixels: RowReader, lo: int, hi: int, out: np.ndarray | None = None
) -> np.ndarray:
    """Rows ``lo:hi`` of the pixel store as float32 in 0..1 (float32 feature rows as they are),
    into ``out`` if given, read READ_ROWS rows at a time.

    Filling the batch in slices spares a uint8 copy of the whole batch (146 MB at the seed size).
    """
    x = np.empty((hi - lo, pixels.row_size), dtype=np.float32) if out is None else out
    for s0 in range(lo, hi, READ_ROWS):
        s1 = min(s0 + READ_ROWS, hi)
        rows = pixels.read(s0, s1)
        if rows.dtype == np.uint8:
            np.multiply(rows, PIXEL_SCALE, out=x[s0 - lo : s1 - lo])
        else:  # feature rows (--features) are fitted as they are
            x[s0 - lo : s1 - lo] = rows
    return x


class RowsFeed:
    """Rows committed to the pixel store so far; with a background ingest, also its progress."""

    def __init__(self, store: RowReader, ingest: Background | None = None) -> None:
        self.store = store
        self.ingest = ingest

    @property
    def finished(self) -> bool:
        """Whether no more rows will come."""
        return self.ingest is None or self.ingest.finished

    def wait(self, need: int) -> Generator[Progress, None, int]:
        """Yield ingest progress until ``need`` rows are committed or ingest ends; return rows."""
        while self.ingest is not None and not self.ingest.finished and len(self.store) < need:
            yield from self.ingest.drain()
        return len(self.store)


def kept_components(evr: np.ndarray, variance: float | None) -> int:
    """How many leading components reach ``variance`` of the variance (all if never reached)."""
    n_keep = len(evr)
    if variance is not None:
        reach = np.nonzero(np.cumsum(evr) >= variance - 1e-12)[0]
        if len(reach):
            n_keep = int(reach[0]) + 1
        else:
            logger.warning(
                "%d components explain %.3f of the variance, below --variance %.3f; keeping "
                "all. Raise --components to reach the target.",
                len(evr),
                float(np.sum(evr)),
                variance,
            )
    return n_keep


def load_pca(path: Path) -> StreamingPCA:
    """The fitted PCA a finished stage saved (read straight into the model: one copy)."""
    with open_arrays(path) as (arrays, _):
        return StreamingPCA.from_state(arrays)


def resume_cursor(
    record: StageRecord, out_dir: Path, *, batch: int, key: dict[str, object]
) -> int:
    """The row at which :func:`fit_pca` will resume: its checkpoint's cursor, if that matches
    ``batch`` and ``key`` (reads only the checkpoint's metadata), else 0."""
    ckpt = out_dir / "pca-checkpoint.h5"
    if record.done or record.get("batch") != batch or not ckpt.exists():
        return 0
    with open_arrays(ckpt) as (_, meta):
        if meta.get("batch") == batch and same_key(meta.get("key"), key):
            return int(meta["cursor"])
    return 0


def fit_pca(
    record: StageRecord,
    pixels: RowReader,
    feed: RowsFeed,
    *,
    out_dir: Path,
    key: dict[str, object],
    n_components: int,
    solver: str,
    batch: int,
    expected_rows: int,
    variance: float | None,
    checkpoint_seconds: float,
    check_rows: Callable[[int], None],
) -> Generator[Progress, None, StreamingPCA]:
    """The PCA stage: fit over ``pixels`` in batches of ``batch`` rows; returns the model.

    A checkpoint (``pca-checkpoint.h5``: the model's arrays, cursor, batch and settings key) is
    written every ``checkpoint_seconds`` and after the last batch; the finished model goes to
    ``pca.h5``. ``expected_rows`` is the row count to show until a background ingest ends;
    ``check_rows(n)`` is called with the final count (it raises if too few images decoded).

    Memory: the model (``2 * n_components * d`` floats), one float32 batch and the solver's
    workspace (see :func:`stream_cluster.pca.memory.pca_memory_bytes`).
    """
    final = out_dir / "pca.h5"
    if record.done and final.exists():
        return load_pca(final)
    ckpt = out_dir / "pca-checkpoint.h5"
    n = len(pixels) if feed.finished else expected_rows
    model: StreamingPCA | None = None
    cursor = resume_cursor(record, out_dir, batch=batch, key=key)
    if cursor:
        with open_arrays(ckpt) as (arrays, _):
            model = StreamingPCA.from_state(arrays)  # read straight into the model: one copy
        logger.info("resuming PCA at image %d of %d", cursor, n)
    if model is None:
        model = StreamingPCA(n_components, solver=solver, copy=False)
    record.update(key=key, batch=batch, done=False)

    def save() -> None:
        save_arrays(ckpt, model.get_state(), {"cursor": cursor, "batch": batch, "key": key})

    last_save = time.perf_counter()
    saved_at = cursor
    yield Progress("pca", cursor, n)
    # Only the first batch must hold >= n_components rows (batch >= k and n >= k ensure it).
    # The batch is filled READ_ROWS rows at a time as rows arrive: with --keep-pixels never the
    # rows come through a PixelPipe that holds only a segment, not a batch.
    lo = cursor
    d = pixels.row_size
    x_buf: np.ndarray | None = None
    while True:
        filled = 0
        while filled < batch:
            avail = yield from feed.wait(lo + filled + 1)
            if feed.finished:
                n = avail
                check_rows(n)
            if avail <= lo + filled:
                break
            if x_buf is None:
                x_buf = np.empty((batch, d), dtype=np.float32)
            s1 = min(lo + batch, avail, lo + filled + READ_ROWS)
            read_scaled(pixels, lo + filled, s1, out=x_buf[filled : s1 - lo])
            filled = s1 - lo
        if filled == 0:
            break
        assert x_buf is not None
        model.partial_fit(x_buf[:filled])  # copy=False: centred in place, refilled next batch
        cursor = lo = lo + filled
        if (feed.finished and cursor == n) or (
            time.perf_counter() - last_save >= checkpoint_seconds
        ):
            save()
            record.update(cursor=cursor)
            last_save = time.perf_counter()
            saved_at = cursor
        yield Progress("pca", cursor, n)
    del x_buf
    if saved_at != cursor or not ckpt.exists():  # ingest ended after the last batch's fit
        save()
    evr = np.asarray(model.explained_variance_ratio_, dtype=np.float64)
    n_keep = kept_components(evr, variance)
    os.replace(ckpt, final)
    record.update(
        done=True,
        n_keep=n_keep,
        explained_variance=float(np.sum(evr[:n_keep])),
        explained_variance_ratio=[float(v) for v in evr],
    )
    return model
