"""stream_cluster.pca.streaming: equivalence with sklearn's IncrementalPCA, state, memory model."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import IncrementalPCA

import stream_cluster.pca._kernels as kernels_mod
from stream_cluster.errors import ConfigError, StoreError
from stream_cluster.images.decode import decode_image
from stream_cluster.pca import StreamingPCA, pca_memory_bytes

CLIPART = Path("/usr/share/openclipart/png")
REPO = Path(__file__).resolve().parents[1]


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


def _clipart(n: int, size: tuple[int, int] = (30, 43)) -> np.ndarray:
    """``n`` real clip-art images (Debian's openclipart-png) decoded and downscaled to ``size``.

    Files under 100 KB, every few in sorted order, so the sample spans the categories and the
    decoding takes seconds.
    """
    if not CLIPART.is_dir():
        pytest.fail(f"{CLIPART} is missing: apt-get install -y openclipart-png (README's test "
                    f"command installs it)")
    files = [f for f in sorted(CLIPART.rglob("*.png")) if f.stat().st_size < 100_000]
    assert len(files) >= n, f"only {len(files)} small PNGs under {CLIPART}"
    rows = [decode_image(str(f), *size) for f in files[:: len(files) // n][:n]]
    return np.asarray(rows, dtype=np.float32).reshape(n, -1) / 255.0


def _fit_both(X: np.ndarray, k: int, b: int, **kwargs: object):
    ours = StreamingPCA(k, **kwargs)  # type: ignore[arg-type]
    ref = IncrementalPCA(k)
    for start in range(0, X.shape[0], b):
        ours.partial_fit(X[start : start + b])
        ref.partial_fit(X[start : start + b])
    return ours, ref


def _max_principal_angle(A: np.ndarray, B: np.ndarray) -> float:
    qa, _ = np.linalg.qr(A.T.astype(np.float64))
    qb, _ = np.linalg.qr(B.T.astype(np.float64))
    cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.arccos(np.clip(cosines.min(), -1.0, 1.0)))


def _orthonormality_error(V: np.ndarray) -> float:
    V64 = V.astype(np.float64)
    return float(np.abs(V64 @ V64.T - np.eye(V.shape[0])).max())


def _assert_equivalent(ours: StreamingPCA, ref: IncrementalPCA, X_test: np.ndarray) -> None:
    np.testing.assert_allclose(ours.mean_, ref.mean_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.var_, ref.var_, rtol=1e-12, atol=1e-12)
    assert ours.n_samples_seen_ == ref.n_samples_seen_
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-4)
    np.testing.assert_allclose(ours.singular_values_, ref.singular_values_, rtol=1e-4)
    np.testing.assert_allclose(
        ours.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-4
    )
    np.testing.assert_allclose(ours.noise_variance_, ref.noise_variance_, rtol=1e-4)
    assert ours.components_.dtype == np.float32
    assert _orthonormality_error(ours.components_) < 1e-5
    assert _max_principal_angle(ours.components_, ref.components_) < 1e-3
    # Signs: every component whose eigenvalue is well separated from its neighbours must
    # point the same way as sklearn's (svd_flip(u_based_decision=False)).
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


# ---------------------------------------------------------------------------- equivalence


@pytest.mark.parametrize(
    ("data", "k", "b"),
    [
        ("uniform", 12, 90),
        ("decaying", 25, 70),
        ("low_rank_plus_noise", 15, 60),
    ],
    ids=["uniform-random", "decaying-spectrum", "low-rank-plus-noise"],
)
@pytest.mark.parametrize("route", ["default", "float32"])
def test_streaming_pca_matches_sklearn(
    data: str, k: int, b: int, route: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that the Gram update gives sklearn's statistics, components, signs and transform.

    Several batches, the last one smaller than n_components (allowed after the first call).
    Problems this small run in float64 by default; "float32" forces the large-problem route.
    """
    if route == "float32":
        monkeypatch.setattr(kernels_mod, "_FLOAT64_FLOPS", 0)
    rng = np.random.default_rng(3)
    n, d = 4 * b + 7, 300
    if data == "uniform":
        X = rng.random((n, d), dtype=np.float32)
    elif data == "decaying":
        X = _spectrum_data(n, d, 30 * np.geomspace(1, 1e-2, 120), seed=4, noise=1e-3)
    else:
        X = _spectrum_data(n, d, np.array([40.0, 25, 12, 9, 5, 3]), seed=5, noise=0.05)
    assert n % b < k  # a last batch smaller than n_components
    ours, ref = _fit_both(X, k, b, block_columns=64)
    _assert_equivalent(ours, ref, X[:40])


def test_streaming_pca_matches_sklearn_on_images() -> None:
    """Check equivalence on real clipart images downscaled to 30 x 43 (skipped without data)."""
    X = _clipart(360)
    ours, ref = _fit_both(X, 40, 100, block_columns=500)
    _assert_equivalent(ours, ref, X[:50])


@pytest.mark.parametrize("top", [2.0, 2.6])
def test_streaming_pca_float32_route_at_large_width(
    top: float, caplog: pytest.LogCaptureFixture
) -> None:
    """Check the float32 Gram route where it runs by default: 12,000 features, k=100, b=400.

    Kept eigenvalue ratios of 4e-4 and 4e-5 (the seed workload's later batches have 2e-4): the
    components stay orthonormal to 1e-8 and match sklearn run in float64.
    """
    X = _spectrum_data(900, 12_000, 30 * np.logspace(0, -top, 120), seed=11, noise=1e-4)
    assert 501**2 * 12_000 > kernels_mod._FLOAT64_FLOPS  # the float32 route, not the small one
    with caplog.at_level(logging.INFO, logger="stream_cluster.pca.streaming"):
        ours, ref = _fit_both(X, 100, 400, block_columns=2048)
    assert not any("float64" in rec.getMessage() for rec in caplog.records)
    assert 2e-5 < ref.explained_variance_[-1] / ref.explained_variance_[0] < 5e-4
    assert _orthonormality_error(ours.components_) < 1e-8
    _assert_equivalent(ours, ref, X[:40])


def test_streaming_pca_block_width_does_not_matter() -> None:
    """Check that block_columns changes nothing beyond float32 rounding."""
    X = _spectrum_data(300, 257, 20 * np.geomspace(1, 1e-2, 60), seed=6, noise=1e-3)
    a = StreamingPCA(10, block_columns=1000)
    b = StreamingPCA(10, block_columns=37)
    for start in range(0, 300, 100):
        a.partial_fit(X[start : start + 100])
        b.partial_fit(X[start : start + 100])
    np.testing.assert_array_equal(a.mean_, b.mean_)
    np.testing.assert_allclose(a.explained_variance_, b.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-4)


# ---------------------------------------------------------------------------- precision limits


def test_streaming_pca_ill_conditioned_uses_float64(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that eigenvalues below 2e-5 of the largest switch to the float64 Gram route.

    Singular values span 1 .. 1e-4 (eigenvalues 1 .. 1e-8): a float32 Gram matrix would lose
    the tail, so the batch's Gram matrix is recomputed in float64, and the result still matches
    sklearn run in float64 on the same data. (Problems this small run in float64 from the start;
    the threshold is lowered so that the switch itself is tested.)
    """
    monkeypatch.setattr(kernels_mod, "_FLOAT64_FLOPS", 0)
    X = _spectrum_data(600, 400, 30 * np.geomspace(1, 1e-4, 150), seed=7)
    k, b = 110, 150
    ours = StreamingPCA(k, block_columns=128)
    ref = IncrementalPCA(k)
    with caplog.at_level(logging.INFO, logger="stream_cluster.pca.streaming"):
        for start in range(0, 600, b):
            ours.partial_fit(X[start : start + b])
            ref.partial_fit(X[start : start + b].astype(np.float64))
    assert any("float64" in rec.getMessage() for rec in caplog.records)
    assert ref.explained_variance_[-1] / ref.explained_variance_[0] < 1e-5
    np.testing.assert_allclose(ours.explained_variance_, ref.explained_variance_, rtol=1e-4)
    assert _orthonormality_error(ours.components_) < 1e-5
    assert _max_principal_angle(ours.components_, ref.components_) < 1e-3


def test_streaming_pca_rank_deficient_completes_orthonormal_basis(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Check that directions with no variance become an orthonormal completion, as in sklearn.

    The data have rank 6 but 10 components are asked for: sklearn's SVD returns arbitrary
    orthonormal rows with (numerically) zero singular values for the last 4, and so do we.
    """
    X = _spectrum_data(200, 120, np.array([20.0, 10, 8, 5, 2, 1]), seed=8)
    with caplog.at_level(logging.INFO, logger="stream_cluster.pca.streaming"):
        ours, ref = _fit_both(X, 10, 50, block_columns=32)
    assert any("completing" in rec.getMessage() for rec in caplog.records)
    assert _orthonormality_error(ours.components_) < 1e-5
    assert _max_principal_angle(ours.components_[:6], ref.components_[:6]) < 1e-4
    np.testing.assert_allclose(ours.singular_values_[:6], ref.singular_values_[:6], rtol=1e-5)
    assert np.all(ours.singular_values_[6:] < 1e-5 * ours.singular_values_[0])
    assert np.all(np.isfinite(ours.transform(X[:5])))


def test_streaming_pca_constant_batch_gives_orthonormal_components() -> None:
    """Check that a first batch of identical images (zero variance) still yields a basis."""
    X = np.full((8, 50), 0.7, dtype=np.float32)
    pca = StreamingPCA(5).partial_fit(X)
    assert _orthonormality_error(pca.components_) < 1e-5
    np.testing.assert_array_equal(pca.explained_variance_, 0.0)
    np.testing.assert_array_equal(pca.transform(X), 0.0)
    rng = np.random.default_rng(0)
    pca.partial_fit(rng.random((8, 50), dtype=np.float32))
    assert _orthonormality_error(pca.components_) < 1e-5


# ---------------------------------------------------------------------------- state


def _batches(seed: int = 9) -> list[np.ndarray]:
    X = _spectrum_data(4 * 60, 150, 20 * np.geomspace(1, 1e-2, 80), seed=seed, noise=1e-3)
    return [X[i : i + 60] for i in range(0, 240, 60)]


@pytest.mark.parametrize("solver", ["gram", "sklearn"])
def test_streaming_pca_state_round_trip_continues_exactly(solver: str, tmp_path: Path) -> None:
    """Check that get_state -> HDF5 -> from_state continues exactly as the original would."""
    batches = _batches()
    a = StreamingPCA(12, solver=solver, block_columns=64)
    for batch in batches:
        a.partial_fit(batch)
    b = StreamingPCA(12, solver=solver, block_columns=64)
    for batch in batches[:2]:
        b.partial_fit(batch)
    path = tmp_path / "pca.h5"
    with h5py.File(path, "w") as f:
        for key, value in b.get_state().items():
            f.create_dataset(key, data=value)
    with h5py.File(path, "r") as f:
        c = StreamingPCA.from_state({key: f[key][()] for key in f})
    for batch in batches[2:]:
        c.partial_fit(batch)
    state_a, state_c = a.get_state(), c.get_state()
    assert state_a.keys() == state_c.keys()
    for key in state_a:
        assert state_a[key].dtype == state_c[key].dtype, key
        np.testing.assert_array_equal(state_a[key], state_c[key], err_msg=key)
    np.testing.assert_array_equal(a.transform(batches[0]), c.transform(batches[0]))


def test_streaming_pca_from_state_copies_arrays() -> None:
    """Check that the rebuilt estimator does not share memory with the state it came from."""
    a = StreamingPCA(5).partial_fit(_batches()[0])
    state = a.get_state()
    b = StreamingPCA.from_state(state)
    assert not np.shares_memory(b.components_, state["components_"])


def test_streaming_pca_from_state_rejects_torn_state() -> None:
    """Check that a state with a missing key or a wrong shape raises StoreError."""
    state = StreamingPCA(5).partial_fit(_batches()[0]).get_state()
    torn = {key: value for key, value in state.items() if key != "var_"}
    with pytest.raises(StoreError, match="var_"):
        StreamingPCA.from_state(torn)
    bad = dict(state, mean_=state["mean_"][:-1])
    with pytest.raises(StoreError, match="mean_"):
        StreamingPCA.from_state(bad)


# ---------------------------------------------------------------------------- input handling


def test_streaming_pca_copy_false_centres_in_place() -> None:
    """Check that copy=False overwrites the batch, copy=True does not, and both agree."""
    batches = _batches()
    kept = StreamingPCA(6, copy=True)
    inplace = StreamingPCA(6, copy=False)
    for batch in batches:
        original = batch.copy()
        kept.partial_fit(batch)
        np.testing.assert_array_equal(batch, original)
        inplace.partial_fit(batch)
        assert not np.array_equal(batch, original)
    np.testing.assert_array_equal(kept.components_, inplace.components_)
    np.testing.assert_array_equal(kept.explained_variance_, inplace.explained_variance_)


@pytest.mark.parametrize("solver", ["gram", "sklearn"])
def test_transform_scale_equals_scaling_first(solver: str) -> None:
    """Check that transform(uint8, scale=s) is bitwise transform(float32(uint8 * s))."""
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, (90, 1000), dtype=np.uint8)
    s = np.float32(1.0 / 255.0)
    pca = StreamingPCA(7, solver=solver, block_columns=300).partial_fit(X * s)
    scaled = np.multiply(X, s, dtype=np.float32)
    np.testing.assert_array_equal(pca.transform(X, scale=s), pca.transform(scaled))


def test_streaming_pca_rejects_bad_input() -> None:
    """Check the messages for too small a first batch, wrong width, NaN and bad parameters."""
    rng = np.random.default_rng(0)
    pca = StreamingPCA(10)
    with pytest.raises(ValueError, match="must be less or equal to the batch number"):
        pca.partial_fit(rng.random((5, 20), dtype=np.float32))
    with pytest.raises(ValueError, match="not fitted"):
        pca.transform(rng.random((5, 20), dtype=np.float32))
    pca.partial_fit(rng.random((12, 20), dtype=np.float32))
    before = pca.get_state()
    before = {key: value.copy() for key, value in before.items()}
    with pytest.raises(ValueError, match="expecting 20 features"):
        pca.partial_fit(rng.random((12, 21), dtype=np.float32))
    poisoned = rng.random((12, 20), dtype=np.float32)
    poisoned[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or infinity"):
        pca.partial_fit(poisoned)
    for key, value in pca.get_state().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    with pytest.raises(ConfigError, match="n_components must be an integer >= 1. Got 0"):
        StreamingPCA(0).partial_fit(rng.random((12, 20), dtype=np.float32))
    with pytest.raises(ConfigError, match="solver must be one of"):
        StreamingPCA(3, solver="svd").partial_fit(rng.random((12, 20), dtype=np.float32))
    with pytest.raises(ConfigError, match="block_columns"):
        StreamingPCA(3, block_columns=0).partial_fit(rng.random((12, 20), dtype=np.float32))


def test_streaming_pca_sklearn_solver_is_sklearn() -> None:
    """Check that solver="sklearn" reproduces IncrementalPCA bit for bit."""
    batches = _batches()
    ours = StreamingPCA(8, solver="sklearn")
    ref = IncrementalPCA(8)
    for batch in batches:
        ours.partial_fit(batch)
        ref.partial_fit(batch)
    np.testing.assert_array_equal(ours.components_, ref.components_)
    np.testing.assert_array_equal(ours.explained_variance_, ref.explained_variance_)
    np.testing.assert_array_equal(
        ours.transform(batches[0]), ref.transform(batches[0]).astype(np.float32)
    )


@settings(max_examples=25, deadline=None)
@given(
    k=st.integers(1, 8),
    extra=st.integers(0, 20),
    d=st.integers(8, 60),
    n_batches=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_streaming_pca_property_matches_sklearn(
    k: int, extra: int, d: int, n_batches: int, seed: int
) -> None:
    """Check, over random shapes, sklearn's spectrum, orthonormal rows and the sign rule.

    The sign rule (sklearn's svd_flip with u_based_decision=False): the entry of largest
    magnitude in each component is positive.
    """
    k = min(k, d)
    b = k + extra + 1  # b = 1 with k = 1 divides by n_samples - 1 = 0, in sklearn too
    rng = np.random.default_rng(seed)
    X = (rng.random((b * n_batches, d)) ** 2).astype(np.float32)
    ours, ref = _fit_both(X, k, b, block_columns=7)
    scale = ref.explained_variance_[0] + 1e-12
    np.testing.assert_allclose(
        ours.explained_variance_, ref.explained_variance_, rtol=1e-4, atol=1e-6 * scale
    )
    np.testing.assert_allclose(
        ours.noise_variance_, ref.noise_variance_, rtol=1e-4, atol=1e-6 * scale
    )
    assert _orthonormality_error(ours.components_) < 1e-5
    V = ours.components_
    rows = np.arange(k)
    assert np.all(V[rows, np.argmax(np.abs(V), axis=1)] > 0)


# ---------------------------------------------------------------------------- memory model

_PEAK_SCRIPT = """
import json, sys
import numpy as np, psutil
from stream_cluster.pca.streaming import StreamingPCA
k, b, d, solver = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
base = psutil.Process().memory_info().rss
# ru_maxrss survives fork+exec (a child of a big pytest process would report the parent's peak),
# so reset the kernel's high-water mark here and read VmHWM at the end instead.
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
pca = StreamingPCA(k, solver=solver)
rng = np.random.default_rng(0)
for _ in range(3):
    X = rng.random((b, d), dtype=np.float32)
    pca.partial_fit(X)
    del X
X = rng.random((b, d), dtype=np.float32)
pca.transform(X)
with open("/proc/self/status") as fh:
    peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
print(json.dumps({"base": base, "peak": peak}))
"""


@pytest.mark.parametrize(
    "solver", ["gram", pytest.param("sklearn", marks=pytest.mark.slow)], ids=["gram", "sklearn"]
)
def test_pca_memory_bytes_bounds_measured_peak(solver: str) -> None:
    """Check that the memory model never underestimates peak RSS and is at most ~1.5x above it.

    Measured in a fresh interpreter (k=100, b=300, d=20,000: three partial_fit calls and a
    transform), as the kernel's RSS high-water mark (reset after imports) minus the RSS after
    imports.
    """
    k, b, d = 100, 300, 20_000
    out = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, str(k), str(b), str(d), solver],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=True,
    )
    sample = json.loads(out.stdout.strip().splitlines()[-1])
    measured = sample["peak"] - sample["base"]
    model = pca_memory_bytes(k, b, d, solver)
    assert measured <= model, (measured, model)
    assert model <= 1.5 * measured + 32 * 2**20, (measured, model)


def test_pca_memory_bytes_full_scale_figures() -> None:
    """Check the model against the peaks measured at 800 components, batch 1000, 129,000 px.

    sklearn's IncrementalPCA peaked at 10.5 GB RSS in the lead's run and at 7.99 GiB with
    copy=False in ours; the Gram solver (copy=False) at 1.01 GiB.
    """
    sk = pca_memory_bytes(800, 1000, 129_000, "sklearn")
    assert 10.5e9 <= sk <= 1.5 * 10.5e9
    sk_inplace = pca_memory_bytes(800, 1000, 129_000, "sklearn", copy=False)
    assert 7.99 * 2**30 <= sk_inplace <= 1.5 * 7.99 * 2**30
    gram = pca_memory_bytes(800, 1000, 129_000, "gram", copy=False)
    assert 1.01 * 2**30 <= gram <= 1.5 * 1.01 * 2**30
    assert pca_memory_bytes(800, 1000, 129_000, "gram") - gram == 4 * 1000 * 129_000


@pytest.mark.parametrize(("m", "k"), [(2, 1), (40, 12), (64, 63), (30, 30), (50, 20)],
                         ids=["2-of-1", "40-keep-12", "64-keep-63", "all-kept", "rank-10"])
def test_eigh_top_k_matches_full_eigh(m: int, k: int) -> None:
    """Check that the top-k eigensolver the benchmarks compare (benchmarks/eigh_top.py) gives
    numpy's top k pairs and the sum of the rest (from the trace); the last case is
    rank-deficient (10 of 50), so many discarded eigenvalues are ~0.
    """
    from benchmarks.eigh_top import eigh_top_k

    rng = np.random.default_rng(m * 100 + k)
    A = rng.standard_normal((m, 10 if m == 50 else m + 3))
    G = A @ A.T
    ref_lam, ref_U = np.linalg.eigh(G)
    ref_lam, ref_U = ref_lam[::-1], ref_U[:, ::-1]
    lam, U, rest = eigh_top_k(G.copy(), k)
    top = ref_lam[0]
    np.testing.assert_allclose(lam[:k], ref_lam[:k], rtol=0, atol=1e-12 * top)
    assert abs(rest - ref_lam[k:].sum()) <= 1e-12 * np.trace(G)
    # Vectors are defined up to sign, and only for eigenvalues apart from their neighbours.
    gaps = np.abs(np.diff(np.append(ref_lam[:k], ref_lam[k] if k < m else -np.inf))) > 1e-6 * top
    separated = gaps.copy()
    separated[1:] &= gaps[:-1]
    cos = np.abs(np.sum(U[:, :k] * ref_U[:, :k], axis=0))
    assert np.all(cos[separated] > 1 - 1e-9)
    np.testing.assert_allclose(U[:, :k].T @ U[:, :k], np.eye(k), atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(-3, 3), min_size=3, max_size=3).map(
            lambda row: np.array(row, dtype=np.float32)
        ),
        min_size=2,
        max_size=9,
    ),
    st.integers(1, 4),
)
def test_track_signs_keeps_the_sign_of_the_first_entry_of_largest_magnitude(
    columns: list[np.ndarray], width: int
) -> None:
    """Column blocks of small integers (ties between +v and -v everywhere): the sign kept per
    row is that of the first entry of largest magnitude over all blocks, svd_flip's rule."""
    full = np.stack(columns, axis=1)  # 3 rows
    best = np.full(3, -1.0, dtype=np.float32)
    sign = np.ones(3, dtype=np.float32)
    for c0 in range(0, full.shape[1], width):
        kernels_mod._track_signs(np.ascontiguousarray(full[:, c0 : c0 + width]), best, sign)
    first = np.argmax(np.abs(full), axis=1)
    expect = np.sign(full[np.arange(3), first])
    np.testing.assert_array_equal(best, np.abs(full).max(axis=1))
    np.testing.assert_array_equal(sign < 0, expect < 0)
