"""Incremental PCA with scikit-learn's results, updated through the small Gram matrix."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import scipy.linalg
from sklearn.decomposition import IncrementalPCA

from stream_cluster.errors import ConfigError, StoreError

__all__ = ["StreamingPCA", "pca_memory_bytes"]

logger = logging.getLogger(__name__)

_SOLVERS = ("gram", "sklearn")
# Column width of the slices the running mean/variance is computed on; bounds its float64
# temporary to 8 * batch * 1024 bytes per thread.
_STATS_COLUMNS = 1024
# Threads the running mean/variance runs on, one column slice each (numpy releases the GIL;
# each column's arithmetic is unchanged, so the results stay bitwise sklearn's). The update is
# memory-bound; on 2 cores two threads took a batch at the seed size from 8.15 to 7.44 s
# (median of 3, k=800, b=1131).
_STATS_THREADS = max(1, min(4, os.cpu_count() or 1))
# The precise (float64) paths work on a quarter of a column block so that their float64
# copies take no more memory than the float32 buffers of the fast path.
_PRECISE_DIVISOR = 4
# Eigenvalues below this fraction of the largest are not trusted from a Gram matrix summed by
# float32 GEMMs (measured: components lose orthonormality beyond ~1e-5 below it); the batch's
# Gram matrix is then recomputed in float64 and those components are projected in float64.
_FAST_RTOL = 2e-5
# Updates with m^2 d below this many flops (the Gram matrix of the m-row stack) run in float64
# throughout: under ~0.05 s, and exact to float32 rounding at any eigenvalue ratio.
_FLOAT64_FLOPS = 2e9
# Below this fraction even the float64 Gram matrix cannot resolve a direction (its eigenvalue
# error is ~ m * eps64 * largest): such components are replaced by an orthonormal completion,
# as sklearn's SVD returns arbitrary orthonormal rows for (numerically) zero singular values.
_EXACT_RTOL = 1e-10
# Arrays and scalars that define a fitted estimator (the sklearn attribute names).
_LEARNED = (
    "components_",
    "singular_values_",
    "mean_",
    "var_",
    "n_samples_seen_",
    "explained_variance_",
    "explained_variance_ratio_",
    "noise_variance_",
    "n_components_",
    "n_features_in_",
)
_F32 = np.float32
_F64 = np.float64


class StreamingPCA:
    """Incremental PCA whose ``partial_fit`` equals scikit-learn's ``IncrementalPCA``.

    Each update stacks the previous components scaled by their singular values, the centred
    batch and sklearn's mean-correction row, exactly as ``IncrementalPCA.partial_fit`` does, but
    instead of a full SVD of that ``(k + b + 1) x d`` stack it eigendecomposes its small Gram
    matrix ``G = S S^T`` (float64) and forms the new components as ``diag(1/sigma) U_k^T S``,
    one column block at a time, overwriting the old components in place. The stack is never
    held whole. Running mean/variance, explained variance (ratio), singular values, noise
    variance and the sign convention (``svd_flip(u_based_decision=False)``) are sklearn's.

    Parameters
    ----------
    n_components : int
        Number of components ``k``. The first batch must hold at least ``k`` rows.
    solver : {"gram", "sklearn"}, default="gram"
        ``"gram"`` is the update described above; ``"sklearn"`` wraps
        ``sklearn.decomposition.IncrementalPCA`` (the reference; measured 11-15x slower and
        8x the memory at 800 components, batch 1000, 129,000 features).
    copy : bool, default=True
        If False, ``partial_fit`` centres a float32 C-contiguous writeable batch in place (the
        caller's array is overwritten), saving ``4 * b * d`` bytes; other batches are still
        converted into a new float32 array.
    block_columns : int, default=8192
        Width of the column blocks the update and ``transform`` work on. Larger blocks make
        slightly faster GEMMs and cost ``4 * (2k + b) * block_columns`` bytes of buffers.

    Attributes
    ----------
    components_ : ndarray of shape (k, d), float32
        Principal axes, rows orthonormal, signs as sklearn's.
    mean_, var_ : ndarray of shape (d,), float64
        Running per-feature mean and variance of all samples seen.
    singular_values_, explained_variance_, explained_variance_ratio_ : ndarray of shape (k,)
    noise_variance_ : float
    n_samples_seen_, n_components_, n_features_in_ : int

    Notes
    -----
    Memory: the model (``4kd + 16d`` bytes), the batch, its copy unless ``copy=False``, and
    buffers of ``O((k + b) * block_columns + (k + b)^2)`` bytes; see :func:`pca_memory_bytes`.
    Time per batch: ``d (b^2 + 4kb + 2k^2)`` flops in float32 GEMMs (Gram blocks ``b^2 d``
    (syrk) and ``2kbd``; projection ``2k^2 d + 2kbd``) plus one eigh of the
    ``(k + b + 1)``-square Gram matrix (0.85 s at k=800, b=1131 on two threads). The
    old-components block ``V V^T`` is taken as the identity on the float32 route: the rows of V
    are orthonormal to float32 rounding (1.5e-7 at the seed size), and against the float64
    route the explained variance agrees to 2e-7 whether it is computed or assumed (measured on 4
    seed batches); the float64 route computes it. Measured at k=800, b=1131, d=129,000 on 2
    cores: 6-7 s per batch (SGEMM at ~184 GFLOP/s, GEMM bound 4.3 s) versus 73 s for sklearn
    at b=1000. Flops per image are smallest at ``b = sqrt(2) k``; with the eigh included,
    b = 1000-1200 is fastest for k = 800.

    Precision: the Gram route squares the condition number. Updates whose Gram matrix costs
    under 2e9 flops run in float64 throughout (narrow float32 Gram matrices lose
    orthonormality at eigenvalue ratios of 1e-4; wide ones average the rounding out). If a kept
    eigenvalue is below ``2e-5`` of the largest, the batch's Gram matrix is recomputed with
    float64 GEMMs (one more pass over the batch) and those components are projected in float64;
    a first batch keeping at least half its rows goes to float64 directly. Eigenvalues below
    ``1e-10`` of the largest (rank-deficient stacks) get an arbitrary orthonormal completion, as
    sklearn's SVD does for zero singular values (their explained variance stays the Gram
    estimate, ~0). On the clipart corpus with k=800 only the first batch takes the float64
    route; later batches (ratio ~2e-4) stay on the float32 path, and the results differ from
    sklearn run in float64 by about as much as sklearn run in float32 does (explained variance
    1e-6 to 1e-5 relative).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> pca = StreamingPCA(3, block_columns=16)
    >>> for start in range(0, 60, 20):
    ...     _ = pca.partial_fit(rng.random((20, 40), dtype=np.float32))
    >>> pca.transform(rng.random((5, 40), dtype=np.float32)).shape
    (5, 3)
    """

    # Learned attributes exist only after the first partial_fit (hasattr marks fitted).
    components_: np.ndarray
    singular_values_: np.ndarray
    mean_: np.ndarray
    var_: np.ndarray
    explained_variance_: np.ndarray
    explained_variance_ratio_: np.ndarray
    noise_variance_: float
    n_samples_seen_: int
    n_components_: int
    n_features_in_: int
    _ipca: IncrementalPCA

    def __init__(
        self,
        n_components: int,
        *,
        solver: str = "gram",
        copy: bool = True,
        block_columns: int = 8192,
    ) -> None:
        self.n_components = n_components
        self.solver = solver
        self.copy = copy
        self.block_columns = block_columns

    # ------------------------------------------------------------------ public API

    def partial_fit(self, X: np.ndarray) -> StreamingPCA:
        """Update the model with one batch ``X`` of shape (b, d), float32 scaled to 0..1.

        Parameters
        ----------
        X : ndarray of shape (b, d)
            The batch. The first call needs ``b >= n_components``; later calls accept any
            ``b >= 1``. Other dtypes are converted to float32 (a copy).

        Returns
        -------
        self : StreamingPCA

        Raises
        ------
        ConfigError
            If a constructor parameter is invalid.
        ValueError
            If ``X`` has the wrong shape, too few rows for the first call, or NaN/inf values.
            The model is then unchanged (with ``copy=False`` the batch may have been centred).
        """
        self._check_params()
        if self.solver == "sklearn":
            ipca = getattr(self, "_ipca", None)
            if ipca is None:
                ipca = IncrementalPCA(n_components=self.n_components, copy=self.copy)
            ipca.partial_fit(X)
            self._ipca = ipca
            self._sync_from_sklearn()
            return self
        self._gram_partial_fit(self._validate_batch(X))
        return self

    def transform(
        self, X: np.ndarray, *, scale: float | np.floating[Any] | None = None
    ) -> np.ndarray:
        """Project ``X`` onto the components: ``(X - mean_) @ components_.T`` as float32.

        Centring and projection run on column blocks in float32 with the products summed in
        float64, so no float64 copy of ``X`` is made. Memory: ``4 * b * block_columns`` bytes
        of buffer plus ``12 * b * k`` for the result.

        Parameters
        ----------
        X : ndarray of shape (b, d)
        scale : float, optional
            Transform ``float32(X * scale)`` instead, scaling one column block at a time: raw
            uint8 pixels need no float32 copy (the result equals scaling first).

        Returns
        -------
        ndarray of shape (b, k), float32
        """
        self._check_fitted()
        arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X must have shape (n_samples, {self.n_features_in_}). Got {arr.shape} instead."
            )
        if self.solver == "sklearn":
            if scale is not None:
                arr = np.multiply(arr, _F32(scale), dtype=_F32)
            return np.asarray(self._ipca.transform(arr), dtype=_F32)
        n, d = arr.shape
        V = self.components_
        out = np.zeros((n, V.shape[0]), dtype=_F64)
        mean32 = self.mean_.astype(_F32)
        cb = min(int(self.block_columns), d)
        buf = np.empty(n * cb, dtype=_F32)
        for c0, c1 in _spans(0, d, cb):
            centred = buf[: n * (c1 - c0)].reshape(n, c1 - c0)
            if scale is None:
                np.subtract(arr[:, c0:c1], mean32[c0:c1], out=centred, casting="unsafe")
            else:
                np.multiply(arr[:, c0:c1], _F32(scale), out=centred, casting="unsafe")
                centred -= mean32[c0:c1]
            out += centred @ V[:, c0:c1].T
        return out.astype(_F32)

    def get_state(self) -> dict[str, np.ndarray]:
        """Return every parameter and learned array needed to continue exactly.

        Scalars are 0-d arrays and the solver name is a 0-d bytes array, so the dict can be
        written to HDF5 or npz as is. The arrays are the live ones (no copy: the components
        alone are 413 MB at 800 x 129,000); write them out before the next ``partial_fit``,
        which overwrites ``components_`` in place.

        Returns
        -------
        dict of str to ndarray
        """
        self._check_fitted()
        state: dict[str, np.ndarray] = {
            "solver": np.array(self.solver.encode("ascii")),
            "n_components": np.array(self.n_components, dtype=np.int64),
            "copy": np.array(bool(self.copy)),
            "block_columns": np.array(self.block_columns, dtype=np.int64),
        }
        for name in _LEARNED:
            state[name] = np.asarray(getattr(self, name))
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, np.ndarray]) -> StreamingPCA:
        """Rebuild an estimator from :meth:`get_state` output; it continues as the original.

        The arrays are copied (a mapping of h5py datasets works too).

        Raises
        ------
        StoreError
            If a key is missing or the arrays do not fit together.
        """
        missing = [key for key in ("solver", "n_components", *_LEARNED) if key not in state]
        if missing:
            raise StoreError(f"PCA state is missing {', '.join(missing)}.")
        raw = np.asarray(state["solver"]).item()
        solver = raw.decode("ascii") if isinstance(raw, bytes) else str(raw)
        est = cls(
            int(np.asarray(state["n_components"])),
            solver=solver,
            copy=bool(np.asarray(state["copy"])) if "copy" in state else True,
            block_columns=int(np.asarray(state["block_columns"]))
            if "block_columns" in state
            else 8192,
        )
        try:
            est._check_params()
        except ConfigError as exc:
            raise StoreError(f"PCA state holds invalid parameters: {exc}") from exc
        arrays = {name: np.array(state[name]) for name in _LEARNED}
        k = est.n_components
        d = int(arrays["n_features_in_"])
        expected = {
            "components_": (k, d),
            "mean_": (d,),
            "var_": (d,),
            "singular_values_": (k,),
            "explained_variance_": (k,),
            "explained_variance_ratio_": (k,),
        }
        for name, shape in expected.items():
            if arrays[name].shape != shape:
                raise StoreError(
                    f"PCA state array {name} has shape {arrays[name].shape}; expected {shape} "
                    f"for n_components={k}, n_features={d}."
                )
        if solver == "sklearn":
            ipca = IncrementalPCA(n_components=k, copy=est.copy)
            for name in _LEARNED:
                value = arrays[name]
                ipca.__dict__[name] = value if value.ndim else value[()]
            ipca.n_components_ = int(arrays["n_components_"])
            ipca.n_features_in_ = d
            est._ipca = ipca
            est._sync_from_sklearn()
            return est
        est.components_ = np.ascontiguousarray(arrays["components_"], dtype=_F32)
        est.mean_ = arrays["mean_"].astype(_F64)
        est.var_ = arrays["var_"].astype(_F64)
        est.singular_values_ = arrays["singular_values_"].astype(_F64)
        est.explained_variance_ = arrays["explained_variance_"].astype(_F64)
        est.explained_variance_ratio_ = arrays["explained_variance_ratio_"].astype(_F64)
        est.noise_variance_ = float(arrays["noise_variance_"])
        est.n_samples_seen_ = int(arrays["n_samples_seen_"])
        est.n_components_ = int(arrays["n_components_"])
        est.n_features_in_ = d
        return est

    # ------------------------------------------------------------------ checks

    def _check_params(self) -> None:
        k = self.n_components
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"n_components must be an integer >= 1. Got {k!r} instead.")
        if self.solver not in _SOLVERS:
            raise ConfigError(f"solver must be one of {_SOLVERS}. Got {self.solver!r} instead.")
        cb = self.block_columns
        if isinstance(cb, bool) or not isinstance(cb, (int, np.integer)) or cb < 1:
            raise ConfigError(f"block_columns must be an integer >= 1. Got {cb!r} instead.")

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise ValueError("This StreamingPCA is not fitted yet; call partial_fit first.")

    def _validate_batch(self, X: np.ndarray) -> np.ndarray:
        """Return a float32 C-contiguous writeable batch this call may centre in place."""
        arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"X must be a non-empty 2-D array. Got shape {arr.shape} instead.")
        n, d = arr.shape
        k = self.n_components
        if not hasattr(self, "components_"):
            if k > d:
                raise ValueError(f"n_components={k} must be <= n_features={d}.")
            if k > n:
                raise ValueError(
                    f"n_components={k} must be less or equal to the batch number of samples "
                    f"{n} for the first partial_fit call."
                )
        elif d != self.n_features_in_:
            raise ValueError(
                f"X has {d} features, but StreamingPCA is expecting {self.n_features_in_} "
                "features as input."
            )
        usable = arr.dtype == _F32 and arr.flags.c_contiguous and arr.flags.writeable
        if not usable:
            return np.array(arr, dtype=_F32, order="C")
        return arr.copy() if self.copy else arr

    def _sync_from_sklearn(self) -> None:
        for name in _LEARNED:
            setattr(self, name, getattr(self._ipca, name))

    # ------------------------------------------------------------------ the Gram update

    def _gram_partial_fit(self, X: np.ndarray) -> None:
        n, d = X.shape
        k = int(self.n_components)
        first = not hasattr(self, "components_")
        n_seen = 0 if first else int(self.n_samples_seen_)
        n_total = n_seen + n
        sigma = np.zeros(0) if first else self.singular_values_
        V = None if first else self.components_
        p = 0 if first else k  # rows of the old-components block of the stack
        q = n if first else n + 1  # rows of the batch block (+ mean-correction row)
        m = p + q
        cb = min(int(self.block_columns), d)
        mean = np.empty(d, dtype=_F64)
        var = np.empty(d, dtype=_F64)
        corr = None if first else np.empty(d, dtype=_F64)
        ybuf = np.empty(q * cb, dtype=_F32)

        # Float64 from the start where it is nearly free (small problems: float32 Gram matrices of
        # a few columns lose orthonormality at eigenvalue ratios of 1e-4, where large ones average
        # the rounding out) or where the float32 pass would only be redone: a first batch keeping
        # at least half its rows keeps directions near its rank, measured below _FAST_RTOL.
        exact = m * m * d <= _FLOAT64_FLOPS or (first and 2 * k >= n)

        # Pass 1: statistics, centring, and the Gram matrix from float32 GEMMs summed in float64
        # (the float64 route builds its own after the pass).
        G = np.zeros((0, 0) if exact else (m, m), dtype=_F64)

        def stats(span: tuple[int, int]) -> None:
            self._stats_and_centre(X, *span, n_seen, mean, var, corr)

        with ThreadPoolExecutor(_STATS_THREADS, thread_name_prefix="pca-stats") as pool:
            for c0, c1 in _spans(0, d, cb):
                # list() waits for every slice (and re-raises a failure) before the GEMMs.
                list(pool.map(stats, _spans(c0, c1, _STATS_COLUMNS)))
                if not exact:
                    self._gram_block(G, X, V, corr, ybuf, p, c0, c1)
        if not exact and p:
            # The old components' own block: rows orthonormal to float32 rounding (1.5e-7 at the
            # seed size), so V V^T is taken as I rather than computed (k^2 d flops, 0.6 s a seed
            # batch); measured against the float64 route the explained variance agrees to 2e-7
            # either way. The float64 route below computes it.
            G[:p, :p] += np.eye(p)
        if exact:
            G = self._gram64(X, V, corr, p, q, cb)
        if not np.isfinite(G).all():
            raise ValueError("X contains NaN or infinity.")
        _scale_old_block(G, sigma)
        lam, U = _eigh_descending(G)

        top = max(float(lam[0]), 0.0)
        precise = np.zeros(0, dtype=np.intp)
        if not exact and lam[k - 1] < _FAST_RTOL * top:
            logger.info(
                "Smallest kept eigenvalue is %.2e of the largest; recomputing this batch's Gram "
                "matrix in float64.",
                lam[k - 1] / top if top > 0 else 0.0,
            )
            G = self._gram64(X, V, corr, p, q, cb)
            _scale_old_block(G, sigma)
            lam, U = _eigh_descending(G)
            top = max(float(lam[0]), 0.0)
            exact = True
        if exact:
            small = m * m * d <= _FLOAT64_FLOPS
            precise = np.arange(k) if small else np.flatnonzero(lam[:k] < _FAST_RTOL * top)
        del G
        r = min(m, d)
        lam = np.clip(lam[:r], 0.0, None)
        new_sigma = np.sqrt(lam[:k])
        degenerate = np.flatnonzero(lam[:k] <= _EXACT_RTOL * top)
        if degenerate.size:
            logger.info(
                "%d components have no resolvable direction; completing them.", degenerate.size
            )

        # new components = W S with W = diag(1/sigma) U_k^T, split as A (old block) and B.
        W = U[:, :k].T.copy()
        del U
        live = np.ones(k, dtype=bool)
        live[degenerate] = False
        W[live] /= new_sigma[live, None]
        W[~live] = 0.0
        A = W[:, :p] * sigma[None, :]
        B = W[:, p:]
        del W
        if V is None:
            V = np.empty((k, d), dtype=_F32)
        best = np.full(k, -1.0, dtype=_F32)
        sign = np.ones(k, dtype=_F32)
        self._project(X, V, corr, A, B, precise, cb, best, sign)
        if degenerate.size:
            _complete(V, degenerate, cb, seed=n_total, best=best, sign=sign)
        for i in np.flatnonzero(sign < 0):
            np.negative(V[i], out=V[i])

        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 -> nan, as in sklearn
            ev = lam / (n_total - 1)
            ratio = lam[:k] / np.sum(var * n_total)
        self.components_ = V
        self.singular_values_ = new_sigma
        self.mean_ = mean
        self.var_ = var
        self.n_samples_seen_ = n_total
        self.explained_variance_ = ev[:k]
        self.explained_variance_ratio_ = ratio
        self.noise_variance_ = float(ev[k:].mean()) if k not in (n, d) else 0.0
        self.n_components_ = k
        self.n_features_in_ = d

    @staticmethod
    def _gram_block(
        G: np.ndarray,
        X: np.ndarray,
        V: np.ndarray | None,
        corr: np.ndarray | None,
        ybuf: np.ndarray,
        p: int,
        c0: int,
        c1: int,
    ) -> None:
        """Add columns c0:c1 of the (centred) stack to its Gram matrix (old block unscaled)."""
        Y = _batch_block(ybuf, X, corr, c0, c1)
        G[p:, p:] += Y @ Y.T
        if V is not None:
            G[:p, p:] += V[:, c0:c1] @ Y.T

    def _stats_and_centre(
        self,
        X: np.ndarray,
        s0: int,
        s1: int,
        n_seen: int,
        mean: np.ndarray,
        var: np.ndarray,
        corr: np.ndarray | None,
    ) -> None:
        """Update mean/var of columns s0:s1 as sklearn does and centre them in place."""
        n = X.shape[0]
        xs = X[:, s0:s1]
        if corr is None:
            mean[s0:s1], var[s0:s1] = _mean_and_var(xs, n_seen, 0.0, 0.0)
            xs -= mean[s0:s1]
        else:
            mean[s0:s1], var[s0:s1] = _mean_and_var(
                xs, n_seen, self.mean_[s0:s1], self.var_[s0:s1]
            )
            batch_mean = np.mean(xs, axis=0)
            xs -= batch_mean
            corr[s0:s1] = np.sqrt((n_seen / (n_seen + n)) * n) * (self.mean_[s0:s1] - batch_mean)

    @staticmethod
    def _gram64(
        X: np.ndarray, V: np.ndarray | None, corr: np.ndarray | None, p: int, q: int, cb: int
    ) -> np.ndarray:
        """Gram matrix of the (already centred) stack with float64 GEMMs, unscaled old block."""
        n, d = X.shape
        G = np.zeros((p + q, p + q), dtype=_F64)
        for s0, s1 in _spans(0, d, max(1, cb // _PRECISE_DIVISOR)):
            Y = _batch_block64(X, corr, s0, s1)
            G[p:, p:] += Y @ Y.T
            if V is not None:
                Vb = V[:, s0:s1].astype(_F64)
                G[:p, :p] += Vb @ Vb.T
                G[:p, p:] += Vb @ Y.T
        return G

    @staticmethod
    def _project(
        X: np.ndarray,
        V: np.ndarray,
        corr: np.ndarray | None,
        A: np.ndarray,
        B: np.ndarray,
        precise: np.ndarray,
        cb: int,
        best: np.ndarray,
        sign: np.ndarray,
    ) -> None:
        """Pass 2: V[:, blk] <- A V[:, blk] + B Y[:, blk] in place, tracking svd_flip signs."""
        n, d = X.shape
        k, p = A.shape
        q = B.shape[1]
        A32, B32 = A.astype(_F32), B.astype(_F32)
        A_p, B_p = A[precise], B[precise]
        ybuf = np.empty(q * cb, dtype=_F32)
        buf1 = np.empty(k * cb, dtype=_F32)
        buf2 = np.empty(k * cb, dtype=_F32)
        sub = max(1, cb // _PRECISE_DIVISOR)
        for c0, c1 in _spans(0, d, cb):
            w = c1 - c0
            Y = _batch_block(ybuf, X, corr, c0, c1)
            Vb = V[:, c0:c1]
            new = np.matmul(B32, Y, out=buf1[: k * w].reshape(k, w))
            if precise.size:
                exact = np.empty((precise.size, w), dtype=_F32)
                for s0, s1 in _spans(c0, c1, sub):
                    part = B_p @ _batch_block64(X, corr, s0, s1)
                    if p:
                        part += A_p @ V[:, s0:s1].astype(_F64)
                    exact[:, s0 - c0 : s1 - c0] = part
            if p:
                old = np.matmul(A32, Vb, out=buf2[: k * w].reshape(k, w))
                np.add(old, new, out=Vb)
            else:
                Vb[...] = new
            if precise.size:
                Vb[precise] = exact
            _track_signs(Vb, buf1[: k * w].reshape(k, w), best, sign)


def _spans(start: int, stop: int, width: int) -> Iterator[tuple[int, int]]:
    for lo in range(start, stop, width):
        yield lo, min(lo + width, stop)


def _mean_and_var(
    xs: np.ndarray, n_seen: int, last_mean: Any, last_var: Any
) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's ``_incremental_mean_and_var`` for finite data, operation for operation.

    The same float64 arithmetic in the same order (so the results are bitwise sklearn's), minus
    the NaN mask and its float32 copy, which cost two passes and 5 bytes per entry; NaN/inf
    are rejected later from the Gram matrix instead.
    """
    n, w = xs.shape
    last_count = np.repeat(n_seen, w).astype(_F64)
    last_sum = last_mean * last_count
    new_sum = np.sum(xs, axis=0, dtype=_F64)
    new_count = np.full(w, float(n))
    updated_count = last_count + new_count
    updated_mean = (last_sum + new_sum) / updated_count
    temp = xs - new_sum / new_count
    correction = np.sum(temp, axis=0)
    temp **= 2
    new_unnormalized = np.sum(temp, axis=0)
    del temp
    new_unnormalized -= correction**2 / new_count
    if n_seen == 0:
        return updated_mean, new_unnormalized / updated_count
    last_over_new = last_count / new_count
    updated_unnormalized = (
        last_var * last_count
        + new_unnormalized
        + last_over_new / updated_count * (last_sum / last_over_new - new_sum) ** 2
    )
    return updated_mean, updated_unnormalized / updated_count


