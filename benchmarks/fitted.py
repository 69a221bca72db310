"""Benchmarks for using a fitted run: ``assign`` throughput and ``similar`` query time.

    python -m benchmarks.fitted assign RUN IMAGES [--mem-budget 2G]
        Assign IMAGES (e.g. the run's own folder) and compare images/s with the run's own
        ingest+embed rate from its run.json; peak RSS of the process tree (0.1 s sampler).

    python -m benchmarks.fitted similar RUN [--replicate 4] [--queries 20]
        Build a run folder whose feature store holds RUN's features REPLICATE times (rows
        jittered, renamed), as a 32,000-image run would have, then time exact queries: own images
        (looked up, no model) and foreign images (decoded and projected with the loaded model).
        What is measured is the search over the store, which depends only on its size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from stream_cluster.config import format_bytes, parse_mem
from stream_cluster.memory.sampler import MemorySampler
from stream_cluster.model.fitted import load_model, similar
from stream_cluster.stages.assign import assign
from stream_cluster.storage.store import RowStore


def _assign(args: argparse.Namespace) -> None:
    doc = json.loads((args.run / "run.json").read_text())
    n = doc["results"]["n_images"]
    st = doc["stages"]
    run_s = st["ingest"]["seconds"] + st["embed"]["seconds"]
    with tempfile.TemporaryDirectory() as tmp, MemorySampler() as sampler:
        t0 = time.perf_counter()
        res = assign(args.run, [args.images], out_csv=Path(tmp) / "a.csv",
                     mem_budget=parse_mem(args.mem_budget))
        dt = time.perf_counter() - t0
    print(f"assign: {res.n_assigned} images in {dt:.1f} s = {res.n_assigned / dt:.1f} images/s "
          f"(batch {res.batch}, {res.workers} workers), peak tree RSS "
          f"{format_bytes(sampler.peak)} under --mem-budget {args.mem_budget}")
    print(f"run: ingest {st['ingest']['seconds']:.1f} s + embed {st['embed']['seconds']:.1f} s "
          f"for {n} images = {n / run_s:.1f} images/s")
    print(f"ratio assign / run ingest+embed rate: {(res.n_assigned / dt) / (n / run_s):.2f}")


def _similar(args: argparse.Namespace) -> None:
    src = args.run
    doc = json.loads((src / "run.json").read_text())
    k = doc["results"]["n_components"]
    feats = RowStore(src / "features", k, np.float32)
    names = feats.names()
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        run = Path(tmp) / "run"
        run.mkdir()
        for f in ("run.json", "model.h5"):
            shutil.copy(src / f, run / f)
        big = RowStore(run / "features", k, np.float32)
        rng = np.random.default_rng(0)
        for r in range(args.replicate):
            for lo in range(0, len(feats), 4096):
                x = feats.read(lo, lo + 4096)
                if r:
                    x = x + rng.normal(0, 0.05, x.shape).astype(np.float32)
                big.append(x, [b"copy%d/" % r + nm for nm in names[lo : lo + len(x)]])
        print(f"feature store: {len(big)} rows x {k} ({format_bytes(len(big) * k * 4)})")
        settings = dict(doc["settings"])
        doc["settings"] = settings
        (run / "run.json").write_text(json.dumps(doc))
        images = sorted(Path(settings["input_dir"]).rglob("*.png"))
        picks = [images[i] for i in rng.choice(len(images), args.queries, replace=False)]
        with MemorySampler() as sampler:
            t0 = time.perf_counter()
            model = load_model(run)
            load_s = time.perf_counter() - t0
            times = []
            for p in picks:
                t0 = time.perf_counter()
                similar(run, p, 12, model=model)  # foreign to this copy: decoded and projected
                times.append(time.perf_counter() - t0)
        print(f"model load {load_s:.2f} s; query (decode + project + exact search of "
              f"{len(big)} rows, n=12): median {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms over {len(times)} queries; peak tree RSS "
              f"{format_bytes(sampler.peak)}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fitted")
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("assign")
    a.add_argument("run", type=Path)
    a.add_argument("images", type=Path)
    a.add_argument("--mem-budget", default="2G")
    s = sub.add_parser("similar")
    s.add_argument("run", type=Path)
    s.add_argument("--replicate", type=int, default=4)
    s.add_argument("--queries", type=int, default=20)
    s.add_argument("--tmp", default=None)
    args = p.parse_args(argv)
    (_assign if args.what == "assign" else _similar)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
