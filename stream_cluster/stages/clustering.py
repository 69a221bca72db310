"""Elbow and cluster stages: the inertia curve over a range of k, then the final k-means.

The elbow stage records each k's inertia as soon as it is known, so a resumed sweep skips the
finished ones; the cluster stage saves centres, labels and distances to ``kmeans.h5``.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import silhouette_score

from stream_cluster.memory.budget import MemoryPlan
from stream_cluster.model.choose_k import find_knee
from stream_cluster.model.density import fit_hdbscan
from stream_cluster.model.kmeans import FeatureSource, KMeansResult, fit_kmeans
from stream_cluster.stages.base import Progress, StageRecord
from stream_cluster.storage.checkpoint import load_arrays, save_arrays
from stream_cluster.storage.store import RowStore

__all__ = ["Elbow", "cluster", "elbow", "feature_source", "load_kmeans", "position_source"]

logger = logging.getLogger(__name__)


def feature_source(features: RowStore, plan: MemoryPlan) -> FeatureSource:
    """The features as k-means reads them, as the plan says: loaded for each exact fit, held
    in memory, or streamed in batches (MiniBatchKMeans) when an exact fit would not fit."""
    if plan.kmeans_mode == "array":
        return FeatureSource(features.read(0, len(features)), batch_size=plan.kmeans_batch)
    return FeatureSource(
        features, batch_size=plan.kmeans_batch, fit_in_memory=plan.kmeans_mode == "load"
    )


def position_source(positions: np.ndarray) -> FeatureSource:
    """Every image's position in the learned space, as k-means reads them (in memory: two
    float64 per image, 1.6 MB for 100,000 images)."""
    return FeatureSource(np.ascontiguousarray(positions, dtype=np.float64))


#: Rows of the fixed, seeded sample the silhouette of each k is measured on.
SILHOUETTE_SAMPLE = 2000


@dataclass(frozen=True)
class Elbow:
    """Inertia per k of the sweep, the k at the knee (None without one), silhouette per k."""

    inertias: dict[int, float]
    knee: int | None
    method: str = ""
    silhouettes: dict[int, float] = field(default_factory=dict)


def _sample_rows(source: FeatureSource, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions of a seeded uniform sample of ``n`` rows, and those rows (one pass)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(source), size=min(n, len(source)), replace=False))
    if isinstance(source.data, np.ndarray):
        return idx, np.asarray(source.data[idx], dtype=np.float32)
    rows = []
    for lo, x in source.batches():
        pick = idx[(idx >= lo) & (idx < lo + len(x))]
        rows.append(np.asarray(x[pick - lo], dtype=np.float32))
    return idx, np.concatenate(rows)


def _silhouette(x: np.ndarray, labels: np.ndarray) -> float | None:
    """Mean silhouette of the sample ``x`` under ``labels``; None if it has a single cluster."""
    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= len(x) - 1:
        return None
    return float(silhouette_score(x, labels))


def elbow(
    record: StageRecord,
    source: FeatureSource,
    *,
    enabled: bool,
    k_range: tuple[int, int],
    seed: int,
    key: dict[str, object],
    pick: str = "knee",
) -> Generator[Progress, None, Elbow]:
    """The elbow stage: fit k-means for every k in ``k_range`` and pick a k.

    ``pick="knee"`` picks the knee of the inertia curve; ``"silhouette"`` the k of the best
    silhouette (in a learned 2-D space the knee undershoots: digits' 10 classes give a knee at
    8 and the best silhouette at 10, benchmarks/RESULTS_quality.md).

    Each k also gets the silhouette of a fixed seeded sample of at most
    :data:`SILHOUETTE_SAMPLE` rows, recorded with its inertia so a resumed sweep keeps both.

    Memory: one k-means fit at a time (see ``stage_bytes.kmeans_stage_bytes``), plus the sample
    (``4 * 2000 * n_components`` bytes: 6.4 MB for 800) and the silhouette's 2,000 x 2,000
    float64 distances (32 MB).
    """
    if not enabled:
        return Elbow({}, None)
    lo, hi = k_range
    ks = list(range(lo, min(hi, len(source) - 1) + 1))
    if record.get("key") != key:
        record.update(key=key, inertias={}, silhouettes={}, done=False)
    inertias = {int(k): float(v) for k, v in record.get("inertias", {}).items()}
    if len(ks) < 3:
        logger.warning("only %d values of k fit %d images; no elbow sweep", len(ks), len(source))
        return Elbow(inertias, None)
    scores: dict[int, float | None] = {
        int(k): v for k, v in record.get("silhouettes", {}).items()
    }
    if not record.done:
        yield Progress("elbow", len(inertias), len(ks), "k")
        idx, sample = _sample_rows(source, SILHOUETTE_SAMPLE, seed)
        for k in ks:
            if k in inertias:
                continue
            km = fit_kmeans(source, k, seed=seed)
            inertias[k] = km.inertia
            scores[k] = _silhouette(sample, km.labels[idx])
            record.update(inertias={str(a): v for a, v in inertias.items()},
                          silhouettes={str(a): v for a, v in scores.items()})
            yield Progress("elbow", len(inertias), len(ks), "k", f"k={k}")
        del sample
        record.update(done=True)
    knee = find_knee(ks, [inertias[k] for k in ks])
    kept = {k: float(v) for k, v in scores.items() if v is not None}
    if pick == "silhouette" and kept:
        best = max(kept, key=lambda a: (kept[a], -a))  # ties: the smaller k
        return Elbow(inertias, best, "silhouette", kept)
    return Elbow(inertias, knee.k, knee.method, kept)


def load_kmeans(path: Path) -> KMeansResult:
    """The k-means result a finished cluster stage saved."""
    arrays, meta = load_arrays(path, required=("centers", "labels", "sq_distances"))
    return KMeansResult(
        arrays["centers"], arrays["labels"], arrays["sq_distances"], float(meta["inertia"])
    )


def cluster(
    record: StageRecord,
    source: FeatureSource,
    k: int,
    *,
    seed: int,
    key: dict[str, object],
    out_dir: Path,
    init: np.ndarray | None = None,
    method: str = "kmeans",
) -> Generator[Progress, None, KMeansResult]:
    """The cluster stage: k-means with ``k`` clusters over all features, saved to kmeans.h5.

    ``init`` warm-starts from given centres (a growing run's previous ones). ``method=
    "hdbscan"`` groups the (2-D) features with HDBSCAN instead and ignores ``k``; its noise is
    the last group (the record's ``noise``).
    """
    path = out_dir / "kmeans.h5"
    key = {**key, "k_used": k if method == "kmeans" else None}
    if record.done and record.get("key") == key and path.exists():
        return load_kmeans(path)
    yield Progress("cluster", 0, 1, "k", f"k={k}" if method == "kmeans" else "HDBSCAN")
    noise = None
    if method == "hdbscan":
        km, noise = fit_hdbscan(np.asarray(source.data))
        k = len(km.centers)
    else:
        km = fit_kmeans(source, k, seed=seed, init=init)
    save_arrays(
        path,
        {"centers": km.centers, "labels": km.labels, "sq_distances": km.sq_distances},
        {"k": k, "inertia": km.inertia, "seed": seed, "noise": noise},
    )
    record.update(key=key, done=True, k=k, inertia=km.inertia, noise=noise)
    yield Progress("cluster", 1, 1, "k", f"k={k}")
    return km
