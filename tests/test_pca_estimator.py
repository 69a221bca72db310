"""StreamingPCA as a scikit-learn estimator: the common checks, fit, pipelines, names, clone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import sparse
from sklearn.base import clone
from sklearn.cluster import KMeans
from sklearn.decomposition import IncrementalPCA
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_array_api_input, parametrize_with_checks

import stream_cluster.pca._kernels as kernels_mod
from stream_cluster.errors import ConfigError
from stream_cluster.pca import StreamingPCA

# ---------------------------------------------------------------------------- helpers


def _spectrum_data(
    n: int, d: int, sigmas: np.ndarray, seed: int, noise: float = 0.0, offset: float = 0.5
) -> np.ndarray:
    """Rows with prescribed singular values around an offset, as float32 (values ~0..1)."""
    rng = np.random.default_rng(seed)
    r = sigmas.size
    left, _ = np.linalg.qr(rng.standard_normal((n, r)))
    right, _ = np.linalg.qr(rng.standard_normal((d, r)))
    X = (left * sigmas) @ right.T + offset + noise * rng.standard_normal((n, d))
    return X.astype(np.float32)


@lru_cache(maxsize=1)
def _decaying() -> np.ndarray:
    """367 x 300 rows with a decaying spectrum (made once: QR on a loaded machine is slow)."""
    X = _spectrum_data(367, 300, 30 * np.geomspace(1, 1e-2, 120), seed=4, noise=1e-3)
    X.setflags(write=False)
    return X


def _max_principal_angle(A: np.ndarray, B: np.ndarray) -> float:
    qa, _ = np.linalg.qr(A.T.astype(np.float64))
    qb, _ = np.linalg.qr(B.T.astype(np.float64))
    cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.arccos(np.clip(cosines.min(), -1.0, 1.0)))


def _assert_same_model(ours: StreamingPCA, ref: IncrementalPCA, X_test: np.ndarray) -> None:
    """The tolerances of tests/test_pca.py: statistics to 1e-12, spectrum to 1e-4 relative,
    subspace to 1e-3 rad, components and transform of well-separated components."""
    np.testing.assert_allclose(ours.mean_, ref.mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.var_, ref.var_, rtol=1e-12, atol=1e-12)
    assert ours.n_samples_seen_ == ref.n_samples_seen_
    assert ours.n_components_ == ref.n_components_
    assert ours.n_features_in_ == ref.n_features_in_
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, rtol=1e-4)
    np.testing.assert_allclose(
        ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4
    )
    np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-4)
    assert _max_principal_angle(ours.components_, ref.components_) < 1e-3
    ev = ref.explained_variance_
    gaps = np.abs(np.diff(ev)) / ev[:-1]
    separated = np.ones(ev.size, dtype=bool)
    separated[:-1] &= gaps > 1e-2
    separated[1:] &= gaps > 1e-2
    dots = np.sum(ours.components_ * ref.components_, axis=1)
    assert np.all(dots[separated] > 0.999), dots[separated].min()
    T_ours, T_ref = ours.transform(X_test), ref.transform(X_test)
    assert T_ours.dtype == np.float32 and T_ours.shape == T_ref.shape
    scale = np.abs(T_ref).max()
    np.testing.assert_allclose(T_ours[:, separated], T_ref[:, separated], atol=2e-3 * scale, rtol=0)


# ---------------------------------------------------------------------------- common checks

# Each reason is measured, not assumed: see test_streaming_pca_transform_is_invariant_in_float32
# for the same properties at the precision StreamingPCA promises.
_FLOAT32_TRANSFORM = (
    "transform returns float32 from float32 BLAS products, whose rounding depends on where a "
    "row falls in the kernel's tiles: results differ by 1 float32 ulp (1.2e-7 measured), above "
    "this check's atol of 1e-9 (order) or 1e-7 (subset) on values near zero"
)


def _expected_failed_checks(estimator: StreamingPCA) -> dict[str, str]:
    if estimator.solver == "sklearn":  # float64 products, cast to float32 at the end
        return {}
    return {
        "check_methods_sample_order_invariance": _FLOAT32_TRANSFORM,
        "check_methods_subset_invariance": _FLOAT32_TRANSFORM,
    }


@pytest.mark.parametrize("route", ["default", "float32"])
@parametrize_with_checks(
    [
        StreamingPCA(),
        StreamingPCA(2, batch_size=7, block_columns=2),
        StreamingPCA(solver="sklearn"),
    ],
    expected_failed_checks=_expected_failed_checks,
)
def test_streaming_pca_passes_sklearn_checks(
    estimator: StreamingPCA,
    check: Callable[[Any], None],
    route: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check that StreamingPCA passes scikit-learn's estimator checks (exceptions named above).

    The checks' problems are tiny and run in float64; "float32" forces the Gram route that
    large problems take.
    """
    if route == "float32":
        monkeypatch.setattr(kernels_mod, "_FLOAT64_FLOPS", 0)
    if getattr(check, "func", None) is check_array_api_input:
        # Needs SCIPY_ARRAY_API=1 before scipy is imported (it skips itself otherwise): run it
        # in a fresh interpreter that has it.
        _check_array_api_in_child(estimator, route)
        return
    check(estimator)


