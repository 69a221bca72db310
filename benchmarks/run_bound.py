"""A whole run against its GEMM bound, stage by stage (issue 21).

    python -m benchmarks.run_bound CORPUS --out DIR [--json FILE] [-- RUN OPTIONS...]
    e.g. python -m benchmarks.run_bound /work/data/clipart --out /tmp/rb -- \\
             --mem-budget 2G --components 800 --k 10 --space pca

Runs ``stream-cluster CORPUS --out DIR RUN OPTIONS`` in this process (its decode workers as
usual) with timers around the PCA update's kernels (as ``benchmarks.pca_bound``), every
``partial_fit``, the PCA stage's batch reads and checkpoints, and the embed's ``transform``.
The SGEMM rate is measured in this process at the update's and the transform's shapes before
and after the run. Prints JSON: per stage its wall time (``run.json``), its GEMM flops counted
from the shapes, the bound at the measured rate, and where the rest of its time went (eigh,
float64 paths, statistics, copies, batch reads, checkpoints, waiting for decoded rows).
Run from a neutral directory with ``PYTHONPATH`` set to the tree under test (``python -m``
puts the working directory ahead of ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import stream_cluster.stages.fit_pca as fit_pca_module
from benchmarks.pca_bound import Parts, blas_info, breakdown, gemm_rates, instrumented
from stream_cluster._cli.main import main as cli_main
from stream_cluster.pca.streaming import StreamingPCA


class Tally:
    """Seconds, calls and flops per wrapped function over the whole run."""

    def __init__(self) -> None:
        self.sec: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.flops: dict[str, float] = defaultdict(float)

    def wrap(
        self, owner: Any, name: str, flops: Callable[..., dict[str, float]] | None = None
    ) -> tuple[Any, str, Any]:
        orig = getattr(owner, name)

        def wrapper(*a: Any, **kw: Any) -> Any:
            counted = flops(*a, **kw) if flops is not None else {}
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                self.sec[name] += time.perf_counter() - t0
                self.calls[name] += 1
                for key, v in counted.items():
                    self.flops[key] += v

        setattr(owner, name, wrapper)
        return owner, name, orig


def _fit_flops(self: StreamingPCA, X: Any, *a: Any, **kw: Any) -> dict[str, float]:
    """The update's float32 GEMM flops (syrk counted as q^2 d), as pca_bound counts them."""
    n, d = X.shape
    k = int(self.n_components)
    first = not hasattr(self, "components_")
    p, q = (0, n) if first else (k, n + 1)
    return {"pca_update": float(q * q * d + 2 * p * q * d + 2 * k * (p + q) * d)}


def _transform_flops(self: StreamingPCA, arr: Any, scale: Any) -> dict[str, float]:
    n, d = arr.shape
    return {"transform": float(2 * n * self.components_.shape[0] * d)}


@contextlib.contextmanager
def timers(tally: Tally, parts: Parts) -> Iterator[None]:
    saved = [
        tally.wrap(StreamingPCA, "partial_fit", _fit_flops),
        tally.wrap(StreamingPCA, "_transform_dense", _transform_flops),
        tally.wrap(fit_pca_module, "read_scaled"),
        tally.wrap(fit_pca_module, "save_arrays"),
    ]
    try:
        with instrumented(parts):
            yield
    finally:
        for owner, name, orig in reversed(saved):
            setattr(owner, name, orig)


def transform_rate(k: int, d: int, rows: int = 1131, reps: int = 3) -> float:
    """GFLOP/s of the transform's GEMM shape (a centred (rows, 8192) block times V^T)."""
    rng = np.random.default_rng(1)
    cb = min(8192, d)
    X = rng.random((rows, cb), dtype=np.float32)
    V = rng.random((k, cb), dtype=np.float32)
    ts = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        X @ V.T
        ts.append(time.perf_counter() - t0)
    return 2.0 * rows * k * cb / float(np.median(ts[1:])) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="run folder (emptied first)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--components", type=int, default=800, help="for the rate shapes only")
    ap.add_argument("--batch", type=int, default=1131, help="for the rate shapes only")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = ap.parse_args(argv[:cut])
    run_args = argv[cut + 1 :]
    if args.out.exists():
        shutil.rmtree(args.out)
    k, b, cb = args.components, args.batch, 8192
    rates_before = gemm_rates(k, b + 1, cb, reps=3)
    rates_before["transform"] = transform_rate(k, cb)
    tally, parts = Tally(), Parts()
    t0 = time.perf_counter()
    with timers(tally, parts):
        code = cli_main([str(args.corpus), "--out", str(args.out), "--no-progress", *run_args])
    wall = time.perf_counter() - t0
    rates_after = gemm_rates(k, b + 1, cb, reps=3)
    rates_after["transform"] = transform_rate(k, cb)
    if code != 0:
        raise SystemExit(f"the run exited with {code}")
    info = json.loads((args.out / "run.json").read_text())
    stages = {name: s["seconds"] for name, s in info["stages"].items()}
    rate = {key: (rates_before[key] + rates_after[key]) / 2 for key in rates_before}
    fit_s = tally.sec["partial_fit"]
    parts_s = breakdown(parts.sec, fit_s)
    pca_flops = tally.flops["pca_update"]
    pca_bound = pca_flops / (rate["sgemm_gram_VYt"] * 1e9)
    tr_flops = tally.flops["transform"]
    tr_bound = tr_flops / (rate["transform"] * 1e9)
    pca_stage = stages.get("pca", 0.0)
    out: dict[str, Any] = {
        "command": ["stream-cluster", str(args.corpus), *run_args],
        "wall_s": round(wall, 2),
        "stages_s": stages,
        "peak_rss_bytes": info.get("peak_rss_bytes"),
        "explained_variance": info.get("results", {}).get("explained_variance"),
        "rates_gflops": {"before": rates_before, "after": rates_after, "used": rate},
        "pca": {
            "stage_s": pca_stage,
            "partial_fit_s": round(fit_s, 2),
            "updates": tally.calls["partial_fit"],
            "gemm_flops": pca_flops,
            "gemm_bound_s": round(pca_bound, 2),
            "partial_fit_over_bound": round(fit_s / pca_bound, 3) if pca_bound else None,
            "stage_over_bound": round(pca_stage / pca_bound, 3) if pca_bound else None,
            "parts_s": {key: round(v, 2) for key, v in parts_s.items()},
            "batch_reads_s": round(tally.sec["read_scaled"], 2),
            "checkpoints_s": round(tally.sec["save_arrays"], 2),
            "rest_of_stage_s": round(
                pca_stage - fit_s - tally.sec["read_scaled"] - tally.sec["save_arrays"], 2
            ),
        },
        "embed": {
            "stage_s": stages.get("embed"),
            "transform_s": round(tally.sec["_transform_dense"], 2),
            "gemm_flops": tr_flops,
            "gemm_bound_s": round(tr_bound, 2),
        },
        "blas": blas_info(),
        "env": {key: v for key, v in os.environ.items() if key.startswith("OPENBLAS")},
    }
    text = json.dumps(out, indent=1, default=float)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
