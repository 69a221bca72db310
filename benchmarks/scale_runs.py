"""Runs of the CLI at several image counts: wall time, peak RSS of the tree per stage, disk.

Prefixes of a scale corpus (``benchmarks.scale_corpus``) are made as folders of hard links
(``OUT/corpus-N``, no copies), then one ``python -m stream_cluster`` run per size, one after
the other, with ``--profile-memory``. Each run's figures come from its own ``run.json`` and
``state.json`` (the tree's peak per stage is the run's own sampler, every 0.1 s) and ``du``
of each folder; they are appended to ``OUT/results.jsonl``. Nothing is hard-coded: the table
printed at the end is made from that file.

Usage::

    python -m benchmarks.scale_runs /work/data/scale /work/runs/scale \\
        --sizes 8121,100000,16000,32000,64000 -- --mem-budget 2G --components 800 --k 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main", "prefix_folder", "table"]


def prefix_folder(corpus: Path, out: Path, n: int) -> Path:
    """``out/corpus-n``: hard links to the first ``n`` images of ``corpus`` (sorted paths)."""
    dest = out / f"corpus-{n}"
    files = sorted(corpus.rglob("*.png"))
    if len(files) < n:
        raise SystemExit(f"{corpus} has {len(files)} images, fewer than {n}")
    for src in files[:n]:
        link = dest / src.relative_to(corpus)
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, link)
    return dest


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_one(corpus: Path, run_dir: Path, n: int, args: list[str], label: str) -> dict[str, object]:
    """One CLI run; returns its record (also written to ``run_dir/bench.json``)."""
    cmd = [sys.executable, "-m", "stream_cluster", str(corpus), "--out", str(run_dir),
           "--profile-memory", "--no-progress", *args]  # fmt: skip
    t0 = time.perf_counter()
    with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
    rec: dict[str, object] = {
        "label": label,
        "n": n,
        "cmd": " ".join(cmd),
        "rc": rc,
        "wall_s": round(wall, 2),
        "load_after": os.getloadavg()[0],
    }
    if rc == 0:
        run = json.loads((run_dir / "run.json").read_text())
        stages = json.loads((run_dir / "state.json").read_text())["stages"]
        rec["peak_rss"] = run["peak_rss_bytes"]
        rec["plan"] = run["plan"]["stage_bytes"]
        rec["stages"] = {s: {"seconds": round(float(v.get("seconds", 0.0)), 2),
                             "peak_rss": int(v.get("peak_rss", 0))}
                         for s, v in stages.items() if "seconds" in v}  # fmt: skip
        rec["disk"] = {p.name: _du(p) if p.is_dir() else p.stat().st_size
                       for p in sorted(run_dir.iterdir())}  # fmt: skip
        rec["disk_total"] = _du(run_dir)
        rec["n_images"] = run["results"]["n_images"]
    return rec


def table(records: list[dict[str, object]]) -> str:
    """A markdown table of the records: wall, peak per stage (MiB), disk (MB)."""
    stages = ["scan", "ingest+pca", "ingest", "pca", "embed", "elbow", "cluster", "report"]
    head = ["label", "images", "wall s", "tree peak MiB"] + [f"{s} s / MiB" for s in stages]
    head += ["pixels MB", "features MB", "run folder MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        if r.get("rc") != 0:
            lines.append(f"| {r['label']} | {r['n']} | failed rc={r['rc']} |")
            continue
        st = r["stages"]
        assert isinstance(st, dict)
        cells = [
            str(r["label"]),
            f"{r['n']:,}",
            f"{r['wall_s']:.1f}",
            f"{int(r['peak_rss']) / 2**20:.0f}",
        ]  # type: ignore[call-overload]
        for s in stages:
            v = st.get(s)
            cells.append("" if v is None else f"{v['seconds']:.1f} / {v['peak_rss'] / 2**20:.0f}")
        disk = r["disk"]
        assert isinstance(disk, dict)
        cells += [
            f"{disk.get('pixels', 0) / 1e6:.0f}",
            f"{disk.get('features', 0) / 1e6:.0f}",
            f"{int(r['disk_total']) / 1e6:.0f}",
        ]  # type: ignore[call-overload]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--sizes", default="8121,16000,32000,64000,100000")
    ap.add_argument("--tag", default="", help="suffix of each run folder's name")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "results.jsonl"
    for n in [int(s) for s in args.sizes.split(",")]:
        corpus = prefix_folder(args.corpus, args.out, n)
        label = f"{n}{args.tag}"
        run_dir = args.out / f"run-{label}"
        rec = run_one(corpus, run_dir, n, extra, label)
        with open(results, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps({k: rec.get(k) for k in ("label", "rc", "wall_s", "peak_rss")}),
              flush=True)  # fmt: skip
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    print(table(records))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