def _check_array_api_in_child(estimator: StreamingPCA, route: str) -> None:
    code = (
        "import sys\n"
        "import stream_cluster.pca._kernels as k\n"
        "from sklearn.utils.estimator_checks import check_array_api_input\n"
        "from stream_cluster.pca import StreamingPCA\n"
        f"if {route == 'float32'}: k._FLOAT64_FLOPS = 0\n"
        f"check_array_api_input('StreamingPCA', StreamingPCA(**{estimator.get_params()!r}),\n"
        "                      array_namespace='numpy', expect_only_array_outputs=False)\n"
    )
    env = {**os.environ, "SCIPY_ARRAY_API": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]


def test_streaming_pca_transform_is_invariant_in_float32() -> None:
    """Check that transform does not depend on row order or batching beyond float32 rounding.

    scikit-learn's own checks of this ask for 1e-9 / 1e-7 absolute; ours promises float32:
    1e-5 of the largest projection.
    """
    rng = np.random.default_rng(0)
    X = rng.random((200, 300), dtype=np.float32)
    pca = StreamingPCA(10, batch_size=80).fit(X)
    full = pca.transform(X)
    atol = 1e-5 * np.abs(full).max()
    idx = rng.permutation(200)
    np.testing.assert_allclose(pca.transform(X[idx]), full[idx], rtol=0, atol=atol)
    by_row = np.vstack([pca.transform(X[i : i + 1]) for i in range(200)])
    np.testing.assert_allclose(by_row, full, rtol=0, atol=atol)
    by_batch = np.vstack([pca.transform(X[i : i + 33]) for i in range(0, 200, 33)])
    np.testing.assert_allclose(by_batch, full, rtol=0, atol=atol)


# ---------------------------------------------------------------------------- fit


