"""Embed stage: project every stored image with the fitted PCA into the feature RowStore.

One feature segment per batch; the record keeps the segment count, so a resumed stage starts
after the last durable segment. Features made with another PCA (its settings key) are dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from pathlib import Path

import numpy as np

from stream_cluster.images.decode import PIXEL_SCALE
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.stages.base import Progress, StageRecord
from stream_cluster.storage.rows import RowsOf, RowSource
from stream_cluster.storage.store import RowStore

__all__ = ["embed", "feature_store"]


def feature_store(out_dir: Path, n_keep: int) -> RowStore:
    """The run's feature store (``n_keep`` float32 values per image)."""
    return RowStore(out_dir / "features", n_keep, np.float32)


def embed(
    record: StageRecord,
    pixels: RowSource,
    features: RowStore,
    model: Callable[[], StreamingPCA],
    *,
    pca_key: object,
    batch: int,
    rows: np.ndarray | None = None,
    names: Sequence[bytes] | None = None,
) -> Generator[Progress, None, RowStore]:
    """The embed stage: ``features`` gets the first ``features.row_size`` components of each row.

    ``rows`` (ascending pixel-store rows; default all) are the images still in the folder
    after a run grew; ``names`` are the pixel rows' names if the caller has them read already.
    ``model`` is called only if there is work left, so a finished stage never
    loads the PCA.

    Memory: the model's components, one uint8 batch, ``transform``'s float32 column block and
    the batch's features (see ``stage_bytes.embed_stage_bytes``).
    """
    rows = np.arange(len(pixels)) if rows is None else np.asarray(rows, dtype=np.int64)
    n = len(rows)
    if record.done and len(features) == n:
        return features
    if record.get("key") != pca_key:
        features.truncate_segments(0)
        record.update(key=pca_key, segments=0, done=False)
    features.truncate_segments(int(record.get("segments", 0)))
    pca = model()
    n_keep = features.row_size
    names = pixels.names() if names is None else names
    view = RowsOf(pixels, rows)  # consecutive rows are read together
    yield Progress("embed", len(features), n)
    for lo in range(len(features), n, batch):
        idx = rows[lo : lo + batch]
        # transform scales the uint8 rows block by block: no float32 copy of the batch.
        x = view.read(lo, lo + len(idx))
        z = pca.transform(x, scale=PIXEL_SCALE if x.dtype == np.uint8 else None)[:, :n_keep]
        del x
        features.append(np.ascontiguousarray(z, dtype=np.float32), [names[i] for i in idx])
        record.update(segments=features.n_segments)
        yield Progress("embed", len(features), n)
    record.update(done=True)
    return features
