"""The Gram-matrix update behind :meth:`stream_cluster.pca.streaming.StreamingPCA.partial_fit`.

Private. The drivers here run the column-block kernels of ``_pca_kernels`` over the stack and
return the learned attributes; the tuning constants are read through that module at call time.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

import stream_cluster.pca._kernels as _k
from stream_cluster.pca._kernels import (
    _F32,
    _F64,
    _combine,
    _complete,
    _eigh_descending,
    _gram64,
    _gram_block,
    _project,
    _scale_old_block,
    _spans,
)
from stream_cluster.pca._state import FittedState

# The public module's logger: users configure "stream_cluster.pca.streaming" for the whole
# estimator.
logger = logging.getLogger("stream_cluster.pca.streaming")


def gram_partial_fit(
    X: np.ndarray, k: int, block_columns: int, prev: FittedState | None
) -> dict[str, Any]:
    """One ``partial_fit`` update of a fitted model ``prev`` (None: first batch) by batch ``X``.

    ``X`` (float32, C-contiguous) is centred in place. The previous components are overwritten
    in place and returned as the new ``components_``. Returns the learned attributes by their
    sklearn names; raises ValueError (before touching ``prev``) if ``X`` holds NaN or inf.
    """
    n, d = X.shape
    first = prev is None
    n_seen = 0 if prev is None else int(prev.n_samples_seen_)
    n_total = n_seen + n
    sigma = np.zeros(0) if prev is None else prev.singular_values_
    V = None if prev is None else prev.components_
    p = 0 if first else k  # rows of the old-components block of the stack
    q = n if first else n + 1  # rows of the batch block (+ mean-correction row)
    m = p + q
    cb = min(int(block_columns), d)
    mean = np.empty(d, dtype=_F64)
    var = np.empty(d, dtype=_F64)
    corr = None if first else np.empty(d, dtype=_F64)
    ybuf = np.empty(q * cb, dtype=_F32)

    # Float64 from the start where it is nearly free (small problems: float32 Gram matrices of
    # a few columns lose orthonormality at eigenvalue ratios of 1e-4, where large ones average
    # the rounding out) or where the float32 pass would only be redone: a first batch keeping
    # at least half its rows keeps directions near its rank, measured below _FAST_RTOL.
    exact = m * m * d <= _k._FLOAT64_FLOPS or (first and 2 * k >= n)

    # Pass 1: statistics, centring, and the Gram matrix from float32 GEMMs summed in float64
    # (the float64 route builds its own after the pass).
    G = np.zeros((0, 0) if exact else (m, m), dtype=_F64)

    def stats(span: tuple[int, int]) -> None:
        _stats_and_centre(X, *span, n_seen, mean, var, corr, prev)

    with ThreadPoolExecutor(_k._STATS_THREADS, thread_name_prefix="pca-stats") as pool:
        for c0, c1 in _spans(0, d, cb):
            # One share of the block per thread; list() waits for every share (and re-raises a
            # failure) before the GEMMs.
            share = -(-(c1 - c0) // _k._STATS_THREADS)
            list(pool.map(stats, _spans(c0, c1, share)))
            if not exact:
                _gram_block(G, X, V, corr, ybuf, p, c0, c1)
    if not exact and p:
        # The old components' own block: rows orthonormal to float32 rounding (1.5e-7 at the
        # seed size), so V V^T is taken as I rather than computed (k^2 d flops, 0.6 s a seed
        # batch); measured against the float64 route the explained variance agrees to 2e-7
        # either way. The float64 route below computes it.
        G[:p, :p] += np.eye(p)
    V_new, new_sigma, lam = solve_stack(G, exact, X, V, sigma, corr, k, n_total, cb)
    return learned_attributes(V_new, new_sigma, lam, mean, var, n_total, k, k not in (n, d))


def solve_stack(
    G: np.ndarray,
    exact: bool,
    X: np.ndarray,
    V: np.ndarray | None,
    sigma: np.ndarray,
    corr: np.ndarray | None,
    k: int,
    n_total: int,
    cb: int,
    scale: np.ndarray | None = None,
    out: np.ndarray | None = None,
    what: str = "X",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top ``k`` of the stack ``[diag(sigma) V; diag(scale) X; corr]`` from its Gram matrix.

    ``G`` is pass 1's float32-route Gram matrix (old block unscaled), or empty when ``exact``:
    the float64 route builds its own. Eigendecomposes it (falling back to float64 when a kept
    eigenvalue is below ``_FAST_RTOL`` of the largest), then projects the new components into
    ``out`` (default: V in place, or a new array) with sklearn's signs, completing directions
    that have no variance. Returns the components, their singular values and all eigenvalues
    (clipped at 0, ``min(m, d)`` of them).
    """
    d = X.shape[1]
    p = sigma.shape[0]  # rows of the old-components block
    q = X.shape[0] + (corr is not None)  # rows of the lower block (+ mean-correction row)
    m = p + q
    if exact:
        G = _gram64(X, V, corr, p, q, cb, scale)
    if not np.isfinite(G).all():
        raise ValueError(f"{what} contains NaN or infinity.")
    _scale_old_block(G, sigma)
    lam, U = _eigh_descending(G)

    top = max(float(lam[0]), 0.0)
    precise = np.zeros(0, dtype=np.intp)
    if not exact and lam[k - 1] < _k._FAST_RTOL * top:
        logger.info(
            "Smallest kept eigenvalue is %.2e of the largest; recomputing this batch's Gram "
            "matrix in float64.",
            lam[k - 1] / top if top > 0 else 0.0,
        )
        G = _gram64(X, V, corr, p, q, cb, scale)
        _scale_old_block(G, sigma)
        lam, U = _eigh_descending(G)
        top = max(float(lam[0]), 0.0)
        exact = True
    if exact:
        small = m * m * d <= _k._FLOAT64_FLOPS
        precise = np.arange(k) if small else np.flatnonzero(lam[:k] < _k._FAST_RTOL * top)
    del G
    r = min(m, d)
    lam = np.clip(lam[:r], 0.0, None)
    new_sigma = np.sqrt(lam[:k])
    degenerate = np.flatnonzero(lam[:k] <= _k._EXACT_RTOL * top)
    if degenerate.size:
        logger.info("%d components have no resolvable direction; completing them.", degenerate.size)

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
    if out is None:
        out = np.empty((k, d), dtype=_F32) if V is None else V
    best = np.full(k, -1.0, dtype=_F32)
    sign = np.ones(k, dtype=_F32)
    _project(X, out if V is None else V, corr, A, B, precise, cb, best, sign, scale, out)
    if degenerate.size:
        _complete(out, degenerate, cb, seed=n_total, best=best, sign=sign)
    for i in np.flatnonzero(sign < 0):
        np.negative(out[i], out=out[i])
    return out, new_sigma, lam


