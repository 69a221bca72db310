"""Stage functions called on their own, as the runner calls them, with their own records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_cluster.config import RunConfig
from stream_cluster.errors import CheckpointMismatchError
from stream_cluster.model.kmeans import FeatureSource
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.runner.runfolder import check_settings
from stream_cluster.stages.base import Progress, StageRecord, same_key
from stream_cluster.stages.clustering import elbow
from stream_cluster.stages.embed import embed, feature_store
from stream_cluster.stages.fit_pca import RowsFeed, fit_pca, kept_components
from stream_cluster.stages.ingest import run_ingest
from stream_cluster.storage.checkpoint import RunState
from stream_cluster.storage.store import RowStore

from .conftest import make_shapes_corpus

W, H = 12, 10


def _drain(gen):  # type: ignore[no-untyped-def]
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


@pytest.fixture
def stored(tmp_path: Path) -> tuple[RunState, RowStore, Path]:
    root = tmp_path / "img"
    make_shapes_corpus(root, n=45)
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))
    state = RunState(tmp_path / "state.json")
    pixels = RowStore(tmp_path / "pixels", W * H, np.uint8)
    events, skipped = _drain(run_ingest(StageRecord(state, "ingest"), root, files, pixels,
                                        width=W, height=H, workers=0, segment_rows=16,
                                        memory_cap=2**28))
    assert skipped == [] and len(pixels) == 45 and state.stage("ingest")["done"]
    assert all(isinstance(e, Progress) for e in events)
    return state, pixels, tmp_path


def _fit(state: RunState, pixels: RowStore, out: Path, seconds: float = 0.0, stop_after: int = 0):  # type: ignore[no-untyped-def]
    gen = fit_pca(StageRecord(state, "pca"), pixels, RowsFeed(pixels), out_dir=out,
                  key={"n_components": 6, "pca_solver": "gram"}, n_components=6, solver="gram",
                  batch=10, expected_rows=len(pixels), variance=None, checkpoint_seconds=seconds,
                  check_rows=lambda n: None)
    if stop_after:
        for ev in gen:
            if ev.done >= stop_after:
                gen.close()
                return None
    return _drain(gen)[1]


def test_fit_pca_resumes_from_its_checkpoint(stored: tuple[RunState, RowStore, Path]) -> None:
    """Check that a PCA stage stopped after 20 rows resumes to the uninterrupted model."""
    state, pixels, out = stored
    whole = out / "whole"
    whole.mkdir()
    expect = _fit(RunState(whole / "state.json"), pixels, whole)
    _fit(state, pixels, out, stop_after=20)
    assert state.stage("pca")["cursor"] == 20 and not state.stage("pca")["done"]
    model = _fit(state, pixels, out)
    assert isinstance(model, StreamingPCA)
    np.testing.assert_array_equal(model.components_, expect.components_)
    assert (out / "pca.h5").exists() and not (out / "pca-checkpoint.h5").exists()


def test_embed_done_never_loads_the_model(stored: tuple[RunState, RowStore, Path]) -> None:
    """Check that a finished embed stage returns its store without loading the PCA."""
    state, pixels, out = stored
    model = _fit(state, pixels, out)
    features = feature_store(out, 4)
    record = StageRecord(state, "embed")
    _drain(embed(record, pixels, features, lambda: model, pca_key="k", batch=16))
    assert record.done and len(features) == len(pixels) and features.n_segments == 3

    def boom() -> StreamingPCA:
        raise AssertionError("the model was loaded")

    events, again = _drain(embed(record, pixels, features, boom, pca_key="k", batch=16))
    assert events == [] and len(again) == len(pixels)


def test_elbow_resumes_per_k(tmp_path: Path) -> None:
    """Check that the elbow stage keeps finished k values and computes only the missing ones."""
    x = np.random.default_rng(0).normal(size=(60, 3))
    state = RunState(tmp_path / "state.json")
    record = StageRecord(state, "elbow")
    key = {"k_range": [2, 6], "seed": 0, "variance": None}
    record.update(key=key, inertias={"2": 123.0})
    events, curve = _drain(elbow(record, FeatureSource(x), enabled=True, k_range=(2, 6), seed=0,
                                 key=key))
    assert curve.inertias[2] == 123.0 and sorted(curve.inertias) == [2, 3, 4, 5, 6]
    assert [e.message for e in events[1:]] == ["k=3", "k=4", "k=5", "k=6"]


def test_kept_components_reaches_the_target() -> None:
    """Check that --variance keeps the fewest leading components reaching it, else all."""
    evr = np.array([0.5, 0.3, 0.1, 0.05])
    assert kept_components(evr, 0.8) == 2
    assert kept_components(evr, None) == 4
    assert kept_components(evr, 0.99) == 4


def test_same_key_ignores_settings_no_longer_counted(tmp_path: Path) -> None:
    """Check that a PCA recorded with --seed (older versions) still matches; other changes not."""
    assert same_key({"n_components": 8, "pca_solver": "gram", "seed": 3},
                    {"n_components": 8, "pca_solver": "gram"})
    assert not same_key({"n_components": 8}, {"n_components": 8, "pca_solver": "gram"})
    assert not same_key(None, {"n_components": 8})
    cfg = RunConfig(tmp_path, tmp_path / "out", n_components=8, width=4, height=4, seed=5)
    state = RunState(tmp_path / "state.json")
    state.update("pca", key={"n_components": 8, "pca_solver": "gram", "seed": 0})
    check_settings(state, cfg)  # a seed change reruns only k-means: no refusal
    state.update("pca", key={"n_components": 9, "pca_solver": "gram", "seed": 0})
    with pytest.raises(CheckpointMismatchError, match="--fresh"):
        check_settings(state, cfg)
