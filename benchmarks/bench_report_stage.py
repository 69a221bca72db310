"""Time the report stage alone on a finished run folder, and its parts.

``python -m benchmarks.bench_report_stage RUN [--out DIR]`` rebuilds the report of ``RUN``
(``RUN/report-bench`` by default, so the run's own report is untouched) from its stores,
``kmeans.h5`` and ``pca.h5``, and prints wall and CPU seconds for the map alone (t-SNE of the
sample and placement), for the thumbnails alone, and for the whole report as the pipeline
writes it (map in a thread beside the thumbnails), plus the process's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np

from stream_cluster.report.mapview import embed_2d, leading_columns
from stream_cluster.report.thumbs import cluster_order, write_thumbnails
from stream_cluster.stages.clustering import load_kmeans
from stream_cluster.stages.report import ReportInputs, write_report
from stream_cluster.storage.store import RowStore


def _timed(label: str, fn: object) -> None:
    t, c = time.perf_counter(), time.process_time()
    fn()  # type: ignore[operator]
    print(f"{label}: {time.perf_counter() - t:.1f} s wall, {time.process_time() - c:.1f} s CPU",
          flush=True)


def main() -> None:
    """Parse the arguments and time the parts, then the whole report."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    run: Path = args.run
    out: Path = args.out or run / "report-bench"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    doc = json.loads((run / "run.json").read_text())
    settings = doc["settings"]
    width, height = int(settings["width"]), int(settings["height"])
    state = json.loads((run / "state.json").read_text())["stages"]
    n_keep = int(state["pca"]["n_keep"])
    pixels = RowStore(run / "pixels", width * height, np.uint8)
    features = RowStore(run / "features", n_keep, np.float32)
    km = load_kmeans(run / "kmeans.h5")
    names = [os.fsdecode(n) for n in pixels.names()]
    k = len(km.centers)
    print(f"{run}: {len(names)} images, {n_keep} components, k={k}, load "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)

    _timed("map alone (read 50 columns, t-SNE of 2,000, place the rest)",
           lambda: embed_2d(leading_columns(features), seed=0))
    order = cluster_order(km.labels, km.sq_distances, k)
    _timed("thumbnails alone", lambda: list(write_thumbnails(
        out, pixels, km.labels, order.rank, width=width, height=height)))
    info = ReportInputs(
        "stream-cluster report", {}, width, height, state["pca"]["explained_variance_ratio"],
        n_keep, None, {}, k, "fixed", 48, None, 0, None, 0, run / "pca.h5",
    )  # fmt: skip
    _timed("whole report (write_report)", lambda: list(write_report(
        out, pixels, names, km, [], info, features)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"peak RSS of this process: {peak / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
