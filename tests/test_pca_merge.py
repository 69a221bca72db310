"""Tests for StreamingPCA.merge and merge_tree: exact merges, the fixed tree, refusals."""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.decomposition import PCA, IncrementalPCA

import stream_cluster.pca._kernels as kernels_mod
from stream_cluster.errors import ConfigError
from stream_cluster.pca import StreamingPCA, merge_tree
from stream_cluster.pca._merge import reduce_tree

# ---------------------------------------------------------------------------- helpers


def _low_rank(n: int, d: int, sigmas: np.ndarray, seed: int, noise: float = 0.0) -> np.ndarray:
    """Rows of rank ``sigmas.size`` (after centring) around a random mean, plus optional noise."""
    rng = np.random.default_rng(seed)
    left = rng.standard_normal((n, sigmas.size))
    right, _ = np.linalg.qr(rng.standard_normal((d, sigmas.size)))
    X = (left * sigmas) @ right.T + rng.random(d) + noise * rng.standard_normal((n, d))
    return X.astype(np.float32)


def _fit(X: np.ndarray, k: int, b: int, **kwargs: object) -> StreamingPCA:
    pca = StreamingPCA(k, **kwargs)  # type: ignore[arg-type]
    for start in range(0, X.shape[0], b):
        pca.partial_fit(X[start : start + b])
    return pca


def _shards(X: np.ndarray, n_shards: int, k: int, b: int, **kwargs: object) -> list[StreamingPCA]:
    """Models fitted on contiguous slices of X, in order (each slice holds at least k rows)."""
    bounds = np.linspace(0, X.shape[0], n_shards + 1).astype(int)
    return [_fit(X[lo:hi], k, b, **kwargs) for lo, hi in zip(bounds[:-1], bounds[1:])]


def _max_angle(A: np.ndarray, B: np.ndarray) -> float:
    qa, _ = np.linalg.qr(A.T.astype(np.float64))
    qb, _ = np.linalg.qr(B.T.astype(np.float64))
    cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return float(np.arccos(np.clip(cosines.min(), -1.0, 1.0)))


