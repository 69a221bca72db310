"""The naive streaming baseline: IncrementalPCA.partial_fit over batches read from disk.

No store, no planning: batches of ``ipca_batch`` images (default 1,000) are read twice (fit,
then transform), features are kept in memory, then ``MiniBatchKMeans(k).fit``. Memory is set by
IPCA's SVD of a ``(components + batch + 1) x h*w`` float64 matrix (about 1.9 GB at 800 + 1,000
rows of 129,000 pixels) plus its factors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from benchmarks.corpus import read_block

if TYPE_CHECKING:
    from benchmarks.worker import Context, PipelineOutput

__all__ = ["run"]


def run(ctx: Context) -> PipelineOutput:
    """Fit ``IncrementalPCA(components)`` batch by batch, transform, ``MiniBatchKMeans(k)``."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import IncrementalPCA

    from benchmarks.worker import PipelineOutput

    batch = int(ctx.options.get("ipca_batch", 1000))
    starts = range(0, len(ctx.rel_paths), batch)
    ipca = IncrementalPCA(n_components=ctx.components)
    with ctx.stage("pca_fit"):
        for s in starts:
            ipca.partial_fit(read_block(ctx.corpus, ctx.rel_paths[s : s + batch], ctx.shape))
    with ctx.stage("pca_transform"):
        z = np.vstack(
            [
                ipca.transform(read_block(ctx.corpus, ctx.rel_paths[s : s + batch], ctx.shape))
                for s in starts
            ]
        )
    with ctx.stage("kmeans"):
        km = MiniBatchKMeans(n_clusters=ctx.k, random_state=ctx.seed).fit(z)
    return PipelineOutput(
        features=z,
        labels=km.labels_,
        centers=km.cluster_centers_,
        explained_variance=float(ipca.explained_variance_ratio_.sum()),
        extras={"own_inertia": float(km.inertia_), "ipca_batch": batch},
    )
