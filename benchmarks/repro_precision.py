"""How far features projected in other batches, kernels and thread counts are from each other.

Fits a PCA on images of a folder (the prepared clip-art: 300 x 430 grey), then projects held-out
images with ``StreamingPCA.transform`` in batches of 1, 7, 256 and all rows, in one child
process per OpenBLAS kernel class this CPU runs and per BLAS thread count. Prints, per variant,
the largest ``|z - z_ref| / |x - mean|`` over the images (``z_ref``: all rows in one batch,
default kernels, all threads) and the same against the float64 product, the figure README's
"Reproducibility" states (its bound is 1e-5).

    python -m benchmarks.repro_precision /work/data/clipart [--fit 1000 --test 600 --k 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import h5py
import numpy as np

from stream_cluster.pca import StreamingPCA

BATCHES = (1, 7, 256)


def cpu_flags() -> set[str]:
    """This CPU's feature flags (avx2, avx512f, ...), to pick the OpenBLAS kernels it can run.

    Empty where ``/proc/cpuinfo`` cannot be read (not Linux): then no kernel class is forced.
    tests/test_reproducibility.py picks its variants with it too.
    """
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def _fit(folder: Path, n_fit: int, n_test: int, k: int, path: Path) -> None:
    files = sorted(folder.rglob("*.png"))
    pick = np.random.default_rng(0).permutation(len(files))[: n_fit + n_test]
    x = np.stack([cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE).ravel() for i in pick])
    pca = StreamingPCA(k)
    for lo in range(0, n_fit, 500):
        pca.partial_fit(x[lo : min(lo + 500, n_fit)].astype(np.float32) / 255)
    with h5py.File(path, "w") as f:
        f["X"] = x[n_fit:]
        for key, value in pca.get_state().items():
            f[f"pca/{key}"] = value


def _project(model: Path, out: Path) -> None:
    """Child: project the held-out rows in each batching with this process's BLAS setup."""
    with h5py.File(model) as f:
        x = f["X"][()]
        pca = StreamingPCA.from_state({key: f["pca"][key][()] for key in f["pca"]})
    scale = np.float32(1 / 255)
    z = {f"b{b}": np.concatenate([pca.transform(x[i : i + b], scale=scale)
                                  for i in range(0, len(x), b)]) for b in BATCHES}  # fmt: skip
    z["all"] = pca.transform(x, scale=scale)
    np.savez(out, **z)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--fit", type=int, default=1000)
    ap.add_argument("--test", type=int, default=600)
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        _project(*args.child)
        return {}
    variants = {"default": {}, "1 thread": {"OPENBLAS_NUM_THREADS": "1"}}
    for core, flag in (("Haswell", "avx2"), ("SkylakeX", "avx512f"), ("Sandybridge", "avx")):
        if flag in cpu_flags():
            variants[f"{core}"] = {"OPENBLAS_CORETYPE": core}
            variants[f"{core}, 1 thread"] = {"OPENBLAS_CORETYPE": core, "OPENBLAS_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model.h5"
        _fit(args.folder, args.fit, args.test, args.k, model)
        with h5py.File(model) as f:
            v, mean, x = f["pca/components_"][()], f["pca/mean_"][()], f["X"][()]
        radius = np.linalg.norm(x / 255.0 - mean, axis=1)
        exact = (x / 255.0 - mean) @ v.T.astype(np.float64)
        results: dict[str, dict[str, float]] = {}
        ref = None
        for name, env in variants.items():
            out = Path(tmp) / f"{len(results)}.npz"
            child = [sys.executable, "-m", "benchmarks.repro_precision", "-", "--child",
                     str(model), str(out)]  # fmt: skip
            subprocess.run(child, env={**os.environ, **env}, check=True)
            z = {key: arr.astype(np.float64) for key, arr in np.load(out).items()}
            ref = z["all"] if ref is None else ref
            results[name] = {
                "vs_reference": max(float((np.linalg.norm(a - ref, axis=1) / radius).max())
                                    for a in z.values()),
                "vs_float64": max(float((np.linalg.norm(a - exact, axis=1) / radius).max())
                                  for a in z.values()),
                "bitwise_batches": float(all(np.array_equal(a, z["all"]) for a in z.values())),
            }
            print(f"{name:22s} |dz|/|x-mean| vs reference {results[name]['vs_reference']:.2e}, "
                  f"vs float64 {results[name]['vs_float64']:.2e}, every batching bitwise equal: "
                  f"{bool(results[name]['bitwise_batches'])}", flush=True)  # fmt: skip
    return results


if __name__ == "__main__":
    main()
