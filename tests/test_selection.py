"""Tests for stream_cluster.model.choose_k: knee finding on inertia curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_cluster.errors import ConfigError
from stream_cluster.model.choose_k import KneeResult, chord_distances, find_knee


def _kinked(ks: np.ndarray, knee: int) -> np.ndarray:
    """Return a/k + c for k <= knee and a slow straight decline after it (a sharp elbow)."""
    steep = 1000.0 / ks + 50.0
    at_knee = 1000.0 / knee + 50.0
    slow = at_knee - 2.0 * (ks - knee)
    return np.where(ks <= knee, steep, slow)


def test_find_knee_kinked_analytic_curve() -> None:
    """Check that the elbow of a/k + c followed by a slow linear tail is found at the kink."""
    ks = np.arange(1, 16)
    result = find_knee(list(ks), list(_kinked(ks, 5)))
    assert result.k is not None
    assert abs(result.k - 5) <= 1
    assert result.method in {"kneedle", "max-chord-distance"}
    assert set(result.scores) == set(int(k) for k in ks)


def test_find_knee_kmeans_on_separated_blobs() -> None:
    """Check that the inertia curve of k-means on 4 well-separated blobs gives k = 4."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import make_blobs

    x, _ = make_blobs(
        n_samples=400, centers=4, cluster_std=0.5, center_box=(-10, 10), random_state=0
    )
    ks = list(range(1, 11))
    inertias = [KMeans(k, n_init=3, random_state=0).fit(x).inertia_ for k in ks]
    result = find_knee(ks, inertias)
    assert result.k == 4


@pytest.mark.parametrize(
    ("ks", "inertias"),
    [
        ([1, 2, 3, 4, 5], [50.0, 40.0, 30.0, 20.0, 10.0]),
        ([2, 4, 8, 16], [16.0, 14.0, 10.0, 2.0]),
        ([3, 4, 5], [7.0, 7.0, 7.0]),
        ([1, 2, 3, 4, 5, 6], [1.0, 2.0, 3.0, 5.0, 4.0, 6.0]),
        ([1, 2, 3, 4, 5, 6], [100.0, 99.0, 97.0, 90.0, 70.0, 10.0]),
    ],
    ids=["straight-line", "straight-line-uneven-ks", "flat", "increasing", "concave"],
)
def test_find_knee_no_knee_returns_none(ks: list[int], inertias: list[float]) -> None:
    """Check that curves without a convex elbow give k=None with a stated reason."""
    result = find_knee(ks, inertias)
    assert result.k is None
    assert result.method == "none"
    assert result.reason


def test_find_knee_noisy_straight_line_returns_none() -> None:
    """Check that a straight line with mild noise is not mistaken for an elbow."""
    rng = np.random.default_rng(1)
    ks = np.arange(2, 22)
    for _ in range(20):
        inertias = 1000.0 - 20.0 * ks + rng.normal(0.0, 2.0, ks.size)
        assert find_knee(list(ks), list(inertias)).k is None


@pytest.mark.parametrize("seed", range(10))
def test_find_knee_noisy_monotone_curve_near_kink(seed: int) -> None:
    """Check that a noisy but monotone kinked curve still gives k within 1 of the kink."""
    rng = np.random.default_rng(seed)
    ks = np.arange(2, 21)
    clean = _kinked(ks, 7)
    noisy = clean * (1.0 + rng.normal(0.0, 0.01, ks.size))
    noisy = np.minimum.accumulate(noisy)  # keep it monotone, as a full-data inertia is
    result = find_knee(list(ks), list(noisy))
    assert result.k is not None
    assert abs(result.k - 7) <= 1


def test_find_knee_overrides_early_kneedle_bump() -> None:
    """Check that an early noisy bump picked by kneedle loses to a clearly better elbow."""
    ks = list(range(1, 11))
    inertias = [1.0, 0.7, 0.72, 0.1, 0.08, 0.06, 0.045, 0.03, 0.015, 0.0]
    result = find_knee(ks, inertias)
    assert result.k == 4
    assert result.method == "max-chord-distance"
    assert "kneedle" in result.reason


def test_find_knee_higher_sensitivity_is_more_conservative() -> None:
    """Check that a gentle curve has a knee at sensitivity 1 but none at sensitivity 5."""
    ks = list(range(2, 21))
    inertias = [math.exp(-k / 10) for k in ks]
    assert find_knee(ks, inertias).k is not None
    assert find_knee(ks, inertias, sensitivity=5.0).k is None


