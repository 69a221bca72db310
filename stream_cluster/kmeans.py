"""k-means stage: elbow sweep and final clustering, in memory when the features fit, else streamed.

Inertia is always computed here, as the sum over *all* images of the squared distance to the
nearest centre (scikit-learn's MiniBatchKMeans reports it for the last batch only, and dask-ml's
is not always squared; see PEERS.md), so the elbow curve is comparable across k and pipelines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus

from .store import RowStore

__all__ = ["FeatureSource", "KMeansResult", "StreamingKMeans", "assign", "fit_kmeans"]

logger = logging.getLogger(__name__)


class FeatureSource:
    """Features held in memory (an array) or read batch by batch from a RowStore."""

    def __init__(self, data: np.ndarray | RowStore, batch_size: int = 4096) -> None:
        self.data = data
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def in_memory(self) -> bool:
        """True when the whole array is in RAM."""
        return isinstance(self.data, np.ndarray)

    def batches(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(offset, rows)`` in order."""
        if isinstance(self.data, np.ndarray):
            for lo in range(0, len(self.data), self.batch_size):
                yield lo, self.data[lo : lo + self.batch_size]
        else:
            yield from self.data.iter_batches(self.batch_size)

    def sample(self, n: int, seed: int) -> np.ndarray:
        """A uniform random sample of ``n`` rows (sorted positions), for initialisation."""
        total = len(self)
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(total, size=min(n, total), replace=False))
        if isinstance(self.data, np.ndarray):
            return self.data[idx]
        return self.data.read_rows(idx.tolist())


@dataclass(frozen=True)
class KMeansResult:
    """Centres, per-image labels and squared distances, and the total inertia over all images."""

    centers: np.ndarray
    labels: np.ndarray
    sq_distances: np.ndarray
    inertia: float


def assign(centers: np.ndarray, source: FeatureSource) -> KMeansResult:
    """Label every image with its nearest centre in one streaming pass.

    Memory: one batch of features plus a ``batch x k`` distance matrix.
    """
    c = centers.astype(np.float64)
    c_sq = np.einsum("ij,ij->i", c, c)
    labels = np.empty(len(source), dtype=np.int32)
    sq = np.empty(len(source), dtype=np.float64)
    for lo, x in source.batches():
        x64 = x.astype(np.float64)
        d2 = np.einsum("ij,ij->i", x64, x64)[:, None] - 2.0 * (x64 @ c.T) + c_sq[None, :]
        lab = np.argmin(d2, axis=1)
        labels[lo : lo + len(x)] = lab
        sq[lo : lo + len(x)] = np.maximum(d2[np.arange(len(x)), lab], 0.0)
    return KMeansResult(centers=centers, labels=labels, sq_distances=sq, inertia=float(sq.sum()))


