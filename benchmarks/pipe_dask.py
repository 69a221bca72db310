"""The Dask pipelines: the seed's literal per-image chunks, and a fairer block-chunked variant.

Both use ``dask_ml.decomposition.PCA(n_components)`` (``svd_solver="auto"``: ``randomized``
with ``iterated_power=0`` unless ``components >= 0.8 * n_images``, then ``full``) and
``dask_ml.cluster.KMeans(k)`` (``init="k-means||"``). Features are computed into memory once
(``n * components`` floats) before k-means so its passes do not redo the projection. Imports
dask, so it runs in the benchmark venv (``benchmarks/requirements-dask.txt``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from benchmarks.corpus import read_block, read_gray

if TYPE_CHECKING:
    from benchmarks.worker import Context, PipelineOutput

__all__ = ["run_chunked", "run_seed"]


@contextmanager
def _scheduler(name: str) -> Iterator[dict[str, Any]]:
    """``threads`` (dask's default without a Client) or ``distributed`` (``Client()``, workers
    are separate processes, so only a process-tree RSS sees their memory)."""
    if name == "threads":
        yield {"dask_scheduler": "threads"}
        return
    if name != "distributed":
        raise ValueError(f"dask_scheduler must be 'threads' or 'distributed'. Got {name!r}.")
    from distributed import Client

    with Client() as client:
        workers = client.scheduler_info().get("workers", {})
        yield {
            "dask_scheduler": "distributed",
            "dask_workers": len(workers),
            "dask_threads": sum(w.get("nthreads", 0) for w in workers.values()),
        }


def _pca_kmeans(ctx: Context, x: Any, z_chunk_rows: int) -> PipelineOutput:
    import dask.array as da
    from dask_ml.cluster import KMeans
    from dask_ml.decomposition import PCA

    from benchmarks.worker import PipelineOutput

    with ctx.stage("pca_fit"):
        solver = ctx.options.get("dask_svd_solver", "auto")
        pca = PCA(n_components=ctx.components, svd_solver=solver, random_state=ctx.seed)
        pca.fit(x)
    notes = []
    if not hasattr(pca, "power_iteration_normalizer"):
        # dask-ml 2025.1.0 with scikit-learn >= 1.8: transform() after fit() with
        # svd_solver="randomized" raises AttributeError in sklearn's PCA.__sklearn_tags__
        # (dask/dask-ml#1023). Set the attribute as the open fix dask/dask-ml#1024 does.
        pca.power_iteration_normalizer = "auto"
        if solver == "randomized":
            notes.append("dask-ml#1023 workaround: power_iteration_normalizer='auto'")
    with ctx.stage("pca_transform"):
        z = np.asarray(pca.transform(x).compute())
    with ctx.stage("kmeans"):
        km = KMeans(n_clusters=ctx.k, random_state=ctx.seed)
        km.fit(da.from_array(z, chunks=(max(z_chunk_rows, 1), z.shape[1])))
        labels = km.labels_
        labels = np.asarray(labels.compute() if hasattr(labels, "compute") else labels)
    ratio = getattr(pca, "explained_variance_ratio_", None)
    ev = float(np.nansum(ratio)) if ratio is not None else None
    return PipelineOutput(
        features=z,
        labels=labels,
        centers=np.asarray(km.cluster_centers_),
        explained_variance=ev if ev is not None and np.isfinite(ev) else None,
        extras={
            "own_inertia": float(km.inertia_),
            "dask_pca_solver": getattr(pca, "svd_solver", None),
            "dask_pca_solver_used": _solver_used(pca, x.shape, ctx.components),
            "notes": notes,
        },
    )


def _solver_used(pca: Any, shape: tuple[int, int], k: int) -> str:
    # Mirrors dask_ml.decomposition.PCA._get_solver for svd_solver="auto".
    if pca.svd_solver != "auto":
        return str(pca.svd_solver)
    n, d = shape
    if max(n, d) <= 500:
        return "full"
    return "randomized" if 1 <= k < 0.8 * min(n, d) else "full"


def run_seed(ctx: Context) -> PipelineOutput:
    """The seed's code: OpenCV grey read, flatten, ``da.from_array`` per image, ``da.concatenate``.

    Every image is read eagerly (``n * h * w`` uint8 bytes held by the parent) and becomes a
    one-row chunk, so the graph has one task per image per operation.
    """
    import dask.array as da

    with _scheduler(ctx.options.get("dask_scheduler", "threads")) as info:
        with ctx.stage("read"):
            rows = [
                read_gray(Path(ctx.corpus) / rel, ctx.shape).flatten()[None, :]
                for rel in ctx.rel_paths
            ]
            x = da.concatenate([da.from_array(r) for r in rows], axis=0)
        out = _pca_kmeans(ctx, x, z_chunk_rows=1)
    out.extras.update(info, dask_chunk_rows=1, dask_dtype="uint8")
    return out


def run_chunked(ctx: Context) -> PipelineOutput:
    """One ``dask.delayed`` read per block of ``dask_block`` images (default 500), float32.

    Nothing is read up front: the "read" stage only builds the graph, and the blocks are read
    inside PCA fit and again inside transform (memory per block: ``block * h * w * 4`` bytes).
    """
    import dask
    import dask.array as da

    block = int(ctx.options.get("dask_block", 500))
    n_feat = ctx.shape[0] * ctx.shape[1]
    with _scheduler(ctx.options.get("dask_scheduler", "threads")) as info:
        with ctx.stage("read"):
            parts = []
            for s in range(0, len(ctx.rel_paths), block):
                chunk = ctx.rel_paths[s : s + block]
                lazy = dask.delayed(read_block)(ctx.corpus, chunk, ctx.shape, "float32")
                parts.append(da.from_delayed(lazy, shape=(len(chunk), n_feat), dtype=np.float32))
            x = da.concatenate(parts, axis=0)
        out = _pca_kmeans(ctx, x, z_chunk_rows=block)
    out.extras.update(info, dask_chunk_rows=block, dask_dtype="float32")
    return out
