"""The learned cluster space: a 2-D t-SNE of a sample of the PCA features, every image placed.

k-means on PCA features follows how much ink an image holds; in a neighbour-preserving map
images group by what they look like (issue 18; benchmarks/RESULTS_quality.md: digits ARI
0.66 -> 0.89). To stay in bounded memory and time, t-SNE (openTSNE) runs on a seeded sample of
at most :data:`SPACE_SAMPLE` images; then *every* image, the sample's included, is placed at
the inverse-distance-weighted mean of its :data:`NEIGHBOURS` nearest sample images in the
:data:`SPACE_DIMS` leading PCA features. Placement is per image, so a run's image, placed again
by ``assign``, lands where the run put it, whatever batch it comes in.

Measured on the prepared clip-art (8,121 images, one thread): t-SNE of 2,000 sampled images
with 450 iterations about 4.5 s; t-SNE of all 8,121 (750 iterations) 34 s for no better
clusters (ARI 0.098 vs 0.101, AMI 0.195 vs 0.198 against the category folders).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_cluster.storage.store import RowStore, read_in_batches, row_width

__all__ = [
    "NEIGHBOURS",
    "SPACE_DIMS",
    "SPACE_ITERATIONS",
    "SPACE_SAMPLE",
    "ClusterSpace",
    "fit_space",
    "leading_columns",
    "novelty_distance",
    "place_by_neighbours",
    "read_space",
    "sample_rows",
    "tsne_2d",
]

#: Leading PCA features the space is computed from (t-SNE's usual preparation).
SPACE_DIMS = 50
#: Images embedded by t-SNE; every image is then placed from its nearest sampled images.
SPACE_SAMPLE = 2000
#: t-SNE iterations: a third with early exaggeration (12), the rest without.
SPACE_ITERATIONS = 450
#: Sampled images an image's position is interpolated from.
NEIGHBOURS = 5
#: Below this many images t-SNE is not meaningful: the first two features are the space.
MIN_TSNE = 10


def tsne_2d(x: np.ndarray, seed: int, iterations: int = SPACE_ITERATIONS) -> np.ndarray:
    """openTSNE, Barnes-Hut, exact neighbours, one thread: deterministic for a seed.

    Memory: the exact affinities' ``n x n`` float64 distances (32 MB for 2,000 rows).
    """
    from openTSNE import TSNEEmbedding, affinity, initialization

    x64 = np.ascontiguousarray(x, dtype=np.float64)
    perplexity = float(min(30.0, (len(x) - 1) / 3.0))
    aff = affinity.PerplexityBasedNN(
        x64, perplexity=perplexity, method="exact", n_jobs=1, random_state=seed
    )
    init = initialization.pca(x64, random_state=seed)
    emb = TSNEEmbedding(init, aff, n_jobs=1, random_state=seed, negative_gradient_method="bh")
    early = iterations // 3
    emb = emb.optimize(n_iter=early, exaggeration=12.0)
    emb = emb.optimize(n_iter=iterations - early)
    return np.asarray(emb, dtype=np.float64)


def place_by_neighbours(x: np.ndarray, sample_x: np.ndarray, sample_y: np.ndarray, *,
                        neighbours: int = NEIGHBOURS, batch: int = 1024,
                        nearest: np.ndarray | None = None) -> np.ndarray:
    """Position each row of ``x`` at the inverse-distance-weighted mean of its nearest samples.

    A row equal to a sample row gets exactly that sample's position. Each row's position
    depends on that row alone (not on the batch it comes in). ``nearest``, if given, receives
    each row's distance to its nearest sample row that is not equal to it (the novelty
    measure: a sampled image's own entry does not count).

    Memory: a ``batch x len(sample_x)`` float32 distance block (8 MB for 1,024 x 2,000) and
    the chosen neighbours' differences (``8 * batch * neighbours * dims``: 2 MB).
    """
    s = np.asarray(sample_x, dtype=np.float32)
    s_sq = np.einsum("ij,ij->i", s, s)
    m = min(neighbours, len(s))
    out = np.empty((len(x), 2), dtype=np.float64)
    for lo in range(0, len(x), batch):
        xb = np.asarray(x[lo : lo + batch], dtype=np.float32)
        d2 = np.einsum("ij,ij->i", xb, xb)[:, None] - 2.0 * (xb @ s.T) + s_sq[None, :]
        np.maximum(d2, 0.0, out=d2)
        near = np.argpartition(d2, m - 1, axis=1)[:, :m] if m < len(s) else \
            np.broadcast_to(np.arange(len(s)), (len(xb), len(s)))
        # The expansion above cancels badly for near rows (float32): measure the chosen few
        # directly, so a sample row is at exactly 0 from itself.
        diff = xb[:, None, :].astype(np.float64) - s[near].astype(np.float64)
        dist = np.sqrt(np.einsum("bmd,bmd->bm", diff, diff))
        hit = dist <= 1e-9  # the row is a sample row: keep that sample's position exactly
        if nearest is not None:
            nearest[lo : lo + len(xb)] = np.where(hit, np.inf, dist).min(axis=1)
        w = np.where(hit.any(axis=1, keepdims=True), hit, 1.0 / np.maximum(dist, 1e-12))
        y = np.asarray(sample_y)[near]  # (b, m, 2)
        out[lo : lo + len(xb)] = (y * w[..., None]).sum(axis=1) / w.sum(axis=1)[:, None]
    return out


def leading_columns(features: RowStore | np.ndarray, dims: int = SPACE_DIMS,
                    batch: int = 4096) -> np.ndarray:
    """The first ``dims`` features of every image, as one float32 array read in batches.

    Memory: the result (``4 * n * dims`` bytes: 1.6 MB for 8,121 images, 20 MB for 100,000)
    plus one batch of full feature rows.
    """
    d = max(1, min(dims, row_width(features)))
    out = np.empty((len(features), d), dtype=np.float32)
    for lo, rows in read_in_batches(features, batch):
        out[lo : lo + len(rows)] = rows[:, :d]
    return out


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded uniform sample of ``min(size, n)`` of ``n`` rows."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(size, n), replace=False))


@dataclass(frozen=True)
class ClusterSpace:
    """A fitted 2-D space: the sampled images' leading features and their t-SNE positions.

    ``sample_features`` is ``(s, dims)`` float32, ``sample_positions`` ``(s, 2)`` float64;
    with fewer than :data:`MIN_TSNE` images ``sample_features`` is empty and an image's
    position is its first two features.
    """

    sample_features: np.ndarray
    sample_positions: np.ndarray
    dims: int = SPACE_DIMS
    neighbours: int = NEIGHBOURS
    #: An image farther than this from every sampled image (in the leading features) is novel:
    #: the 99th percentile of the training images' distances (see :func:`novelty_distance`).
    novelty_distance: float = float("inf")

    def place(self, features: np.ndarray, nearest: np.ndarray | None = None) -> np.ndarray:
        """Positions ``(n, 2)`` float64 of feature rows (any number of leading columns);
        ``nearest`` receives the distance to the nearest sampled image (see
        :func:`place_by_neighbours`)."""
        x = np.asarray(features)
        if len(self.sample_features) == 0:
            flat = np.zeros((len(x), 2))
            flat[:, : min(2, x.shape[1])] = x[:, :2]
            if nearest is not None:
                nearest[:] = 0.0
            return flat
        return place_by_neighbours(x[:, : self.dims], self.sample_features,
                                   self.sample_positions, neighbours=self.neighbours,
                                   nearest=nearest)  # fmt: skip


def read_space(
    arrays: Mapping[str, Any], info: Mapping[str, Any], prefix: str = ""
) -> ClusterSpace:
    """A saved ClusterSpace: arrays ``<prefix>sample_features`` and ``<prefix>sample_positions``.

    ``info`` holds the settings ``dims``, ``neighbours`` and ``novelty_distance``; ``arrays`` is
    an open h5py group or a dict of numpy arrays or h5py datasets. Both files that hold a space
    read it here: ``space.h5`` (arrays at the root, settings in its metadata) and ``model.h5``
    (arrays under ``space/``, settings in ``meta["space"]``).
    Memory: the two sample arrays (``4 s dims + 16 s`` bytes: 0.4 MB for 2,000 samples).
    """
    return ClusterSpace(arrays[prefix + "sample_features"][()],
                        arrays[prefix + "sample_positions"][()],
                        int(info["dims"]), int(info["neighbours"]),
                        float(info["novelty_distance"]))  # fmt: skip


def novelty_distance(nearest: np.ndarray, percentile: float = 99.0) -> float:
    """The novelty threshold from the training images' nearest-sample distances (finite ones:
    with every sampled image equal to another there is nothing to measure, and nothing is
    novel)."""
    finite = nearest[np.isfinite(nearest)]
    return float(np.percentile(finite, percentile)) if len(finite) else float("inf")


def fit_space(leading: np.ndarray, *, seed: int, sample: int = SPACE_SAMPLE,
              iterations: int = SPACE_ITERATIONS) -> tuple[ClusterSpace, np.ndarray]:
    """Fit the space on ``leading`` (``n x dims`` features); the space and the sample's rows.

    Fewer than :data:`MIN_TSNE` rows or fewer than two features: no t-SNE, the space is the
    first two features (see :class:`ClusterSpace`).
    """
    n, dims = leading.shape
    if n < MIN_TSNE or dims < 2:
        empty = np.zeros((0, dims), dtype=np.float32)
        return ClusterSpace(empty, np.zeros((0, 2)), dims), np.zeros(0, dtype=np.int64)
    idx = sample_rows(n, sample, seed)
    sx = np.ascontiguousarray(leading[idx], dtype=np.float32)
    sy = tsne_2d(sx, seed, iterations)
    return ClusterSpace(sx, sy, dims), idx
