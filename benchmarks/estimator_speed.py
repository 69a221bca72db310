"""``StreamingPCA.fit`` against ``IncrementalPCA.fit`` on the same matrix, side by side.

    python -m benchmarks.estimator_speed [--images 4000] [--width 215] [--height 150]
        [--components 400] [--batch 1000] [--repeats 3] [--data clipart|random]

Both estimators get the same float32 matrix (clip-art images from ``/work/data/clipart``,
resized to ``width x height`` and scaled to 0..1, in one fixed shuffled order; or uniform
random numbers) and the same ``batch_size``, and are fitted alternately (``IncrementalPCA``
first in even repeats, ``StreamingPCA`` first in odd ones), so both see the same machine load.
Prints JSON: every fit's seconds, the medians, the median of the per-pair ratios, and how far
the two models agree (explained variance, principal angles).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.decomposition import IncrementalPCA

from stream_cluster.pca import StreamingPCA

CLIPART = Path("/work/data/clipart")


def clipart_matrix(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """``n`` images spread evenly over the sorted corpus, shuffled once, one float32 row each."""
    import cv2

    files = sorted(CLIPART.rglob("*.png"))
    if len(files) < n:
        raise SystemExit(f"needs {n} images under {CLIPART}; found {len(files)}")
    picked = [files[i] for i in np.linspace(0, len(files) - 1, n).astype(int)]
    order = np.random.default_rng(seed).permutation(n)
    X = np.empty((n, width * height), dtype=np.float32)
    for row, i in enumerate(order):
        img = cv2.imread(str(picked[i]), cv2.IMREAD_GRAYSCALE)
        small = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)
        np.multiply(small.reshape(-1), np.float32(1 / 255), out=X[row])
    return X


def agreement(ours: StreamingPCA, ref: IncrementalPCA) -> dict[str, float]:
    """How far the two fitted models are apart (explained variance, subspace angles)."""
    ev_rel = np.abs(ours.explained_variance_ - ref.explained_variance_) / ref.explained_variance_
    top = min(50, ours.components_.shape[0])
    qa, _ = np.linalg.qr(ours.components_[:top].T.astype(np.float64))
    qb, _ = np.linalg.qr(ref.components_[:top].T.astype(np.float64))
    cosines = np.linalg.svd(qa.T @ qb, compute_uv=False)
    return {
        "explained_variance_ratio_sum_ours": float(np.sum(ours.explained_variance_ratio_)),
        "explained_variance_ratio_sum_sklearn": float(np.sum(ref.explained_variance_ratio_)),
        "explained_variance_max_rel_diff": float(ev_rel.max()),
        f"max_principal_angle_top{top}_rad": float(np.arccos(np.clip(cosines.min(), -1, 1))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--width", type=int, default=215)
    ap.add_argument("--height", type=int, default=150)
    ap.add_argument("--components", type=int, default=400)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", choices=("clipart", "random"), default="clipart")
    args = ap.parse_args()
    n, d = args.images, args.width * args.height
    if args.data == "clipart":
        X = clipart_matrix(n, args.width, args.height)
    else:
        X = np.random.default_rng(0).random((n, d), dtype=np.float32)
    k, b = args.components, args.batch

    def fit(name: str) -> tuple[float, Any]:
        est: Any = (
            IncrementalPCA(k, batch_size=b) if name == "sklearn" else StreamingPCA(k, batch_size=b)
        )
        t0 = time.perf_counter()
        est.fit(X)
        return time.perf_counter() - t0, est

    times: dict[str, list[float]] = {"sklearn": [], "streaming": []}
    models: dict[str, Any] = {}
    for r in range(args.repeats):
        for name in ("sklearn", "streaming") if r % 2 == 0 else ("streaming", "sklearn"):
            seconds, models[name] = fit(name)
            times[name].append(seconds)
            print(f"repeat {r} {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    ratios = [s / o for s, o in zip(times["sklearn"], times["streaming"])]
    out = {
        "command": "python -m benchmarks.estimator_speed " + shlex.join(sys.argv[1:]),
        "data": args.data,
        "shape": [n, d],
        "n_components": k,
        "batch_size": b,
        "sklearn_fit_s": times["sklearn"],
        "streaming_fit_s": times["streaming"],
        "sklearn_median_s": float(np.median(times["sklearn"])),
        "streaming_median_s": float(np.median(times["streaming"])),
        "speedup_per_pair": ratios,
        "speedup_median": float(np.median(ratios)),
        **agreement(models["streaming"], models["sklearn"]),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
