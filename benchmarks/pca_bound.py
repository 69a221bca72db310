"""The PCA stage against its GEMM bound, broken down; and side-by-side variants of the update.

    python -m benchmarks.pca_bound [--corpus DIR] [--images N] [--batch 1131] [--components 800]
    python -m benchmarks.pca_bound --compare base,top-k [--repeats 1] ...

Fits ``StreamingPCA`` over the first ``--images`` real images of the corpus (sorted relative
paths, read grey with OpenCV, kept as uint8 and scaled to float32 0..1 per batch as the run's
``read_scaled`` does; the scaling is timed apart) in batches of ``--batch`` rows, exactly the
``partial_fit`` calls of a run's PCA stage at that batch size. Every update is timed by part,
by wrapping the private kernels the update calls: statistics and centring, Gram GEMMs, float64
Gram, eigh, projection GEMMs, copies into contiguous blocks, sign tracking, the rest. The SGEMM
(and DGEMM) rate is measured in the same process at the update's own shapes, before and after
the stage, and the GEMM bound is ``flops / rate`` with the flops counted from the shapes:
Gram ``q^2 d`` (syrk) + ``2pqd``, projection ``2k(p + q)d``, ``p`` old rows, ``q`` new rows.

``--compare A,B``: two models fitted on the same batches, alternating which goes first, each
update under its variant's patches (``VARIANTS``); prints per-batch times, the median ratio
B/A and how far the two fits' results are apart. Prints JSON; ``--json FILE`` writes it too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import threadpoolctl

import stream_cluster.pca._kernels as K
import stream_cluster.pca._update as U
from stream_cluster.pca import StreamingPCA

# ------------------------------------------------------------------ data


def load_corpus(corpus: Path, n: int, cache: Path | None) -> np.ndarray:
    """The first ``n`` images (sorted relative paths) as uint8 rows, cached as .npy if asked."""
    if cache is not None and cache.exists():
        arr = np.load(cache, mmap_mode="r")
        if arr.shape[0] >= n:
            return np.ascontiguousarray(arr[:n])
    import cv2

    paths = sorted(p.relative_to(corpus).as_posix() for p in corpus.rglob("*.png"))[:n]
    first = cv2.imread(str(corpus / paths[0]), cv2.IMREAD_GRAYSCALE)
    out = np.empty((len(paths), first.size), dtype=np.uint8)
    for i, rel in enumerate(paths):
        out[i] = cv2.imread(str(corpus / rel), cv2.IMREAD_GRAYSCALE).reshape(-1)
    if cache is not None:
        np.save(cache, out)
    return out


# ------------------------------------------------------------------ timing by part


class Parts:
    """Seconds per named part of the current update (wall time of the wrapped calls)."""

    def __init__(self) -> None:
        self.sec: dict[str, float] = defaultdict(float)
        self.phase = "pass1"

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.sec[name] += time.perf_counter() - t0


def _wrap(mod: Any, name: str, parts: Parts, label: Callable[[], str], phase: str | None = None):
    orig = getattr(mod, name)

    def wrapper(*a: Any, **kw: Any) -> Any:
        if name == "_project":  # components projected in float64 (the precise path)
            parts.sec["n_precise"] += float(np.asarray(a[5]).size)
        prev = parts.phase
        if phase is not None:
            parts.phase = phase
        try:
            with parts.timed(label()):
                return orig(*a, **kw)
        finally:
            parts.phase = prev

    return orig, wrapper


@contextlib.contextmanager
def instrumented(parts: Parts) -> Iterator[None]:
    """Patch the update's kernels with timers for the duration (restored on exit)."""
    specs = [
        (U, "solve_stack", lambda: "solve", "solve"),
        (U, "_gram_block", lambda: "gram", "gram"),
        (U, "_gram64", lambda: "gram64", "gram64"),
        (U, "_eigh_descending", lambda: "eigh", "eigh"),
        (U, "_project", lambda: "project", "project"),
        (U, "_complete", lambda: "complete", None),
        (U, "learned_attributes", lambda: "attributes", None),
        (K, "_batch_block", lambda: f"copy:{parts.phase}", None),
        (K, "_batch_block64", lambda: f"copy64:{parts.phase}", None),
        (K, "_track_signs", lambda: "signs", None),
    ]
    saved = []
    for mod, name, label, phase in specs:
        if hasattr(mod, name):
            orig, wrapper = _wrap(mod, name, parts, label, phase)
            saved.append((mod, name, orig))
            setattr(mod, name, wrapper)
    try:
        yield
    finally:
        for mod, name, orig in reversed(saved):
            setattr(mod, name, orig)


