"""Tests for the memory planner: it never plans past the budget, and its advice works."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_cluster.budget import SAFETY, plan_memory
from stream_cluster.config import parse_mem
from stream_cluster.decode import DECODE_MEMORY_CAP
from stream_cluster.errors import BudgetError

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
