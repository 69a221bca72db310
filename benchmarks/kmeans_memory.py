"""Peak memory of the k-means stage, measured in a fresh interpreter, against the planner's model.

    python -m benchmarks.kmeans_memory [--n 8121 32484 100000] [--d 800] [--k 10 20]
        [--modes array load stream] [--batch 1024]

For each case a child process imports the package, resets the kernel's RSS high-water mark
(``/proc/self/clear_refs``), runs :func:`stream_cluster.model.kmeans.fit_kmeans` once (or an elbow
sweep over k = 2..k with ``--sweep``) and reports ``VmHWM`` minus the RSS after imports. The
features are Gaussian blobs (15 centres, float32): memory depends on the shapes, not the values,
and blobs converge in a few Lloyd iterations where uniform noise takes hundreds. Modes are those
of :attr:`~stream_cluster.model.kmeans.FeatureSource.mode`: ``array`` (a float32 array the caller
holds, generated in the child after the baseline), ``load`` (a store loaded as float64 for each
fit) and ``stream`` (MiniBatchKMeans over store batches). Prints one JSON line per case.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

_CHILD = """
import gc, json, sys
import numpy as np
from pathlib import Path
from stream_cluster.model.kmeans import FeatureSource, fit_kmeans
from stream_cluster.storage.store import RowStore
from benchmarks.kmeans_memory import make_features

def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))

mode, n, d, ks, batch, store_dir = sys.argv[1:7]
n, d, batch, ks = int(n), int(d), int(batch), [int(k) for k in ks.split(",")]
store = None if mode == "array" else RowStore(Path(store_dir), d, np.float32)
gc.collect()
base = status("VmRSS")
# ru_maxrss survives fork+exec, so reset the kernel's high-water mark and read VmHWM instead.
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")
if mode == "array":
    source = FeatureSource(make_features(n, d), batch_size=batch)
else:
    source = FeatureSource(store, batch_size=batch, fit_in_memory=mode == "load")
after = []
for k in ks:
    inertia = fit_kmeans(source, k, seed=0).inertia
    after.append(status("VmRSS") - base)
print(json.dumps({"base": base, "peak": status("VmHWM") - base, "rss_after_each": after}))
"""


def make_features(n: int, d: int, seed: int = 0, centres: int = 15) -> np.ndarray:
    """``n x d`` float32 Gaussian blobs, generated in place 256 rows at a time.

    Memory: the array and a 256-row temporary (like reading the features from a store).
    """
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d), dtype=np.float32) * 3
    x = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 256):
        m = min(256, n - lo)
        rng.standard_normal((m, d), dtype=np.float32, out=x[lo : lo + m])
        x[lo : lo + m] += c[rng.integers(0, centres, m)]
    return x


def write_store(directory: Path, n: int, d: int, segment_rows: int = 512) -> None:
    """Write :func:`make_features` rows into a float32 RowStore at ``directory``."""
    from stream_cluster.storage.store import RowStore

    x = make_features(n, d)
    store = RowStore(directory, d, np.float32)
    for lo in range(0, n, segment_rows):
        rows = x[lo : lo + segment_rows]
        store.append(rows, [b"r"] * len(rows))


def measure(
    mode: str,
    n: int,
    d: int,
    ks: int | list[int],
    batch: int,
    store_dir: Path | None = None,
) -> dict[str, object]:
    """Run ``fit_kmeans`` for each k of ``ks`` on one source in a child interpreter.

    Returns the child's baseline RSS after imports, its peak above that and the RSS above that
    after each fit (bytes).
    """
    if mode != "array" and store_dir is None:
        raise ValueError(f"mode {mode!r} needs a store_dir")
    ks = [ks] if isinstance(ks, int) else ks
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(n), str(d), ",".join(map(str, ks)), str(batch),
         str(store_dir or "")],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**_env(), "PYTHONPATH": str(REPO)},
        timeout=3600,
        check=True,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def main() -> None:
    from stream_cluster.memory.stage_bytes import PARENT_BASE_BYTES, kmeans_stage_bytes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[8121, 32484, 100000])
    ap.add_argument("--d", type=int, default=800)
    ap.add_argument("--k", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--modes", nargs="+", default=["array", "load", "stream"])
    ap.add_argument("--batch", type=int, default=1024, help="rows per batch when streamed")
    ap.add_argument("--sweep", action="store_true", help="elbow sweep k = 2..k in one child")
    args = ap.parse_args()
    mib = 2**20
    for n in args.n:
        with tempfile.TemporaryDirectory() as tmp:
            if set(args.modes) - {"array"}:
                write_store(Path(tmp), n, args.d)
            for k in args.k:
                for mode in args.modes:
                    batch = args.batch if mode == "stream" else 4096
                    ks = list(range(2, k + 1)) if args.sweep else [k]
                    got = measure(mode, n, args.d, ks, batch, Path(tmp))
                    model = kmeans_stage_bytes(n, args.d, k, mode, batch) - PARENT_BASE_BYTES
                    peak = int(got["peak"])  # type: ignore[call-overload]
                    print(json.dumps({
                        "n": n, "d": args.d, "k": k, "mode": mode, "batch": batch,
                        "sweep": args.sweep, "measured_mib": round(peak / mib, 1),
                        "model_mib": round(model / mib, 1), "ratio": round(model / peak, 3),
                    }), flush=True)


if __name__ == "__main__":
    main()