def breakdown(sec: dict[str, float], total: float) -> dict[str, float]:
    """Exclusive seconds per category from the (nested) wrapped-call times of one update."""
    s = defaultdict(float, sec)
    gram_gemm = s["gram"] - s["copy:gram"]
    project_gemm = s["project"] - s["copy:project"] - s["copy64:project"] - s["signs"]
    solve_rest = s["solve"] - s["gram64"] - s["eigh"] - s["project"] - s["complete"]
    pass1 = total - s["solve"] - s["attributes"]  # validation, statistics, centring, Gram
    return {
        "stats_centre": pass1 - s["gram"],
        "gram_gemm": gram_gemm,
        "gram_copy": s["copy:gram"],
        "gram64": s["gram64"],
        "eigh": s["eigh"],
        "project_gemm": project_gemm,
        "project_copy": s["copy:project"] + s["copy64:project"],
        "signs": s["signs"],
        "complete": s["complete"],
        "solve_other": solve_rest + s["attributes"],
        "n_precise": s["n_precise"],
    }


def update_flops(n: int, k: int, d: int, first: bool) -> dict[str, float]:
    """Flops of one update's float32 GEMMs as the update runs them (syrk counted as q^2 d)."""
    p = 0 if first else k
    q = n if first else n + 1
    return {
        "gram_syrk": float(q * q * d),
        "gram_cross": float(2 * p * q * d),
        "project": float(2 * k * (p + q) * d),
    }


# ------------------------------------------------------------------ GEMM rates


