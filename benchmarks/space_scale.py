"""The space stage at scale: peak RSS and time of fitting and placing N images, against its model.

Writes N synthetic 800-feature rows (a seeded mixture of 30 Gaussian groups, float32) to a
feature store, then runs ``stages.space.space_stage`` on it in a fresh, watched process (the
tree's RSS sampled every 0.1 s) and prints the measured peak next to the memory plan's model of
the stage (``memory.stage_bytes.space_stage_bytes``, which also counts the runner's resident process
after the PCA, so it must be above the standalone peak).

    python -m benchmarks.space_scale --images 100000 --components 800
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.monitor import run_watched


def _write(store_dir: Path, n: int, d: int, seed: int) -> None:
    from stream_cluster.storage.store import RowStore

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (30, d)).astype(np.float32)
    store = RowStore(store_dir, d, np.float32)
    for lo in range(0, n, 8192):
        b = min(8192, n - lo)
        x = centres[rng.integers(0, 30, b)] + rng.normal(0, 1, (b, d)).astype(np.float32)
        x *= np.float32(1.0) / np.arange(1, d + 1, dtype=np.float32) ** 0.5  # PCA-like decay
        store.append(x, [f"img-{lo + i:07d}".encode() for i in range(b)])


def _stage(store_dir: str, d: int, out: str) -> None:
    from stream_cluster.stages.base import StageRecord
    from stream_cluster.stages.space import space_stage
    from stream_cluster.storage.checkpoint import RunState
    from stream_cluster.storage.store import RowStore

    t0 = time.perf_counter()
    record = StageRecord(RunState(Path(out) / "state.json"), "space")
    gen = space_stage(record, RowStore(Path(store_dir), d, np.float32), seed=0, key={},
                      out_dir=Path(out))  # fmt: skip
    try:
        while True:
            next(gen)
    except StopIteration:
        pass
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--components", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from stream_cluster.memory.stage_bytes import space_stage_bytes

    with tempfile.TemporaryDirectory(prefix="space-scale-") as tmp:
        store = Path(tmp) / "features"
        t0 = time.perf_counter()
        _write(store, a.images, a.components, a.seed)
        made = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "benchmarks.space_scale", "_stage", str(store),
               str(a.components), tmp]  # fmt: skip
        out = run_watched(cmd, log_path=Path(tmp) / "log", mem_cap=16 * 2**30, time_cap=3600)
        log = (Path(tmp) / "log").read_text()
        if out.returncode != 0:
            print(log)
            return 1
        seconds = json.loads(log.strip().splitlines()[-1])["seconds"]
    model = space_stage_bytes(a.images, a.components)
    print(f"{a.images:,} images x {a.components} features (store written in {made:.1f} s): "
          f"space stage {seconds:.1f} s, peak RSS {out.peak_rss / 2**20:.0f} MiB; "
          f"the plan's model of the stage {model / 2**20:.0f} MiB "
          f"({'above' if model >= out.peak_rss else 'BELOW'} the measured peak)")  # fmt: skip
    return 0 if model >= out.peak_rss else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_stage":
        _stage(sys.argv[2], int(sys.argv[3]), sys.argv[4])
        sys.exit(0)
    sys.exit(main())
