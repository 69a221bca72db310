"""kill -9 of a run's whole process group while its PCA runs, then the rerun, and the labels.

Usage::

    python -m benchmarks.kill_resume CORPUS OUT REFERENCE_RUN [CURSOR]

starts ``stream-cluster CORPUS --out OUT --mem-budget 2G --components 800 --k 10``, kills it
(SIGKILL to the process group, decode workers included) once ``state.json`` records a PCA
cursor of at least CURSOR images (default 40,000), reruns the same command to the end and
compares its labels with REFERENCE_RUN's (``benchmarks.compare_labels``). Prints one JSON
line per step.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ARGS = ["--mem-budget", "2G", "--components", "800", "--k", "10", "--profile-memory",
        "--no-progress"]  # fmt: skip


def _cursor(out: Path) -> int:
    try:
        pca = json.loads((out / "state.json").read_text())["stages"].get("pca", {})
        return int(pca.get("cursor", 0))
    except (OSError, ValueError, KeyError):
        return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    corpus, out, ref = Path(argv[0]), Path(argv[1]), Path(argv[2])
    at = int(argv[3]) if len(argv) > 3 else 40_000
    cmd = [sys.executable, "-m", "stream_cluster", str(corpus), "--out", str(out), *ARGS]
    t0 = time.perf_counter()
    with open(f"{out}.log1", "w") as log:
        p = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)
        cursor = 0
        while p.poll() is None and cursor < at:
            time.sleep(0.5)
            cursor = _cursor(out)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    t1 = time.perf_counter()
    stages = json.loads((out / "state.json").read_text())["stages"]
    print(json.dumps({"killed_after_s": round(t1 - t0, 1), "pca_cursor_recorded": cursor,
                      "ingest_next_file": stages.get("ingest", {}).get("next_file"),
                      "rc": p.returncode}), flush=True)  # fmt: skip
    with open(f"{out}.log2", "w") as log:
        r = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT)
    t2 = time.perf_counter()
    print(json.dumps({"resume_rc": r.returncode, "resume_s": round(t2 - t1, 1),
                      "total_s": round(t2 - t0, 1)}), flush=True)  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    stages = json.loads((out / "state.json").read_text())["stages"]
    peaks = {s: (round(v.get("seconds", 0), 1), v.get("peak_rss")) for s, v in stages.items()
             if "seconds" in v}  # fmt: skip
    print(json.dumps({"peak_rss": run["peak_rss_bytes"], "stages": peaks}), flush=True)
    return subprocess.run([sys.executable, "-m", "benchmarks.compare_labels", str(ref),
                           str(out)]).returncode  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
