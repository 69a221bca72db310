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

from .budget import READ_ROWS
from .checkpoint import load_arrays, open_arrays, save_arrays
from .pca import StreamingPCA
from .stage import Background, Progress, StageRecord, same_key
from .store import RowStore

__all__ = ["PIXEL_SCALE", "RowsFeed", "fit_pca", "kept_components", "load_pca", "read_scaled"]

logger = logging.getLogger(__name__)

#: Pixels are stored as uint8 and fitted as float32 in 0..1.
PIXEL_SCALE = np.float32(1.0 / 255.0)


def read_scaled(pixels: RowStore, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` of the pixel store as float32 in 0..1, read READ_ROWS rows at a time.

    Filling the batch in slices spares a uint8 copy of the whole batch (146 MB at the seed size).
    """
    x = np.empty((hi - lo, pixels.row_size), dtype=np.float32)
    for s0 in range(lo, hi, READ_ROWS):
        s1 = min(s0 + READ_ROWS, hi)
        np.multiply(pixels.read(s0, s1), PIXEL_SCALE, out=x[s0 - lo : s1 - lo])
    return x


class RowsFeed:
    """Rows committed to the pixel store so far; with a background ingest, also its progress."""

    def __init__(self, store: RowStore, ingest: Background | None = None) -> None:
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


def fit_pca(
    record: StageRecord,
    pixels: RowStore,
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
    workspace (see :func:`stream_cluster.pca.pca_memory_bytes`).
    """
    final = out_dir / "pca.h5"
    if record.done and final.exists():
        return load_pca(final)
    ckpt = out_dir / "pca-checkpoint.h5"
    n = len(pixels) if feed.finished else expected_rows
    model: StreamingPCA | None = None
    cursor = 0
    if record.get("batch") == batch and ckpt.exists():
        arrays, meta = load_arrays(ckpt)
        if meta.get("batch") == batch and same_key(meta.get("key"), key):
            model = StreamingPCA.from_state(arrays)
            cursor = int(meta["cursor"])
            logger.info("resuming PCA at image %d of %d", cursor, n)
        del arrays  # from_state copied them: holding both would cost another k*d floats
    if model is None:
        model = StreamingPCA(n_components, solver=solver, copy=False)
    record.update(key=key, batch=batch, done=False)

    def save() -> None:
        save_arrays(ckpt, model.get_state(), {"cursor": cursor, "batch": batch, "key": key})

    last_save = time.perf_counter()
    saved_at = cursor
    yield Progress("pca", cursor, n)
    # Only the first batch must hold >= n_components rows (batch >= k and n >= k ensure it).
    lo = cursor
    while True:
        avail = yield from feed.wait(lo + batch)
        if feed.finished:
            n = avail
            check_rows(n)
        if lo >= avail:
            break
        hi = min(lo + batch, avail)
        x = read_scaled(pixels, lo, hi)
        model.partial_fit(x)
        del x
        cursor = lo = hi
        if (feed.finished and cursor == n) or (
            time.perf_counter() - last_save >= checkpoint_seconds
        ):
            save()
            record.update(cursor=cursor)
            last_save = time.perf_counter()
            saved_at = cursor
        yield Progress("pca", cursor, n)
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
