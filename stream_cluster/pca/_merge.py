"""Merging fitted :class:`stream_cluster.pca.StreamingPCA` models: checks, update, fixed tree.

Private (:func:`~stream_cluster.pca.merge_tree` is the public tree of merges). A merge is
``partial_fit``'s Gram update with the batch block replaced by the other model's scaled
components (the kernels and constants of ``_pca_kernels``, the solver of ``_pca_update``);
counts, mean and variance merge exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

import stream_cluster.pca._kernels as _k
from stream_cluster.errors import ConfigError
from stream_cluster.pca._kernels import _F32, _F64, _gram_block, _spans
from stream_cluster.pca._state import FittedState
from stream_cluster.pca._update import learned_attributes, solve_stack

T = TypeVar("T")
M = TypeVar("M")


def merged_n_components(a: FittedState, b: Any, n_components: int | None) -> int:
    """Check that ``a`` and ``b`` can be merged and return the result's ``n_components``."""
    if not isinstance(b, type(a)):
        raise TypeError(f"Can only merge a {type(a).__name__}. Got {type(b).__name__} instead.")
    for which, model in (("this", a), ("the other", b)):
        if not hasattr(model, "components_"):
            raise ValueError(
                f"Cannot merge: {which} StreamingPCA is not fitted yet; call partial_fit first."
            )
    d_a, d_b = int(a.n_features_in_), int(b.n_features_in_)
    if d_a != d_b:
        raise ValueError(
            f"Cannot merge StreamingPCA models fitted on different numbers of features: "
            f"{d_a} and {d_b}."
        )
    k_a, k_b = int(a.n_components_), int(b.n_components_)
    if n_components is None:
        return min(k_a, k_b)
    limit = min(k_a + k_b + 1, d_a)
    k = n_components
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
        raise ConfigError(
            f"n_components of a merge must be an integer in [1, {limit}] (at most the "
            f"{k_a} + {k_b} + 1 rows of the merge stack and the {d_a} features). "
            f"Got {k!r} instead."
        )
    return int(k)


def merge_mean_var(
    mean_a: np.ndarray, var_a: np.ndarray, n_a: int, mean_b: np.ndarray, var_b: np.ndarray, n_b: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the union of two sets (Chan, Golub & LeVeque).

    Written as sklearn's ``_incremental_mean_and_var`` with set ``a`` as the running statistics
    and ``b`` as the new batch, so a merge equals the sequential statistics to float rounding.
    """
    last_count, new_count = float(n_a), float(n_b)
    updated_count = last_count + new_count
    last_sum = mean_a * last_count
    new_sum = mean_b * new_count
    mean = (last_sum + new_sum) / updated_count
    last_over_new = last_count / new_count
    unnormalized = (
        var_a * last_count
        + var_b * new_count
        + last_over_new / updated_count * (last_sum / last_over_new - new_sum) ** 2
    )
    return mean, unnormalized / updated_count


def gram_merge(a: FittedState, b: FittedState, k: int, block_columns: int) -> dict[str, Any]:
    """The learned attributes of the merge of fitted models ``a`` and ``b``, ``k`` components.

    The stack ``[diag(s_a) V_a; diag(s_b) V_b; sqrt(n_a n_b / n) (mean_a - mean_b)]`` is never
    formed: pass 1 sums its Gram matrix over column blocks (float32 GEMMs summed in float64,
    with ``V_a V_a^T`` taken as the identity, as in ``partial_fit``; float64 where
    ``partial_fit`` would use float64), pass 2 writes the new components into a new array.
    Neither input is modified.
    """
    n_a, n_b = int(a.n_samples_seen_), int(b.n_samples_seen_)
    n = n_a + n_b
    mean_a = np.asarray(a.mean_, dtype=_F64)
    mean_b = np.asarray(b.mean_, dtype=_F64)
    mean, var = merge_mean_var(mean_a, a.var_, n_a, mean_b, b.var_, n_b)
    corr = np.sqrt((n_a / n) * n_b) * (mean_a - mean_b)
    V_a = np.ascontiguousarray(a.components_, dtype=_F32)
    V_b = np.ascontiguousarray(b.components_, dtype=_F32)
    sigma_a = np.asarray(a.singular_values_, dtype=_F64)
    sigma_b = np.asarray(b.singular_values_, dtype=_F64)
    d = V_a.shape[1]
    p, q = V_a.shape[0], V_b.shape[0] + 1
    m = p + q
    cb = min(int(block_columns), d)
    exact = m * m * d <= _k._FLOAT64_FLOPS
    G = np.zeros((0, 0) if exact else (m, m), dtype=_F64)
    if not exact:
        ybuf = np.empty(q * cb, dtype=_F32)
        for c0, c1 in _spans(0, d, cb):
            _gram_block(G, V_b, V_a, corr, ybuf, p, c0, c1, sigma_b)
        del ybuf
        G[:p, :p] += np.eye(p)
    out = np.empty((k, d), dtype=_F32)
    V, sigma, lam = solve_stack(
        G, exact, V_b, V_a, sigma_a, corr, k, n, cb, sigma_b, out, what="A merged model"
    )
    return learned_attributes(V, sigma, lam, mean, var, n, k, lam.size > k)


def reduce_tree(items: Sequence[T], load: Callable[[T], M], merge: Callable[[M, M], M]) -> M:
    """Merge ``items`` in the fixed binary tree by index: (0,1), (2,3), ..., then up a level.

    An odd item out moves up unmerged, so the root's left subtree holds the first ``2^j``
    items (the largest power of two below ``len(items)``); evaluated depth first, so at most
    one loaded or merged model per tree level is alive at once (``load`` is called lazily).
    """

    def subtree(lo: int, hi: int) -> M:
        if hi - lo == 1:
            return load(items[lo])
        half = 1 << ((hi - lo - 1).bit_length() - 1)
        left = subtree(lo, lo + half)
        return merge(left, subtree(lo + half, hi))

    if not items:
        raise ValueError("merge_tree needs at least one model or state. Got none.")
    return subtree(0, len(items))
