"""kill -9 of a run's whole process group while its PCA runs, then the rerun, and the labels.

Usage::

    python benchmarks/kill_resume.py CORPUS OUT REFERENCE_RUN [CURSOR]

starts ``stream-cluster CORPUS --out OUT --mem-budget 2G --components 800 --k 10``, kills it
(SIGKILL to the process group, decode workers included) once ``state.json`` records a PCA
cursor of at least CURSOR images (default 40,000), reruns the same command to the end and
compares its labels with REFERENCE_RUN's (``benchmarks.compare_labels``).
"""
import json, os, signal, subprocess, sys, time
from pathlib import Path

corpus, out, ref = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
at = int(sys.argv[4]) if len(sys.argv) > 4 else 40000
args = ["--mem-budget", "2G", "--components", "800", "--k", "10", "--profile-memory", "--no-progress"]
cmd = [sys.executable, "-m", "stream_cluster", str(corpus), "--out", str(out), *args]
t0 = time.perf_counter()
p = subprocess.Popen(cmd, start_new_session=True, stdout=open(str(out) + ".log1", "w"), stderr=subprocess.STDOUT)
cursor = 0
while p.poll() is None:
    try:
        pca = json.loads((out / "state.json").read_text())["stages"].get("pca", {})
        cursor = int(pca.get("cursor", 0))
    except Exception:
        pass
    if cursor >= at:
        break
    time.sleep(0.5)
os.killpg(p.pid, signal.SIGKILL)
p.wait()
t1 = time.perf_counter()
st = json.loads((out / "state.json").read_text())["stages"]
print(json.dumps({"killed_after_s": round(t1 - t0, 1), "pca_cursor_recorded": cursor,
                  "ingest_next_file": st.get("ingest", {}).get("next_file"), "rc": p.returncode}), flush=True)
r = subprocess.run(cmd, stdout=open(str(out) + ".log2", "w"), stderr=subprocess.STDOUT)
t2 = time.perf_counter()
print(json.dumps({"resume_rc": r.returncode, "resume_s": round(t2 - t1, 1), "total_s": round(t2 - t0, 1)}), flush=True)
run = json.loads((out / "run.json").read_text())
print(json.dumps({"peak_rss": run["peak_rss_bytes"], "stages": {s: (round(v.get("seconds", 0), 1), v.get("peak_rss")) for s, v in json.loads((out / "state.json").read_text())["stages"].items() if "seconds" in v}}), flush=True)
sys.stdout.flush()
os.system(f"{sys.executable} -m benchmarks.compare_labels {ref} {out}")
