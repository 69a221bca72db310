"""Tests for the k-means stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from stream_cluster.model.kmeans import (
    FeatureSource,
    StreamingKMeans,
    assign,
    fit_kmeans,
    kmeans_memory_bytes,
)
from stream_cluster.storage.store import RowStore


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


def _store(tmp_path: Path, x: np.ndarray, rows: int = 128) -> RowStore:
    store = RowStore(tmp_path, x.shape[1], np.float32)
    for lo in range(0, len(x), rows):
        store.append(x[lo : lo + rows], [b"r"] * len(x[lo : lo + rows]))
    return store


def test_fit_kmeans_in_memory_is_sklearn_kmeans_on_float64() -> None:
    """Check that in-memory clustering is exactly KMeans(n_init=3) on the float64 features.

    The fit hands scikit-learn a private float64 copy with copy_x=False; the centres must be
    bit-identical to the default copy_x=True, and the labels those of the centres.
    """
    x, _ = _blobs(900, 5)
    ref = KMeans(n_clusters=5, n_init=3, random_state=2).fit(x.astype(np.float64))
    res = fit_kmeans(FeatureSource(x), 5, seed=2)
    np.testing.assert_array_equal(res.centers, ref.cluster_centers_)
    np.testing.assert_array_equal(res.labels, ref.labels_)


def test_fit_kmeans_from_store_in_memory_equals_array(tmp_path: Path) -> None:
    """Check that a store loaded for each fit gives the array's centres, labels and distances
    bit for bit (the planner may choose either)."""
    x, _ = _blobs(5000, 6)
    a = fit_kmeans(FeatureSource(x), 6, seed=1)
    src = FeatureSource(_store(tmp_path, x, 333), fit_in_memory=True)
    assert src.in_memory and src.mode == "load"
    b = fit_kmeans(src, 6, seed=1)
    np.testing.assert_array_equal(a.centers, b.centers)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.sq_distances, b.sq_distances)
    assert a.inertia == b.inertia


def test_fit_kmeans_leaves_float64_features_unchanged() -> None:
    """Check that the in-memory fit never centres the caller's array in place (copy_x=False
    applies to its own copy only), so an elbow sweep sees the same data at every k."""
    x, _ = _blobs()
    x64 = x.astype(np.float64) * 1.37
    before = x64.copy()
    fit_kmeans(FeatureSource(x64), 4, seed=0)
    np.testing.assert_array_equal(x64, before)


def test_feature_source_sample_from_store_equals_array(tmp_path: Path) -> None:
    """Check that a store's sample (read in windows) is the array's sample, row for row."""
    x, _ = _blobs(3000)
    store = _store(tmp_path, x, 256)
    for batch in (7, 100, 4096):
        for n in (1, 7, 2000, 5000):
            np.testing.assert_array_equal(
                FeatureSource(store, batch_size=batch).sample(n, seed=4),
                FeatureSource(x).sample(n, seed=4),
            )


def test_assign_labels_independent_of_source_kind(tmp_path: Path) -> None:
    """Check that assign over store batches equals assign over array batches."""
    x, _ = _blobs(1000)
    centers = x[:4].astype(np.float64)
    a = assign(centers, FeatureSource(x, batch_size=300))
    b = assign(centers, FeatureSource(_store(tmp_path, x), batch_size=300))
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.sq_distances, b.sq_distances)


def test_feature_source_array_cannot_stream() -> None:
    """Check that an array source refuses fit_in_memory=False (it has no store to stream)."""
    with pytest.raises(ValueError, match="fit_in_memory must be True"):
        FeatureSource(np.zeros((3, 2), np.float32), fit_in_memory=False)


def test_kmeans_memory_bytes_rejects_unknown_mode() -> None:
    """Check that the memory model names the modes it knows."""
    with pytest.raises(ValueError, match="mode must be 'array', 'load' or 'stream'"):
        kmeans_memory_bytes(10, 2, 2, "disk")  # type: ignore[arg-type]
