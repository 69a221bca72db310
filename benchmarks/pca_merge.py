"""Merged shard PCA models against one sequential fit: explained variance, angles, merge cost.

    python -m benchmarks.pca_merge --run RUN_DIR --out OUT [--components 800] [--batch 1131]
    python -m benchmarks.pca_merge --corpus IMAGE_DIR --out OUT [...]

The rows come from a finished stream-cluster run's pixel store (``RUN_DIR/pixels``, in the
run's processing order), or are decoded from ``IMAGE_DIR`` (300 x 430 grey, the pipeline's scan
order) into a pixel store in ``OUT/pixels`` first. The sequential model is StreamingPCA over
all rows in batches of ``--batch``; for each shard count the rows are cut into contiguous
slices, each slice is fitted the same way (with ``min(k, rows)`` components: a slice of at
most k rows keeps all its variance) and the shard models are merged with
``stream_cluster.pca.merge_tree``'s fixed tree, asking for ``k`` components at every merge.

Reported per shard count: explained variance (sum of the ratios) merged minus sequential, the
principal angles between the top 100 components (``scipy.linalg.subspace_angles``), the time
of each merge and its peak of allocated bytes (tracemalloc: numpy arrays, the result
included), and the fit times. Resumable: every fitted model is saved as HDF5 under
``OUT/fits`` (``stream_cluster.storage.checkpoint.save_arrays``) and every shard count's figures in
``OUT/merge-<s>.json``; a rerun reuses what matches. Writes ``OUT/results.json`` and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import scipy.linalg

from stream_cluster.pca._merge import reduce_tree
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.storage.checkpoint import load_arrays, save_arrays
from stream_cluster.storage.store import RowStore

PIXEL_SCALE = np.float32(1.0 / 255.0)  # as stream_cluster.images.decode: uint8 -> float32 in 0..1
WIDTH, HEIGHT = 300, 430
DECODE_SEGMENT = 512  # rows per pixel-store segment when decoding a corpus
ANGLE_COMPONENTS = 100


def open_rows(run: Path | None, corpus: Path | None, out: Path) -> tuple[RowStore, str]:
    """The pixel store to read and a label of where it came from."""
    if run is not None:
        pixels = run / "pixels"
        if any(pixels.glob("*.partial")):
            raise SystemExit(f"{pixels} has a segment being written; wait for the run to finish.")
        segments = sorted(pixels.glob("seg-*.h5"))
        if not segments:
            raise SystemExit(f"{pixels} holds no pixel segments.")
        with h5py.File(segments[0], "r") as f:
            d = int(f["rows"].shape[1])
        return RowStore(pixels, d, np.uint8), f"run {run}"
    assert corpus is not None
    from stream_cluster.images.decode import decode_image
    from stream_cluster.images.scan import scan

    files = scan(corpus).files
    store = RowStore(out / "pixels", WIDTH * HEIGHT, np.uint8)
    for lo in range(len(store), len(files), DECODE_SEGMENT):  # resumes after the last segment
        names = files[lo : lo + DECODE_SEGMENT]
        rows = np.stack([decode_image(corpus / n, WIDTH, HEIGHT).reshape(-1) for n in names])
        store.append(rows, [n.encode("utf-8", "surrogateescape") for n in names])
    return store, f"corpus {corpus} ({len(files)} files)"


def fit_path(fits: Path, lo: int, hi: int, k: int, batch: int) -> Path:
    return fits / f"rows-{lo}-{hi}-k{k}-b{batch}.h5"


def fit_rows(
    store: RowStore, lo: int, hi: int, k: int, batch: int, fits: Path, source: str
) -> tuple[Path, float]:
    """Fit rows [lo, hi) in batches (cached); return the state file and the fit's seconds."""
    path = fit_path(fits, lo, hi, k, batch)
    meta = {"source": source, "lo": lo, "hi": hi, "components": k, "batch": batch}
    if path.exists():
        _, saved = load_arrays(path)
        if all(saved.get(key) == value for key, value in meta.items()):
            return path, float(saved["seconds"])
    model = StreamingPCA(min(k, hi - lo), copy=False)
    t0 = time.perf_counter()
    for b0 in range(lo, hi, batch):
        b1 = min(b0 + batch, hi)
        x = np.empty((b1 - b0, store.row_size), dtype=np.float32)
        np.multiply(store.read(b0, b1), PIXEL_SCALE, out=x)
        model.partial_fit(x)
        del x
    seconds = time.perf_counter() - t0
    fits.mkdir(parents=True, exist_ok=True)
    save_arrays(path, model.get_state(), {**meta, "seconds": seconds})
    return path, seconds


def load_model(path: Path) -> StreamingPCA:
    arrays, _ = load_arrays(path)
    return StreamingPCA.from_state(arrays)