def _assert_same_model(merged: StreamingPCA, seq: StreamingPCA, r: int, rtol: float) -> None:
    """Merged equals sequential on the r resolvable components; statistics to rounding."""
    assert merged.n_samples_seen_ == seq.n_samples_seen_
    assert merged.n_components_ == seq.n_components_ == merged.components_.shape[0]
    assert merged.components_.dtype == np.float32
    np.testing.assert_allclose(merged.mean_, seq.mean_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(merged.var_, seq.var_, rtol=1e-10, atol=1e-14)
    top = seq.explained_variance_[0]
    np.testing.assert_allclose(merged.singular_values_[:r], seq.singular_values_[:r], rtol=rtol)
    np.testing.assert_allclose(
        merged.explained_variance_, seq.explained_variance_, rtol=rtol, atol=1e-6 * top
    )
    np.testing.assert_allclose(
        merged.explained_variance_ratio_, seq.explained_variance_ratio_, rtol=rtol, atol=1e-9
    )
    np.testing.assert_allclose(merged.noise_variance_, seq.noise_variance_, atol=1e-6 * top)
    V64 = merged.components_.astype(np.float64)
    assert np.abs(V64 @ V64.T - np.eye(V64.shape[0])).max() < 1e-5
    # Same signs as the sequential fit (svd_flip rule) on the resolvable components.
    dots = np.sum(merged.components_[:r] * seq.components_[:r], axis=1)
    assert np.all(dots > 1 - 10 * rtol), dots.min()


# ---------------------------------------------------------------------------- exact merges


@pytest.mark.parametrize("route", ["default", "float32"])
@pytest.mark.parametrize("k_extra", [0, 4], ids=["k=rank", "k>rank"])
def test_merge_of_halves_equals_sequential_fit(
    route: str, k_extra: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that merging models of two halves gives the sequential model of the whole.

    The data have rank 10 after centring, so no model discards variance: counts, mean, var,
    spectrum, components and signs agree (the extra components of k > rank are an arbitrary
    orthonormal completion in both, with ~0 variance). "float32" forces the float32 Gram route
    that large problems take.
    """
    if route == "float32":
        monkeypatch.setattr(kernels_mod, "_FLOAT64_FLOPS", 0)
    r = 10
    X = _low_rank(170, 240, np.geomspace(8, 1, r), seed=1)
    k = r + k_extra
    seq = _fit(X, k, 40)
    a, b = _fit(X[:90], k, 40), _fit(X[90:], k, 40)
    merged = a.merge(b)
    _assert_same_model(merged, seq, r, rtol=1e-5)
    # sklearn's running statistics over the concatenation give the same mean and var.
    ref = IncrementalPCA(k)
    for start in range(0, 170, 40):
        ref.partial_fit(X[start : start + 40])
    np.testing.assert_allclose(merged.mean_, ref.mean_, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(merged.var_, ref.var_, rtol=1e-10, atol=1e-14)
    # The merged model is a normal model: it continues with partial_fit like the original.
    more = _low_rank(60, 240, np.geomspace(8, 1, r), seed=1)[:30]
    seq.partial_fit(more)
    merged.partial_fit(more)
    _assert_same_model(merged, seq, r, rtol=1e-5)


def test_merge_leaves_inputs_unchanged_and_is_deterministic() -> None:
    """Check that merge modifies neither model, shares no memory, and repeats bit for bit."""
    X = _low_rank(120, 90, np.geomspace(5, 1, 6), seed=2, noise=1e-2)
    a, b = _fit(X[:60], 6, 30), _fit(X[60:], 6, 30)
    before = [{key: v.copy() for key, v in m.get_state().items()} for m in (a, b)]
    first, second = a.merge(b), a.merge(b)
    for model, state in zip((a, b), before):
        for key, value in model.get_state().items():
            np.testing.assert_array_equal(value, state[key], err_msg=key)
    for key, value in first.get_state().items():
        np.testing.assert_array_equal(value, second.get_state()[key], err_msg=key)
    for src in (a, b):
        assert not np.shares_memory(first.components_, src.components_)
        assert not np.shares_memory(first.mean_, src.mean_)


def test_merge_float64_fallback_when_ill_conditioned(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that a merge whose kept eigenvalues span 1e-8 recomputes its Gram matrix in float64.

    As partial_fit does (same solver): the float32 route is forced, the spectrum is too wide for
    it, and the merge still equals the sequential fit.
    """
    monkeypatch.setattr(kernels_mod, "_FLOAT64_FLOPS", 0)
    r = 40
    X = _low_rank(240, 200, 30 * np.geomspace(1, 1e-4, r), seed=3)
    seq = _fit(X, r, 60)
    a, b = _fit(X[:120], r, 60), _fit(X[120:], r, 60)
    with caplog.at_level(logging.INFO, logger="stream_cluster.pca.streaming"):
        merged = a.merge(b)
    assert any("float64" in rec.getMessage() for rec in caplog.records)
    np.testing.assert_allclose(merged.explained_variance_, seq.explained_variance_, rtol=1e-4)
    assert _max_angle(merged.components_, seq.components_) < 1e-3


def test_merge_n_components_override() -> None:
    """Check that the default is min(k_a, k_b) and that a larger n_components can be kept."""
    X = _low_rank(200, 80, np.geomspace(6, 1, 12), seed=4)
    a, b = _fit(X[:100], 12, 50), _fit(X[100:], 8, 50)
    assert a.merge(b).n_components_ == 8
    wide = a.merge(b, n_components=12)
    assert wide.n_components_ == 12 and wide.components_.shape == (12, 80)
    assert wide.n_components == 12
    narrow = a.merge(b)
    np.testing.assert_allclose(wide.explained_variance_[:8], narrow.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(
        np.abs(wide.components_[:8] @ narrow.components_.T), np.eye(8), atol=1e-4
    )


def test_merge_of_sklearn_solver_models() -> None:
    """Check that models of the sklearn solver merge into a sklearn-solver model that continues."""
    X = _low_rank(150, 60, np.geomspace(5, 1, 7), seed=5)
    seq = _fit(X, 7, 50, solver="sklearn")
    merged = _fit(X[:100], 7, 50, solver="sklearn").merge(_fit(X[100:], 7, 50, solver="sklearn"))
    assert merged.solver == "sklearn"
    np.testing.assert_allclose(merged.explained_variance_, seq.explained_variance_, rtol=1e-5)
    merged.partial_fit(X[:20])
    seq.partial_fit(X[:20])
    np.testing.assert_allclose(merged.explained_variance_, seq.explained_variance_, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(
    r=st.integers(1, 8),
    k_extra=st.integers(0, 3),
    d=st.integers(10, 70),
    n_a=st.integers(0, 30),
    n_b=st.integers(0, 30),
    b=st.integers(0, 15),
    seed=st.integers(0, 2**16),
)
def test_merge_property_equals_sequential(
    r: int, k_extra: int, d: int, n_a: int, n_b: int, b: int, seed: int
) -> None:
    """Check, over random shapes and splits, that merge equals the sequential fit at rank <= k.

    Also the sign rule: the entry of largest magnitude in each resolvable component is positive.
    """
    k = min(r + k_extra, d)
    r = min(r, k)
    batch = k + b
    n_a, n_b = k + n_a, k + n_b  # each first batch needs k rows
    X = _low_rank(n_a + n_b, d, np.geomspace(4, 1, r), seed=seed)
    seq = _fit(X, k, batch)
    merged = _fit(X[:n_a], k, batch).merge(_fit(X[n_a:], k, batch))
    _assert_same_model(merged, seq, r, rtol=1e-4)
    V = merged.components_[:r]
    assert np.all(V[np.arange(r), np.argmax(np.abs(V), axis=1)] > 0)


# ---------------------------------------------------------------------------- merge_tree


def _level_order(n: int) -> str:
    """The specified tree: pair (0,1), (2,3), ... then the results, an odd one out moving up."""
    level = [str(i) for i in range(n)]
    while len(level) > 1:
        pairs = [f"({level[i]},{level[i + 1]})" for i in range(0, len(level) - 1, 2)]
        level = pairs + ([level[-1]] if len(level) % 2 else [])
    return level[0]


@pytest.mark.parametrize("n", range(1, 18))
def test_reduce_tree_is_the_fixed_pairwise_tree(n: int) -> None:
    """Check that the tree is (0,1),(2,3),... then up, for 1 to 17 leaves."""
    loaded: list[int] = []

    def load(i: int) -> str:
        loaded.append(i)
        return str(i)

    assert reduce_tree(list(range(n)), load, lambda a, b: f"({a},{b})") == _level_order(n)
    assert loaded == list(range(n))  # each leaf loaded once, in order (depth first)


@pytest.mark.parametrize("n_shards", [1, 2, 3, 4, 5])
def test_merge_tree_equals_sequential_fit(n_shards: int) -> None:
    """Check that merging 1-5 shard models (rank <= k) equals the sequential fit."""
    r = 8
    X = _low_rank(250, 150, np.geomspace(6, 1, r), seed=6)
    seq = _fit(X, r, 25)
    merged = merge_tree(_shards(X, n_shards, r, 25))
    _assert_same_model(merged, seq, r, rtol=1e-5)


def test_merge_tree_does_not_depend_on_completion_order() -> None:
    """Check that shards finishing in any order, stored by shard index, merge bit for bit alike.

    And that the tree is the fixed one: merging the same list in another grouping gives a
    (slightly) different rounding, so the fixed tree is what makes the result reproducible.
    """
    X = _low_rank(240, 120, np.geomspace(6, 1, 20), seed=7, noise=0.05)
    bounds = np.linspace(0, 240, 6).astype(int)
    reference = merge_tree(_shards(X, 5, 10, 30))
    rng = np.random.default_rng(0)
    for _ in range(3):
        results: list[StreamingPCA | None] = [None] * 5
        for i in rng.permutation(5):  # "completion order"
            results[i] = _fit(X[bounds[i] : bounds[i + 1]], 10, 30)
        merged = merge_tree([m for m in results if m is not None])
        for key, value in merged.get_state().items():
            np.testing.assert_array_equal(value, reference.get_state()[key], err_msg=key)
    shards = _shards(X, 5, 10, 30)
    other = shards[0].merge(shards[1].merge(shards[2].merge(shards[3].merge(shards[4]))))
    assert not np.array_equal(other.components_, reference.components_)


def test_merge_tree_accepts_states_and_round_trips(tmp_path: Path) -> None:
    """Check that models rebuilt from HDF5 states merge exactly as the originals do."""
    X = _low_rank(200, 100, np.geomspace(6, 1, 15), seed=8, noise=0.02)
    shards = _shards(X, 3, 8, 40)
    direct = merge_tree(shards)
    states = []
    for i, model in enumerate(shards):
        path = tmp_path / f"shard{i}.h5"
        with h5py.File(path, "w") as f:
            for key, value in model.get_state().items():
                f.create_dataset(key, data=value)
        with h5py.File(path, "r") as f:
            states.append({key: f[key][()] for key in f})
    from_states = merge_tree(states)
    rebuilt = [StreamingPCA.from_state(s) for s in states]
    pairwise = rebuilt[0].merge(rebuilt[1]).merge(rebuilt[2])  # the tree for 3 leaves
    for key, value in direct.get_state().items():
        np.testing.assert_array_equal(value, from_states.get_state()[key], err_msg=key)
        np.testing.assert_array_equal(value, pairwise.get_state()[key], err_msg=key)
    single = merge_tree(states[:1])
    np.testing.assert_array_equal(single.components_, shards[0].components_)
    assert not np.shares_memory(merge_tree(shards[:1]).components_, shards[0].components_)


@pytest.mark.parametrize(
    ("rank", "tol"), [(8, 2e-4), (20, 5e-3)], ids=["rank-8-plus-noise", "rank-20-plus-noise"]
)
def test_merge_tree_bounded_loss_when_rank_exceeds_k(rank: int, tol: float) -> None:
    """Check the accuracy when every shard truncates (noise everywhere, k = 12, 2-8 shards).

    Each truncation only removes variance, so every merged eigenvalue is at most the exact
    PCA's; the explained-variance ratio stays within ``tol`` of the sequential fit's (measured:
    losses of 2e-5 to 4e-5 at rank 8 and 1.7e-3 to 2.6e-3 at rank 20 for 2 to 8 shards).
    """
    X = _low_rank(400, 300, np.geomspace(10, 10 / rank, rank), seed=9, noise=0.05)
    k = 12
    seq = _fit(X, k, 50)
    exact = PCA(k, svd_solver="full").fit(X.astype(np.float64))
    for n_shards in (2, 4, 8):
        merged = merge_tree(_shards(X, n_shards, k, 50))
        assert np.all(merged.explained_variance_ <= exact.explained_variance_ * (1 + 1e-6))
        loss = seq.explained_variance_ratio_.sum() - merged.explained_variance_ratio_.sum()
        assert abs(loss) < tol, (n_shards, loss)
        assert _max_angle(merged.components_[:5], exact.components_[:5]) < 0.01


# ---------------------------------------------------------------------------- refusals


def test_merge_refuses_bad_inputs() -> None:
    """Check the messages for unfitted models, other widths, bad n_components and other types."""
    X = _low_rank(40, 30, np.geomspace(3, 1, 4), seed=10)
    fitted = _fit(X, 4, 20)
    with pytest.raises(ValueError, match="this StreamingPCA is not fitted"):
        StreamingPCA(4).merge(fitted)
    with pytest.raises(ValueError, match="the other StreamingPCA is not fitted"):
        fitted.merge(StreamingPCA(4))
    wider = _fit(_low_rank(40, 31, np.geomspace(3, 1, 4), seed=10), 4, 20)
    with pytest.raises(ValueError, match="different numbers of features: 30 and 31"):
        fitted.merge(wider)
    for bad in (0, 10, True, 2.5):
        with pytest.raises(
            ConfigError, match=r"n_components of a merge must be an integer in \[1, 9\]"
        ):
            fitted.merge(fitted, n_components=bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Can only merge a StreamingPCA. Got IncrementalPCA"):
        fitted.merge(IncrementalPCA(4).fit(X))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        merge_tree([])


# ---------------------------------------------------------------------------- benchmark smoke


def test_benchmark_pca_merge_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Check benchmarks/pca_merge.py end to end on a tiny pixel store, and that it resumes.

    Its timed tree must give merge_tree's model bit for bit; exact merges (rank <= k) must report
    the sequential explained variance.
    """
    from benchmarks import pca_merge
    from stream_cluster.storage.store import RowStore

    rng = np.random.default_rng(11)  # uint8 rows of rank 6 after centring, no clipping
    rows = (100 + rng.integers(0, 6, (96, 6)) @ rng.integers(0, 6, (6, 200))).astype(np.uint8)
    store = RowStore(tmp_path / "run" / "pixels", 200, np.uint8)
    store.append(rows[:50], [b"a%d" % i for i in range(50)])
    store.append(rows[50:], [b"b%d" % i for i in range(46)])
    out = tmp_path / "out"
    argv = ["--run", str(tmp_path / "run"), "--out", str(out), "--components", "8"]
    results = pca_merge.main([*argv, "--batch", "12", "--shards", "1,2,3,5"])
    assert results["rows"] == 96 and set(results["shards"]) == {"1", "2", "3", "5"}
    for s, entry in results["shards"].items():
        assert len(entry["merges"]) == int(s) - 1
        assert abs(entry["ev_diff"]) < 1e-6, (s, entry["ev_diff"])  # rank 6 <= k: exact
        assert entry["angle_max_deg"] < 0.1
    assert "| 5 | 19-20 |" in capsys.readouterr().out
    fits = sorted((out / "fits").glob("*.h5"))
    shard_paths = [p for p in fits if "-k8-b12" in p.name and p.name.startswith("rows-")]
    five = [
        out / "fits" / f"rows-{lo}-{hi}-k8-b12.h5"
        for lo, hi in [(0, 19), (19, 38), (38, 57), (57, 76), (76, 96)]
    ]
    assert all(p in shard_paths for p in five)
    timed, _ = pca_merge.timed_tree(five, 8)
    direct = merge_tree([pca_merge.load_model(p) for p in five], n_components=8)
    for key, value in direct.get_state().items():
        np.testing.assert_array_equal(value, timed.get_state()[key], err_msg=key)
    stamps = {p: p.stat().st_mtime_ns for p in fits}
    again = pca_merge.main([*argv, "--batch", "12", "--shards", "1,2,3,5", "--side-by-side", "2"])
    assert {p: p.stat().st_mtime_ns for p in fits} == stamps  # nothing refitted
    assert again["shards"]["5"]["ev_merged"] == results["shards"]["5"]["ev_merged"]
    timing = again["side_by_side"]  # 5 shards of 19-20 rows have all 8 components
    assert timing["merge_rows"] == [19, 19] and len(timing["partial_fit_seconds"]) == 2
    assert timing["median_ratio"] > 0


def test_benchmark_pca_merge_decodes_a_corpus(tmp_path: Path) -> None:
    """Check the --corpus route: images decoded to 300 x 430 into OUT/pixels, then compared."""
    cv2 = pytest.importorskip("cv2")
    from benchmarks import pca_merge

    rng = np.random.default_rng(0)
    for i in range(12):
        img = (rng.random((20, 16)) * 200 + 20 * (i % 3)).astype(np.uint8)
        cv2.imwrite(str(tmp_path / f"img{i:02d}.png"), img)
    out = tmp_path / "out"
    results = pca_merge.main(
        [
            "--corpus",
            str(tmp_path),
            "--out",
            str(out),
            "--components",
            "3",
            "--batch",
            "6",
            "--shards",
            "2",
        ]
    )
    assert results["rows"] == 12 and results["features"] == 300 * 430
    assert (out / "pixels" / "seg-000000.h5").exists()
    entry = results["shards"]["2"]
    assert len(entry["merges"]) == 1 and entry["ev_sequential"] == results["sequential_ev"]
    assert abs(entry["ev_diff"]) < 0.01  # 12 noisy images, k=3: each half truncates