def test_chord_distances_straight_line_is_zero() -> None:
    """Check that every point of a straight line has chord distance 0."""
    scores = chord_distances([1, 2, 3, 4], [8.0, 6.0, 4.0, 2.0])
    assert scores == pytest.approx({1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}, abs=1e-12)


@pytest.mark.parametrize(
    ("ks", "inertias", "sensitivity", "match"),
    [
        ([1, 2, 3], [3.0, 2.0], 1.0, r"same length\. Got 3 ks and 2 inertias"),
        ([1, 2], [2.0, 1.0], 1.0, r"at least 3 points.*Got 2"),
        ([1, 3, 2], [3.0, 2.0, 1.0], 1.0, r"strictly increasing\. Got 2 after 3"),
        ([1, 2, 2], [3.0, 2.0, 1.0], 1.0, r"strictly increasing\. Got 2 after 2"),
        ([1, 2.5, 3], [3.0, 2.0, 1.0], 1.0, r"integers\. Got 2\.5"),
        ([1, 2, 3], [3.0, float("nan"), 1.0], 1.0, r"finite.*Got nan for k=2"),
        ([1, 2, 3], [3.0, 2.0, float("inf")], 1.0, r"finite.*Got inf for k=3"),
        ([1, 2, 3], [3.0, "2", 1.0], 1.0, r"finite.*Got '2' for k=2"),
        ([1, 2, 3], [3.0, 2.0, 1.0], 0.0, r"sensitivity.*Got 0\.0"),
    ],
    ids=[
        "length-mismatch", "too-few", "not-increasing", "duplicate-k", "float-k",
        "nan-inertia", "inf-inertia", "string-inertia", "zero-sensitivity",
    ],
)
def test_find_knee_rejects_bad_input(
    ks: list[object], inertias: list[object], sensitivity: float, match: str
) -> None:
    """Check that bad curves raise ConfigError naming what was received."""
    with pytest.raises(ConfigError, match=match):
        find_knee(ks, inertias, sensitivity=sensitivity)  # type: ignore[arg-type]


def test_find_knee_accepts_numpy_scalars() -> None:
    """Check that numpy integer ks and float32 inertias work and k comes back a Python int."""
    ks = np.arange(1, 16, dtype=np.int64)
    inertias = _kinked(ks, 5).astype(np.float32)
    result = find_knee(list(ks), list(inertias))
    assert type(result.k) is int
    assert all(type(k) is int for k in result.scores)


@st.composite
def _curves(draw: st.DrawFn) -> tuple[list[int], list[float]]:
    n = draw(st.integers(min_value=3, max_value=25))
    steps = draw(st.lists(st.integers(1, 5), min_size=n - 1, max_size=n - 1))
    start = draw(st.integers(1, 10))
    ks = [start]
    for s in steps:
        ks.append(ks[-1] + s)
    inertias = draw(
        st.lists(
            st.floats(min_value=0.0, max_value=1e9, allow_nan=False, allow_infinity=False),
            min_size=n, max_size=n,
        )
    )
    return ks, inertias


@settings(max_examples=200, deadline=None)
@given(curve=_curves(), sensitivity=st.floats(min_value=0.1, max_value=5.0))
def test_find_knee_k_is_one_of_ks_or_none(
    curve: tuple[list[int], list[float]], sensitivity: float
) -> None:
    """Check that for any valid curve the chosen k is one of ks or None, never an error."""
    ks, inertias = curve
    result = find_knee(ks, inertias, sensitivity=sensitivity)
    assert isinstance(result, KneeResult)
    assert result.k is None or result.k in ks
    assert result.method in {"kneedle", "max-chord-distance", "none"}
    assert all(math.isfinite(v) for v in result.scores.values())


@settings(max_examples=100, deadline=None)
@given(curve=_curves(), exponent=st.integers(min_value=-8, max_value=8))
def test_find_knee_invariant_to_scaling(
    curve: tuple[list[int], list[float]], exponent: int
) -> None:
    """Check that multiplying all inertias by a power of two does not change the chosen k."""
    ks, inertias = curve
    scaled = [y * 2.0**exponent for y in inertias]
    assert find_knee(ks, scaled).k == find_knee(ks, inertias).k
