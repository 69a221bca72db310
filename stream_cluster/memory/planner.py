"""From settings and a folder's files to a memory plan, and the disk space a run will need.

:mod:`stream_cluster.memory.budget` holds the pure memory model; this module feeds it what a folder
says (image count, the decode cost of its largest header) and what a run folder already holds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.config import RunConfig
from stream_cluster.errors import BudgetError
from stream_cluster.images.decode_memory import DECODE_MEMORY_CAP, decode_cost_bound
from stream_cluster.images.features import FeatureExtractor, parse_features
from stream_cluster.memory.budget import MemoryPlan, plan_memory
from stream_cluster.memory.stage_bytes import MAX_SEGMENT_ROWS
from stream_cluster.storage.store import resolve_compression

__all__ = ["disk_need", "plan", "plan_folder", "plan_run", "with_features"]

logger = logging.getLogger(__name__)


def with_features(config: RunConfig) -> tuple[RunConfig, FeatureExtractor | None]:
    """Open and check ``--features`` before any ingest; the config the run uses, and the extractor.

    ``pixels`` leaves the config as it is (None). Otherwise the extractor's dimension is
    worked out for ``--size`` (a HOG cell that does not fit, or an ONNX file or input shape
    that cannot take the images, raise ConfigError here), ``--components`` is capped at it,
    and ``config.extra`` gets the ONNX file's SHA-256 (part of the ingest's settings key) and
    ``features_bytes``: what the extractor adds to the plan (:func:`plan` reserves it).
    """
    if config.features == "pixels":
        return config, None
    workers = config.workers if config.workers else os.cpu_count() or 1
    if config.dask is not None:  # the budget is per Dask worker, which runs one task at a time
        workers = 1
    extractor = parse_features(config.features, threads=workers)
    w, h = config.width, config.height
    dim = extractor.dim(w, h)
    # Where it runs: in each decode worker (HOG), or once in this process (ONNX); plus the
    # segment's feature rows, held in the decode buffer, the feature batch and the store write.
    where = extractor.memory_bytes(w, h) * (workers if extractor.in_workers else 1)
    reserve = where + 3 * MAX_SEGMENT_ROWS * 4 * dim
    extra = {**config.extra, "features_bytes": reserve, "features_dim": dim,
             **{k: v for k, v in extractor.describe().items() if k == "features_sha256"}}
    n_components = config.n_components
    if n_components > dim:
        logger.warning("--components %d is more than --features %s gives (%d values per image); "
                       "using %d", n_components, config.features, dim, dim)  # fmt: skip
        n_components = dim
    return dataclasses.replace(config, n_components=n_components, extra=extra), extractor


def plan(
    config: RunConfig,
    n_images: int,
    decode_cap: int = DECODE_MEMORY_CAP,
    batch_size: int | None = None,
) -> MemoryPlan:
    """The memory plan for ``config`` on ``n_images`` images (raises BudgetError).

    ``decode_cap`` bounds each decode worker (default: any image); ``batch_size`` overrides the
    configured PCA batch (a resumed PCA keeps its own).
    """
    if config.features != "pixels" and "features_dim" not in config.extra:
        # A caller that skipped with_features: the extractor's reserve, width and component
        # cap are still what the run will need.
        config = with_features(config)[0]
    # --features: the extractor's bytes are set aside first (see with_features).
    reserve = int(config.extra.get("features_bytes", 0))
    if reserve >= config.mem_budget:
        raise BudgetError(
            f"--features {config.features} needs {reserve:,} bytes, more than --mem-budget "
            f"{config.mem_budget:,}. Raise the budget or use --features pixels."
        )
    # The PCA and the embed read the descriptors/ store: features_dim float32 values per
    # image (HOG's length, or the ONNX model's output width, found by with_features); the
    # ingest and the report still hold the pixels.
    features_dim = None if config.features == "pixels" else config.pca_dim
    return plan_memory(
        config.mem_budget,
        n_images=n_images,
        width=config.width,
        height=config.height,
        n_components=config.n_components,
        solver=config.pca_solver,
        workers=config.workers,
        batch_size=config.batch_size if batch_size is None else batch_size,
        cpu_count=os.cpu_count() or 1,
        max_k=max(config.k_range[1], config.k or 2),
        decode_cap=decode_cap,
        # k-means loads the feature store for each exact fit instead of holding it: the same
        # float64 values, 4 n d bytes less through the elbow sweep and the cluster stage.
        kmeans_from_store=True,
        keep_pixels=config.keep_pixels,
        space=config.space == "tsne",
        features_dim=features_dim,
        reserved=reserve,
    )


def plan_folder(
    config: RunConfig,
    root: str | os.PathLike[str],
    files: list[str],
    batch_size: int | None = None,
) -> MemoryPlan:
    """The memory plan for ``config`` on these files, with decode workers sized to the folder.

    The plan for the worst image ``decode_image`` accepts is tried first; if it does not
    overlap decoding with the PCA (or does not fit), the files' headers are read (~15 us each)
    and the plan is made again for the largest decode any of them needs. The PCA batch is the
    same either way, so the results do not depend on it.
    """
    n = len(files)
    try:
        worst = plan(config, n, batch_size=batch_size)
        if worst.overlap:
            return worst
    except BudgetError:
        worst = None
    w, h = config.width, config.height
    cap = max((decode_cost_bound(os.path.join(root, rel), w, h) for rel in files), default=0)
    try:
        return plan(config, n, decode_cap=max(cap, 1), batch_size=batch_size)
    except BudgetError:
        if worst is not None:
            return worst
        raise


#: Later images may compress worse than the ones stored so far: their estimate is this much
#: larger than the ratio measured on the store.
COMPRESSION_MARGIN = 1.5


def disk_need(
    out_dir: Path,
    config: RunConfig,
    n_files: int,
    pca_done: bool,
    files_done: int = 0,
    *,
    recheck: bool = False,
) -> int:
    """Bytes the run folder still needs: pixels (and --features rows) not yet stored, PCA files,
    model.h5, features.

    ``files_done`` is how many files the ingest has handled. Without compression the pixels
    left count at their raw size. A compressed store's pixels left count at the ratio measured
    on what it holds (times :data:`COMPRESSION_MARGIN`); before it holds anything, they count
    at raw size, or with ``recheck`` (the caller checks again once the first segment is
    written) only the first segment does. With ``--keep-pixels never`` only the names count
    (~1 KB an image).
    """
    d = config.n_features
    done = 0
    if (out_dir / "pixels").exists():
        done = sum(p.stat().st_size for p in (out_dir / "pixels").glob("seg-*.h5"))
    left = max(0, n_files - files_done)
    if config.keep_pixels == "never":
        pixels = n_files * 1024
    elif resolve_compression(config.store_compression, np.uint8) == "none":
        pixels = max(0, n_files * d - done)
    elif files_done and done:
        pixels = int(left * d * min(1.0, COMPRESSION_MARGIN * done / (files_done * d)))
    else:
        pixels = (min(left, MAX_SEGMENT_ROWS) if recheck else left) * d
    # --features hog/onnx: the PCA is over the extractor's values, kept in descriptors/
    dim = d if config.features == "pixels" else int(config.extra.get("features_dim", d))
    descriptors = 0 if config.features == "pixels" else left * dim * 4
    components = config.n_components * dim * 4
    model = 0 if pca_done else 2 * components  # pca-checkpoint.h5 beside its .partial
    if not (out_dir / "model.h5").exists():
        model += components + 3 * d * 8
    features = n_files * config.n_components * 4
    return int(pixels + descriptors + model + features + 16 * 2**20)


def plan_run(
    config: RunConfig, root: str | os.PathLike[str], files: list[str], pca: Mapping[str, Any]
) -> MemoryPlan:
    """The plan for a run folder: a PCA in progress keeps its batch (the result depends on it).

``pca`` is the PCA stage's record in ``state.json`` (empty if the PCA never ran).

    If that batch no longer fits the budget, the plan's own batch is returned and the caller
    restarts the PCA.
    """
    mem_plan = plan_folder(config, root, files)
    batch = pca.get("batch")
    if pca and not pca.get("done") and batch not in (None, mem_plan.pca_batch):
        try:
            return plan_folder(config, root, files, batch_size=int(batch))
        except BudgetError:
            pass
    return mem_plan
