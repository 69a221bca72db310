"""The memory plan of a --features run: the PCA and the embed read the float32 descriptors/
store (the extractor's width), while the ingest and the report keep the pixels' width."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_cluster import RunConfig
from stream_cluster.errors import BudgetError
from stream_cluster.images.features import HogFeatures
from stream_cluster.memory.budget import plan_memory
from stream_cluster.memory.planner import plan, with_features
from stream_cluster.memory.stage_bytes import (
    embed_stage_bytes,
    pca_stage_bytes,
    report_stage_bytes,
    resident_bytes,
)

from .test_features import _conv_model

#: The seed workload's shape: 300x430 grey, 800 components, k=10, 8,121 images.
SEED = dict(width=300, height=430, n_components=800, k=10, workers=2)
N_SEED = 8121


def _seed_config(
    tmp_path: Path, features: str, budget: int = 2 * 2**30, **over: object
) -> RunConfig:
    cfg = RunConfig(tmp_path, tmp_path / "o", mem_budget=budget, features=features,
                    **{**SEED, **over})  # type: ignore[arg-type]  # fmt: skip
    return with_features(cfg)[0]


def test_plan_hog_pca_and_embed_use_hog_width(tmp_path: Path) -> None:
    """Check that the PCA and embed of a HOG run are modelled on HOG's 6,336 float32 values per
    image, below the 129,000-pixel figures, while the ingest and the report keep the pixels."""
    hog = _seed_config(tmp_path, "hog")
    dim = HogFeatures().dim(300, 430)
    assert hog.pca_dim == dim == 6336
    got = plan(hog, N_SEED)
    k, b = 800, got.pca_batch
    assert got.stage_bytes["pca"] == pca_stage_bytes(k, b, dim, "gram", True, 4)
    assert got.stage_bytes["pca"] < pca_stage_bytes(k, b, 300 * 430, "gram", True, 1)
    resident = resident_bytes(N_SEED)
    assert got.stage_bytes["embed"] == embed_stage_bytes(k, b, dim, True, resident, 4)
    assert got.stage_bytes["embed"] < embed_stage_bytes(k, b, 300 * 430, True, resident, 1)
    # The ingest and the report hold the pixels as before.
    pixels = plan(_seed_config(tmp_path, "pixels"), N_SEED)
    assert got.stage_bytes["ingest"] == pixels.stage_bytes["ingest"]
    assert got.stage_bytes["report"] == pixels.stage_bytes["report"]
    assert got.stage_bytes["pca"] < pixels.stage_bytes["pca"]


@pytest.mark.parametrize("features", ["hog", "onnx"])
def test_plan_without_with_features_is_the_same_plan(tmp_path: Path, features: str) -> None:
    """Check that plan() given a config that skipped with_features plans what the run will
    need: the extractor's reserve and width included, as if with_features had been called."""
    if features == "onnx":
        features = f"onnx:{_conv_model(tmp_path / 'm.onnx')}"
    raw = RunConfig(tmp_path, tmp_path / "o", mem_budget=2 * 2**30, features=features,
                    **SEED)  # type: ignore[arg-type]  # fmt: skip
    assert "features_bytes" not in raw.extra
    checked = with_features(raw)[0]
    assert int(checked.extra["features_bytes"]) > 0
    assert plan(raw, N_SEED) == plan(checked, N_SEED)


def test_plan_hog_decodes_before_the_pca(tmp_path: Path) -> None:
    """Check that the seed's HOG run at --mem-budget 2G decodes first and then fits the PCA
    (overlap only added memory and wall time there: decoding is the long stage), within the
    budget and with the same PCA batch as the pixels' plan."""
    hog = _seed_config(tmp_path, "hog")
    got = plan(hog, N_SEED)
    assert not got.overlap and got.workers == 2
    assert "ingest+pca" not in got.stage_bytes
    assert got.peak_bytes <= got.budget * 0.9
    assert plan(_seed_config(tmp_path, "pixels"), N_SEED).pca_batch == got.pca_batch


def _smallest_budget(ok: object) -> int:
    """Smallest budget (to 1 MiB) for which ``ok(budget)`` holds, by bisection."""
    lo, hi = 64 * 2**20, 64 * 2**30
    while hi - lo > 2**20:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)  # type: ignore[operator]
    return hi