def learned_attributes(
    V: np.ndarray,
    sigma: np.ndarray,
    lam: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    n_total: int,
    k: int,
    noise: bool,
) -> dict[str, Any]:
    """The learned attributes by their sklearn names, with sklearn's spectrum definitions.

    ``noise`` False sets ``noise_variance_`` to 0 (sklearn does when nothing was discarded).
    """
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 -> nan, as in sklearn
        ev = lam / (n_total - 1)
        ratio = lam[:k] / np.sum(var * n_total)
    return {
        "components_": V,
        "singular_values_": sigma,
        "mean_": mean,
        "var_": var,
        "n_samples_seen_": n_total,
        "explained_variance_": ev[:k],
        "explained_variance_ratio_": ratio,
        "noise_variance_": float(ev[k:].mean()) if noise else 0.0,
        "n_components_": k,
        "n_features_in_": V.shape[1],
    }


def _stats_and_centre(
    X: np.ndarray,
    s0: int,
    s1: int,
    n_seen: int,
    mean: np.ndarray,
    var: np.ndarray,
    corr: np.ndarray | None,
    prev: FittedState | None,
) -> None:
    """Update mean/var of columns s0:s1 as sklearn does and centre them in place.

    sklearn's ``_incremental_mean_and_var`` arithmetic (so ``mean_``/``var_`` are its bits)
    in pieces of ``_STATS_COLUMNS`` columns, each copied once into a float64 buffer that stays
    in the core's cache: the sums, ``x - batch_mean`` and its squares are computed there, and
    the centred values are that difference rounded once to float32. The slice is read once and
    written once (one thread: 0.55 s instead of 0.76 s for a seed batch's 129,000 columns).
    """
    n = X.shape[0]
    buf = np.empty((n, min(_k._STATS_COLUMNS, s1 - s0)), dtype=_F64)
    for c0, c1 in _spans(s0, s1, _k._STATS_COLUMNS):
        xs = X[:, c0:c1]
        temp = buf[:, : c1 - c0]
        np.copyto(temp, xs)
        new_sum = np.sum(temp, axis=0)
        batch_mean = new_sum / n
        temp -= batch_mean
        correction = np.sum(temp, axis=0)
        np.copyto(xs, temp, casting="same_kind")
        np.square(temp, out=temp)
        new_unnormalized = np.sum(temp, axis=0)
        new_unnormalized -= correction**2 / n
        if corr is None or prev is None:
            mean[c0:c1] = batch_mean
            var[c0:c1] = new_unnormalized / n
            continue
        last_mean, last_var = prev.mean_[c0:c1], prev.var_[c0:c1]
        mean[c0:c1], var[c0:c1] = _combine(
            last_mean, last_var, n_seen, new_sum, new_unnormalized, n
        )
        corr[c0:c1] = np.sqrt((n_seen / (n_seen + n)) * n) * (last_mean - batch_mean)
