"""Incremental PCA with scikit-learn's results, updated through the small Gram matrix."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.decomposition import IncrementalPCA
from sklearn.exceptions import NotFittedError
from sklearn.utils import gen_batches
from sklearn.utils.validation import check_array, validate_data

from stream_cluster.errors import ConfigError, StoreError
from stream_cluster.pca._kernels import (
    _F32,
    _F64,
    _centre_and_project,
)
from stream_cluster.pca._merge import gram_merge, merged_n_components
from stream_cluster.pca._state import LEARNED as _LEARNED
from stream_cluster.pca._state import SOLVERS as _SOLVERS
from stream_cluster.pca._update import gram_partial_fit

__all__ = ["StreamingPCA"]

logger = logging.getLogger(__name__)


# sklearn is untyped, so its classes are Any to mypy (subclassing Any is an error under strict).
class StreamingPCA(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):  # type: ignore[misc]
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

        Returns
        -------
        self : StreamingPCA

        Raises
        ------
        ConfigError
            If a constructor parameter is invalid.
        ValueError
            If ``X`` is empty, not 2-D, holds NaN or inf, or has fewer rows than
            ``n_components``.

        Notes
        -----
        Memory: one batch and its float32 copy (unless ``copy=False`` and ``X`` is float32,
        C-contiguous and writeable) on top of :meth:`partial_fit`'s; ``X`` itself is not
        copied (except from lists or object arrays).
        """
        self._check_params()
        for name in (*_LEARNED, "_ipca", "batch_size_"):
            self.__dict__.pop(name, None)
        X = validate_data(
            self,
            X,
            accept_sparse=["csr", "csc", "lil"],
            dtype="numeric",
            copy=False,
            ensure_all_finite=True,
            reset=True,
        )
        n_samples, n_features = X.shape
        self.batch_size_ = 5 * n_features if self.batch_size is None else int(self.batch_size)
        for rows in gen_batches(n_samples, self.batch_size_, min_batch_size=self.n_components or 0):
            batch = X[rows]
            self._update(batch.toarray() if sparse.issparse(batch) else batch)
        return self

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
        arr = validate_data(
            self,
            X,
            accept_sparse=["csr", "csc", "lil"],
            dtype="numeric",
            copy=False,
            ensure_all_finite=True,
            reset=False,
        )
        if sparse.issparse(arr):
            step = 5 * self.n_features_in_ if self.batch_size is None else int(self.batch_size)
            parts = [
                self._transform_dense(arr[rows].toarray(), scale)
                for rows in gen_batches(arr.shape[0], max(1, step))
            ]
            return np.concatenate(parts) if parts else np.zeros((0, self.n_components_), _F32)
        return self._transform_dense(arr, scale)

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Map projections back to feature space: ``X @ components_ + mean_``, as float32.

        As ``IncrementalPCA.inverse_transform`` (without whitening); the products are summed
        in float64 one column block at a time, so no float64 copy of the components is made.
        Memory: the float32 result (``4 * b * d`` bytes) and ``8 * b * (k + block_columns)``
        bytes of buffers.

        Parameters
        ----------
        X : array-like of shape (b, k)

        Returns
        -------
        ndarray of shape (b, d), float32
        """
        self._check_fitted()
        Z = check_array(X, dtype=[_F64, _F32], input_name="X")
        k = self.components_.shape[0]
        if Z.shape[1] != k:
            raise ValueError(
                f"X has {Z.shape[1]} features, but StreamingPCA.inverse_transform is expecting "
                f"{k} (n_components_) features as input."
            )
        Z64 = Z.astype(_F64, copy=False)
        d = self.components_.shape[1]
        out = np.empty((Z.shape[0], d), dtype=_F32)
        cb = min(int(self.block_columns), d)
        for c0 in range(0, d, cb):
            c1 = min(c0 + cb, d)
            block = Z64 @ self.components_[:, c0:c1].astype(_F64)
            block += self.mean_[c0:c1]
            out[:, c0:c1] = block
        return out

    def __sklearn_is_fitted__(self) -> bool:
        """True once a batch has been fitted (what ``check_is_fitted`` asks)."""
        return hasattr(self, "components_")

    def __sklearn_tags__(self) -> Any:
        """scikit-learn's tags: ``fit``/``transform`` take sparse input; output is float32."""
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True  # fit and transform densify batches; partial_fit refuses
        tags.transformer_tags.preserves_dtype = ["float32"]  # every input is projected in float32
        return tags

    @property
    def _n_features_out(self) -> int:
        """Number of output features, for ``get_feature_names_out`` (``streamingpca0``, ...)."""
        return int(self.components_.shape[0])

    def get_state(self) -> dict[str, np.ndarray]:
        """Return every parameter and learned array needed to continue exactly.

        Scalars are 0-d arrays and the solver name is a 0-d bytes array, so the dict can be
        written to HDF5 or npz as is. The arrays are the live ones (no copy: the components
        alone are 413 MB at 800 x 129,000); write them out before the next ``partial_fit``,
        which overwrites ``components_`` in place. ``n_components=None`` is stored as the
        fitted ``n_components_`` (the same model from then on); ``batch_size`` (used by
        ``fit`` only) and ``feature_names_in_`` are not stored.

        Returns
        -------
        dict of str to ndarray
        """
        self._check_fitted()
        k = self.n_components_ if self.n_components is None else self.n_components
        state: dict[str, np.ndarray] = {
            "solver": np.array(self.solver.encode("ascii")),
            "n_components": np.array(k, dtype=np.int64),
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
        k = int(np.asarray(state["n_components"]))
        est = cls(
            k,
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
        est._adopt(arrays)
        return est

    def merge(self, other: StreamingPCA, *, n_components: int | None = None) -> StreamingPCA:
        """Return a new model fitted on the samples of both models; neither is modified.

        Counts add; ``mean_`` and ``var_`` merge exactly (Chan et al., written as sklearn's
        running statistics). The components come from the Gram matrix of the stack
        ``[diag(s_a) V_a; diag(s_b) V_b; sqrt(n_a n_b / n) (mean_a - mean_b)]`` (``k_a + k_b +
        1`` rows), ``partial_fit``'s construction with the same kernels, float32/float64
        routes and sign rule; the spectrum attributes follow sklearn's definitions
        (``noise_variance_`` is the mean discarded explained variance of that stack).

        The merge equals one model fitted on all the samples (to rounding) when neither model
        discarded variance, i.e. each part's centred data has rank <= its ``n_components``.
        Otherwise the variance each model discarded is missing from the result: see
        :func:`merge_tree`.

        Parameters
        ----------
        other : StreamingPCA
            A fitted model with the same number of features.
        n_components : int, optional
            Components of the result, at most ``min(k_a + k_b + 1, n_features)``. Default
            ``min(k_a, k_b)``.

        Returns
        -------
        StreamingPCA
            With this model's ``solver``, ``copy``, ``block_columns`` and ``batch_size``.

        Raises
        ------
        ValueError
            If either model is unfitted or their feature counts differ.
        ConfigError
            If ``n_components`` is out of range.

        Notes
        -----
        Memory: the result's components (``4 k d`` bytes) and ``O(m^2 + (k + m) *
        block_columns)`` of buffers, ``m = k_a + k_b + 1``; the ``m x d`` stack itself is never
        formed (1.65 GB in float64 at k_a = k_b = 800, d = 129,000). Time: two passes over the
        columns, about ``(m^2 / 2 + k m) d`` multiply-adds in float32 GEMMs (float64 where
        ``partial_fit`` would use it), and one eigh of size ``m``.
        """
        k = merged_n_components(self, other, n_components)
        merged = type(self)(
            k,
            solver=self.solver,
            copy=self.copy,
            block_columns=self.block_columns,
            batch_size=self.batch_size,
        )
        merged._check_params()
        merged._adopt(gram_merge(self, other, k, int(self.block_columns)))
        return merged

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

    def _adopt(self, arrays: Mapping[str, Any]) -> None:
        """Take checked learned arrays as this estimator's (float32 components not copied)."""
        if self.solver == "sklearn":
            ipca = IncrementalPCA(n_components=self.n_components, copy=self.copy)
            for name in _LEARNED:
                value = np.asarray(arrays[name])
                ipca.__dict__[name] = value if value.ndim else value[()]
            ipca.n_components_ = int(arrays["n_components_"])
            ipca.n_features_in_ = int(arrays["n_features_in_"])
            self._ipca = ipca
            self._sync_from_sklearn()
            return
        self.components_ = np.ascontiguousarray(arrays["components_"], dtype=_F32)
        for name in ("mean_", "var_", "singular_values_", "explained_variance_"):
            setattr(self, name, np.asarray(arrays[name]).astype(_F64))
        ratio = np.asarray(arrays["explained_variance_ratio_"])
        self.explained_variance_ratio_ = ratio.astype(_F64)
        self.noise_variance_ = float(arrays["noise_variance_"])
        self.n_samples_seen_ = int(arrays["n_samples_seen_"])
        self.n_components_ = int(arrays["n_components_"])
        self.n_features_in_ = int(arrays["n_features_in_"])

    def _sync_from_sklearn(self) -> None:
        for name in _LEARNED:
            setattr(self, name, getattr(self._ipca, name))
