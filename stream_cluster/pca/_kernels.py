"""Numerical kernels of :class:`stream_cluster.pca.StreamingPCA`: column-block passes.

Private: the estimator and its memory model (``stream_cluster.pca``) and the update drivers
(``stream_cluster._pca_update``) call these; the tuning constants live here and are read at call
time through this module, so a test can patch them in one place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import scipy.linalg

# Column width of the pieces the running mean/variance is computed on: small enough that the
# float64 temporary (8 * batch * width bytes, per thread) stays in a core's L2 cache.
_STATS_COLUMNS = 128
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
_F32 = np.float32
_F64 = np.float64


def _spans(start: int, stop: int, width: int) -> Iterator[tuple[int, int]]:
    for lo in range(start, stop, width):
        yield lo, min(lo + width, stop)


def _combine(
    last_mean: Any, last_var: Any, n_seen: int, new_sum: Any, new_unnormalized: Any, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's ``_incremental_mean_and_var`` merge of running and batch statistics, operation
    for operation (so the results are bitwise sklearn's), for ``n_seen > 0`` finite data.

    ``new_sum`` and ``new_unnormalized`` are the batch's float64 column sums and sums of squared
    deviations (with sklearn's correction term); NaN/inf are rejected later from the Gram matrix.
    """
    w = new_sum.shape[0]
    last_count = np.repeat(n_seen, w).astype(_F64)
    last_sum = last_mean * last_count
    new_count = np.full(w, float(n))
    updated_count = last_count + new_count
    updated_mean = (last_sum + new_sum) / updated_count
    last_over_new = last_count / new_count
    updated_unnormalized = (
        last_var * last_count
        + new_unnormalized
        + last_over_new / updated_count * (last_sum / last_over_new - new_sum) ** 2
    )
    return updated_mean, updated_unnormalized / updated_count


