"""The same run on one process and on ``--dask local:2``, interleaved, with every process's peak.

    python -m benchmarks.dask_scale --corpus /work/data/clipart --repeats 3

Each repeat runs ``stream-cluster CORPUS --mem-budget 2G --components 800 --k 10`` once without
and once with ``--dask local:2`` (alternating, so both see the same machine load), each in a
fresh run folder, as a subprocess whose process tree is sampled every 0.1 s with psutil: the
peak RSS of every process (client, Dask nannies, workers, decode workers) and of the tree.
Appends one JSON line per run to ``OUT/runs.jsonl`` (wall time, stage seconds, explained
variance, the peaks, run.json's ``dask`` section: merges with seconds and bytes, task time per
stage) and prints a Markdown summary (medians, the ratio, label agreement), also written to
``OUT/summary.md``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

GiB = 2**30


def _role(proc: psutil.Process, root: int) -> str:
    try:
        cmd = " ".join(proc.cmdline())
        parent = proc.ppid()
    except psutil.Error:
        return "gone"
    if proc.pid == root:
        return "client"
    if "resource_tracker" in cmd:
        return "tracker"
    if "loky" in cmd:
        return "decoder"
    # A LocalCluster's nannies run inside the client; each starts its worker process.
    if parent == root and "spawn_main" in cmd:
        return "worker"
    return "other"


def run_one(cmd: list[str], interval: float = 0.1) -> dict[str, Any]:
    """Run ``cmd``; sample every process of its tree; return wall time and peaks by role."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peaks: dict[int, dict[str, Any]] = {}
    tree_peak = 0
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            procs = []
        for p in procs:
            try:
                rss = p.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            rec = peaks.setdefault(p.pid, {"role": _role(p, proc.pid), "peak": 0})
            rec["peak"] = max(rec["peak"], rss)
        tree_peak = max(tree_peak, total)
        time.sleep(interval)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    return {"wall": wall, "rc": proc.returncode, "tree_peak": tree_peak,
            "processes": list(peaks.values()), "stdout": out[-2000:],
            "stderr": err[-4000:]}  # fmt: skip


def _labels(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["path"]: int(r["cluster"]) for r in csv.DictReader(fh)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/dask"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", default="2G")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--components", type=int, default=800)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    modes = {"single": [], "dask": ["--dask", f"local:{args.workers}"]}
    for rep in range(args.repeats):
        for mode, extra in modes.items():
            rundir = args.out / "runs" / f"{mode}-{rep}"
            shutil.rmtree(rundir, ignore_errors=True)
            cmd = [sys.executable, "-m", "stream_cluster", os.fspath(args.corpus),
                   "--mem-budget", args.budget, "--components", str(args.components),
                   "--k", str(args.k), "--seed", "0", "--out", os.fspath(rundir),
                   "--no-progress", *extra]  # fmt: skip
            res = run_one(cmd)
            row: dict[str, Any] = {"mode": mode, "rep": rep, "cmd": cmd, **res}
            if res["rc"] == 0:
                doc = json.loads((rundir / "run.json").read_text())
                row["stages"] = {s: v["seconds"] for s, v in doc["stages"].items()}
                row["explained_variance"] = doc["results"]["explained_variance"]
                row["dask"] = doc.get("dask")
            with open(log, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
            print(f"{mode} rep {rep}: rc {res['rc']} wall {res['wall']:.1f} s, tree peak "
                  f"{res['tree_peak'] / GiB:.2f} GiB", file=sys.stderr, flush=True)  # fmt: skip
            if res["rc"] != 0:
                print(res["stderr"], file=sys.stderr)
    summary = summarize([json.loads(line) for line in log.read_text().splitlines()], args.out)
    (args.out / "summary.md").write_text(summary)
    print(summary)
    return 0


def summarize(rows: list[dict[str, Any]], out: Path) -> str:
    """Markdown: medians of wall time per mode and their ratio, peaks, merges, agreement."""
    ok = [r for r in rows if r["rc"] == 0]
    wall = {m: [r["wall"] for r in ok if r["mode"] == m] for m in ("single", "dask")}
    lines = ["| mode | runs | wall s (each) | median s | tree peak GiB | largest process GiB |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for m, ws in wall.items():
        mine = [r for r in ok if r["mode"] == m]
        if not ws:
            continue
        big = max(p["peak"] for r in mine for p in r["processes"])
        lines.append(
            f"| {m} | {len(ws)} | {', '.join(f'{w:.1f}' for w in ws)} | "
            f"{statistics.median(ws):.1f} | {max(r['tree_peak'] for r in mine) / GiB:.2f} | "
            f"{big / GiB:.2f} |"
        )
    if wall["single"] and wall["dask"]:
        ratio = statistics.median(wall["dask"]) / statistics.median(wall["single"])
        lines.append(f"\nmedian dask / median single: **{ratio:.2f}x**")
    for r in (r for r in ok if r["mode"] == "dask"):
        roles: dict[str, list[float]] = {}
        for p in r["processes"]:
            roles.setdefault(p["role"], []).append(p["peak"] / GiB)
        peaks = "; ".join(f"{k}: {', '.join(f'{v:.2f}' for v in sorted(vs))}"
                          for k, vs in sorted(roles.items()))  # fmt: skip
        stages = ", ".join(f"{s} {v:.1f} s" for s, v in r["stages"].items() if v)
        lines.append(f"\ndask rep {r['rep']}: peak RSS GiB per process ({peaks}); {stages}")
        d = r.get("dask") or {}
        for name, m in sorted((d.get("merges") or {}).items()):
            lines.append(
                f"  merge {name}: {m['seconds']:.1f} s (load {m.get('load_seconds', 0):.1f}, "
                f"merge {m.get('merge_seconds', 0):.1f}, save {m.get('save_seconds', 0):.1f}), "
                f"read {m.get('read_bytes', 0) / 2**20:.0f} MiB, wrote "
                f"{m.get('written_bytes', 0) / 2**20:.0f} MiB"
            )
        for stage, w in (d.get("work") or {}).items():
            lines.append(f"  {stage} tasks: {w['tasks']} tasks, {w['images']} images, "
                         f"{w['seconds']:.1f} task-s ({w['images'] / max(w['seconds'], 1e-9):.0f}"
                         f" images/s per worker)")  # fmt: skip
        for name, f in sorted((d.get("fits") or {}).items()):
            lines.append(f"  fit shard {name}: {f['rows']} images in {f['seconds']:.1f} s")
        lines.append(f"  scatter {d.get('scatter')}, worker fetches {d.get('transfers')}")
    runs = out / "runs"
    pairs = []
    for rep in sorted({r["rep"] for r in ok}):
        a, b = runs / f"single-{rep}" / "labels.csv", runs / f"dask-{rep}" / "labels.csv"
        if a.exists() and b.exists():
            pairs.append((rep, _labels(a), _labels(b)))
    if pairs:
        from sklearn.metrics import adjusted_rand_score

        for rep, a, b in pairs:
            keys = sorted(a)
            ari = adjusted_rand_score([a[p] for p in keys], [b[p] for p in keys])
            lines.append(f"\nrep {rep}: ARI single vs dask {ari:.4f} ({len(keys)} images)")
        first = pairs[0][2]
        same = all(p[2] == first for p in pairs[1:])
        lines.append(f"dask labels identical across the {len(pairs)} dask runs: {same}")
        evs = {m: [r["explained_variance"] for r in ok if r["mode"] == m] for m in wall}
        lines.append(f"explained variance: single {evs['single']}, dask {evs['dask']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
