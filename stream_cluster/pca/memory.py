"""The memory model of :class:`~stream_cluster.pca.StreamingPCA`: what a planner compares with
its budget."""

from __future__ import annotations

from stream_cluster.errors import ConfigError
from stream_cluster.pca._kernels import _PRECISE_DIVISOR, _STATS_COLUMNS, _STATS_THREADS
from stream_cluster.pca._state import SOLVERS

__all__ = ["pca_memory_bytes"]


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
    if solver not in SOLVERS:
        raise ConfigError(f"solver must be one of {SOLVERS}. Got {solver!r} instead.")
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
    pass2 = 4 * (k + q) * cb + coeffs + precise  # the stacked float32 [V; Y] block
    complete = 3 * 4 * k * cb + 8 * k * k * 2  # random block, its projection, Gram and factor
    fit_peak = running + max(pass1, eigh + gram, pass2, complete + coeffs)
    transform = 4 * b * cb + 12 * b * k + 4 * d + 4 * b * k  # centred block, out, mean, GEMM
    return slack + batch + batch_copy + model + max(fit_peak, transform)