def _batch_block(
    buf: np.ndarray, X: np.ndarray, corr: np.ndarray | None, c0: int, c1: int
) -> np.ndarray:
    """Contiguous float32 rows [X_c; mean correction] of columns c0:c1 (syrk-friendly)."""
    n = X.shape[0]
    q = n if corr is None else n + 1
    Y = buf[: q * (c1 - c0)].reshape(q, c1 - c0)
    Y[:n] = X[:, c0:c1]
    if corr is not None:
        Y[n] = corr[c0:c1]
    return Y


def _batch_block64(X: np.ndarray, corr: np.ndarray | None, c0: int, c1: int) -> np.ndarray:
    n = X.shape[0]
    Y = np.empty((n if corr is None else n + 1, c1 - c0), dtype=_F64)
    Y[:n] = X[:, c0:c1]
    if corr is not None:
        Y[n] = corr[c0:c1]
    return Y


def _scale_old_block(G: np.ndarray, sigma: np.ndarray) -> None:
    """Turn Gram blocks of V into those of diag(sigma) V and mirror the off-diagonal block."""
    p = sigma.shape[0]
    if p:
        G[:p, :p] *= np.outer(sigma, sigma)
        G[:p, p:] *= sigma[:, None]
        G[p:, :p] = G[:p, p:].T


