"""Elbow and cluster stages: the inertia curve over a range of k, then the final k-means.

The elbow stage records each k's inertia as soon as it is known, so a resumed sweep skips the
finished ones; the cluster stage saves centres, labels and distances to ``kmeans.h5``.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .budget import MemoryPlan
from .checkpoint import load_arrays, save_arrays
from .kmeans import FeatureSource, KMeansResult, fit_kmeans
from .selection import find_knee
from .stage import Progress, StageRecord
from .store import RowStore

__all__ = ["Elbow", "cluster", "elbow", "feature_source", "load_kmeans"]

logger = logging.getLogger(__name__)


def feature_source(features: RowStore, plan: MemoryPlan) -> FeatureSource:
    """The features as k-means reads them, as the plan says: loaded for each exact fit, held
    in memory, or streamed in batches (MiniBatchKMeans) when an exact fit would not fit."""
    if plan.kmeans_mode == "array":
        return FeatureSource(features.read(0, len(features)), batch_size=plan.kmeans_batch)
    return FeatureSource(
        features, batch_size=plan.kmeans_batch, fit_in_memory=plan.kmeans_mode == "load"
    )


@dataclass(frozen=True)
class Elbow:
    """Inertia per k of the sweep, and the k at the knee (None without one)."""

    inertias: dict[int, float]
    knee: int | None
    method: str = ""


def elbow(
    record: StageRecord,
    source: FeatureSource,
    *,
    enabled: bool,
    k_range: tuple[int, int],
    seed: int,
    key: dict[str, object],
) -> Generator[Progress, None, Elbow]:
    """The elbow stage: fit k-means for every k in ``k_range`` and find the knee.

    Memory: one k-means fit at a time (see ``budget._kmeans_bytes``).
    """
    if not enabled:
        return Elbow({}, None)
    lo, hi = k_range
    ks = list(range(lo, min(hi, len(source) - 1) + 1))
    if record.get("key") != key:
        record.update(key=key, inertias={}, done=False)
    inertias = {int(k): float(v) for k, v in record.get("inertias", {}).items()}
    if len(ks) < 3:
        logger.warning("only %d values of k fit %d images; no elbow sweep", len(ks), len(source))
        return Elbow(inertias, None)
    if not record.done:
        yield Progress("elbow", len(inertias), len(ks), "k")
        for k in ks:
            if k in inertias:
                continue
            inertias[k] = fit_kmeans(source, k, seed=seed).inertia
            record.update(inertias={str(a): v for a, v in inertias.items()})
            yield Progress("elbow", len(inertias), len(ks), "k", f"k={k}")
        record.update(done=True)
    knee = find_knee(ks, [inertias[k] for k in ks])
    return Elbow(inertias, knee.k, knee.method)


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
) -> Generator[Progress, None, KMeansResult]:
    """The cluster stage: k-means with ``k`` clusters over all features, saved to kmeans.h5.

    ``init`` warm-starts from given centres (a growing run's previous ones).
    """
    path = out_dir / "kmeans.h5"
    key = {**key, "k_used": k}
    if record.done and record.get("key") == key and path.exists():
        return load_kmeans(path)
    yield Progress("cluster", 0, 1, "k", f"k={k}")
    km = fit_kmeans(source, k, seed=seed, init=init)
    save_arrays(
        path,
        {"centers": km.centers, "labels": km.labels, "sq_distances": km.sq_distances},
        {"k": k, "inertia": km.inertia, "seed": seed},
    )
    record.update(key=key, done=True, k=k, inertia=km.inertia)
    yield Progress("cluster", 1, 1, "k", f"k={k}")
    return km
