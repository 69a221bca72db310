"""Time one incremental-PCA update on real images: StreamingPCA against scikit-learn.

    python -m benchmarks.pca_update RUN_DIR [--batch 1000] [--components 800]

RUN_DIR is a finished stream-cluster run folder (its ``pixels`` store supplies the images).
Prints JSON: seconds per steady-state update for StreamingPCA (three updates after the first)
and for ``sklearn.decomposition.IncrementalPCA`` (one update after the first), the flop count
of the Gram update ``d (b^2 + 4kb + 2k^2)``, the SGEMM rate measured here, and the bound.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.decomposition import IncrementalPCA

from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.storage.store import RowStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--components", type=int, default=800)
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args()
    seg = next((args.run_dir / "pixels").glob("seg-*.h5"))
    import h5py

    with h5py.File(seg, "r") as f:
        d = int(f["rows"].shape[1])
    px = RowStore(args.run_dir / "pixels", d, np.uint8)
    b, k = args.batch, args.components
    scale = np.float32(1 / 255)

    def batch(i: int) -> np.ndarray:
        return np.multiply(px.read(i * b, (i + 1) * b), scale, dtype=np.float32)

    out: dict[str, object] = {"batch": b, "components": k, "features": d}
    ours = StreamingPCA(k)
    ours.partial_fit(batch(0))
    times = []
    for i in (1, 2, 3):
        x = batch(i)
        t0 = time.perf_counter()
        ours.partial_fit(x)
        times.append(time.perf_counter() - t0)
    out["streaming_pca_s"] = times
    if not args.skip_sklearn:
        ref = IncrementalPCA(k)
        ref.partial_fit(batch(0))
        x = batch(1)
        t0 = time.perf_counter()
        ref.partial_fit(x)
        out["sklearn_s"] = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    a = rng.random((b + 1, 8192), dtype=np.float32)
    v = rng.random((k, 8192), dtype=np.float32)
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(10):
            v @ a.T
        runs.append(time.perf_counter() - t0)
    rate = 2 * k * (b + 1) * 8192 * 10 / float(np.median(runs))
    flops = d * (b * b + 4 * k * b + 2 * k * k)
    out.update(sgemm_gflops=rate / 1e9, gram_update_flops=flops, gemm_bound_s=flops / rate)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
