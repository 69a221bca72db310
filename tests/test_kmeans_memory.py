"""The k-means memory model against peaks measured in a fresh interpreter.

Each case runs :func:`~stream_cluster.model.kmeans.fit_kmeans` in a child process (see
``benchmarks/kmeans_memory.py``) and compares the kernel's RSS high-water mark, reset after the
imports, with the planner's model of the "kmeans" stage minus its interpreter baseline.
"""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from benchmarks.kmeans_memory import make_features, measure, write_store
from stream_cluster.memory.stage_bytes import kmeans_stage_bytes, resident_bytes
from stream_cluster.model.kmeans import (
    _SLACK,
    ASSIGN_BATCH,
    FeatureSource,
    Mode,
    fit_kmeans,
    kmeans_memory_bytes,
)
from stream_cluster.storage.store import RowStore

MiB = 2**20
#: The model may exceed the measured peak by at most 2x plus this much (it stays useful).
MODEL_HEADROOM = 16 * MiB

MODES = ["array", "load", "stream"]
SHAPES = [  # n, d, k, slow
    (5_000, 64, 20, False),
    (20_000, 200, 20, False),
    (60_000, 128, 20, True),
    (60_000, 200, 10, True),
]
#: Streamed batches of 1,024 rows (the pipeline's least), and one wide case where the batch,
#: not the allowance for threads and the allocator, dominates the streamed peak.
CASES = [
    pytest.param(
        n, d, k, mode, 1024 if mode == "stream" else ASSIGN_BATCH,
        marks=[pytest.mark.slow] if slow else [], id=f"{n // 1000}k x {d}-{mode}",
    )
    for n, d, k, slow in SHAPES
    for mode in MODES
] + [pytest.param(20_000, 800, 20, "stream", 4096, marks=pytest.mark.slow, id="20k x 800-stream")]


class _Stores(dict[tuple[int, int], Path]):
    """Float32 feature stores by ``(n, d)``, written on first use."""

    def __init__(self, factory: pytest.TempPathFactory) -> None:
        super().__init__()
        self.factory = factory

    def __missing__(self, key: tuple[int, int]) -> Path:
        path = self.factory.mktemp(f"features-{key[0]}-{key[1]}")
        write_store(path, *key)
        self[key] = path
        return path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> _Stores:
    """Feature stores shared by the module's cases."""
    return _Stores(tmp_path_factory)


def _model(n: int, d: int, k: int, mode: Mode, batch: int) -> int:
    return kmeans_stage_bytes(n, d, k, mode, batch) - resident_bytes(n)


@pytest.mark.parametrize(("n", "d", "k", "mode", "batch"), CASES)
def test_kmeans_memory_model_bounds_measured_peak(
    stores: _Stores, n: int, d: int, k: int, mode: Mode, batch: int
) -> None:
    """Check that the planner's k-means model never underestimates the measured peak RSS.

    And that it is at most twice the measured peak plus 16 MiB, so the planner does not
    stream features that would fit.
    """
    got = measure(mode, n, d, k, batch, stores[n, d])
    measured = int(got["peak"])  # type: ignore[call-overload]
    model = _model(n, d, k, mode, batch)
    assert measured <= model, (measured / MiB, model / MiB)
    assert model <= 2 * measured + MODEL_HEADROOM, (measured / MiB, model / MiB)


@pytest.mark.parametrize("mode", MODES)
def test_fit_kmeans_elbow_sweep_keeps_no_arrays(tmp_path: Path, mode: Mode) -> None:
    """Check that an elbow sweep on one source keeps nothing between fits and that the arrays
    it allocates (traced by tracemalloc, which sees numpy's data buffers) fit the model's array
    terms alone, without its allowance for threads and the allocator."""
    n, d, max_k, batch = 6_000, 32, 8, 2048
    write_store(tmp_path, n, d)
    store = RowStore(tmp_path, d, np.float32)
    source = (
        FeatureSource(make_features(n, d), batch)
        if mode == "array"
        else FeatureSource(store, batch, fit_in_memory=mode == "load")
    )
    fit_kmeans(source, 2, seed=0)  # first-call imports and caches are not the sweep's
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for k in range(2, max_k + 1):
            fit_kmeans(source, k, seed=0)
        gc.collect()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 12 * n, "a fit's labels and distances outlived it"
    assert peak - before <= kmeans_memory_bytes(n, d, max_k, mode, batch) - _SLACK - (
        4 * n * d if mode == "array" else 0  # the array was allocated before tracing
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_fit_kmeans_elbow_sweep_rss_follows_k(tmp_path: Path, mode: Mode) -> None:
    """Check that an elbow sweep k = 2..20 then back down to 2 peaks within the model at
    max_k, and that RSS comes back down with k: keeping each fit's labels and distances
    would add 12 n bytes per fit, and RSS after the descent is less than half that above RSS
    at the top."""
    n, d, max_k = 20_000, 16, 20
    ks = [*range(2, max_k + 1), *range(max_k, 1, -1)]
    batch = 4096
    write_store(tmp_path, n, d)
    got = measure(mode, n, d, ks, batch, tmp_path)
    after = [int(a) for a in got["rss_after_each"]]  # type: ignore[attr-defined]
    assert len(after) == len(ks)
    assert int(got["peak"]) <= _model(n, d, max_k, mode, batch)  # type: ignore[call-overload]
    top = ks.index(max_k)
    growth = after[-1] - after[top]
    kept = 12 * n * (len(ks) - 1 - top)
    assert growth < kept / 2, (growth / MiB, kept / MiB)