def _eigh_descending(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All eigenpairs of symmetric G, largest first (divide and conquer, G overwritten)."""
    # All BLAS threads: 0.85 s instead of 1.35 s at m=1932 on 2 idle cores. LAPACK's
    # tridiagonalisation makes many small BLAS calls, so a CPU-bound process of equal priority
    # on the other core makes two threads slower than one (2.2 s); the pipeline therefore runs
    # its background decoders at low priority (measured 0.85 s beside a nice-19 busy loop).
    lam, U = scipy.linalg.eigh(G, overwrite_a=True, check_finite=False, driver="evd")
    return lam[::-1], U[:, ::-1]


def _track_signs(
    block: np.ndarray, scratch: np.ndarray, best: np.ndarray, sign: np.ndarray
) -> None:
    """Keep, per row, the sign of the first entry of largest magnitude seen so far."""
    mag = np.abs(block, out=scratch)
    idx = np.argmax(mag, axis=1)
    rows = np.arange(block.shape[0])
    vals = mag[rows, idx]
    better = vals > best  # strict: an earlier column wins a tie, as np.argmax does
    best[better] = vals[better]
    sign[better] = np.sign(block[rows[better], idx[better]])


def _complete(
    V: np.ndarray, rows: np.ndarray, cb: int, seed: int, best: np.ndarray, sign: np.ndarray
) -> None:
    """Replace V[rows] by orthonormal rows orthogonal to the other rows of V.

    Deterministic pseudo-random rows (seeded by ``seed`` and the block) are orthogonalised
    against the other components and then among themselves (Cholesky QR), in three cheap
    passes over the columns.
    """
    k, d = V.shape
    j = rows.size

    def random_block(c0: int, c1: int) -> np.ndarray:
        return np.random.default_rng([seed, c0]).standard_normal((j, c1 - c0), dtype=_F32)

    C = np.zeros((j, k), dtype=_F64)
    for c0, c1 in _spans(0, d, cb):
        C += random_block(c0, c1) @ V[:, c0:c1].T
    C[:, rows] = 0.0
    C32 = C.astype(_F32)
    H = np.zeros((j, j), dtype=_F64)
    for c0, c1 in _spans(0, d, cb):
        R = random_block(c0, c1)
        R -= C32 @ V[:, c0:c1]
        V[rows, c0:c1] = R
        H += R.astype(_F64) @ R.T.astype(_F64)
    L = np.linalg.cholesky(H)
    T = scipy.linalg.solve_triangular(L, np.eye(j), lower=True).astype(_F32)
    best_j = np.full(j, -1.0, dtype=_F32)
    sign_j = np.ones(j, dtype=_F32)
    for c0, c1 in _spans(0, d, cb):
        block = T @ V[rows, c0:c1]
        V[rows, c0:c1] = block
        _track_signs(block, np.empty_like(block), best_j, sign_j)
    best[rows] = best_j
    sign[rows] = sign_j


def pca_memory_bytes(
    n_components: int,
    batch_size: int,
    n_features: int,
    solver: str = "gram",
    *,
    copy: bool = True,
    block_columns: int = 8192,
) -> int:
    """Peak bytes ``partial_fit``/``transform`` hold beyond the interpreter baseline.

    Includes the model's own arrays and the float32 batch passed in, so a planner can compare
    the result directly with a budget. Never underestimates (validated against measured peak
    RSS in tests/test_pca.py); typically 10-30% above the measured peak.

    Parameters
    ----------
    n_components, batch_size, n_features : int
        ``k``, ``b`` and ``d``.
    solver : {"gram", "sklearn"}
    copy : bool, default=True
        As the estimator's ``copy``; False saves one batch (``4 b d`` bytes).
    block_columns : int, default=8192
        As the estimator's ``block_columns`` (gram solver only).

    Returns
    -------
    int
    """
    k, b, d = int(n_components), int(batch_size), int(n_features)
    if solver not in _SOLVERS:
        raise ConfigError(f"solver must be one of {_SOLVERS}. Got {solver!r} instead.")
    # BLAS thread buffers and allocator slack, measured once from a warm interpreter.
    slack = 48 * 2**20
    batch = 4 * b * d  # the float32 batch the caller passes in
    batch_copy = batch if copy else 0
    if solver == "sklearn":
        # Every term is summed, not maxed over phases: glibc keeps freed arrays under 32 MiB in
        # its heap, so at moderate sizes the transients of one phase are still resident in the
        # next (measured 452 MiB at k=100, b=300, d=20,000 where live arrays peak at ~380).
        m = k + b + 1
        prev_vt = 8 * m * d  # components_ is a view that keeps the whole previous Vt alive
        stats = 13 * b * d  # _incremental_mean_and_var: float64 X - T, NaN mask, float32 mask
        scaled = 8 * k * d  # singular_values_ * components_ temporary inside np.vstack
        stack = 8 * m * d  # the float64 stack
        svd = 3 * 8 * m * d + 2 * 8 * m * m  # Fortran copy, Vt, gesdd workspace; U and more
        fit = batch_copy + stats + scaled + stack + svd
        transform = 8 * b * d + 8 * b * k  # the batch cast to float64, the float64 result
        return slack + batch + 16 * d + prev_vt + max(fit, transform)
    cb = min(int(block_columns), d)
    m = k + b + 1
    q = b + 1
    model = 4 * k * d + 16 * d  # components_ (float32, updated in place), mean_, var_
    running = 3 * 8 * d  # new mean, new var, mean-correction row
    ybuf = 4 * q * cb  # contiguous float32 [X_c; correction] block
    gram = 8 * m * m  # the float64 Gram matrix G
    gemm_out = 4 * (k * k + k * q + q * q)  # float32 block results V V^T, V Y^T, Y Y^T
    # per-slice temporaries of the mean/var update, one slice per thread
    stats = 13 * b * min(cb, _STATS_COLUMNS) * _STATS_THREADS
    sub = max(1, cb // _PRECISE_DIVISOR)
    gram64 = 8 * (k + q) * sub + 8 * (k * k + k * q + q * q)  # float64 re-pass blocks+results
    pass1 = ybuf + gram + gemm_out + max(stats, gram64)
    # eigh (evd): G's copy, eigenvectors, and LAPACK workspace 1 + 6m + 2m^2 doubles + iwork.
    eigh = gram + 8 * m * m + 8 * (1 + 6 * m + 2 * m * m) + 8 * (3 + 5 * m) + 8 * m * m
    coeffs = 8 * k * m * 2 + 4 * k * m  # W, A and B in float64, their float32 copies
    precise = 4 * k * cb + 8 * (k + q) * sub + 8 * k * sub * 2  # float64 rows of the fallback
    pass2 = ybuf + coeffs + 2 * 4 * k * cb + precise  # two (k, cb) float32 output buffers
    complete = 3 * 4 * k * cb + 8 * k * k * 2  # random block, its projection, Gram and factor
    fit_peak = running + max(pass1, eigh + gram, pass2, complete + coeffs)
    transform = 4 * b * cb + 12 * b * k + 4 * d + 4 * b * k  # centred block, out, mean, GEMM
    return slack + batch + batch_copy + model + max(fit_peak, transform)
