"""The parts of :class:`~stream_cluster.pca.StreamingPCA` that are not fitting: its state
(``get_state``/``from_state``, what checkpoints and ``model.h5`` hold), ``merge``, and
``inverse_transform`` and the scikit-learn hooks. A base class the estimator inherits, so the
estimator's module stays readable; nothing here imports it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np
from sklearn.decomposition import IncrementalPCA
from sklearn.utils.validation import check_array

from stream_cluster.errors import ConfigError, StoreError
from stream_cluster.pca._kernels import _F32, _F64
from stream_cluster.pca._merge import gram_merge, merged_n_components
from stream_cluster.pca._state import LEARNED as _LEARNED

__all__ = ["StateAndMerge"]

_Base: Any = object  # the estimator's methods and attributes are reached through self


class StateAndMerge(_Base):  # type: ignore[misc]
    """State, merge, inverse transform and scikit-learn hooks of :class:`StreamingPCA`."""

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
    def from_state(cls, state: Mapping[str, np.ndarray]) -> Self:
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

    def merge(self, other: Self, *, n_components: int | None = None) -> Self:
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
