"""The seed workload against the chunked Dask path, interleaved rounds in one run (issue 21).

    python -m benchmarks.dask_pairs --dask-python PY --out DIR [--rounds 3] [--corpus DIR]

Each round runs, one after another and each in its own watched process tree (peak RSS of the
tree sampled every 0.1 s, as ``benchmarks.run``): the chunked Dask pipeline (dask-ml PCA +
KMeans on 500-image blocks, ``benchmarks.worker --pipeline dask-chunked`` under ``PY``, an
interpreter with dask-ml: see requirements-dask.txt), then stream-cluster on the seed's path
(``--space pca``: the same work, k-means on 800 PCA features of the pixels), then
stream-cluster with its defaults (HOG features and the learned space). All at ``--mem-budget
2G --components 800 --k 10 --seed 0``. The kernel class is whatever the environment selects
(``OPENBLAS_CORETYPE=Haswell`` forces the AVX2 kernels on an AVX-512 machine); every process
inherits it. Prints JSON: per round the wall times, tree peaks and the ratios to Dask's wall
time of the same round, and their medians.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks import corpus as corpus_mod
from benchmarks import monitor
from benchmarks.envs import machine_info

REPO = Path(__file__).resolve().parents[1]
SEED = ["--mem-budget", "2G", "--components", "800", "--k", "10", "--seed", "0"]


def _row(cmd: list[str], out: Path, env: dict[str, str]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    o = monitor.run_watched(
        cmd, log_path=out / "output.log", mem_cap=16 * 2**30, time_cap=1800.0,
        cwd=Path("/tmp"), env=env,
    )
    if o.returncode != 0 or o.killed_by is not None:
        raise SystemExit(f"{cmd[:4]} failed ({o.returncode}, {o.killed_by}); see {out}/output.log")
    rec: dict[str, Any] = {"wall_s": round(o.wall_s, 2), "peak_rss_tree": o.peak_rss}
    for name in ("run/run.json", "result.json"):
        path = out / name
        if path.is_file():
            info = json.loads(path.read_text())
            ev = info.get("results", info).get("explained_variance")
            if ev is not None:
                rec["explained_variance"] = ev
            if "stages" in info and isinstance(info["stages"], dict):
                rec["stages_s"] = {k: v.get("seconds") for k, v in info["stages"].items()}
    return rec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=Path("/work/data/clipart"))
    ap.add_argument("--dask-python", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rel = corpus_mod.list_images(args.corpus)
    paths_file = args.out / "paths.txt"
    paths_file.write_text("\n".join(rel), encoding="utf-8")
    tv_file = args.out / "total_variance.json"
    if not tv_file.is_file():
        shape = corpus_mod.image_shape(args.corpus, rel)
        tv_file.write_text(json.dumps(corpus_mod.total_variance(args.corpus, rel, shape)))
    total_var = json.loads(tv_file.read_text())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    dask_opts = {"dask_scheduler": "threads", "dask_svd_solver": "auto", "dask_block": 500}
    rounds = []
    for i in range(args.rounds):
        rnd: dict[str, Any] = {}
        for name in ("dask-chunked", "stream-cluster --space pca", "stream-cluster"):
            out = args.out / f"r{i}-{name.replace(' ', '').replace('--', '-')}"
            shutil.rmtree(out, ignore_errors=True)
            if name == "dask-chunked":
                cmd = [args.dask_python, "-m", "benchmarks.worker", "--pipeline", name,
                       "--corpus", str(args.corpus), "--paths-file", str(paths_file),
                       "--out", str(out), "--components", "800", "--k", "10", "--seed", "0",
                       "--total-var", repr(total_var), "--options", json.dumps(dask_opts)]
            else:
                extra = name.split()[1:]
                cmd = [sys.executable, "-m", "stream_cluster", str(args.corpus), *SEED, *extra,
                       "--out", str(out / "run"), "--no-progress"]
            rnd[name] = _row(cmd, out, env)
            shutil.rmtree(out / "run" / "pixels", ignore_errors=True)
            shutil.rmtree(out / "run" / "descriptors", ignore_errors=True)
            print(f"round {i} {name}: {rnd[name]['wall_s']} s", file=sys.stderr, flush=True)
        base = rnd["dask-chunked"]["wall_s"]
        rnd["ratios_to_dask"] = {n: round(r["wall_s"] / base, 3) for n, r in rnd.items()
                                 if n != "dask-chunked"}
        rounds.append(rnd)
    names = list(rounds[0]["ratios_to_dask"])
    summary = {
        "median_ratio_to_dask": {
            n: statistics.median(r["ratios_to_dask"][n] for r in rounds) for n in names
        },
        "median_wall_s": {
            n: statistics.median(r[n]["wall_s"] for r in rounds)
            for n in ("dask-chunked", *names)
        },
        "max_peak_rss_tree": {
            n: max(r[n]["peak_rss_tree"] for r in rounds) for n in ("dask-chunked", *names)
        },
    }
    out_json = {"env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")},
                "machine": machine_info(), "rounds": rounds, "summary": summary}
    text = json.dumps(out_json, indent=1, default=str)
    (args.out / "pairs.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