def timed_tree(paths: Sequence[Path], k: int) -> tuple[StreamingPCA, list[dict[str, Any]]]:
    """``merge_tree(models, n_components=k)`` over the saved shards, timing every merge.

    The same fixed tree as ``merge_tree`` (its ``reduce_tree``), with each merge measured: wall
    seconds and the peak of bytes allocated during it (tracemalloc, reset before each merge).
    """
    log: list[dict[str, Any]] = []

    def merge(a: StreamingPCA, b: StreamingPCA) -> StreamingPCA:
        tracemalloc.start()
        t0 = time.perf_counter()
        merged = a.merge(b, n_components=k)
        seconds = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        log.append(
            {
                "rows": [int(a.n_samples_seen_), int(b.n_samples_seen_)],
                "components": [int(a.n_components_), int(b.n_components_)],
                "seconds": seconds,
                "peak_bytes": peak,
                "result_bytes": merged.components_.nbytes,
            }
        )
        return merged

    if len(paths) == 1:
        return load_model(paths[0]), log
    return reduce_tree(list(paths), load_model, merge), log


def compare(merged: StreamingPCA, seq: StreamingPCA) -> dict[str, Any]:
    """Explained variance and top-component angles of ``merged`` against ``seq``."""
    top = min(ANGLE_COMPONENTS, merged.n_components_, seq.n_components_)
    angles = scipy.linalg.subspace_angles(
        merged.components_[:top].T.astype(np.float64), seq.components_[:top].T.astype(np.float64)
    )
    ev_m = float(np.sum(merged.explained_variance_ratio_))
    ev_s = float(np.sum(seq.explained_variance_ratio_))
    return {
        "ev_merged": ev_m,
        "ev_sequential": ev_s,
        "ev_diff": ev_m - ev_s,
        "ev_ratio_max_abs_diff": float(
            np.max(np.abs(merged.explained_variance_ratio_ - seq.explained_variance_ratio_))
        ),
        "angle_components": top,
        "angle_max_deg": float(np.degrees(angles.max())),
        "angle_median_deg": float(np.degrees(np.median(angles))),
        "angles_top10_max_deg": float(np.degrees(np.max(angles[-10:])))
        if top >= 10
        else float("nan"),
        "mean_max_abs_diff": float(np.max(np.abs(merged.mean_ - seq.mean_))),
        "var_max_rel_diff": float(np.max(np.abs(merged.var_ - seq.var_) / np.max(seq.var_))),
    }


