"""HDBSCAN in the learned 2-D space (``--cluster hdbscan``): groups by density, noise kept.

HDBSCAN finds the number of groups itself and leaves images that belong to none as noise; here
the noise is one more group (the last), never dropped. Its groups have no centres to assign
by, so a new image joins the group of its nearest training image in the space (scikit-learn's
HDBSCAN has no ``predict``). In 2-D its tree algorithm needs O(n) memory (QUALITY.md section 7).
"""

from __future__ import annotations

import numpy as np

from stream_cluster.model.kmeans import KMeansResult

__all__ = ["NearestLabels", "fit_hdbscan", "min_cluster_size"]


def min_cluster_size(n_images: int) -> int:
    """The smallest group HDBSCAN may form: 1 % of the images, at least 10.

    Measured on the labelled sets (benchmarks/RESULTS_quality.md): smaller minima split the
    clip-art into 25-56 groups of a few dozen images, larger ones merge digits.
    """
    return max(10, n_images // 100)


def fit_hdbscan(positions: np.ndarray, min_size: int | None = None
                ) -> tuple[KMeansResult, int | None]:  # fmt: skip
    """Group ``positions`` (``n x 2``) with HDBSCAN; the result as k-means would give it.

    Returns the groups (labels ``0..m-1``; noise, if any, is group ``m``), each group's mean
    position as its centre, squared distances to it, and the noise group's label (None when
    every image is in a group). Deterministic: HDBSCAN takes no seed.
    """
    from sklearn.cluster import HDBSCAN

    x = np.ascontiguousarray(positions, dtype=np.float64)
    size = min_cluster_size(len(x)) if min_size is None else min_size
    if len(x) <= size:
        raw = np.full(len(x), -1)
    else:
        raw = HDBSCAN(min_cluster_size=size, copy=True).fit_predict(x)
    m = int(raw.max()) + 1
    noise = m if (raw < 0).any() else None
    labels = np.where(raw < 0, m, raw).astype(np.int32)
    k = m + (noise is not None)
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    centers = np.zeros((k, 2))
    np.add.at(centers, labels, x)
    centers /= np.maximum(counts, 1.0)[:, None]
    sq = np.einsum("ij,ij->i", x - centers[labels], x - centers[labels])
    return KMeansResult(centers, labels, sq, float(sq.sum())), noise


class NearestLabels:
    """The label of a position's nearest training position (ties: the first), from a KD-tree
    built once for every batch ``assign`` brings.

    Memory: the tree (about ``40 n`` bytes for ``n`` training positions).
    """

    def __init__(self, train: np.ndarray, train_labels: np.ndarray) -> None:
        from scipy.spatial import cKDTree

        self.tree = cKDTree(np.asarray(train, dtype=np.float64))
        self.labels = np.asarray(train_labels)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        _, idx = self.tree.query(np.asarray(x, dtype=np.float64), k=1)
        out: np.ndarray = self.labels[idx]
        return out
