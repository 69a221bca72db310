"""k-means stage: elbow sweep and final clustering, in memory when the features fit, else streamed.

Inertia is always computed here, as the sum over *all* images of the squared distance to the
nearest centre (scikit-learn's MiniBatchKMeans reports it for the last batch only, and dask-ml's
is not always squared; see PEERS.md), so the elbow curve is comparable across k and pipelines.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans, kmeans_plusplus

from stream_cluster.storage.store import RowStore

__all__ = [
    "ASSIGN_BATCH",
    "FeatureSource",
    "KMeansResult",
    "StreamingKMeans",
    "assign",
    "fit_kmeans",
    "init_sample_rows",
    "kmeans_memory_bytes",
]

logger = logging.getLogger(__name__)

#: Rows per :func:`assign` batch when the features are clustered in memory. The in-memory
#: labels are computed in batches of exactly this size, so changing it may change labels.
ASSIGN_BATCH = 4096

Mode = Literal["array", "load", "stream"]


class FeatureSource:
    """Features held in memory (an array) or read batch by batch from a RowStore.

    Parameters
    ----------
    data : ndarray or RowStore
        The features, one row per image.
    batch_size : int, default=4096
        Rows per batch for :func:`assign` and the streamed fit.
    fit_in_memory : bool, optional
        Whether :func:`fit_kmeans` runs exact k-means on all rows at once. Default: True for an
        array, False for a store. True with a store loads the rows as float64 for each fit and
        frees them after (``8 n d`` bytes during a fit, nothing between fits), the cheapest
        exact path: an array source also holds its own ``4 n d`` bytes throughout.
    """

    def __init__(
        self,
        data: np.ndarray | RowStore,
        batch_size: int = ASSIGN_BATCH,
        *,
        fit_in_memory: bool | None = None,
    ) -> None:
        self.data = data
        self.batch_size = int(batch_size)
        is_array = isinstance(data, np.ndarray)
        if is_array and fit_in_memory is not None and not fit_in_memory:
            raise ValueError("fit_in_memory must be True (or None) for an array source. Got False.")
        self.fit_in_memory = is_array if fit_in_memory is None else bool(fit_in_memory)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def in_memory(self) -> bool:
        """True when :func:`fit_kmeans` clusters all rows at once (exact k-means)."""
        return self.fit_in_memory

    @property
    def mode(self) -> Mode:
        """``"array"``, ``"load"`` (a store loaded for each fit) or ``"stream"``."""
        if isinstance(self.data, np.ndarray):
            return "array"
        return "load" if self.fit_in_memory else "stream"

    def batches(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(offset, rows)`` in order."""
        if isinstance(self.data, np.ndarray):
            for lo in range(0, len(self.data), self.batch_size):
                yield lo, self.data[lo : lo + self.batch_size]
        else:
            yield from self.data.iter_batches(self.batch_size)

    def load_float64(self) -> np.ndarray:
        """All rows as a new C-ordered float64 array that the caller may modify.

        Memory: ``8 n d`` bytes, plus one ``batch_size`` float32 read buffer for a store.
        """
        if isinstance(self.data, np.ndarray):
            return np.array(self.data, dtype=np.float64, order="C", copy=True)
        store = self.data
        out = np.empty((len(store), store.row_size), dtype=np.float64)
        buf = np.empty((min(self.batch_size, len(store)), store.row_size), dtype=store.dtype)
        for lo in range(0, len(store), self.batch_size):
            rows = store.read(lo, lo + self.batch_size, out=buf)
            out[lo : lo + len(rows)] = rows
        return out

    def sample(self, n: int, seed: int) -> np.ndarray:
        """A uniform random sample of ``n`` rows (sorted positions), for initialisation.

        A store is read in ``batch_size`` windows that hold sampled rows (one pass at most,
        never row by row). Memory: the sample, one window and the sampler's ``8 n`` bytes.
        """
        total = len(self)
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(total, size=min(n, total), replace=False))
        if isinstance(self.data, np.ndarray):
            return self.data[idx]
        store = self.data
        out = np.empty((len(idx), store.row_size), dtype=store.dtype)
        pos = 0
        while pos < len(idx):
            lo = int(idx[pos])
            stop = int(np.searchsorted(idx, lo + self.batch_size))
            window = store.read(lo, lo + self.batch_size)
            out[pos:stop] = window[idx[pos:stop] - lo]
            pos = stop
        return out


