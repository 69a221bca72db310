"""Feature extraction rate of an ONNX model through stream-cluster's own ``OnnxFeatures``.

Images per second of ``OnnxFeatures.transform`` alone (decoding excluded: the images are decoded
once, letterboxed at ``--size`` as a run does) for 1 and 2 intra-op threads, interleaved, the
median of ``--repeats``. Usage (repository root)::

    PYTHONPATH=$PWD python -m benchmarks.onnx_rate /tmp/cnn/lite0.onnx /work/data/clipart \\
        --size 300x430 --images 64 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from stream_cluster.images.decode import decode_many
from stream_cluster.images.onnx_features import OnnxFeatures


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--size", default="300x430")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", default="1,2")
    a = ap.parse_args(argv)
    w, h = (int(v) for v in a.size.split("x"))
    files = sorted(str(p.relative_to(a.folder)) for p in a.folder.rglob("*.png"))
    pick = [files[i] for i in np.linspace(0, len(files) - 1, a.images).astype(int)]
    rows, _ = decode_many(str(a.folder), pick, w, h)
    extractors = {int(t): OnnxFeatures(a.model, threads=int(t)) for t in a.threads.split(",")}
    for ext in extractors.values():
        ext.transform(rows[:16], w, h)  # session opened, memory measured, first call warmed
    times: dict[int, list[float]] = {t: [] for t in extractors}
    for _ in range(a.repeats):
        for t, ext in extractors.items():
            t0 = time.perf_counter()
            ext.transform(rows, w, h)
            times[t].append(time.perf_counter() - t0)
    first = next(iter(extractors))
    for t, ts in times.items():
        med = statistics.median(ts)
        # OnnxFeatures measures its memory as growth of this process's peak RSS, so only the
        # first session opened (as in a run, which opens one) gets a meaningful figure (later
        # ones with other thread counts are credited the import, not their own session).
        mem = extractors[t].memory_bytes(w, h) / 2**20 if t == first else None
        print(f"{a.folder} {a.size} threads={t}: {len(rows)} images, median {med:.2f} s "
              f"= {len(rows) / med:.1f} images/s (runs: {', '.join(f'{x:.2f}' for x in ts)})"
              + (f"; memory_bytes {mem:.0f} MiB" if mem is not None else ""))  # fmt: skip


if __name__ == "__main__":
    main()
