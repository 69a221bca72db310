"""Tests for the memory planner: it never plans past the budget, and its advice works."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_cluster.config import parse_mem
from stream_cluster.errors import BudgetError
from stream_cluster.images.decode import DECODE_MEMORY_CAP
from stream_cluster.memory.budget import plan_memory
from stream_cluster.memory.stage_bytes import (
    MIN_KMEANS_BATCH,
    PARENT_BASE_BYTES,
    SAFETY,
    kmeans_stage_bytes,
)
from stream_cluster.model.kmeans import ASSIGN_BATCH, kmeans_memory_bytes

dims = st.tuples(st.integers(8, 600), st.integers(8, 600))


@settings(max_examples=200, deadline=None)
@given(
    budget=st.integers(64 * 2**20, 32 * 2**30),
    size=dims,
    k=st.integers(1, 1000),
    n_images=st.integers(1000, 200_000),
    cap=st.one_of(st.just(DECODE_MEMORY_CAP), st.integers(1, DECODE_MEMORY_CAP)),
)
def test_plan_never_exceeds_budget(budget: int, size: tuple[int, int], k: int,
                                   n_images: int, cap: int) -> None:
    """Check that every stage of any plan fits the budget, or the planner refuses.

    A smaller decode cap never changes the PCA batch (the result depends on it) and never
    costs a worker; decoding overlaps the PCA only with every planned worker.
    """
    w, h = size
    if k > w * h:
        return
    try:
        plan = plan_memory(
            budget, n_images=n_images, width=w, height=h, n_components=k, decode_cap=cap
        )
    except BudgetError:
        return
    assert plan.peak_bytes <= budget * SAFETY
    assert plan.pca_batch >= k
    assert plan.workers >= 0 and plan.segment_rows >= 1
    assert plan.decode_cap == cap
    try:
        worst = plan_memory(budget, n_images=n_images, width=w, height=h, n_components=k)
    except BudgetError:
        return
    assert worst.pca_batch == plan.pca_batch
    assert plan.workers >= worst.workers
    assert not plan.overlap or (plan.workers >= 1 and "ingest+pca" in plan.stage_bytes)


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(64 * 2**20, 3 * 2**30), size=dims, k=st.integers(1, 1000))
def test_budget_error_advice_works(budget: int, size: tuple[int, int], k: int) -> None:
    """Check that the budget, components and size suggested by a BudgetError each make a plan."""
    w, h = size
    if k > w * h:
        return
    try:
        plan_memory(budget, n_images=10_000, width=w, height=h, n_components=k)
        return
    except BudgetError as exc:
        msg = str(exc)
    m = re.search(r"--mem-budget (\d+(?:\.\d+)?[MG])\b", msg)
    if m and "too small for" in msg:
        plan_memory(parse_mem(m.group(1)), n_images=10_000, width=w, height=h, n_components=k)
    m = re.search(r"--components (\d+)", msg)
    if m:
        plan_memory(budget, n_images=10_000, width=w, height=h, n_components=int(m.group(1)))
    m = re.search(r"--size (\d+)x(\d+)", msg)
    if m:
        plan_memory(budget, n_images=10_000, width=int(m.group(1)), height=int(m.group(2)),
                    n_components=k)


def test_plan_seed_workload_fits_2g() -> None:
    """Check that the seed workload (800 components, 300x430) plans under 2 GiB."""
    plan = plan_memory(2 * 2**30, n_images=8121, width=300, height=430, n_components=800)
    assert plan.pca_batch >= 800
    assert plan.peak_bytes <= 2 * 2**30 * SAFETY


def test_plan_seed_workload_overlaps_at_2g_with_folder_sized_workers() -> None:
    """Check that workers sized to small PNGs (~17 MiB) let decoding overlap the PCA at 2 GiB.

    The worst-case worker (any image up to the 256 MiB decode cap) does not fit beside the PCA
    at 2 GiB; the PCA batch must be the same either way.
    """
    worst = plan_memory(2 * 2**30, n_images=8121, width=300, height=430, n_components=800)
    sized = plan_memory(
        2 * 2**30, n_images=8121, width=300, height=430, n_components=800,
        decode_cap=17 * 2**20,
    )
    assert not worst.overlap
    assert sized.overlap and sized.workers >= 1
    assert sized.pca_batch == worst.pca_batch
    assert sized.peak_bytes <= 2 * 2**30 * SAFETY


def test_plan_too_small_names_minimum() -> None:
    """Check that 512M for the seed workload fails and names a budget that works."""
    with pytest.raises(BudgetError, match=r"too small for 800 PCA components.*--mem-budget \d"):
        plan_memory(512 * 2**20, n_images=8121, width=300, height=430, n_components=800)


def test_plan_explicit_batch_below_components_refused() -> None:
    """Check that --batch-size below --components is refused with both numbers."""
    with pytest.raises(BudgetError, match=r"--batch-size must be >= --components \(50\)"):
        plan_memory(4 * 2**30, n_images=1000, width=30, height=30, n_components=50, batch_size=20)


# ---------------------------------------------------------------------------- k-means stage


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 3_000_000),
    d=st.integers(1, 2000),
    k=st.integers(1, 64),
    b=st.integers(1, 8192),
    mode=st.sampled_from(["array", "load", "stream"]),
)
def test_kmeans_memory_bytes_monotone(n: int, d: int, k: int, b: int, mode: str) -> None:
    """Check that the k-means model never shrinks with more rows, features, clusters or batch,
    and that the modes order as their memory does (array >= load; stream the least when it
    applies to a batch no larger than the in-memory one)."""
    m = kmeans_memory_bytes(n, d, k, mode, b)  # type: ignore[arg-type]
    for bn, bd, bk, bb in ((n + 1, d, k, b), (n, d + 1, k, b), (n, d, k + 1, b), (n, d, k, b + 1)):
        assert kmeans_memory_bytes(bn, bd, bk, mode, bb) >= m  # type: ignore[arg-type]
    assert kmeans_memory_bytes(n, d, k, "array", b) >= kmeans_memory_bytes(n, d, k, "load", b)


@settings(max_examples=150, deadline=None)
@given(
    budget=st.integers(300 * 2**20, 32 * 2**30),
    n_images=st.integers(1000, 3_000_000),
    k=st.integers(1, 1000),
    max_k=st.integers(2, 64),
    from_store=st.booleans(),
)
def test_plan_kmeans_stage_matches_its_source(
    budget: int, n_images: int, k: int, max_k: int, from_store: bool
) -> None:
    """Check that the plan's k-means stage is the model of the source it tells the caller to
    build (mode, batch, max_k), fits the budget, and is exact k-means whenever that fits."""
    try:
        plan = plan_memory(
            budget, n_images=n_images, width=40, height=30, n_components=k, max_k=max_k,
            kmeans_from_store=from_store,
        )
    except BudgetError:
        return
    in_memory_mode = "load" if from_store else "array"
    assert plan.kmeans_mode in (in_memory_mode, "stream")
    assert plan.features_in_memory == (plan.kmeans_mode != "stream")
    assert plan.stage_bytes["kmeans"] == kmeans_stage_bytes(
        n_images, k, max_k, plan.kmeans_mode, plan.kmeans_batch  # type: ignore[arg-type]
    )
    assert plan.stage_bytes["kmeans"] <= budget * SAFETY
    exact = kmeans_stage_bytes(n_images, k, max_k, in_memory_mode, ASSIGN_BATCH)  # type: ignore[arg-type]
    assert plan.features_in_memory == (exact <= budget * SAFETY)
    if not plan.features_in_memory:
        assert MIN_KMEANS_BATCH <= plan.kmeans_batch <= max(plan.embed_batch, 1024)


def test_plan_kmeans_models_float64_copies_at_100k() -> None:
    """Check that 100,000 x 800 features at 2G plan exact k-means with the copies counted.

    Measured above the interpreter (tests/test_kmeans_memory.py, benchmarks/kmeans_memory.py):
    1,526 MiB from a float32 array, 1,221 MiB loaded from the store; the old model said 1.18 GiB
    for the whole stage where the run reached 2.25 GiB.
    """
    kw = dict(n_images=100_000, width=300, height=430, n_components=800)
    # The pipeline's source (loaded from the store) is exact at 2G, with the process the PCA
    # leaves behind counted (RESIDENT_AFTER_PCA_BYTES); a float32 array of the features is not.
    at_2g = plan_memory(2 * 2**30, **kw, kmeans_from_store=True)  # type: ignore[arg-type]
    assert at_2g.kmeans_mode == "load"
    assert plan_memory(2 * 2**30, **kw).kmeans_mode == "stream"  # type: ignore[arg-type]
    array = plan_memory(3 * 2**30, **kw)  # type: ignore[arg-type]
    load = plan_memory(3 * 2**30, **kw, kmeans_from_store=True)  # type: ignore[arg-type]
    assert array.kmeans_mode == "array" and load.kmeans_mode == "load"
    n, d = 100_000, 800
    assert array.stage_bytes["kmeans"] - PARENT_BASE_BYTES >= 20 * n * d
    assert load.stage_bytes["kmeans"] - PARENT_BASE_BYTES >= 16 * n * d
    assert array.stage_bytes["kmeans"] - load.stage_bytes["kmeans"] == 4 * n * d


def test_plan_kmeans_streams_when_features_do_not_fit() -> None:
    """Check that a million images at 2G stream k-means in the pipeline's batch, within budget,
    and that a budget too small even for streaming names one that works."""
    kw = dict(width=300, height=430, n_components=800)
    plan = plan_memory(2 * 2**30, n_images=1_000_000, **kw)  # type: ignore[arg-type]
    assert not plan.features_in_memory and plan.kmeans_mode == "stream"
    assert plan.kmeans_batch == max(plan.embed_batch, 1024)
    assert plan.stage_bytes["kmeans"] <= 2 * 2**30 * SAFETY
    with pytest.raises(BudgetError, match=r"too small to cluster 300,000,000 images") as exc:
        plan_memory(2 * 2**30, n_images=300_000_000, **kw)  # type: ignore[arg-type]
    m = re.search(r"--mem-budget (\d+(?:\.\d+)?[MG]) or more", str(exc.value))
    assert m
    plan = plan_memory(parse_mem(m.group(1)), n_images=300_000_000, **kw)  # type: ignore[arg-type]
    assert not plan.features_in_memory