@dataclass(frozen=True)
class KMeansResult:
    """Centres, per-image labels and squared distances, and the total inertia over all images."""

    centers: np.ndarray
    labels: np.ndarray
    sq_distances: np.ndarray
    inertia: float


def assign(centers: np.ndarray, source: FeatureSource) -> KMeansResult:
    """Label every image with its nearest centre in one streaming pass.

    Memory: the labels and squared distances of all rows (``12 n`` bytes), plus per batch of
    ``b`` rows the float32 rows, their float64 copy and three ``b x k`` distance arrays.
    """
    c = centers.astype(np.float64)
    c_sq = np.einsum("ij,ij->i", c, c)
    labels = np.empty(len(source), dtype=np.int32)
    sq = np.empty(len(source), dtype=np.float64)
    for lo, x in source.batches():
        _assign_batch(x, c, c_sq, labels[lo : lo + len(x)], sq[lo : lo + len(x)])
    return KMeansResult(centers=centers, labels=labels, sq_distances=sq, inertia=float(sq.sum()))


def _assign_batch(
    x: np.ndarray, c: np.ndarray, c_sq: np.ndarray, labels: np.ndarray, sq: np.ndarray
) -> None:
    # A function of its own so that one batch's float64 copy and distance matrix are freed
    # before the next batch is read.
    x64 = x.astype(np.float64)
    d2 = np.einsum("ij,ij->i", x64, x64)[:, None] - 2.0 * (x64 @ c.T) + c_sq[None, :]
    del x64
    lab = np.argmin(d2, axis=1)
    labels[:] = lab
    sq[:] = np.maximum(d2[np.arange(len(lab)), lab], 0.0)


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
            # Labels of each step's batch are never read (assign labels every row at the end);
            # skipping them saves one distance pass per step and leaves the centres unchanged.
            compute_labels=False,
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
    centres when it grows. Nothing is kept between calls, so an elbow sweep peaks at its
    largest ``k``.

    Memory: :func:`kmeans_memory_bytes` (validated against measured peaks in
    tests/test_kmeans_memory.py).
    """
    if k > len(source):
        raise ValueError(f"k={k} exceeds the number of images ({len(source)})")
    data = source.data
    width = data.shape[1] if isinstance(data, np.ndarray) else data.row_size
    if init is not None and np.shape(init) != (k, width):
        raise ValueError(f"init must have shape ({k}, n_features). Got {np.shape(init)} instead.")
    if source.in_memory:
        centers = _fit_in_memory(source, k, seed, init)
    else:
        skm = StreamingKMeans(k, seed=seed, batch_size=source.batch_size)
        if init is None:
            skm.init_from(source.sample(init_sample_rows(k), seed))
        else:
            skm.init_centers_ = np.asarray(init, dtype=np.float64)
            skm.model_ = skm._estimator(skm.init_centers_)
        for _ in range(epochs):
            for _, x in source.batches():
                skm.partial_fit(x)
        centers = skm.cluster_centers_
        del skm
    return assign(np.asarray(centers, dtype=np.float64), source)


def _fit_in_memory(
    source: FeatureSource, k: int, seed: int, init: np.ndarray | None = None
) -> np.ndarray:
    # A private float64 copy, so scikit-learn may centre it in place (copy_x=False) instead of
    # copying it again; the values, and so the centres, are those of KMeans(copy_x=True) on
    # the same float64 data. The copy and the estimator's labels are freed on return, before
    # assign runs.
    x = source.load_float64()
    if init is None:
        model = KMeans(n_clusters=k, n_init=3, random_state=seed, copy_x=False).fit(x)
    else:
        start = np.asarray(init, dtype=np.float64)
        model = KMeans(n_clusters=k, init=start, n_init=1, random_state=seed, copy_x=False)
        model.fit(x)
    centers: np.ndarray = model.cluster_centers_
    return centers


def init_sample_rows(k: int) -> int:
    """Rows sampled for the k-means++ start of the streamed fit."""
    return max(20 * k, 2000)


def kmeans_memory_bytes(
    n_samples: int, n_features: int, n_clusters: int, mode: Mode, batch_size: int = ASSIGN_BATCH
) -> int:
    """Peak bytes :func:`fit_kmeans` holds beyond the interpreter baseline, for any ``k`` up to
    ``n_clusters``.

    Includes the features an ``"array"`` source holds (float32) and the returned labels and
    distances, so a planner can compare it directly with a budget.

    Parameters
    ----------
    n_samples, n_features : int
        ``n`` rows of ``d`` features.
    n_clusters : int
        The largest ``k`` that will be fitted.
    mode : {"array", "load", "stream"}
        As :attr:`FeatureSource.mode`.
    batch_size : int, default=ASSIGN_BATCH
        As :attr:`FeatureSource.batch_size`.

    Returns
    -------
    int
    """
    n, d, k = int(n_samples), int(n_features), int(n_clusters)
    b = min(int(batch_size), n)
    slack = _SLACK
    # k-means++ tries 2 + ln k candidates per centre: the previous and the new candidate
    # distance matrices and the GEMM result are live at once, plus two cumulative-sum arrays.
    trials = 2 + int(math.log(max(k, 1)))
    kpp_row = 24 * trials + 16
    # assign: labels (int32) and squared distances of every row, then per batch the rows being
    # read, the float32 rows, their float64 copy, three b x k float64 arrays and five b-vectors.
    assign_bytes = 12 * n + b * (4 * d + 4 * d + 8 * d + 24 * k + 40)
    if mode in ("array", "load"):
        # KMeans: the float64 copy, a second n x d float64 temporary (np.var in scikit-learn's
        # tolerance), then sample weights, norms, labels (current, old, best) and k-means++.
        fit = 16 * n * d + n * (28 + kpp_row) + _per_thread(k, d)
        load = 8 * n * d + (4 * b * d if mode == "load" else 0)  # a store is read in batches
        peak = max(load, fit, assign_bytes)
        return peak + (4 * n * d if mode == "array" else 0) + slack
    if mode != "stream":
        raise ValueError(f"mode must be 'array', 'load' or 'stream'. Got {mode!r} instead.")
    s = min(n, init_sample_rows(k))
    # k-means++ on the sample: the sampler's n positions (a permutation when the sample is over
    # 2% of n) and one store window while the float32 sample fills, then its float64 copy.
    init = 8 * n + 8 * s + max(4 * b * d + 4 * b + 4 * s * d, 12 * s * d + s * (kpp_row + 16))
    # one partial_fit: the previous batch, the batch read, its float64 copy and (first call)
    # the np.var temporary, sample weights, norms and labels.
    train = 4 * b * d + 4 * b * d + 8 * b * d + 8 * b * d + 32 * b + _per_thread(k, d)
    return max(init, train, assign_bytes) + slack


def _per_thread(k: int, d: int) -> int:
    # Lloyd's per-thread partial centres and a 256-row distance chunk, for up to 8 threads.
    return 8 * (8 * k * d + 8 * k + 256 * 8 * k)


#: OpenMP/BLAS thread buffers, HDF5 reads and allocator slack: the measured peak exceeded the
#: sum of the arrays by at most 6 MiB (elbow sweeps, 1 to 8 threads; see test_kmeans_memory).
_SLACK = 16 * 2**20