@pytest.mark.parametrize(
    ("k", "batch_size", "dtype"),
    [
        (12, 90, np.float32),
        (25, 70, np.float64),
        (15, None, np.float32),
        (30, 100, np.int64),
    ],
    ids=["float32-batches", "float64-last-batch-joined", "default-batch-size", "integers"],
)
@pytest.mark.parametrize("route", ["default", "float32"])
def test_streaming_pca_fit_matches_incremental_pca_fit(
    k: int, batch_size: int | None, dtype: type, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that fit equals IncrementalPCA(batch_size=...).fit, batches included.

    With 367 rows and batch 70 the last batch (17 rows) is smaller than k=25 and is joined to
    the one before it, as in IncrementalPCA; None means 5 * n_features (one batch here).
    """
    if route == "float32":
        monkeypatch.setattr(kernels_mod, "_FLOAT64_FLOPS", 0)
    X = _decaying()
    if dtype is np.int64:
        X = np.rint(X * 255).astype(np.int64)
    else:
        X = X.astype(dtype)
    ours = StreamingPCA(k, batch_size=batch_size, block_columns=64).fit(X)
    ref = IncrementalPCA(k, batch_size=batch_size).fit(X)
    assert ours.batch_size_ == ref.batch_size_
    _assert_same_model(ours, ref, X[:40])


def test_streaming_pca_fit_starts_again() -> None:
    """Check that fit forgets an earlier fit: refitting equals fitting a fresh estimator."""
    X = _spectrum_data(300, 80, 10 * np.geomspace(1, 1e-2, 40), seed=2, noise=1e-3)
    pca = StreamingPCA(6, batch_size=100).fit(X[::-1].copy())
    pca.partial_fit(X[:50])
    pca.fit(X)
    fresh = StreamingPCA(6, batch_size=100).fit(X)
    for name in ("components_", "mean_", "var_", "explained_variance_", "n_samples_seen_"):
        np.testing.assert_array_equal(getattr(pca, name), getattr(fresh, name), err_msg=name)


def test_streaming_pca_fit_accepts_sparse_like_incremental_pca() -> None:
    """Check that fit and transform take sparse X (densified batch by batch), as IPCA's do,
    and that partial_fit refuses it with a TypeError."""
    rng = np.random.default_rng(3)
    dense = rng.random((150, 60)) * (rng.random((150, 60)) < 0.3)
    Xs = sparse.csr_matrix(dense)
    pca = StreamingPCA(5, batch_size=40).fit(Xs)
    ref = StreamingPCA(5, batch_size=40).fit(dense)
    np.testing.assert_array_equal(pca.components_, ref.components_)
    T = ref.transform(dense)
    np.testing.assert_allclose(pca.transform(Xs), T, rtol=0, atol=1e-5 * np.abs(T).max())
    with pytest.raises(TypeError, match="does not support sparse input"):
        StreamingPCA(5).partial_fit(Xs)


def test_streaming_pca_n_components_none_takes_first_batch_size() -> None:
    """Check that n_components=None means min(n_samples, n_features) of the first batch, as in
    IncrementalPCA, for fit and partial_fit, and that a state of such a model round-trips."""
    rng = np.random.default_rng(5)
    X = rng.random((90, 50), dtype=np.float32)
    pca = StreamingPCA(batch_size=30).fit(X)
    ref = IncrementalPCA(batch_size=30).fit(X)
    assert pca.n_components_ == ref.n_components_ == 30
    wide = StreamingPCA().partial_fit(X[:12])
    assert wide.n_components_ == 12
    wide.partial_fit(X[12:17])  # later batches may be smaller than n_components_
    assert wide.n_components_ == 12 and wide.n_samples_seen_ == 17
    tall = StreamingPCA().fit(X)  # 5 * 50 rows a batch: one batch of 90 rows
    assert tall.n_components_ == 50
    rebuilt = StreamingPCA.from_state(wide.get_state())
    assert rebuilt.n_components == 12
    np.testing.assert_array_equal(rebuilt.transform(X), wide.transform(X))


def test_streaming_pca_rejects_a_changed_n_components() -> None:
    """Check that partial_fit refuses a different n_components after the first batch, and bad
    batch_size values."""
    rng = np.random.default_rng(6)
    pca = StreamingPCA(4).partial_fit(rng.random((10, 20)))
    pca.set_params(n_components=6)
    with pytest.raises(ValueError, match="n_components changed from 4 to 6"):
        pca.partial_fit(rng.random((10, 20)))
    assert pca.n_components_ == 4 and pca.n_samples_seen_ == 10
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="batch_size must be None or an integer >= 1"):
            StreamingPCA(2, batch_size=bad).fit(rng.random((10, 20)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- inverse transform


def test_streaming_pca_inverse_transform_round_trip() -> None:
    """Check that inverse_transform(transform(X)) gives X back when X has rank <= k, and that it
    equals IncrementalPCA.inverse_transform on general data (float32 tolerance)."""
    low_rank = _spectrum_data(120, 200, np.array([20.0, 12, 7, 4, 2]), seed=7)
    pca = StreamingPCA(5, batch_size=60).fit(low_rank)
    back = pca.inverse_transform(pca.transform(low_rank))
    assert back.dtype == np.float32 and back.shape == low_rank.shape
    np.testing.assert_allclose(back, low_rank, rtol=0, atol=1e-5)

    X = _spectrum_data(200, 150, 10 * np.geomspace(1, 1e-2, 60), seed=8, noise=1e-3)
    ours = StreamingPCA(10, batch_size=100).fit(X)
    ref = IncrementalPCA(10, batch_size=100).fit(X)
    Z = ref.transform(X[:30])
    np.testing.assert_allclose(
        ours.inverse_transform(ours.transform(X[:30])), ref.inverse_transform(Z), atol=1e-4
    )
    with pytest.raises(ValueError, match="expecting 10"):
        ours.inverse_transform(Z[:, :9])


# ---------------------------------------------------------------------------- pipelines


def _blobs(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated clusters in a random 3-D subspace of d features, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = rng.normal(size=(3, 3)) * 8
    basis, _ = np.linalg.qr(rng.normal(size=(d, 3)))
    X = (centres[labels] + rng.normal(size=(n, 3))) @ basis.T + 0.05 * rng.normal(size=(n, d))
    return X.astype(np.float32), labels


def test_streaming_pca_in_pipeline_with_scaler_and_kmeans() -> None:
    """Check that StandardScaler -> StreamingPCA -> KMeans recovers the clusters as the same
    pipeline with IncrementalPCA does, and that the pipeline names StreamingPCA's outputs."""
    X, labels = _blobs(600, 40, seed=0)
    ours = make_pipeline(
        StandardScaler(), StreamingPCA(3, batch_size=150), KMeans(3, n_init=3, random_state=0)
    ).fit(X)
    ref = make_pipeline(
        StandardScaler(), IncrementalPCA(3, batch_size=150), KMeans(3, n_init=3, random_state=0)
    ).fit(X)
    assert adjusted_rand_score(labels, ours.predict(X)) == 1.0
    assert adjusted_rand_score(ref.predict(X), ours.predict(X)) == 1.0
    names = ours[:-1].get_feature_names_out()
    assert list(names) == ["streamingpca0", "streamingpca1", "streamingpca2"]


def test_streaming_pca_grid_search_clones_and_picks_n_components() -> None:
    """Check that GridSearchCV clones StreamingPCA per candidate and finds the n_components
    that keeps the class signal, which lies in the 2nd and 3rd largest-variance directions."""
    rng = np.random.default_rng(1)
    n, d = 400, 20
    y = rng.integers(0, 2, n)
    X = rng.normal(size=(n, d))
    X[:, 0] *= 10  # the largest-variance direction carries no class signal
    X[:, 1] = 4 * X[:, 1] + 3 * (2 * y - 1)
    X[:, 2] = 4 * X[:, 2] + 3 * (2 * y - 1)
    pca = StreamingPCA(batch_size=100)
    pipe = Pipeline([("pca", pca), ("clf", LogisticRegression())])
    search = GridSearchCV(pipe, {"pca__n_components": [1, 3]}, cv=3).fit(X, y)
    assert search.best_params_ == {"pca__n_components": 3}
    scores = search.cv_results_["mean_test_score"]
    assert scores[1] > 0.85 and scores[0] < 0.65, scores
    assert pca.get_params()["n_components"] is None and not hasattr(pca, "components_")
    fitted = search.best_estimator_.named_steps["pca"]
    assert fitted is not pca and fitted.n_components_ == 3


# ---------------------------------------------------------------------------- names and clone


def test_streaming_pca_feature_names_out() -> None:
    """Check get_feature_names_out: streamingpca0..k-1, refused before fitting."""
    pca = StreamingPCA(4)
    with pytest.raises(NotFittedError):
        pca.get_feature_names_out()
    pca.partial_fit(np.random.default_rng(0).random((10, 7)))
    assert list(pca.get_feature_names_out()) == [f"streamingpca{i}" for i in range(4)]


def test_streaming_pca_clone_keeps_params_and_drops_learned_state() -> None:
    """Check that clone copies every parameter and none of the fitted arrays, also for a model
    rebuilt from a state or made by merge."""
    rng = np.random.default_rng(2)
    params = {"solver": "gram", "copy": False, "block_columns": 16, "batch_size": 30}
    a = StreamingPCA(3, **params).fit(rng.random((60, 20)))  # type: ignore[arg-type]
    b = StreamingPCA(3, **params).fit(rng.random((60, 20)))  # type: ignore[arg-type]
    for model in (a, StreamingPCA.from_state(a.get_state()), a.merge(b)):
        copy = clone(model)
        assert not hasattr(copy, "components_") and not hasattr(copy, "n_features_in_")
        assert copy.get_params()["n_components"] == 3
    assert clone(a).get_params() == a.get_params()
    assert clone(a.merge(b)).get_params() == a.get_params()
    assert repr(clone(a)) == (
        "StreamingPCA(batch_size=30, block_columns=16, copy=False, n_components=3)"
    )
