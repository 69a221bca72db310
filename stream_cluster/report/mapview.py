"""A 2-D map of every image: the learned cluster space, or for ``--space pca`` its own t-SNE.

The t-SNE and the placement are :mod:`stream_cluster.model.space`'s.

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

from stream_cluster.model.space import (
    SPACE_DIMS,
    SPACE_ITERATIONS,
    SPACE_SAMPLE,
    fit_space,
    leading_columns,
    place_by_neighbours,
)

__all__ = ["MAP_DIMS", "MAP_SAMPLE", "cluster_colours", "embed_2d", "leading_columns",
           "place_by_neighbours", "quantize"]

logger = logging.getLogger(__name__)

#: Leading PCA components the map is computed from (t-SNE's usual preparation).
MAP_DIMS = SPACE_DIMS
#: Images embedded by t-SNE; the others are placed from their nearest embedded neighbours.
MAP_SAMPLE = SPACE_SAMPLE
#: t-SNE iterations: a third with early exaggeration (12), the rest without.
MAP_ITERATIONS = SPACE_ITERATIONS
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


def embed_2d(x: np.ndarray, *, seed: int, sample: int = MAP_SAMPLE,
             iterations: int = MAP_ITERATIONS) -> np.ndarray:
    """Map every row of ``x`` (images x leading PCA components) to a point in 2-D.

    The map of a run clustered in PCA space (``--space pca``); a run clustered in the learned
    space shows that space's positions instead. A seeded uniform sample of ``sample`` rows is
    embedded by t-SNE; every row (the sample's included) is then placed by
    :func:`place_by_neighbours`, so sample rows keep their t-SNE position and all rows are on
    one map. Fewer than 10 rows: the first two columns.

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
    if len(x) == 0:
        return np.zeros((0, 2))
    space, idx = fit_space(np.asarray(x), seed=seed, sample=sample, iterations=iterations)
    if len(idx) == len(x):
        return space.sample_positions
    return space.place(x)


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