class StreamingKMeans:
    """MiniBatchKMeans over feature batches with a checkpointable state (no pickle).

    Centres start from k-means++ on a uniform sample of all rows (scikit-learn's partial_fit
    would initialise from the first batch only, which in sorted folder order is one category).
    """

    def __init__(self, n_clusters: int, *, seed: int = 0, batch_size: int = 4096) -> None:
        self.n_clusters = n_clusters
        self.seed = seed
        self.batch_size = batch_size

    def _estimator(self, init: np.ndarray) -> MiniBatchKMeans:
        return MiniBatchKMeans(
            n_clusters=self.n_clusters,
            init=init,
            n_init=1,
            batch_size=self.batch_size,
            random_state=self.seed,
            reassignment_ratio=0.0,
        )

    def init_from(self, sample: np.ndarray) -> StreamingKMeans:
        """Choose initial centres by k-means++ on ``sample``."""
        centers, _ = kmeans_plusplus(
            sample.astype(np.float64), self.n_clusters, random_state=self.seed
        )
        self.init_centers_ = centers
        self.model_ = self._estimator(centers)
        return self

    def partial_fit(self, x: np.ndarray) -> StreamingKMeans:
        """One MiniBatchKMeans step on ``x``."""
        self.model_.partial_fit(x.astype(np.float64))
        return self

    @property
    def cluster_centers_(self) -> np.ndarray:
        """Current centres."""
        centers: np.ndarray = self.model_.cluster_centers_
        return centers

    def get_state(self) -> dict[str, np.ndarray]:
        """Every array needed to continue exactly, including the random generator state."""
        m = self.model_
        state: dict[str, np.ndarray] = {"init_centers": self.init_centers_}
        if hasattr(m, "cluster_centers_"):
            name, keys, pos, has_gauss, cached = m._random_state.get_state()
            state.update(
                centers=m.cluster_centers_,
                counts=m._counts,
                n_since_last_reassign=np.asarray(m._n_since_last_reassign),
                n_steps=np.asarray(m.n_steps_),
                rng_keys=keys,
                rng_pos=np.asarray(pos),
                rng_has_gauss=np.asarray(has_gauss),
                rng_cached=np.asarray(cached),
            )
        return state

    @classmethod
    def from_state(
        cls, state: Mapping[str, np.ndarray], *, seed: int, batch_size: int
    ) -> StreamingKMeans:
        """Rebuild an estimator that continues exactly where :meth:`get_state` was taken."""
        init = np.asarray(state["init_centers"])
        self = cls(init.shape[0], seed=seed, batch_size=batch_size)
        self.init_centers_ = init
        self.model_ = m = self._estimator(init)
        if "centers" in state:
            # Run one throw-away step so scikit-learn sets up its private fields, then overwrite.
            m.partial_fit(init)
            m.cluster_centers_ = np.array(state["centers"], dtype=np.float64)
            m._counts = np.array(state["counts"], dtype=np.float64)
            m._n_since_last_reassign = int(state["n_since_last_reassign"])
            m.n_steps_ = int(state["n_steps"])
            m._random_state.set_state(
                (
                    "MT19937",
                    np.asarray(state["rng_keys"], dtype=np.uint32),
                    int(state["rng_pos"]),
                    int(state["rng_has_gauss"]),
                    float(state["rng_cached"]),
                )
            )
        return self


def fit_kmeans(
    source: FeatureSource,
    k: int,
    *,
    seed: int,
    epochs: int = 5,
    init: np.ndarray | None = None,
) -> KMeansResult:
    """Cluster all features into ``k`` groups and label every image.

    In memory this is scikit-learn's KMeans (Lloyd, k-means++, 3 inits): exact and fast for
    features that fit (8,121 x 800 float32 is 26 MB). Streamed, it is MiniBatchKMeans over
    ``epochs`` passes. Either way the labels and inertia come from :func:`assign` over all rows.
    ``init`` (k x features) warm-starts from given centres (one init), e.g. a run's previous
    centres when it grows.
    """
    if k > len(source):
        raise ValueError(f"k={k} exceeds the number of images ({len(source)})")
    data = source.data
    width = data.shape[1] if isinstance(data, np.ndarray) else data.row_size
    if init is not None and np.shape(init) != (k, width):
        raise ValueError(f"init must have shape ({k}, n_features). Got {np.shape(init)} instead.")
    if source.in_memory:
        x = np.asarray(source.data, dtype=np.float64)
        if init is None:
            model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
        else:
            start = np.asarray(init, dtype=np.float64)
            model = KMeans(n_clusters=k, init=start, n_init=1, random_state=seed).fit(x)
        centers = model.cluster_centers_
    else:
        skm = StreamingKMeans(k, seed=seed, batch_size=source.batch_size)
        if init is None:
            skm.init_from(source.sample(max(20 * k, 2000), seed))
        else:
            skm.init_centers_ = np.asarray(init, dtype=np.float64)
            skm.model_ = skm._estimator(skm.init_centers_)
        for _ in range(epochs):
            for _, x in source.batches():
                skm.partial_fit(x)
        centers = skm.cluster_centers_
    return assign(np.asarray(centers, dtype=np.float64), source)