def run(
    store: RowStore,
    source: str,
    out: Path,
    k: int,
    batch: int,
    shard_counts: Sequence[int],
    limit: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit, merge and compare; return (and save to ``OUT/results.json``) every figure."""
    n = len(store) if limit is None else min(limit, len(store))
    load_start = os.getloadavg()  # timings on a shared machine: record how busy it was
    fits = out / "fits"
    seq_path, seq_seconds = fit_rows(store, 0, n, k, batch, fits, source)
    seq = load_model(seq_path)
    log(f"sequential: {n} rows, k={k}, batch {batch}: {seq_seconds:.1f} s")
    results: dict[str, Any] = {
        "source": source,
        "rows": n,
        "features": store.row_size,
        "components": k,
        "batch": batch,
        "sequential_fit_seconds": seq_seconds,
        "sequential_ev": float(np.sum(seq.explained_variance_ratio_)),
        "shards": {},
    }
    for s in shard_counts:
        bounds = np.linspace(0, n, s + 1).astype(int)
        if 2 * (bounds[1:] - bounds[:-1]).min() + 1 < k:
            raise SystemExit(f"{s} shards of {n} rows are too small to merge to {k} components.")
        cached = out / f"merge-{s}.json"
        key = {"source": source, "rows": n, "components": k, "batch": batch, "shards": s}
        if cached.exists():
            saved = json.loads(cached.read_text())
            if saved.get("key") == key:
                results["shards"][str(s)] = saved
                log(f"{s} shards: cached")
                continue
        paths, fit_seconds = [], []
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            path, seconds = fit_rows(store, int(lo), int(hi), k, batch, fits, source)
            paths.append(path)
            fit_seconds.append(seconds)
        t0 = time.perf_counter()
        merged, merges = timed_tree(paths, k)
        tree_seconds = time.perf_counter() - t0
        entry = {
            "key": key,
            "shard_rows": (bounds[1:] - bounds[:-1]).tolist(),
            "fit_seconds": fit_seconds,
            "tree_seconds": tree_seconds,
            "merges": merges,
            **compare(merged, seq),
        }
        cached.write_text(json.dumps(entry, indent=1))
        results["shards"][str(s)] = entry
        log(
            f"{s} shards: EV {entry['ev_merged']:.6f} (seq {entry['ev_sequential']:.6f}, "
            f"diff {entry['ev_diff']:+.2e}), max angle top {entry['angle_components']} "
            f"{entry['angle_max_deg']:.3f} deg, {len(merges)} merges in {tree_seconds:.1f} s"
        )
        del merged
    results["loadavg_start"], results["loadavg_end"] = load_start, os.getloadavg()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return results


def side_by_side(
    store: RowStore, a_path: Path, b_path: Path, k: int, batch: int, repeats: int
) -> dict[str, Any]:
    """Median seconds of a merge and of one ``partial_fit`` batch, interleaved in one process.

    On a shared machine the ratio is the robust figure: both runs see the same load. The batch
    update continues model ``a`` with the ``batch`` rows after its own rows.
    """
    a, b = load_model(a_path), load_model(b_path)
    lo = int(a.n_samples_seen_)
    merges, updates = [], []
    load_start = os.getloadavg()
    for _ in range(repeats):
        t0 = time.perf_counter()
        a.merge(b, n_components=k)
        merges.append(time.perf_counter() - t0)
        model = load_model(a_path)
        x = np.empty((batch, store.row_size), dtype=np.float32)
        np.multiply(store.read(lo, lo + batch), PIXEL_SCALE, out=x)
        t0 = time.perf_counter()
        model.partial_fit(x)
        updates.append(time.perf_counter() - t0)
        del model, x
    return {
        "merge_rows": [int(a.n_samples_seen_), int(b.n_samples_seen_)],
        "merge_seconds": merges,
        "partial_fit_seconds": updates,
        "median_ratio": float(np.median(merges) / np.median(updates)),
        "loadavg": [load_start, os.getloadavg()],
    }


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table, one row per shard count."""
    lines = [
        "| shards | rows/shard | EV merged | EV merged - sequential | max EV-ratio diff "
        f"| angle top {ANGLE_COMPONENTS}: max / median (deg) | top-10 max (deg) | merges "
        "| merge s: median / max | merge peak MiB: max | fit s (sum over shards) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, e in results["shards"].items():
        secs = [m["seconds"] for m in e["merges"]] or [0.0]
        peaks = [m["peak_bytes"] for m in e["merges"]] or [0]
        rows = e["shard_rows"]
        lines.append(
            f"| {s} | {min(rows)}-{max(rows)} | {e['ev_merged']:.6f} | {e['ev_diff']:+.2e} "
            f"| {e['ev_ratio_max_abs_diff']:.1e} "
            f"| {e['angle_max_deg']:.3f} / {e['angle_median_deg']:.3f} "
            f"| {e['angles_top10_max_deg']:.4f} | {len(e['merges'])} "
            f"| {np.median(secs):.2f} / {max(secs):.2f} | {max(peaks) / 2**20:.0f} "
            f"| {sum(e['fit_seconds']):.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--run", type=Path, help="finished run folder (its pixels store)")
    src.add_argument("--corpus", type=Path, help="image folder to decode (300 x 430 grey)")
    ap.add_argument("--out", type=Path, required=True, help="cache and results folder")
    ap.add_argument("--components", type=int, default=800)
    ap.add_argument("--batch", type=int, default=1131, help="rows per partial_fit (run: 1131)")
    ap.add_argument("--shards", default="1,2,4,8,16", help="comma-separated shard counts")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N rows")
    ap.add_argument(
        "--side-by-side",
        type=int,
        default=0,
        metavar="R",
        help="then time R interleaved (merge, partial_fit batch) pairs: the first merge of the "
        "most shards with k components each, and the batch after the first shard",
    )
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    store, source = open_rows(args.run, args.corpus, args.out)
    shard_counts = [int(s) for s in args.shards.split(",")]
    results = run(store, source, args.out, args.components, args.batch, shard_counts, args.limit)
    print(table(results))
    if args.side_by_side:
        # The first merge of the most shards whose models have all k components (else the most).
        k, b = args.components, args.batch
        counts = sorted((int(s) for s in results["shards"] if int(s) > 1), reverse=True)
        full = [s for s in counts if min(results["shards"][str(s)]["shard_rows"]) >= k]
        rows = results["shards"][str((full or counts)[0])]["shard_rows"]
        fits = args.out / "fits"
        a_path = fit_path(fits, 0, rows[0], k, b)
        b_path = fit_path(fits, rows[0], rows[0] + rows[1], k, b)
        timing = side_by_side(store, a_path, b_path, k, b, args.side_by_side)
        (args.out / "side_by_side.json").write_text(json.dumps(timing, indent=1))
        print(json.dumps(timing, indent=1))
        results["side_by_side"] = timing
    return results


if __name__ == "__main__":
    main()
