"""Space stage: the learned 2-D cluster space of every image (``--space tsne``, the default).

t-SNE of a seeded sample of the PCA features, then every image placed from its nearest sampled
images (:mod:`stream_cluster.model.space`); the elbow and cluster stages then work on these
positions, and the report's map shows them. ``space.h5`` keeps the fitted space and every
position, so a rerun after a kill loads them; a kill inside the stage redoes it, and since it
depends only on the features and the seed, to the same positions.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import replace
from pathlib import Path

import numpy as np

from stream_cluster.model.format import NOVELTY_PERCENTILE
from stream_cluster.model.space import (
    NEIGHBOURS,
    SPACE_DIMS,
    SPACE_ITERATIONS,
    SPACE_SAMPLE,
    ClusterSpace,
    fit_space,
    leading_columns,
    novelty_distance,
    read_space,
)
from stream_cluster.stages.base import Progress, StageRecord
from stream_cluster.storage.checkpoint import load_arrays, save_arrays
from stream_cluster.storage.store import RowStore

__all__ = ["SPACE_FILE", "load_space", "space_stage"]

SPACE_FILE = "space.h5"
#: Images placed per progress step.
_PLACE_BATCH = 4096


def load_space(path: Path) -> tuple[ClusterSpace, np.ndarray]:
    """The fitted space and every image's position, as the space stage saved them."""
    arrays, meta = load_arrays(
        path, required=("sample_features", "sample_positions", "positions")
    )
    return read_space(arrays, meta), arrays["positions"]


def space_stage(
    record: StageRecord,
    features: RowStore,
    *,
    seed: int,
    key: dict[str, object],
    out_dir: Path,
) -> Generator[Progress, None, tuple[ClusterSpace, np.ndarray]]:
    """Fit the space on a sample of ``features`` and place every image; save ``space.h5``.

    Memory (modelled in ``memory.stage_bytes``): the leading features (``4 n dims`` bytes),
    the positions and nearest-sample distances (``24 n``), the sample's exact t-SNE (about
    ``40 s^2``: 160 MB for 2,000), one placement block (``4 * 4096 * s``).
    """
    path = out_dir / SPACE_FILE
    key = {**key, "dims": SPACE_DIMS, "sample": SPACE_SAMPLE, "iterations": SPACE_ITERATIONS,
           "neighbours": NEIGHBOURS}  # fmt: skip
    if record.done and record.get("key") == key and path.exists():
        return load_space(path)
    n = len(features)
    yield Progress("space", 0, n, "images", f"t-SNE of {min(n, SPACE_SAMPLE):,} sampled images")
    leading = leading_columns(features)
    space, idx = fit_space(leading, seed=seed)
    positions = np.empty((n, 2), dtype=np.float64)
    nearest = np.empty(n, dtype=np.float64)
    for lo in range(0, n, _PLACE_BATCH):
        hi = min(n, lo + _PLACE_BATCH)
        positions[lo:hi] = space.place(leading[lo:hi], nearest=nearest[lo:hi])
        yield Progress("space", hi, n, "images", "placing")
    space = replace(space, novelty_distance=novelty_distance(nearest, NOVELTY_PERCENTILE))
    save_arrays(
        path,
        {"sample_rows": idx, "sample_features": space.sample_features,
         "sample_positions": space.sample_positions, "positions": positions},
        {"method": "tsne", "dims": space.dims, "neighbours": space.neighbours, "seed": seed,
         "iterations": SPACE_ITERATIONS, "sample": SPACE_SAMPLE,
         "novelty_distance": space.novelty_distance},
    )  # fmt: skip
    record.update(key=key, done=True, n_images=n, n_sampled=len(idx))
    return space, positions
