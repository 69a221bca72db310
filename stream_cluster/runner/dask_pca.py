"""The PCA of a distributed run: one fit task per shard, merged in a fixed tree of futures.

Each leaf fits a :class:`~stream_cluster.pca.StreamingPCA` on its shard's pixel segments; each
inner node merges its two children's saved states with :meth:`StreamingPCA.merge`, as a task
that depends on the children's futures. The tree has :func:`~stream_cluster.pca.merge_tree`'s
shape (by shard index: the left subtree holds the first ``2^j`` shards), so the result does not
depend on which worker finished first. A node whose state is already saved is not submitted
again, nor is its subtree: a rerun after the client died keeps every finished state. A merge
deletes its two inputs once its own state is saved, so the disk holds a few states per worker
(413 MB each at 800 x 129,000), not one per node of the tree.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.config import RunConfig
from stream_cluster.errors import StreamClusterError
from stream_cluster.parallel.dask_plan import DaskLayout
from stream_cluster.stages.base import Progress, StageRecord, same_key
from stream_cluster.stages.fit_pca import kept_components
from stream_cluster.stages.shard_tasks import (
    ShardJob,
    fit_shard,
    is_complete_state,
    merge_node,
    segment_name,
)
from stream_cluster.storage.checkpoint import open_arrays

__all__ = ["pca_stage", "submit_pca_tree"]


def submit_pca_tree(
    client: Any,
    config: RunConfig,
    layout: DaskLayout,
    seg_rows: list[int],
    pixels: Path,
    states: Path,
    final: Path,
) -> dict[Any, str]:
    """Submit every unfinished fit and merge; return their futures with a label each.

    ``pixels`` is the folder of the segments fitted: the pixel store, or with ``--features``
    other than pixels the float32 feature store (``descriptors/``).
    Shards without rows (every file skipped) are left out of the tree; a leaf with fewer rows
    than components keeps as many components as rows, and a merge at most ``k_a + k_b + 1``.
    """
    b = layout.shard_bounds
    rows = [sum(seg_rows[b[j] : b[j + 1]]) for j in range(layout.n_shards)]
    leaves = [j for j in range(layout.n_shards) if rows[j] > 0]
    k, d = config.n_components, config.pca_dim
    float_rows = config.features != "pixels"

    def path(lo: int, hi: int) -> str:
        if (lo, hi) == (0, len(leaves)):
            return os.fspath(final)
        if hi - lo == 1:
            return os.fspath(states / f"shard-{leaves[lo]:06d}.h5")
        return os.fspath(states / f"merge-{leaves[lo]:06d}-{leaves[hi - 1]:06d}.h5")

    def split(lo: int, hi: int) -> int:  # merge_tree's shape: the left subtree has 2^j leaves
        return lo + (1 << ((hi - lo - 1).bit_length() - 1))

    def comps(lo: int, hi: int) -> int:
        if hi - lo == 1:
            return min(k, rows[leaves[lo]])
        mid = split(lo, hi)
        return min(k, comps(lo, mid) + comps(mid, hi) + 1, d)

    tasks: dict[Any, str] = {}

    def node(lo: int, hi: int) -> Any:
        if is_complete_state(path(lo, hi)):
            return {"path": path(lo, hi), "rows": sum(rows[j] for j in leaves[lo:hi])}
        if hi - lo == 1:
            j = leaves[lo]
            segs = tuple(os.fspath(pixels / segment_name(i)) for i in range(b[j], b[j + 1]))
            job = ShardJob(j, segs, d, rows[j], comps(lo, hi), config.pca_solver,
                           layout.pca_batch, path(lo, hi), float_rows)  # fmt: skip
            fut = client.submit(fit_shard, job, pure=False)
            tasks[fut] = f"fit {j}"
        else:
            mid = split(lo, hi)
            left, right = node(lo, mid), node(mid, hi)
            fut = client.submit(merge_node, left, right, path(lo, hi), comps(lo, hi), pure=False)
            tasks[fut] = f"merge {leaves[lo]}-{leaves[hi - 1]}"
        return fut

    node(0, len(leaves))
    return tasks


def pca_stage(
    record: StageRecord,
    dask_record: StageRecord,
    client: Any,
    config: RunConfig,
    layout: DaskLayout,
    seg_rows: list[int],
    out: Path,
    states: Path,
    note: Callable[[dict[str, Any]], None],
) -> Generator[Progress, None, None]:
    """The PCA stage on Dask: fits and merges as futures; records each one's figures (seconds,
    bytes read and written by a merge, worker and peak RSS) and the result like ``fit_pca``."""
    from distributed import as_completed

    key = {**config.stage_key("pca"), "dask_shards": list(layout.shard_bounds),
           "batch": layout.pca_batch}  # fmt: skip
    final = (out / "pca.h5").resolve()
    if record.done and same_key(record.get("key"), key) and final.exists():
        return
    states.mkdir(parents=True, exist_ok=True)
    rows_dir = out / ("pixels" if config.features == "pixels" else "descriptors")
    tasks = submit_pca_tree(client, config, layout, seg_rows, rows_dir.resolve(),
                            states.resolve(), final)  # fmt: skip
    fits, merges = dict(dask_record.get("fits", {})), dict(dask_record.get("merges", {}))
    yield Progress("pca", 0, len(tasks), "tasks")
    try:
        finished = as_completed(list(tasks))  # type: ignore[no-untyped-call]
        for n, fut in enumerate(finished, start=1):
            what = tasks[fut]
            info = _result(fut, what, config)
            note(info)
            (fits if what.startswith("fit") else merges)[what.split(" ", 1)[1]] = info
            dask_record.update(fits=fits, merges=merges)
            yield Progress("pca", n, len(tasks), "tasks", what)
    finally:
        client.cancel([f for f in tasks if not f.done()])
    with open_arrays(final) as (arrays, _):
        evr = np.asarray(arrays["explained_variance_ratio_"][()], dtype=np.float64)
    n_keep = kept_components(evr, config.variance)
    record.update(key=key, batch=layout.pca_batch, done=True, n_keep=n_keep,
                  explained_variance=float(np.sum(evr[:n_keep])),
                  explained_variance_ratio=[float(v) for v in evr])  # fmt: skip
    shutil.rmtree(states, ignore_errors=True)  # states a killed merge left behind


def _result(fut: Any, what: str, config: RunConfig) -> dict[str, Any]:
    from distributed.scheduler import KilledWorker

    try:
        info: dict[str, Any] = fut.result()
    except KilledWorker as exc:
        raise StreamClusterError(
            f"The PCA task '{what}' killed every Dask worker it ran on ({exc}). Most often a "
            f"worker's memory limit is below what the task needs: give the workers at least "
            f"--mem-budget {config.mem_budget / 2**30:.2f}G each, or use fewer --components."
        ) from None
    return info
