"""Eigensolvers for the update's Gram matrix, side by side on a real one.

    python -m benchmarks.eigh_top [--corpus DIR] [--cache FILE.npy] [--repeats 7]

Fits two real batches (``--batch`` rows of the sorted corpus, as the PCA stage's first two
updates) and keeps the second update's float64 Gram matrix, ``(k + b + 1)``-square. Then times,
interleaved (round-robin, ``--repeats`` rounds), each solver on a fresh copy of it: every
eigenpair by divide and conquer (``evd``, what the update uses), only the top ``k``
(``top``: :func:`eigh_top_k`, ``dsytrd``, MRRR on the tridiagonal, reflectors applied to ``k``
vectors; tried in the update and measured slower there on two idle cores), by scipy's
``evr`` and ``evx`` with ``subset_by_index``; on 2 BLAS threads and on 1.
Prints JSON: median seconds, the ratio to ``evd`` in each round, and how far the top-``k``
eigenvalues and vectors are from ``evd``'s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits

import stream_cluster.pca._update as U
from benchmarks.pca_bound import blas_info, load_corpus
from stream_cluster.pca import StreamingPCA


def eigh_top_k(G: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The top ``k`` eigenpairs of symmetric G, largest first, and the sum of the others.

    An update keeps ``k`` of ``m`` pairs (800 of 1,932 at the seed size) and needs the others
    only through their sum, ``trace(G)`` minus the kept ones; so when ``k < m`` only the kept
    pairs are computed (G overwritten): tridiagonalise (``dsytrd``), take the top ``k`` of
    the tridiagonal by MRRR (``dstemr``) and apply the reflectors to those ``k`` vectors only
    (``dormqr``), instead of all ``m`` by divide and conquer. scipy's ``eigh(driver="evr",
    subset_by_index=...)`` is no substitute: LAPACK's ``dsyevr`` runs MRRR only for the whole
    spectrum and falls back to bisection and inverse iteration for a subset (measured 1.2-1.5x
    slower than ``evd`` at the seed size, where this route took 0.85-0.9x ``evd``'s time).
    """
    # All BLAS threads. LAPACK's tridiagonalisation makes many small BLAS calls, so a CPU-bound
    # process of equal priority on the other core makes two threads slower than one; the
    # pipeline therefore runs its background decoders at low priority.
    m = G.shape[0]
    trace = float(np.trace(G))
    if k >= m:
        lam, U = scipy.linalg.eigh(G, overwrite_a=True, check_finite=False, driver="evd")
        return lam[::-1], U[:, ::-1], trace - float(np.sum(lam))
    lapack = scipy.linalg.lapack
    # G.T is G (symmetric) and Fortran-ordered: LAPACK works on it in place.
    lwork = int(lapack.dsytrd_lwork(m, lower=1)[0])
    refl, diag, off, tau, info = lapack.dsytrd(G.T, lower=1, lwork=lwork, overwrite_a=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"dsytrd failed (info={info}).")
    lam, Z = scipy.linalg.eigh_tridiagonal(
        diag,
        off,
        select="i",
        select_range=(m - k, m - 1),
        lapack_driver="stemr",
        check_finite=False,
    )
    # Q = H(1) ... H(m-1); H(i)'s vector lies below the subdiagonal of column i, so Q acts on
    # rows 1: as the Q of a QR factorisation stored in refl[1:, :-1] (LAPACK's dormtr, lower).
    lwork = int(lapack.dormqr("L", "N", refl[1:, :-1], tau, Z[1:], -1)[1][0])
    Z[1:], _, info = lapack.dormqr("L", "N", refl[1:, :-1], tau, Z[1:], lwork)
    if info != 0:
        raise np.linalg.LinAlgError(f"dormqr failed (info={info}).")
    return lam[::-1], Z[:, ::-1], trace - float(np.sum(lam))


def capture_gram(rows: np.ndarray, k: int, b: int) -> np.ndarray:
    """The float64 Gram matrix the second update eigendecomposes."""
    model = StreamingPCA(k, copy=False)
    model.partial_fit(np.multiply(rows[:b], np.float32(1 / 255)))
    grabbed: list[np.ndarray] = []
    orig = U._eigh_descending

    def grab(G: np.ndarray, *a: Any) -> Any:
        grabbed.append(G.copy())
        return orig(G, *a)

    U._eigh_descending = grab  # type: ignore[assignment]
    try:
        model.partial_fit(np.multiply(rows[b : 2 * b], np.float32(1 / 255)))
    finally:
        U._eigh_descending = orig
    return grabbed[0]


def solve(G: np.ndarray, k: int, driver: str) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` eigenpairs, largest first, by ``driver`` (``evd``: all, then sliced)."""
    m = G.shape[0]
    if driver == "top":
        lam, V, _ = eigh_top_k(G, k)
        return lam, V
    if driver == "evd":
        lam, V = scipy.linalg.eigh(G, overwrite_a=True, check_finite=False, driver="evd")
    else:
        lam, V = scipy.linalg.eigh(
            G, overwrite_a=True, check_finite=False, driver=driver, subset_by_index=[m - k, m - 1]
        )
    return lam[::-1][:k], V[:, ::-1][:, :k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("/work/data/clipart"))
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--batch", type=int, default=1131)
    ap.add_argument("--components", type=int, default=800)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    k, b = args.components, args.batch
    G = capture_gram(load_corpus(args.corpus, 2 * b, args.cache), k, b)
    drivers = ("evd", "top", "evr", "evx")
    cases = [(drv, t) for t in (2, 1) for drv in drivers]
    times: dict[str, list[float]] = {f"{d}/{t}": [] for d, t in cases}
    results: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for _ in range(args.repeats):
        for drv, threads in cases:
            A = G.copy()
            with threadpool_limits(threads, user_api="blas"):
                t0 = time.perf_counter()
                results[drv] = solve(A, k, drv)
                times[f"{drv}/{threads}"].append(time.perf_counter() - t0)
    lam0, V0 = results["evd"]
    out: dict[str, Any] = {"m": G.shape[0], "k": k, "blas": blas_info()}
    out["median_s"] = {key: round(float(np.median(v)), 4) for key, v in times.items()}
    for t in (2, 1):
        base = np.asarray(times[f"evd/{t}"])
        for drv in drivers[1:]:
            ratio = np.asarray(times[f"{drv}/{t}"]) / base
            out[f"ratio_{drv}_vs_evd_{t}threads"] = {
                "median": round(float(np.median(ratio)), 3),
                "per_round": [round(float(r), 3) for r in ratio],
            }
    for drv in drivers[1:]:
        lam, V = results[drv]
        cos = np.abs(np.einsum("ij,ij->j", V0, V))
        out[f"{drv}_vs_evd"] = {
            "eigenvalue_max_abs_over_top": float(np.max(np.abs(lam - lam0)) / lam0[0]),
            "eigenvalue_max_rel": float(np.max(np.abs(lam - lam0) / np.abs(lam0))),
            "min_abs_cos_vectors": float(cos.min()),
            "orthonormality": float(np.abs(V.T @ V - np.eye(k)).max()),
        }
    out["evd_orthonormality"] = float(np.abs(V0.T @ V0 - np.eye(k)).max())
    out["smallest_kept_over_top"] = float(lam0[k - 1] / lam0[0])
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