def _batch_block(
    buf: np.ndarray,
    X: np.ndarray,
    corr: np.ndarray | None,
    c0: int,
    c1: int,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Contiguous float32 rows [X_c; mean correction] of columns c0:c1 (syrk-friendly).

    With ``scale``, the rows of X are multiplied by it (in float64, rounded once to float32):
    a merge's lower block ``diag(sigma_b) V_b`` is formed a block at a time, never whole.
    """
    n = X.shape[0]
    q = n if corr is None else n + 1
    Y = buf[: q * (c1 - c0)].reshape(q, c1 - c0)
    if scale is None:
        Y[:n] = X[:, c0:c1]
    else:
        np.multiply(X[:, c0:c1], scale[:, None], out=Y[:n])
    if corr is not None:
        Y[n] = corr[c0:c1]
    return Y


def _batch_block64(
    X: np.ndarray,
    corr: np.ndarray | None,
    c0: int,
    c1: int,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    n = X.shape[0]
    Y = np.empty((n if corr is None else n + 1, c1 - c0), dtype=_F64)
    Y[:n] = X[:, c0:c1]
    if scale is not None:
        Y[:n] *= scale[:, None]
    if corr is not None:
        Y[n] = corr[c0:c1]
    return Y


def _centre_and_project(
    X: np.ndarray, V: np.ndarray, mean: np.ndarray, cb: int, scale: Any = None
) -> np.ndarray:
    """``float32((X * scale - mean) @ V.T)``: centred in float32 blocks, summed in float64."""
    n, d = X.shape
    out = np.zeros((n, V.shape[0]), dtype=_F64)
    mean32 = mean.astype(_F32)
    buf = np.empty(n * cb, dtype=_F32)
    for c0, c1 in _spans(0, d, cb):
        centred = buf[: n * (c1 - c0)].reshape(n, c1 - c0)
        if scale is None:
            np.subtract(X[:, c0:c1], mean32[c0:c1], out=centred, casting="unsafe")
        else:
            np.multiply(X[:, c0:c1], _F32(scale), out=centred, casting="unsafe")
            centred -= mean32[c0:c1]
        out += centred @ V[:, c0:c1].T
    return out.astype(_F32)


def _scale_old_block(G: np.ndarray, sigma: np.ndarray) -> None:
    """Turn Gram blocks of V into those of diag(sigma) V and mirror the off-diagonal block."""
    p = sigma.shape[0]
    if p:
        G[:p, :p] *= np.outer(sigma, sigma)
        G[:p, p:] *= sigma[:, None]
        G[p:, :p] = G[:p, p:].T


def _eigh_descending(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All eigenpairs of symmetric G, largest first (divide and conquer, G overwritten).

    Computing only the kept pairs (``dsytrd``, MRRR on the tridiagonal, the reflectors applied
    to those) was measured slower on two idle cores at the seed size (the stage 1.02x,
    ``benchmarks/pca_bound.py --compare base,top-k``; ``benchmarks/RESULTS_pca_bound.md``).
    """
    # All BLAS threads: 0.85 s instead of 1.35 s at m=1932 on 2 idle cores. LAPACK's
    # tridiagonalisation makes many small BLAS calls, so a CPU-bound process of equal priority
    # on the other core makes two threads slower than one (2.2 s); the pipeline therefore runs
    # its background decoders at low priority (measured 0.85 s beside a nice-19 busy loop).
    lam, U = scipy.linalg.eigh(G, overwrite_a=True, check_finite=False, driver="evd")
    return lam[::-1], U[:, ::-1]


def _track_signs(block: np.ndarray, best: np.ndarray, sign: np.ndarray) -> None:
    """Keep, per row, the sign of the first entry of largest magnitude seen so far.

    From each row's max and min (two reads, no write): the larger magnitude decides; a row
    whose max and min have the same magnitude (a tie between +v and -v) takes the first of
    them, as ``argmax(abs(row))`` would.
    """
    hi = block.max(axis=1)
    lo = block.min(axis=1)
    vals = np.maximum(hi, -lo)
    better = vals > best  # strict: an earlier column wins a tie, as np.argmax does
    if not better.any():
        return
    new_sign = np.where(hi >= -lo, 1.0, -1.0).astype(block.dtype)
    for i in np.flatnonzero(better & (hi == -lo) & (hi != 0)):
        row = block[i]
        new_sign[i] = np.sign(row[np.argmax(np.abs(row))])
    best[better] = vals[better]
    sign[better] = new_sign[better]


def _complete(
    V: np.ndarray, rows: np.ndarray, cb: int, seed: int, best: np.ndarray, sign: np.ndarray
) -> None:
    """Replace V[rows] by orthonormal rows orthogonal to the other rows of V.

    Deterministic pseudo-random rows (seeded by ``seed`` and the block) are orthogonalised
    against the other components and then among themselves (Cholesky QR), twice ("twice is
    enough"): one float32 round leaves them orthogonal to the others only to about eps32 times
    the condition of their residual, which a nearly full basis makes large (1e-5 to 1e-4
    measured with k = d); the second round starts from orthonormal rows, so nothing is amplified.
    """
    k, d = V.shape
    j = rows.size

    def random_block(c0: int, c1: int) -> np.ndarray:
        return np.random.default_rng([seed, c0]).standard_normal((j, c1 - c0), dtype=_F32)

    def own_block(c0: int, c1: int) -> np.ndarray:
        return V[rows, c0:c1]

    def project_out(block: Callable[[int, int], np.ndarray]) -> np.ndarray:
        # V[rows] <- block minus its components along the other rows; returns its Gram matrix
        C = np.zeros((j, k), dtype=_F64)
        for c0, c1 in _spans(0, d, cb):
            C += block(c0, c1) @ V[:, c0:c1].T
        C[:, rows] = 0.0
        C32 = C.astype(_F32)
        H = np.zeros((j, j), dtype=_F64)
        for c0, c1 in _spans(0, d, cb):
            R = block(c0, c1) - C32 @ V[:, c0:c1]
            V[rows, c0:c1] = R
            H += R.astype(_F64) @ R.T.astype(_F64)
        return H

    def normalise(H: np.ndarray, signs: bool) -> None:
        L = np.linalg.cholesky(H)
        T = scipy.linalg.solve_triangular(L, np.eye(j), lower=True).astype(_F32)
        for c0, c1 in _spans(0, d, cb):
            block = T @ V[rows, c0:c1]
            V[rows, c0:c1] = block
            if signs:
                _track_signs(block, best_j, sign_j)

    best_j = np.full(j, -1.0, dtype=_F32)
    sign_j = np.ones(j, dtype=_F32)
    normalise(project_out(random_block), signs=False)
    normalise(project_out(own_block), signs=True)
    best[rows] = best_j
    sign[rows] = sign_j


def _gram_block(
    G: np.ndarray,
    X: np.ndarray,
    V: np.ndarray | None,
    corr: np.ndarray | None,
    ybuf: np.ndarray,
    p: int,
    c0: int,
    c1: int,
    scale: np.ndarray | None = None,
) -> None:
    """Add columns c0:c1 of the (centred) stack to its Gram matrix (old block unscaled)."""
    Y = _batch_block(ybuf, X, corr, c0, c1, scale)
    G[p:, p:] += Y @ Y.T
    if V is not None:
        G[:p, p:] += V[:, c0:c1] @ Y.T


def _gram64(
    X: np.ndarray,
    V: np.ndarray | None,
    corr: np.ndarray | None,
    p: int,
    q: int,
    cb: int,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Gram matrix of the (already centred) stack with float64 GEMMs, unscaled old block."""
    n, d = X.shape
    G = np.zeros((p + q, p + q), dtype=_F64)
    for s0, s1 in _spans(0, d, max(1, cb // _PRECISE_DIVISOR)):
        Y = _batch_block64(X, corr, s0, s1, scale)
        G[p:, p:] += Y @ Y.T
        if V is not None:
            Vb = V[:, s0:s1].astype(_F64)
            G[:p, :p] += Vb @ Vb.T
            G[:p, p:] += Vb @ Y.T
    return G


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
    scale: np.ndarray | None = None,
    out: np.ndarray | None = None,
) -> None:
    """Pass 2: out[:, blk] <- [A B] [V[:, blk]; Y[:, blk]], tracking svd_flip signs.

    One GEMM over the stacked block (inner dimension p + q) instead of ``A V`` and ``B Y``
    added afterwards: no pass over a (k, cb) sum, and the larger inner dimension runs nearer
    the SGEMM peak. ``out`` defaults to V (in place: each block of V is copied into the stack
    before it is overwritten).
    """
    out = V if out is None else out
    n, d = X.shape
    k, p = A.shape
    q = B.shape[1]
    AB32 = np.empty((k, p + q), dtype=_F32)
    AB32[:, :p] = A
    AB32[:, p:] = B
    A_p, B_p = A[precise], B[precise]
    zbuf = np.empty((p + q) * cb, dtype=_F32)
    sub = max(1, cb // _PRECISE_DIVISOR)
    for c0, c1 in _spans(0, d, cb):
        w = c1 - c0
        Z = zbuf[: (p + q) * w].reshape(p + q, w)
        if p:
            Z[:p] = V[:, c0:c1]
        _batch_block(zbuf[p * w :], X, corr, c0, c1, scale)  # rows p: of Z
        if precise.size:
            exact = np.empty((precise.size, w), dtype=_F32)
            for s0, s1 in _spans(c0, c1, sub):
                part = B_p @ _batch_block64(X, corr, s0, s1, scale)
                if p:
                    part += A_p @ V[:, s0:s1].astype(_F64)
                exact[:, s0 - c0 : s1 - c0] = part
        Vb = np.matmul(AB32, Z, out=out[:, c0:c1])
        if precise.size:
            Vb[precise] = exact
        _track_signs(Vb, best, sign)
