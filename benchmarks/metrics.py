"""Quality numbers computed the same way for every pipeline: inertia, explained variance, ARI.

Pipelines report their own estimators' numbers too, but those differ in meaning (dask-ml's
``inertia_`` is sometimes a sum of unsquared distances, see shared/research/PEERS.md), so the
table is built from these.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "adjusted_rand",
    "cluster_means",
    "ev_check",
    "inertia",
    "total_sum_of_squares",
]


def inertia(features: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> float:
    """Sum over samples of the squared Euclidean distance to the assigned centre.

    Parameters
    ----------
    features : ndarray of shape (n, d)
    labels : ndarray of shape (n,)
        Index into ``centers`` for each row.
    centers : ndarray of shape (k, d)

    Notes
    -----
    Computed in float64 in blocks of 4096 rows, so memory stays ``4096 * d * 8`` bytes.
    """
    features = np.asarray(features)
    labels = np.asarray(labels).astype(np.intp)
    centers = np.asarray(centers, dtype=np.float64)
    total = 0.0
    for start in range(0, features.shape[0], 4096):
        block = features[start : start + 4096].astype(np.float64)
        diff = block - centers[labels[start : start + 4096]]
        total += float(np.einsum("ij,ij->", diff, diff))
    return total


def total_sum_of_squares(features: np.ndarray) -> float:
    """Sum of squared distances of the rows to their mean (inertia of a single cluster)."""
    f = np.asarray(features, dtype=np.float64)
    centred = f - f.mean(axis=0)
    return float(np.einsum("ij,ij->", centred, centred))


def cluster_means(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster mean rows and the labels re-indexed to them (0..k-1 in sorted label order).

    Used when a pipeline's own centroids are not available: the means minimise the squared
    distances for the given assignment, so the inertia they give is a lower bound.
    """
    uniq, idx = np.unique(np.asarray(labels), return_inverse=True)
    f = np.asarray(features, dtype=np.float64)
    sums = np.zeros((uniq.size, f.shape[1]))
    np.add.at(sums, idx, f)
    counts = np.bincount(idx, minlength=uniq.size).astype(np.float64)
    return sums / counts[:, None], idx


def ev_check(features: np.ndarray, total_var: float) -> float | None:
    """Variance the features actually carry, as a fraction of the pixels' total variance.

    ``sum_j var(features[:, j]) / total_var`` (ddof=1 both). For an exact PCA projection it
    equals the estimator's explained variance ratio; for an approximate one it is what the
    projection really captured.
    """
    f = np.asarray(features, dtype=np.float64)
    if total_var <= 0 or f.shape[0] < 2:
        return None
    return float(f.var(axis=0, ddof=1).sum() / total_var)


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float | None:
    """ARI of two label vectors over the positions where both are >= 0 (-1 marks "missing")."""
    from sklearn.metrics import adjusted_rand_score

    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        return None
    keep = (a >= 0) & (b >= 0)
    if keep.sum() < 2:
        return None
    return float(adjusted_rand_score(a[keep], b[keep]))