def gemm_rates(k: int, q: int, cb: int, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of the update's GEMM shapes on one column block, median of ``reps`` timings."""
    rng = np.random.default_rng(0)
    Y = rng.random((q, cb), dtype=np.float32)
    V = rng.random((k, cb), dtype=np.float32)
    B = rng.random((k, q), dtype=np.float32)
    Y64 = Y[:, : cb // K._PRECISE_DIVISOR].astype(np.float64)

    def rate(f: Callable[[], object], flops: float) -> float:
        f()
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return flops / float(np.median(ts)) / 1e9

    return {
        "sgemm_gram_VYt": rate(lambda: V @ Y.T, 2.0 * k * q * cb),
        "ssyrk_YYt": rate(lambda: Y @ Y.T, 1.0 * q * q * cb),
        "sgemm_proj_BY": rate(lambda: B @ Y, 2.0 * k * q * Y.shape[1]),
        "dsyrk_YYt": rate(lambda: Y64 @ Y64.T, 1.0 * q * q * Y64.shape[1]),
    }


def batch_bound(row: dict[str, Any], rates: dict[str, float]) -> dict[str, float]:
    """One update's GEMM bound (s): at the V Y^T SGEMM rate, and each shape at its own rate."""
    flops = row["flops_gram_syrk"] + row["flops_gram_cross"] + row["flops_project"]
    shaped = (
        row["flops_gram_syrk"] / rates["ssyrk_YYt"]
        + row["flops_gram_cross"] / rates["sgemm_gram_VYt"]
        + row["flops_project"] / rates["sgemm_proj_BY"]
    )
    return {"bound_s": flops / rates["sgemm_gram_VYt"] / 1e9, "bound_by_shape_s": shaped / 1e9}


# ------------------------------------------------------------------ variants


#: Components the top-k variant keeps (set by main from --components).
TOP_K = 800


def _eigh_top_k(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Only the kept pairs (benchmarks/eigh_top.py); the discarded eigenvalues, which the update
    uses only through their mean, are given as that mean."""
    from benchmarks.eigh_top import eigh_top_k

    m, k = G.shape[0], min(TOP_K, G.shape[0])
    lam, Uv, rest = eigh_top_k(G, k)
    return np.concatenate([lam, np.full(m - k, rest / max(m - k, 1))]), Uv


def _project_two_gemms(
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
    """The projection before the stacked GEMM: ``A V`` and ``B Y`` into two buffers, then added."""
    out = V if out is None else out
    n, d = X.shape
    k, p = A.shape
    q = B.shape[1]
    A32, B32 = A.astype(np.float32), B.astype(np.float32)
    A_p, B_p = A[precise], B[precise]
    ybuf = np.empty(q * cb, dtype=np.float32)
    buf1 = np.empty(k * cb, dtype=np.float32)
    buf2 = np.empty(k * cb, dtype=np.float32)
    sub = max(1, cb // K._PRECISE_DIVISOR)
    for c0, c1 in K._spans(0, d, cb):
        w = c1 - c0
        Y = K._batch_block(ybuf, X, corr, c0, c1, scale)
        Vb = out[:, c0:c1]
        new = np.matmul(B32, Y, out=buf1[: k * w].reshape(k, w))
        if precise.size:
            exact = np.empty((precise.size, w), dtype=np.float32)
            for s0, s1 in K._spans(c0, c1, sub):
                part = B_p @ K._batch_block64(X, corr, s0, s1, scale)
                if p:
                    part += A_p @ V[:, s0:s1].astype(np.float64)
                exact[:, s0 - c0 : s1 - c0] = part
        if p:
            old = np.matmul(A32, V[:, c0:c1], out=buf2[: k * w].reshape(k, w))
            np.add(old, new, out=Vb)
        else:
            Vb[...] = new
        if precise.size:
            Vb[precise] = exact
        _track_signs_abs_argmax(Vb, buf1[: k * w].reshape(k, w), best, sign)


def _track_signs_abs_argmax(
    block: np.ndarray, scratch: np.ndarray, best: np.ndarray, sign: np.ndarray
) -> None:
    """The sign tracking before the max/min form: abs into a scratch block, then argmax."""
    mag = np.abs(block, out=scratch)
    idx = np.argmax(mag, axis=1)
    rows = np.arange(block.shape[0])
    vals = mag[rows, idx]
    better = vals > best
    best[better] = vals[better]
    sign[better] = np.sign(block[rows[better], idx[better]])


def _stats_wide_slices(
    X: np.ndarray, s0: int, s1: int, n_seen: int, mean: Any, var: Any, corr: Any, prev: Any
) -> None:
    """The statistics before the fused pass: 1,024-column slices, sklearn's function as is (its
    float64 temporary out of cache), then the float32 batch mean and a separate centring pass."""
    n = X.shape[0]
    for c0, c1 in K._spans(s0, s1, 1024):
        xs = X[:, c0:c1]
        if corr is None or prev is None:
            mean[c0:c1], var[c0:c1] = _mean_and_var_sklearn(xs, 0, 0.0, 0.0)
            xs -= mean[c0:c1]
            continue
        m, v = _mean_and_var_sklearn(xs, n_seen, prev.mean_[c0:c1], prev.var_[c0:c1])
        mean[c0:c1], var[c0:c1] = m, v
        batch_mean = np.mean(xs, axis=0)
        xs -= batch_mean
        corr[c0:c1] = np.sqrt((n_seen / (n_seen + n)) * n) * (prev.mean_[c0:c1] - batch_mean)


def _mean_and_var_sklearn(xs: np.ndarray, n_seen: int, last_mean: Any, last_var: Any) -> Any:
    n, w = xs.shape
    new_sum = np.sum(xs, axis=0, dtype=np.float64)
    temp = xs - new_sum / n
    correction = np.sum(temp, axis=0)
    temp **= 2
    new_unnormalized = np.sum(temp, axis=0) - correction**2 / n
    if n_seen == 0:
        return new_sum / n, new_unnormalized / n
    return K._combine(last_mean, last_var, n_seen, new_sum, new_unnormalized, n)


def _track_signs_abs_argmax_3(block: np.ndarray, best: np.ndarray, sign: np.ndarray) -> None:
    _track_signs_abs_argmax(block, np.empty_like(block), best, sign)


def _eigh_float32(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every eigenpair in single precision (ssyevd), returned as float64 (the f32-eigh variant)."""
    import scipy.linalg

    lam, U = scipy.linalg.eigh(
        G.astype(np.float32), overwrite_a=True, check_finite=False, driver="evd"
    )
    return lam[::-1].astype(np.float64), U[:, ::-1].astype(np.float64)


VARIANTS: dict[str, dict[tuple[Any, str], Any]] = {
    "base": {},
    "f32-eigh": {(U, "_eigh_descending"): _eigh_float32},
    "top-k": {(U, "_eigh_descending"): _eigh_top_k},
    "two-gemms": {(U, "_project"): _project_two_gemms},
    "wide-stats": {(U, "_stats_and_centre"): _stats_wide_slices},
    "abs-argmax-signs": {(K, "_track_signs"): _track_signs_abs_argmax_3},
    "before": {
        (U, "_project"): _project_two_gemms,
        (U, "_stats_and_centre"): _stats_wide_slices,
    },
}


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    """Apply a variant's patches (module attribute -> replacement) for the duration."""
    patches = VARIANTS[name]
    saved = [(mod, attr, getattr(mod, attr)) for (mod, attr) in patches]
    for (mod, attr), value in patches.items():
        setattr(mod, attr, value)
    try:
        yield
    finally:
        for mod, attr, orig in saved:
            setattr(mod, attr, orig)


# ------------------------------------------------------------------ drivers


def batches(rows: np.ndarray, b: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + b, rows.shape[0])) for lo in range(0, rows.shape[0], b)]


