"""Incremental PCA with scikit-learn's results, updated through the small Gram matrix."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.decomposition import IncrementalPCA
from sklearn.exceptions import NotFittedError
from sklearn.utils import gen_batches
from sklearn.utils.validation import validate_data

from stream_cluster.errors import ConfigError
from stream_cluster.pca._kernels import (
    _F32,
    _centre_and_project,
)
from stream_cluster.pca._state import LEARNED as _LEARNED
from stream_cluster.pca._state import SOLVERS as _SOLVERS
from stream_cluster.pca._state_merge import StateAndMerge
from stream_cluster.pca._update import gram_partial_fit

__all__ = ["StreamingPCA"]

logger = logging.getLogger(__name__)


# sklearn is untyped, so its classes are Any to mypy (subclassing Any is an error under strict).
class StreamingPCA(
    StateAndMerge,
    ClassNamePrefixFeaturesOutMixin,  # type: ignore[misc]
    TransformerMixin,  # type: ignore[misc]
    BaseEstimator,  # type: ignore[misc]
):
    """Incremental PCA whose ``partial_fit`` equals scikit-learn's ``IncrementalPCA``.

    A scikit-learn estimator and a drop-in for ``IncrementalPCA``: ``fit`` streams ``X`` in
    batches of ``batch_size`` rows as ``IncrementalPCA.fit`` does, and ``partial_fit``,
    ``transform``, ``inverse_transform``, ``get_feature_names_out``, ``clone`` and pipelines
    work as there (it passes scikit-learn's ``parametrize_with_checks`` with the exceptions
    named in ``tests/test_pca_estimator.py``).

    Each update stacks the previous components scaled by their singular values, the centred
    batch and sklearn's mean-correction row, exactly as ``IncrementalPCA.partial_fit`` does, but
    instead of a full SVD of that ``(k + b + 1) x d`` stack it eigendecomposes its small Gram
    matrix ``G = S S^T`` (float64) and forms the new components as ``diag(1/sigma) U_k^T S``,
    one column block at a time, overwriting the old components in place. The stack is never
    held whole. Running mean/variance, explained variance (ratio), singular values, noise
    variance and the sign convention (``svd_flip(u_based_decision=False)``) are sklearn's.
    Models fitted on separate shards combine with :meth:`merge` and :func:`merge_tree`.

    Parameters
    ----------
    n_components : int or None, default=None
        Number of components ``k``. The first batch must hold at least ``k`` rows. None takes
        ``min(n_samples, n_features)`` of the first batch, as ``IncrementalPCA`` does.
    solver : {"gram", "sklearn"}, default="gram"
        ``"gram"`` is the update described above; ``"sklearn"`` wraps
        ``sklearn.decomposition.IncrementalPCA`` (the reference; measured 11-15x slower and
        8x the memory at 800 components, batch 1000, 129,000 features).
    copy : bool, default=True
        If False, ``partial_fit`` (and ``fit``, batch by batch) centres a float32 C-contiguous
        writeable batch in place (the caller's array is overwritten), saving ``4 * b * d``
        bytes; other batches are still converted into a new float32 array. As with
        ``IncrementalPCA(copy=False)``, ``fit_transform`` then transforms the overwritten array.
    block_columns : int, default=8192
        Width of the column blocks the update and ``transform`` work on. Larger blocks make
        slightly faster GEMMs and cost ``4 * (2k + b) * block_columns`` bytes of buffers.
    batch_size : int or None, default=None
        Rows per ``partial_fit`` call inside ``fit``; None means ``5 * n_features``, as in
        ``IncrementalPCA``. A last batch of fewer than ``n_components`` rows is joined to the
        one before it. ``partial_fit`` does not use it.

    Attributes
    ----------
    components_ : ndarray of shape (k, d), float32
        Principal axes, rows orthonormal, signs as sklearn's.
    mean_, var_ : ndarray of shape (d,), float64
        Running per-feature mean and variance of all samples seen.
    singular_values_, explained_variance_, explained_variance_ratio_ : ndarray of shape (k,)
    noise_variance_ : float
    n_samples_seen_, n_components_, n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had string column names (a DataFrame).
    batch_size_ : int
        The batch size ``fit`` used (set by ``fit`` only).

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
    1e-6 to 1e-5 relative). Inputs of any dtype are fitted and transformed in float32 (the
    products summed in float64); ``transform`` returns float32.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> pca = StreamingPCA(3, block_columns=16)
    >>> for start in range(0, 60, 20):
    ...     _ = pca.partial_fit(rng.random((20, 40), dtype=np.float32))
    >>> pca.transform(rng.random((5, 40), dtype=np.float32)).shape
    (5, 3)
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.cluster import KMeans
    >>> pipe = make_pipeline(StreamingPCA(5, batch_size=50), KMeans(3, n_init=1, random_state=0))
    >>> pipe.fit(rng.random((200, 40), dtype=np.float32)).predict(rng.random((4, 40))).shape
    (4,)
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
    batch_size_: int
    _ipca: IncrementalPCA

    def __init__(
        self,
        n_components: int | None = None,
        *,
        solver: str = "gram",
        copy: bool = True,
        block_columns: int = 8192,
        batch_size: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.solver = solver
        self.copy = copy
        self.block_columns = block_columns
        self.batch_size = batch_size

    # ------------------------------------------------------------------ public API

    def fit(self, X: Any, y: Any = None) -> StreamingPCA:
        """Fit from scratch on ``X``, streamed in batches of ``batch_size`` rows.

        Equals ``IncrementalPCA(n_components, batch_size=batch_size).fit(X)`` to the precision
        of ``partial_fit``: the same batches, each one a ``partial_fit`` call.

        Parameters
        ----------
        X : array-like or sparse matrix of shape (n_samples, n_features)
            Sparse batches are made dense one at a time; other dtypes are converted to float32
            one batch at a time.
        y : ignored

        Returns ``self``. Raises what :meth:`partial_fit` raises (``ConfigError`` for a bad
        parameter, ``ValueError`` for bad data), and ``ValueError`` if ``X`` is empty.

        Notes
        -----
        Memory: one batch and its float32 copy (unless ``copy=False`` and ``X`` is float32,
        C-contiguous and writeable) on top of :meth:`partial_fit`'s; ``X`` itself is not
        copied (except from lists or object arrays).
        """
        self._check_params()
        for name in (*_LEARNED, "_ipca", "batch_size_"):
            self.__dict__.pop(name, None)
        X = self._validated(X, reset=True)
        n_samples, n_features = X.shape
        self.batch_size_ = 5 * n_features if self.batch_size is None else int(self.batch_size)
        for rows in gen_batches(n_samples, self.batch_size_, min_batch_size=self.n_components or 0):
            batch = X[rows]
            self._update(batch.toarray() if sparse.issparse(batch) else batch)
        return self

    def _validated(self, X: Any, *, reset: bool) -> Any:
        """scikit-learn's input validation: 2-D, numeric, finite, sparse kept, feature count."""
        return validate_data(self, X, accept_sparse=["csr", "csc", "lil"], dtype="numeric",
                             copy=False, ensure_all_finite=True, reset=reset)  # fmt: skip

    def partial_fit(self, X: Any, y: Any = None, check_input: bool = True) -> StreamingPCA:
        """Update the model with one batch ``X`` of shape (b, d), float32 scaled to 0..1.

        Parameters
        ----------
        X : ndarray of shape (b, d)
            The batch. The first call needs ``b >= n_components``; later calls accept any
            ``b >= 1``. Other dtypes are converted to float32 (a copy).
        y : ignored
        check_input : bool, default=True
            Run scikit-learn's input validation (2-D, feature count and names); False skips
            it, as in ``IncrementalPCA``. NaN and inf are rejected either way.

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
        TypeError
            If ``X`` is sparse (``fit`` accepts sparse input).
        """
        self._check_params()
        if check_input:
            if sparse.issparse(X):
                raise TypeError(
                    "StreamingPCA.partial_fit does not support sparse input. Convert the batch "
                    "to a dense array, or use StreamingPCA.fit, which does so batch by batch."
                )
            # The finiteness check is left to the update: it rejects NaN/inf from the Gram
            # matrix at no cost, where a check here would be one more pass over the batch.
            X = validate_data(
                self,
                X,
                dtype="numeric",
                copy=False,
                ensure_all_finite=False,
                reset=not hasattr(self, "components_"),
            )
        self._update(X)
        return self

    def transform(self, X: Any, *, scale: float | np.floating[Any] | None = None) -> np.ndarray:
        """Project ``X`` onto the components: ``(X - mean_) @ components_.T`` as float32.

        Centring and projection run on column blocks in float32 with the products summed in
        float64, so no float64 copy of ``X`` is made. Memory: ``4 * b * block_columns`` bytes
        of buffer plus ``12 * b * k`` for the result. Sparse ``X`` is made dense in batches of
        ``batch_size`` rows (default ``5 * n_features``).

        Parameters
        ----------
        X : array-like or sparse matrix of shape (b, d)
        scale : float, optional
            Transform ``float32(X * scale)`` instead, scaling one column block at a time: raw
            uint8 pixels need no float32 copy (the result equals scaling first).

        Returns
        -------
        ndarray of shape (b, k), float32

        Raises
        ------
        NotFittedError
            Before the first ``fit``/``partial_fit`` (a ValueError).
        ValueError
            If ``X`` is not 2-D, has the wrong number of features, or holds NaN or inf.
        """
        self._check_fitted()
        arr = self._validated(X, reset=False)
        if sparse.issparse(arr):
            step = 5 * self.n_features_in_ if self.batch_size is None else int(self.batch_size)
            parts = [
                self._transform_dense(arr[rows].toarray(), scale)
                for rows in gen_batches(arr.shape[0], max(1, step))
            ]
            return np.concatenate(parts) if parts else np.zeros((0, self.n_components_), _F32)
        return self._transform_dense(arr, scale)

    # ------------------------------------------------------------------ internals

    def _update(self, X: Any) -> None:
        """One ``partial_fit`` update by an already validated dense batch."""
        if self.solver == "sklearn":
            ipca = getattr(self, "_ipca", None)
            if ipca is None:
                ipca = IncrementalPCA(n_components=self.n_components, copy=self.copy)
            ipca.partial_fit(X)
            self._ipca = ipca
            self._sync_from_sklearn()
            return
        batch = self._validate_batch(X)
        prev = self if hasattr(self, "components_") else None
        k = self._update_components(batch.shape[0], batch.shape[1])
        learned = gram_partial_fit(batch, k, int(self.block_columns), prev)
        for name, value in learned.items():
            setattr(self, name, value)

    def _transform_dense(self, arr: np.ndarray, scale: Any) -> np.ndarray:
        if self.solver == "sklearn":
            if scale is not None:
                arr = np.multiply(arr, _F32(scale), dtype=_F32)
            return np.asarray(self._ipca.transform(arr), dtype=_F32)
        cb = min(int(self.block_columns), arr.shape[1])
        return _centre_and_project(arr, self.components_, self.mean_, cb, scale)

    # ------------------------------------------------------------------ checks

    def _check_params(self) -> None:
        k = self.n_components
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
            raise ConfigError(
                f"n_components must be an integer >= 1. Got {k!r} instead. (None takes "
                "min(n_samples, n_features) of the first batch.)"
            )
        if self.solver not in _SOLVERS:
            raise ConfigError(f"solver must be one of {_SOLVERS}. Got {self.solver!r} instead.")
        cb = self.block_columns
        if isinstance(cb, bool) or not isinstance(cb, (int, np.integer)) or cb < 1:
            raise ConfigError(f"block_columns must be an integer >= 1. Got {cb!r} instead.")
        bs = self.batch_size
        if bs is not None and (
            isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1
        ):
            raise ConfigError(f"batch_size must be None or an integer >= 1. Got {bs!r} instead.")

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise NotFittedError(
                "This StreamingPCA is not fitted yet; call fit or partial_fit first."
            )

    def _update_components(self, n: int, d: int) -> int:
        """The ``k`` of this update: the fitted count, or the first batch's (None: min(n, d))."""
        k = self.n_components
        if hasattr(self, "components_"):
            if k is not None and k != self.n_components_:
                raise ValueError(
                    f"n_components changed from {self.n_components_} to {k} between calls to "
                    "partial_fit; call fit to start again with the new value."
                )
            return int(self.n_components_)
        return min(n, d) if k is None else int(k)

    def _validate_batch(self, X: np.ndarray) -> np.ndarray:
        """Return a float32 C-contiguous writeable batch this call may centre in place."""
        arr = np.asarray(X)
        if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
            raise ValueError(f"X must be a non-empty 2-D array. Got shape {arr.shape} instead.")
        n, d = arr.shape
        k = self._update_components(n, d)
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
