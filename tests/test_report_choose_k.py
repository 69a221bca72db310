"""The second criterion for choosing k: the elbow stage's silhouette per k, kept on resume."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import silhouette_score

from stream_cluster.model.kmeans import FeatureSource, fit_kmeans
from stream_cluster.stages.base import Progress, StageRecord
from stream_cluster.stages.clustering import SILHOUETTE_SAMPLE, Elbow, elbow
from stream_cluster.storage.checkpoint import RunState
from stream_cluster.storage.store import RowStore

KEY = {"k_range": [2, 6], "seed": 0, "variance": None}


def _drain(gen: Generator[Progress, None, Any]) -> tuple[list[Progress], Any]:
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def _blobs(n: int = 90) -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 8, (4, 5))
    return (centres[np.arange(n) % 4] + rng.normal(0, 1, (n, 5))).astype(np.float32)


def test_elbow_records_silhouette_per_k(tmp_path: Path) -> None:
    """Check that each k gets the silhouette of its labels, recorded beside its inertia."""
    x = _blobs()
    record = StageRecord(RunState(tmp_path / "state.json"), "elbow")
    _, curve = _drain(elbow(record, FeatureSource(x), enabled=True, k_range=(2, 6), seed=0,
                            key=KEY))
    assert isinstance(curve, Elbow) and sorted(curve.silhouettes) == [2, 3, 4, 5, 6]
    # all 90 rows are the sample (< SILHOUETTE_SAMPLE): the exact silhouette of the labels
    assert len(x) < SILHOUETTE_SAMPLE
    want = silhouette_score(x, fit_kmeans(FeatureSource(x), 4, seed=0).labels)
    assert curve.silhouettes[4] == float(want)
    assert max(curve.silhouettes, key=curve.silhouettes.__getitem__) == 4  # four blobs
    saved = RunState(tmp_path / "state.json").stage("elbow")["silhouettes"]
    assert {int(k): v for k, v in saved.items()} == curve.silhouettes


def test_elbow_resume_keeps_silhouettes(tmp_path: Path) -> None:
    """Check that a resumed sweep keeps recorded silhouettes and computes only missing k."""
    x = _blobs()
    record = StageRecord(RunState(tmp_path / "state.json"), "elbow")
    record.update(key=KEY, inertias={"2": 123.0}, silhouettes={"2": 0.5})
    events, curve = _drain(elbow(record, FeatureSource(x), enabled=True, k_range=(2, 6), seed=0,
                                 key=KEY))
    assert [e.message for e in events[1:]] == ["k=3", "k=4", "k=5", "k=6"]
    assert curve.silhouettes[2] == 0.5 and len(curve.silhouettes) == 5
    _, again = _drain(elbow(record, FeatureSource(x), enabled=True, k_range=(2, 6), seed=0,
                            key=KEY))
    assert again.silhouettes == curve.silhouettes  # done: nothing recomputed


def test_elbow_silhouette_same_from_memory_or_store(tmp_path: Path) -> None:
    """Check that the streamed sample equals the in-memory one (same seeded rows)."""
    x = _blobs(150)
    store = RowStore(tmp_path / "f", 5, np.float32)
    for lo in range(0, 150, 40):
        store.append(x[lo : lo + 40], [b"r"] * len(x[lo : lo + 40]))
    curves = []
    for i, source in enumerate([FeatureSource(x), FeatureSource(store, batch_size=32)]):
        record = StageRecord(RunState(tmp_path / f"state{i}.json"), "elbow")
        _, curve = _drain(elbow(record, source, enabled=True, k_range=(2, 4), seed=1, key=KEY))
        curves.append(curve)
    assert sorted(curves[0].silhouettes) == sorted(curves[1].silhouettes) == [2, 3, 4]
    for k in (2, 3, 4):
        assert -1.0 <= curves[1].silhouettes[k] <= 1.0
