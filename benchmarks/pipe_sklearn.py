"""In-memory scikit-learn: every image in one float32 array, randomized PCA, KMeans.

The pipeline a user writes when the data fits: memory is at least ``n * h * w * 4`` bytes for
the pixels (8,121 images of 300x430: 4.2 GB) plus PCA's working copies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.corpus import read_block
from benchmarks.metrics import adjusted_rand

if TYPE_CHECKING:
    from benchmarks.worker import Context, PipelineOutput

__all__ = ["run"]


def run(ctx: Context) -> PipelineOutput:
    """Read all, ``PCA(components, svd_solver="randomized").fit_transform``, ``KMeans(k)``.

    The untimed-for-comparison ``eval`` stage fits ``KMeans(k)`` again with ``seed + 1`` on the
    same features and reports the ARI between the two (``ari_seed_to_seed``).
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from benchmarks.worker import PipelineOutput

    with ctx.stage("read"):
        x = read_block(ctx.corpus, ctx.rel_paths, ctx.shape, "float32")
    with ctx.stage("pca_fit_transform"):
        pca = PCA(n_components=ctx.components, svd_solver="randomized", random_state=ctx.seed)
        z = pca.fit_transform(x)
    with ctx.stage("kmeans"):
        km = KMeans(n_clusters=ctx.k, random_state=ctx.seed).fit(z)
    with ctx.stage("eval"):
        # Yardstick for every "ARI vs ref": how much k-means alone moves with its seed.
        other = KMeans(n_clusters=ctx.k, random_state=ctx.seed + 1).fit(z)
        seed_ari = adjusted_rand(km.labels_, other.labels_)
    return PipelineOutput(
        features=z,
        labels=km.labels_,
        centers=km.cluster_centers_,
        explained_variance=float(pca.explained_variance_ratio_.sum()),
        extras={"own_inertia": float(km.inertia_), "kmeans_n_iter": int(km.n_iter_),
                "ari_seed_to_seed": seed_ari},
    )