def _accepts(cfg: RunConfig) -> bool:
    try:
        plan(cfg, N_SEED)
    except BudgetError:
        return False
    return True


def test_plan_hog_accepts_a_budget_the_pixel_width_model_refused(tmp_path: Path) -> None:
    """Check that the smallest budget the HOG model accepts for the seed workload was refused
    by the model that read the PCA's rows as 129,000 pixels, and that the plan there fits."""
    base = _seed_config(tmp_path, "hog")

    def hog_ok(budget: int) -> bool:
        return _accepts(_seed_config(tmp_path, "hog", budget))

    budget = _smallest_budget(hog_ok)
    cfg = _seed_config(tmp_path, "hog", budget)
    reserve = int(cfg.extra["features_bytes"])
    assert reserve == int(base.extra["features_bytes"])
    with pytest.raises(BudgetError, match="too small"):  # the old model: the PCA over pixels
        plan_memory(budget - reserve, n_images=N_SEED, width=300, height=430, n_components=800,
                    workers=2, max_k=10, kmeans_from_store=True, space=True)  # fmt: skip
    got = plan(cfg, N_SEED)
    assert got.peak_bytes <= (budget - reserve) * 0.9
    assert not _accepts(_seed_config(tmp_path, "hog", budget - 2**20))


def test_plan_onnx_pca_uses_the_model_output_width(tmp_path: Path) -> None:
    """Check that an ONNX run's PCA and embed are modelled on the model's output width (8
    values, known once with_features has run the model), not on the pixels."""
    model = _conv_model(tmp_path / "m.onnx")
    cfg = RunConfig(tmp_path, tmp_path / "o", width=48, height=48, n_components=8, k=3,
                    workers=1, features=f"onnx:{model}")  # fmt: skip
    cfg = with_features(cfg)[0]
    assert cfg.pca_dim == 8
    got = plan(cfg, 1000)
    assert got.stage_bytes["pca"] == pca_stage_bytes(8, got.pca_batch, 8, "gram", True, 4)


def test_plan_hog_budget_advice_counts_the_reserve(tmp_path: Path) -> None:
    """Check that a budget refused for a HOG run is named as given (not less the extractor's
    reserve) and that following the advised budgets reaches a plan."""
    import re

    from stream_cluster.config import format_bytes, parse_mem

    budget, advised = 300 * 2**20, []
    for _ in range(4):
        cfg = _seed_config(tmp_path, "hog", budget, workers=None)  # as many as fit
        try:
            plan(cfg, N_SEED)
            break
        except BudgetError as exc:
            msg = str(exc)
        assert f"--mem-budget {format_bytes(budget)} is too small" in msg
        m = re.search(r"--mem-budget (\d+(?:\.\d+)?[MG]) or more", msg)
        assert m and parse_mem(m.group(1)) > budget, msg
        budget = parse_mem(m.group(1))
        advised.append(budget)
    else:
        pytest.fail(f"no plan after following the advice {advised}")
    assert advised and "6,336 feature values each" not in msg


@settings(max_examples=150, deadline=None)
@given(
    budget=st.integers(256 * 2**20, 16 * 2**30),
    size=st.tuples(st.integers(16, 600), st.integers(16, 600)),
    dim=st.integers(1, 200_000),
    k=st.integers(1, 1000),
    reserved=st.integers(0, 256 * 2**20),
)
def test_plan_with_features_never_exceeds_budget(
    budget: int, size: tuple[int, int], dim: int, k: int, reserved: int
) -> None:
    """Check that a plan over --features rows fits the budget less the reserve, with its PCA
    and embed on the feature width and its report on the pixels, or is refused."""
    w, h = size
    if k > dim:
        return
    try:
        got = plan_memory(budget, n_images=20_000, width=w, height=h, n_components=k,
                          features_dim=dim, reserved=reserved, space=True)  # fmt: skip
    except BudgetError:
        return
    assert got.budget == budget - reserved
    assert got.peak_bytes <= (budget - reserved) * 0.9
    assert got.stage_bytes["pca"] == pca_stage_bytes(k, got.pca_batch, dim, "gram", True, 4)
    assert got.stage_bytes["report"] == report_stage_bytes(20_000, 20, w * h)
