"""Tests for the fitted model file: round trip, what a run writes, and refusals."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from stream_cluster import RunConfig, run
from stream_cluster.errors import StoreError
from stream_cluster.model.fitted import FittedModel
from stream_cluster.model.format import (
    FORMAT_VERSION,
    PERCENTILES,
    Preprocessing,
    cluster_statistics,
)
from stream_cluster.model.kmeans import KMeansResult
from stream_cluster.pca.streaming import StreamingPCA

from .precision import assert_features_close

# Results equal bitwise or to README's precision: CI reruns these under other BLAS kernels.
pytestmark = pytest.mark.reproducibility


def _model(tmp_path: Path) -> tuple[FittedModel, Path]:
    rng = np.random.default_rng(0)
    pca = StreamingPCA(4).partial_fit(rng.random((30, 12), dtype=np.float32))
    z = pca.transform(rng.random((30, 12), dtype=np.float32))
    labels = (np.arange(30) % 3).astype(np.int32)
    centers = np.stack([z[labels == c].mean(axis=0) for c in range(3)]).astype(np.float64)
    sq = ((z - centers[labels]) ** 2).sum(axis=1)
    sizes, pct = cluster_statistics(KMeansResult(centers, labels, sq, float(sq.sum())), 3)
    model = FittedModel(pca, 4, centers, sizes, pct, Preprocessing(3, 4), n_images=30)
    path = tmp_path / "model.h5"
    model.save(path)
    return model, path


def test_model_save_load_round_trip(tmp_path: Path) -> None:
    """Check that a loaded model has the same arrays and projects exactly as the saved one."""
    model, path = _model(tmp_path)
    back = FittedModel.load(path)
    x = np.random.default_rng(1).random((5, 12), dtype=np.float32)
    np.testing.assert_array_equal(back.pca.transform(x), model.pca.transform(x))
    np.testing.assert_array_equal(back.centers, model.centers)
    np.testing.assert_array_equal(back.distance_percentiles, model.distance_percentiles)
    assert back.preprocessing == model.preprocessing
    assert (back.k, back.n_components, back.n_images) == (3, 4, 30)
    assert back.novelty_threshold.shape == (3,)


def test_cluster_statistics_percentiles() -> None:
    """Check that per-cluster percentiles are of the distances (not squared) of its members."""
    labels = np.array([0, 0, 0, 1, 1], dtype=np.int32)
    sq = np.array([1.0, 4.0, 9.0, 16.0, 0.0])
    sizes, pct = cluster_statistics(KMeansResult(np.zeros((3, 2)), labels, sq, 30.0), 3)
    assert sizes.tolist() == [3, 2, 0]
    np.testing.assert_allclose(pct[0], np.percentile([1.0, 2.0, 3.0], PERCENTILES))
    assert pct[1, -1] == 4.0 and np.isnan(pct[2]).all()


def test_model_refuses_tampered_array(tmp_path: Path) -> None:
    """Check that changing one number in a model file is caught by its digest."""
    _, path = _model(tmp_path)
    with h5py.File(path, "r+") as f:
        f["kmeans/centers"][0, 0] += 1.0
    with pytest.raises(StoreError, match="changed after it was written"):
        FittedModel.load(path)


def test_model_refuses_truncated_file(tmp_path: Path) -> None:
    """Check that a truncated model file gets a message saying so, not a traceback."""
    _, path = _model(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="truncated, damaged or not a model"):
        FittedModel.load(path)


def test_model_refuses_newer_format(tmp_path: Path) -> None:
    """Check that a model from a newer format version is refused with what to do."""
    _, path = _model(tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match="newer stream-cluster.*Upgrade"):
        FittedModel.load(path)


def test_model_refuses_other_files(tmp_path: Path) -> None:
    """Check that an HDF5 file that is not a model, and a pickled payload, are refused."""
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(StoreError, match="not a stream-cluster model"):
        FittedModel.load(other)
    _, path = _model(tmp_path)
    with h5py.File(path, "r+") as f:
        f["pca/evil"] = np.void(b"\x80\x04cos\nsystem\n")
    with pytest.raises(StoreError, match="not a numeric array"):
        FittedModel.load(path)


def test_run_writes_a_model_that_reproduces_its_labels(shapes_dir: Path, tmp_path: Path) -> None:
    """Check that model.h5 from a run projects the stored pixels to the run's features."""
    out = tmp_path / "run"
    cfg = RunConfig(shapes_dir, out, mem_budget=2 * 2**30, width=16, height=20, n_components=8,
                    k=3, batch_size=16, workers=0, features="pixels")  # projects pixel rows
    result = run(cfg)
    model = FittedModel.load(out / "model.h5")
    assert model.k == 3 and model.n_components == result.n_components
    assert model.cluster_sizes.tolist() == result.cluster_sizes
    from stream_cluster.storage.store import RowStore

    pixels = RowStore(out / "pixels", 320, np.uint8)
    features = RowStore(out / "features", result.n_components, np.float32)
    x = pixels.read(0, len(pixels))
    z = model.pca.transform(x, scale=np.float32(1 / 255))
    # All rows in one batch, not the run's batches of 16: equal to README's precision.
    assert_features_close(z[:, : model.n_components], features.read(0, len(features)),
                          np.linalg.norm(x / 255.0 - model.pca.mean_, axis=1))
    shutil.rmtree(out / "pixels")
