"""A 2-D map of every image: t-SNE of a sample, the other images placed by their neighbours.

Measured on the prepared corpus (8,121 clipart images, the first 50 of 800 PCA components, one
thread): openTSNE's Barnes-Hut t-SNE of a 2,000-image sample with 450 iterations costs about
4.5 s of CPU, while t-SNE of all 8,121 images (openTSNE, UMAP or scikit-learn) costs 25-65 s,
as long as the whole seed run. openTSNE's ``transform`` of the 6,121 others would add ~27 s, so
they are placed instead at the distance-weighted mean of their 5 nearest sample images (in the
same 50-D space): 0.4 s. Every image gets a position; the result depends only on the features
and the seed (exact neighbours for the affinities and one thread, so no run-to-run noise).
"""

from __future__ import annotations

import logging

import numpy as np

from stream_cluster.storage.store import RowStore

__all__ = ["MAP_DIMS", "MAP_SAMPLE", "cluster_colours", "embed_2d", "leading_columns",
           "place_by_neighbours", "quantize"]

logger = logging.getLogger(__name__)

#: Leading PCA components the map is computed from (t-SNE's usual preparation).
MAP_DIMS = 50
#: Images embedded by t-SNE; the others are placed from their nearest embedded neighbours.
MAP_SAMPLE = 2000
#: t-SNE iterations: a third with early exaggeration (12), the rest without.
MAP_ITERATIONS = 450
#: Below this many images t-SNE is not meaningful; the map shows the first two components.
_MIN_TSNE = 10
_NEIGHBOURS = 5
# matplotlib's tab10 then the light half of tab20: distinct for up to 20 clusters.
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
    "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
)


def cluster_colours(k: int) -> list[str]:
    """One ``#rrggbb`` colour per cluster, shared by the map and the size chart.

    The first 20 are matplotlib's tab10 and tab20; beyond, hues step by the golden angle.

    Examples
    --------
    >>> cluster_colours(2)
    ['#1f77b4', '#ff7f0e']
    >>> len(set(cluster_colours(60)))
    60
    """
    import colorsys

    out = list(_PALETTE[:k])
    for i in range(len(out), k):
        hue = (i * 0.381966) % 1.0
        light = 0.42 + 0.16 * ((i // 7) % 2)
        r, g, b = colorsys.hls_to_rgb(hue, light, 0.65)
        out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return out


def leading_columns(features: RowStore | np.ndarray, dims: int = MAP_DIMS,
                    batch: int = 4096) -> np.ndarray:
    """The first ``dims`` features of every image, as one float32 array read in batches.

    Memory: the result (``4 * n * dims`` bytes: 1.6 MB for 8,121 images, 20 MB for 100,000)
    plus one batch of full feature rows.
    """
    n = len(features)
    width = int(features.row_size if isinstance(features, RowStore) else features.shape[1])
    d = max(1, min(dims, width))
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, batch):
        rows = features.read(lo, lo + batch) if isinstance(features, RowStore) else \
            features[lo : lo + batch]
        out[lo : lo + len(rows)] = rows[:, :d]
    return out


def _tsne(x: np.ndarray, seed: int, iterations: int) -> np.ndarray:
    """openTSNE, Barnes-Hut, exact neighbours, one thread: deterministic for a seed."""
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
                        neighbours: int = _NEIGHBOURS, batch: int = 1024) -> np.ndarray:
    """Position each row of ``x`` at the inverse-distance-weighted mean of its nearest samples.

    A row equal to a sample row gets exactly that sample's position.

    Memory: a ``batch x len(sample_x)`` float32 distance block (8 MB for 1,024 x 2,000).
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
        dist = np.sqrt(np.take_along_axis(d2, near, axis=1).astype(np.float64))
        hit = dist <= 1e-9  # the row is a sample row: keep that sample's position exactly
        w = np.where(hit.any(axis=1, keepdims=True), hit, 1.0 / np.maximum(dist, 1e-12))
        y = sample_y[near]  # (b, m, 2)
        out[lo : lo + len(xb)] = (y * w[..., None]).sum(axis=1) / w.sum(axis=1)[:, None]
    return out


def embed_2d(x: np.ndarray, *, seed: int, sample: int = MAP_SAMPLE,
             iterations: int = MAP_ITERATIONS) -> np.ndarray:
    """Map every row of ``x`` (images x leading PCA components) to a point in 2-D.

    A seeded uniform sample of ``sample`` rows is embedded by t-SNE; every row (the sample's
    included) is then placed by :func:`place_by_neighbours`, so sample rows keep their t-SNE
    position and all rows are on one map. Fewer than 10 rows: the first two columns.

    Parameters
    ----------
    x : numpy.ndarray
        ``(n, d)`` float features, e.g. from :func:`leading_columns`.
    seed : int
        Chooses the sample and seeds t-SNE; the same ``x`` and seed give the same map.
    sample : int, default=MAP_SAMPLE
        Rows embedded by t-SNE.
    iterations : int, default=MAP_ITERATIONS
        t-SNE iterations.

    Returns
    -------
    numpy.ndarray
        ``(n, 2)`` float64 positions, finite.

    Notes
    -----
    Memory: the sample (``sample x d`` float64, 0.8 MB for 2,000 x 50), t-SNE's state for it
    (exact neighbours: a ``sample x sample`` distance matrix, 32 MB for 2,000) and
    :func:`place_by_neighbours`'s 8 MB block. Time: about 4.5 s of one core for 2,000 images.
    """
    n = len(x)
    if n == 0:
        return np.zeros((0, 2))
    if n < _MIN_TSNE or x.shape[1] < 2:
        flat = np.zeros((n, 2))
        flat[:, : min(2, x.shape[1])] = x[:, :2]
        return flat
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    sx = np.asarray(x[idx], dtype=np.float64)
    sy = _tsne(sx, seed, iterations)
    if len(idx) == n:
        return sy
    return place_by_neighbours(x, sx, sy)


def quantize(positions: np.ndarray) -> np.ndarray:
    """Scale positions to 0..65535 on the longer axis (aspect kept, centred), as uint16.

    The report stores the map as two uint16 per image: 4 bytes, 400 KB for 100,000 images.

    Examples
    --------
    >>> quantize(np.array([[0.0, 0.0], [2.0, 1.0]])).tolist()
    [[0, 16384], [65535, 49151]]
    """
    p = np.asarray(positions, dtype=np.float64)
    if len(p) == 0:
        return np.zeros((0, 2), dtype=np.uint16)
    lo, hi = p.min(axis=0), p.max(axis=0)
    span = float((hi - lo).max()) or 1.0
    offset = (span - (hi - lo)) / 2.0
    q = np.floor((p - lo + offset) / span * 65535.0 + 0.5)
    out: np.ndarray = np.clip(q, 0, 65535).astype(np.uint16)
    return out
