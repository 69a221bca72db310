"""Tests for the k-means stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from stream_cluster.kmeans import FeatureSource, StreamingKMeans, assign, fit_kmeans
from stream_cluster.store import RowStore


def _blobs(n: int = 600, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_blobs(n_samples=n, centers=k, n_features=6, random_state=1, cluster_std=0.6)
    return x.astype(np.float32), y


def test_assign_inertia_is_sum_of_squared_distances() -> None:
    """Check that inertia over all rows equals scikit-learn's for the same centres."""
    x, _ = _blobs()
    km = KMeans(4, n_init=1, random_state=0).fit(x.astype(np.float64))
    res = assign(km.cluster_centers_, FeatureSource(x, batch_size=97))
    np.testing.assert_allclose(res.inertia, -km.score(x.astype(np.float64)), rtol=1e-6)
    np.testing.assert_array_equal(res.labels, km.predict(x.astype(np.float64)))


def test_fit_kmeans_streamed_matches_in_memory(tmp_path: Path) -> None:
    """Check that the streamed MiniBatchKMeans path finds the same blobs as in-memory KMeans."""
    x, y = _blobs()
    store = RowStore(tmp_path, x.shape[1], np.float32)
    for lo in range(0, len(x), 128):
        store.append(x[lo : lo + 128], [b"r"] * len(x[lo : lo + 128]))
    mem = fit_kmeans(FeatureSource(x), 4, seed=0)
    streamed = fit_kmeans(FeatureSource(store, batch_size=128), 4, seed=0)
    assert adjusted_rand_score(y, mem.labels) > 0.99
    assert adjusted_rand_score(mem.labels, streamed.labels) > 0.99
    assert streamed.inertia <= mem.inertia * 1.05


def test_fit_kmeans_deterministic() -> None:
    """Check that the same seed gives the same labels."""
    x, _ = _blobs()
    a, b = fit_kmeans(FeatureSource(x), 5, seed=3), fit_kmeans(FeatureSource(x), 5, seed=3)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_streaming_kmeans_state_roundtrip_continues_exactly() -> None:
    """Check that a rebuilt MiniBatchKMeans continues exactly as the original would."""
    x, _ = _blobs(900)
    batches = [x[i : i + 100] for i in range(0, 900, 100)]
    a = StreamingKMeans(4, seed=0, batch_size=100).init_from(x[::7])
    for bx in batches:
        a.partial_fit(bx)
    b = StreamingKMeans(4, seed=0, batch_size=100).init_from(x[::7])
    for bx in batches[:4]:
        b.partial_fit(bx)
    c = StreamingKMeans.from_state(b.get_state(), seed=0, batch_size=100)
    for bx in batches[4:]:
        c.partial_fit(bx)
    np.testing.assert_array_equal(a.cluster_centers_, c.cluster_centers_)