def scale_into(rows: np.ndarray, lo: int, hi: int, out: np.ndarray) -> np.ndarray:
    x = out[: hi - lo]
    np.multiply(rows[lo:hi], np.float32(1 / 255), out=x)
    return x


def run_stage(rows: np.ndarray, k: int, b: int, name: str) -> dict[str, Any]:
    """Fit the stage once under variant ``name``, timing each update by part."""
    d = rows.shape[1]
    model = StreamingPCA(k, copy=False)
    buf = np.empty((b, d), dtype=np.float32)
    per_batch = []
    scale_s = 0.0
    for i, (lo, hi) in enumerate(batches(rows, b)):
        t0 = time.perf_counter()
        x = scale_into(rows, lo, hi, buf)
        scale_s += time.perf_counter() - t0
        parts = Parts()
        with variant(name), instrumented(parts):
            t0 = time.perf_counter()
            model.partial_fit(x)
            total = time.perf_counter() - t0
        row = {"batch": i, "rows": hi - lo, "total_s": total}
        row.update(breakdown(parts.sec, total))
        row.update({f"flops_{key}": v for key, v in update_flops(hi - lo, k, d, i == 0).items()})
        rates = gemm_rates(k, b + 1, min(8192, d), reps=3)  # right after the update
        row.update(batch_bound(row, rates))
        row["sgemm_gflops"] = rates["sgemm_gram_VYt"]
        per_batch.append(row)
    return {"per_batch": per_batch, "scale_s": scale_s, "model": model}


def summarise(stage: dict[str, Any]) -> dict[str, Any]:
    """Stage totals by part and against the GEMM bound (rates measured beside every batch)."""
    rows = stage["per_batch"]
    keys = [key for key in rows[0] if key.endswith("_s") or key in breakdown({}, 0.0)]
    tot = {key: sum(r[key] for r in rows) for key in keys}
    flops = sum(r["flops_gram_syrk"] + r["flops_gram_cross"] + r["flops_project"] for r in rows)
    return {
        "seconds": {key: round(v, 3) for key, v in tot.items()},
        "flops": flops,
        "actual_over_bound": round(tot["total_s"] / tot["bound_s"], 3),
        "actual_over_bound_by_shape": round(tot["total_s"] / tot["bound_by_shape_s"], 3),
        "read_scale_s": round(stage["scale_s"], 3),
    }


def model_diff(a: StreamingPCA, b: StreamingPCA) -> dict[str, float]:
    """How far two fits of the same batches are apart (b relative to a)."""
    ev_a, ev_b = a.explained_variance_, b.explained_variance_
    dots = np.einsum("ij,ij->i", a.components_, b.components_, dtype=np.float64)
    return {
        "ev_sum_a": float(np.sum(a.explained_variance_ratio_)),
        "ev_sum_b": float(np.sum(b.explained_variance_ratio_)),
        "ev_max_rel": float(np.max(np.abs(ev_b - ev_a) / ev_a)),
        "noise_var_rel": float(abs(b.noise_variance_ - a.noise_variance_) / a.noise_variance_),
        "min_dot_top100": float(dots[:100].min()),
        "median_dot": float(np.median(dots)),
        "components_max_abs": float(np.max(np.abs(a.components_ - b.components_))),
    }


def compare(rows: np.ndarray, k: int, b: int, names: list[str]) -> dict[str, Any]:
    """Fit two models side by side (alternating order per batch); per-batch time ratios."""
    d = rows.shape[1]
    models = {n: StreamingPCA(k, copy=False) for n in names}
    buf = np.empty((b, d), dtype=np.float32)
    times: dict[str, list[float]] = {n: [] for n in names}
    parts_by: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for i, (lo, hi) in enumerate(batches(rows, b)):
        order = names if i % 2 == 0 else names[::-1]
        for n in order:
            x = scale_into(rows, lo, hi, buf)
            parts = Parts()
            with variant(n), instrumented(parts):
                t0 = time.perf_counter()
                models[n].partial_fit(x)
                total = time.perf_counter() - t0
            times[n].append(total)
            parts_by[n].append({key: round(v, 3) for key, v in breakdown(parts.sec, total).items()})
    a, bname = names
    ratios = [tb / ta for ta, tb in zip(times[a], times[bname])]
    return {
        "times_s": {n: [round(t, 3) for t in ts] for n, ts in times.items()},
        "totals_s": {n: round(sum(ts), 3) for n, ts in times.items()},
        "ratio_per_batch": [round(r, 3) for r in ratios],
        "ratio_median": round(float(np.median(ratios)), 3),
        "ratio_total": round(sum(times[bname]) / sum(times[a]), 3),
        "parts": parts_by,
        "diff": model_diff(models[a], models[bname]),
    }


def blas_info() -> list[dict[str, Any]]:
    return [
        {key: i.get(key) for key in ("filepath", "version", "architecture", "num_threads")}
        for i in threadpoolctl.threadpool_info()
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("/work/data/clipart"))
    ap.add_argument("--cache", type=Path, default=None, help="uint8 .npy of decoded rows")
    ap.add_argument("--images", type=int, default=8121)
    ap.add_argument("--batch", type=int, default=1131)
    ap.add_argument("--components", type=int, default=800)
    ap.add_argument("--variant", default="base")
    ap.add_argument("--compare", default=None, help="two variants, e.g. base,top-k")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = load_corpus(args.corpus, args.images, args.cache)
    k, b, d = args.components, args.batch, rows.shape[1]
    global TOP_K
    TOP_K = k
    cb = min(8192, d)
    out: dict[str, Any] = {
        "images": rows.shape[0],
        "features": d,
        "batch": b,
        "components": k,
        "blas": blas_info(),
        "env": {key: v for key, v in os.environ.items() if key.startswith("OPENBLAS")},
    }
    rates_before = gemm_rates(k, b + 1, cb)
    if args.compare:
        names = args.compare.split(",")
        out["compare"] = [compare(rows, k, b, names) for _ in range(args.repeats)]
    else:
        runs = []
        for _ in range(args.repeats):
            stage = run_stage(rows, k, b, args.variant)
            runs.append(stage)
        out["stage"] = [summarise(s) for s in runs]
        out["per_batch"] = [
            {key: (round(v, 3) if isinstance(v, float) else v) for key, v in r.items()}
            for r in runs[-1]["per_batch"]
        ]
        m = runs[-1]["model"]
        out["explained_variance"] = float(np.sum(m.explained_variance_ratio_))
    out["rates_before_gflops"] = {key: round(v, 1) for key, v in rates_before.items()}
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
