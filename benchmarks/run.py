"""Benchmark harness: every pipeline, every size, one watched subprocess per row, resumable.

    python -m benchmarks.run --corpus /work/data/clipart --sizes 1000,2000,4000,all \\
        [--pipelines sklearn-inmem,ipca-loop,dask-chunked,dask-seed,stream-cluster] \\
        [--out benchmarks/results]

Each finished row (including killed and failed ones) is appended to ``OUT/results.jsonl``; a
rerun skips the rows already there (``--redo`` runs them again), then rewrites the report
(``benchmarks/RESULTS.md`` for the default ``--out``, else ``OUT/RESULTS.md``) and the plots.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import corpus as corpus_mod
from benchmarks import envs, monitor
from benchmarks import pipe_stream_cluster as sc

__all__ = ["ALL_PIPELINES", "WORKER_PIPELINES", "main", "row_key"]

WORKER_PIPELINES = ("sklearn-inmem", "ipca-loop", "dask-chunked", "dask-seed")
ALL_PIPELINES = (*WORKER_PIPELINES, "stream-cluster")
DEFAULT_OUT = envs.BENCH_DIR / "results"
REPO_ROOT = envs.BENCH_DIR.parent
#: Statuses after which larger sizes of the same pipeline are not attempted.
#: A MemoryError is not among them: it is an allocation refused up front (dask-ml's "full" solver
#: asks for a d x d matrix at small N), and larger N may take another code path.
FATAL = ("memory cap", "time cap", "killed")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Compare stream-cluster with Dask, in-memory scikit-learn and a plain "
        "IncrementalPCA loop on the same images, in the same run, on the same machine.",
    )
    ap.add_argument("--corpus", type=Path, help="image folder (first N sorted relative paths)")
    ap.add_argument("--sizes", default="1000,2000,4000,all",
                    help="comma-separated image counts or 'all' (default 1000,2000,4000,all)")
    ap.add_argument("--pipelines", default=",".join(ALL_PIPELINES),
                    help=f"comma-separated subset of {','.join(ALL_PIPELINES)} "
                    "(stream-cluster runs once per --budgets entry; stream-cluster-2G picks one)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results folder")
    ap.add_argument("--report", type=Path, default=None,
                    help="report path (default benchmarks/RESULTS.md for the default --out, "
                    "else OUT/RESULTS.md)")
    ap.add_argument("--components", type=int, default=800, help="PCA components (default 800)")
    ap.add_argument("--k", type=int, default=10, help="clusters (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--budgets", default="4G,2G", help="stream-cluster --mem-budget values")
    ap.add_argument("--mem-cap", default="16G", help="kill a row's process tree above this RSS")
    ap.add_argument("--time-cap", type=float, default=1800.0, help="kill a row after N seconds")
    ap.add_argument("--repeats", type=int, default=1, help="runs per row; medians are reported")
    ap.add_argument("--ipca-batch", type=int, default=1000, help="IPCA loop batch (default 1000)")
    ap.add_argument("--dask-block", type=int, default=500,
                    help="images per delayed read in dask-chunked (default 500)")
    ap.add_argument("--dask-scheduler", choices=("threads", "distributed"), default="threads",
                    help="threads: dask's default; distributed: a local Client() with worker "
                    "processes")
    ap.add_argument("--dask-svd-solver", default="auto",
                    choices=("auto", "randomized", "full", "tsqr"),
                    help="dask-ml PCA svd_solver (default auto, as the seed; auto picks 'full' "
                    "when components >= 0.8 * images)")
    ap.add_argument("--dask-python", default=None,
                    help="interpreter with dask-ml (default: benchmarks/.venv, created on need)")
    ap.add_argument("--no-setup", action="store_true",
                    help="never create the Dask venv; Dask rows become 'not available'")
    ap.add_argument("--stream-cluster-cmd", default=None,
                    help="command prefix for stream-cluster (default: console script on PATH, "
                    "else python -m stream_cluster)")
    ap.add_argument("--redo", action="store_true", help="rerun rows already in results.jsonl")
    ap.add_argument("--no-skip", action="store_true",
                    help="also run larger sizes after a pipeline hit a cap at a smaller one")
    ap.add_argument("--report-only", action="store_true", help="rewrite the report, run nothing")
    return ap


def _expand_pipelines(text: str, budgets: list[str]) -> list[str]:
    out: list[str] = []
    for name in (p.strip() for p in text.split(",") if p.strip()):
        if name == "stream-cluster":
            out.extend(f"stream-cluster-{b}" for b in budgets)
        elif name in WORKER_PIPELINES or (
            name.startswith("stream-cluster-") and name.removeprefix("stream-cluster-")
        ):
            out.append(name)
        else:
            raise SystemExit(
                f"--pipelines entries must be among {', '.join(ALL_PIPELINES)} or "
                f"stream-cluster-BUDGET. Got {name!r}."
            )
    return list(dict.fromkeys(out))


def row_key(rec: dict[str, Any]) -> str:
    """Identity of a row: what was run on what; a rerun skips rows whose key is present."""
    fields = ("pipeline", "n", "rep", "components", "k", "seed", "corpus", "options")
    return json.dumps({f: rec.get(f) for f in fields}, sort_keys=True)


def _load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by a kill of the harness itself
    return rows


def _append_row(path: Path, rec: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _options(pipeline: str, args: argparse.Namespace) -> dict[str, Any]:
    if pipeline == "ipca-loop":
        return {"ipca_batch": args.ipca_batch}
    if pipeline.startswith("dask-"):
        opts: dict[str, Any] = {"dask_scheduler": args.dask_scheduler,
                                "dask_svd_solver": args.dask_svd_solver}
        if pipeline == "dask-chunked":
            opts["dask_block"] = args.dask_block
        return opts
    if pipeline.startswith("stream-cluster-"):
        return {"mem_budget": pipeline.removeprefix("stream-cluster-")}
    return {}


def _label(pipeline: str, options: dict[str, Any]) -> str:
    """Row name in the report: the pipeline, plus any non-default option that changes it."""
    extra = []
    if options.get("dask_svd_solver", "auto") != "auto":
        extra.append(f"svd_solver={options['dask_svd_solver']}")
    if options.get("dask_scheduler", "threads") != "threads":
        extra.append(options["dask_scheduler"])
    if pipeline == "dask-chunked" and options.get("dask_block", 500) != 500:
        extra.append(f"block={options['dask_block']}")
    if pipeline == "ipca-loop" and options.get("ipca_batch", 1000) != 1000:
        extra.append(f"batch={options['ipca_batch']}")
    return f"{pipeline} [{', '.join(extra)}]" if extra else pipeline


def _stage_peaks(stages: list[dict[str, Any]], samples: list[tuple[float, int]],
                 end: float) -> list[dict[str, Any]]:
    out = []
    for st in stages:
        t1 = st["end"] if st.get("end") is not None else end
        inside = [r for t, r in samples if st["start"] <= t <= t1]
        out.append({"name": st["name"], "seconds": t1 - st["start"],
                    "finished": st.get("end") is not None,
                    "peak_rss": max(inside) if inside else None})
    return out


def _write_rss_csv(path: Path, samples: list[tuple[float, int]], t0: float) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("t_s,rss_bytes\n")
        for t, r in samples:
            fh.write(f"{t - t0:.3f},{r}\n")


def _status(outcome: monitor.RunOutcome, result: dict[str, Any] | None,
            mem_cap: int, time_cap: float) -> tuple[str, str]:
    if outcome.killed_by == "memory cap":
        return "memory cap", f"process-tree RSS passed the {mem_cap / 2**30:.1f} GiB cap"
    if outcome.killed_by == "time cap":
        return "time cap", f"wall time passed the {time_cap:.0f} s cap"
    if result is not None and result.get("status") == "ok" and outcome.returncode == 0:
        return "ok", ""
    if result is not None and result.get("status") == "error":
        etype = result.get("error_type", "error")
        status = "MemoryError" if etype == "MemoryError" else "error"
        return status, f"{etype}: {result.get('error', '')}"[:500]
    sig = outcome.time_v.get("Command terminated by signal")
    if sig or (outcome.returncode is not None and outcome.returncode < 0):
        num = sig or str(-(outcome.returncode or 0))
        hint = " (kernel OOM killer?)" if num == "9" else ""
        return "killed", f"killed by signal {num}{hint}"
    return "error", f"exit code {outcome.returncode}"


def _tail(path: Path, n: int = 1500) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except OSError:
        return ""


def _last_line(path: Path) -> str:
    """The last non-empty line of a log: for a Python traceback, the exception itself."""
    lines = [ln.strip() for ln in _tail(path, 4000).splitlines() if ln.strip()]
    return lines[-1][:400] if lines else ""


def _run_row(pipeline: str, n: int, rep: int, args: argparse.Namespace, ctx: dict[str, Any],
             ) -> dict[str, Any]:
    base: dict[str, Any] = {
        "pipeline": pipeline, "label": _label(pipeline, _options(pipeline, args)), "n": n,
        "rep": rep, "components": args.components, "k": args.k,
        "seed": args.seed, "corpus": str(args.corpus.resolve()),
        "options": _options(pipeline, args), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_avg": os.getloadavg()[0],
    }
    tag = f"n{n}-c{args.components}-k{args.k}-s{args.seed}-r{rep}"
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", base["label"]).strip("_")
    row_dir = args.out / "rows" / slug / tag
    if row_dir.exists():
        import shutil

        shutil.rmtree(row_dir)  # a row interrupted by a kill of the harness: start it over
    row_dir.mkdir(parents=True)
    base["row_dir"] = os.path.relpath(row_dir, args.out)
    paths_file = ctx["paths_files"][n]
    rel_paths = ctx["subsets"][n]
    result: dict[str, Any] | None = None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))

    if pipeline.startswith("stream-cluster-"):
        cli = ctx["stream_cluster_cli"]
        if cli is None:
            return {**base, "status": "not available",
                    "reason": "no stream-cluster console script and no stream_cluster/__main__"}
        images = ctx["subset_dirs"][n]
        run_dir = row_dir / "run"
        cmd = sc.command(cli, images, base["options"]["mem_budget"], args.components, args.k,
                         run_dir, args.seed)
    else:
        python = sys.executable
        if pipeline.startswith("dask-"):
            python = ctx["dask_python"]
            if python is None:
                return {**base, "status": "not available",
                        "reason": f"no interpreter imports dask_ml: {ctx['dask_info']}"[:500]}
        cmd = [python, "-m", "benchmarks.worker", "--pipeline", pipeline,
               "--corpus", str(args.corpus), "--paths-file", str(paths_file),
               "--out", str(row_dir), "--components", str(args.components), "--k", str(args.k),
               "--seed", str(args.seed), "--total-var", repr(ctx["total_var"][n]),
               "--options", json.dumps(base["options"])]
    base["command"] = shlex.join(cmd)
    outcome = monitor.run_watched(
        cmd, log_path=row_dir / "output.log", mem_cap=ctx["mem_cap"], time_cap=args.time_cap,
        cwd=REPO_ROOT, env=env, time_v_path=row_dir / "time-v.txt",
    )
    end = outcome.start_epoch + outcome.wall_s
    _write_rss_csv(row_dir / "rss.csv", outcome.samples, outcome.start_epoch)
    keep = ("Maximum resident set size (kbytes)", "Elapsed (wall clock) time (h:mm:ss or m:ss)",
            "Exit status", "Command terminated by signal", "Percent of CPU this job got")
    rec = {**base, "wall_s": outcome.wall_s, "peak_rss_tree": outcome.peak_rss,
           "returncode": outcome.returncode,
           "time_v": {k: outcome.time_v[k] for k in keep if k in outcome.time_v}}
    maxrss = outcome.time_v.get("Maximum resident set size (kbytes)")
    rec["peak_rss_time_v"] = int(maxrss) * 1024 if maxrss and maxrss.isdigit() else None

    if pipeline.startswith("stream-cluster-"):
        run_dir = row_dir / "run"
        ok = outcome.returncode == 0 and outcome.killed_by is None
        if run_dir.is_dir():
            got = sc.collect(run_dir, rel_paths, ctx["subset_dirs"][n], ctx["total_var"][n],
                             args.k, args.seed, row_dir / "labels.npy")
            rec.update(got)
            reported = got.get("stages_reported") or {}
            rec["stages"] = [{"name": s, "seconds": v.get("seconds"), "finished": True,
                              "peak_rss": v.get("peak_rss")} for s, v in reported.items()]
            if (run_dir / "memory.csv").is_file():
                rec["memory_csv"] = os.path.relpath(run_dir / "memory.csv", args.out)
        result = {"status": "ok"} if ok and "inertia" in rec else None
        if ok and result is None:
            result = {"status": "error", "error_type": "incomplete run folder",
                      "error": "; ".join(rec.get("notes", []))}
        if not ok and outcome.killed_by is None and outcome.returncode not in (None, 0):
            result = {"status": "error", "error_type": f"exit {outcome.returncode}",
                      "error": _last_line(row_dir / "output.log")}
    else:
        progress = row_dir / "progress.json"
        res_path = row_dir / "result.json"
        stages = json.loads(progress.read_text())["stages"] if progress.is_file() else []
        rec["stages"] = _stage_peaks(stages, outcome.samples, end)
        unfinished = [s["name"] for s in stages if s.get("end") is None]
        rec["stage_reached"] = unfinished[-1] if unfinished else (
            stages[-1]["name"] if stages else None)
        if res_path.is_file():
            result = json.loads(res_path.read_text())
            for key in ("explained_variance", "ev_check", "inertia", "inertia_frac",
                        "own_inertia", "n_clusters_found", "versions", "threadpools",
                        "dask_pca_solver_used", "dask_scheduler", "dask_workers", "traceback",
                        "notes", "ari_seed_to_seed"):
                if key in result:
                    rec[key] = result[key]
            if (row_dir / "labels.npy").is_file():
                rec["labels"] = os.path.relpath(row_dir / "labels.npy", args.out)
    if (row_dir / "labels.npy").is_file():
        rec["labels"] = os.path.relpath(row_dir / "labels.npy", args.out)
    status, reason = _status(outcome, result, ctx["mem_cap"], args.time_cap)
    rec["status"] = status
    if reason:
        rec["reason"] = reason
    if status != "ok":
        rec["log_tail"] = _tail(row_dir / "output.log")
    return rec


def _prepare_sizes(args: argparse.Namespace, sizes: list[int], all_paths: list[str],
                   need_dirs: bool) -> dict[str, Any]:
    sub_dir = args.out / "subsets"
    sub_dir.mkdir(parents=True, exist_ok=True)
    cache_path = sub_dir / "size_stats.json"
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    ctx: dict[str, Any] = {"subsets": {}, "paths_files": {}, "subset_dirs": {}, "total_var": {},
                           "distinct": {}}
    shape = corpus_mod.image_shape(args.corpus, all_paths)
    for n in sizes:
        rel = all_paths[:n]
        ctx["subsets"][n] = rel
        pf = sub_dir / f"n{n}.txt"
        pf.write_text("\n".join(rel), encoding="utf-8")
        ctx["paths_files"][n] = pf
        if need_dirs:
            ctx["subset_dirs"][n] = (
                args.corpus if n == len(all_paths)
                else corpus_mod.make_subset_dir(args.corpus, rel, sub_dir / f"n{n}")
            )
        key = f"{args.corpus.resolve()}|{n}"
        if key not in cache:
            print(f"[bench] total pixel variance of the first {n} images ...", flush=True)
            cache[key] = {
                "total_variance": corpus_mod.total_variance(args.corpus, rel, shape),
                "distinct_files": corpus_mod.count_distinct(args.corpus, rel),
            }
            cache_path.write_text(json.dumps(cache, indent=1), encoding="utf-8")
        ctx["total_var"][n] = cache[key]["total_variance"]
        ctx["distinct"][n] = cache[key]["distinct_files"]
    return ctx


def main(argv: list[str] | None = None) -> int:
    """Run the rows not yet in ``OUT/results.jsonl``, then write the report and plots."""
    args = _parser().parse_args(argv)
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    report_path = args.report or (
        envs.BENCH_DIR / "RESULTS.md" if args.out == DEFAULT_OUT.resolve()
        else args.out / "RESULTS.md"
    )
    from benchmarks import report

    if args.report_only:
        report.write_report(args.out, report_path)
        print(f"[bench] wrote {report_path}")
        return 0
    if args.corpus is None:
        raise SystemExit("--corpus is required (unless --report-only)")
    budgets = [b.strip() for b in args.budgets.split(",") if b.strip()]
    pipelines = _expand_pipelines(args.pipelines, budgets)
    all_paths = corpus_mod.list_images(args.corpus)
    if not all_paths:
        raise SystemExit(f"no images under {args.corpus}")
    sizes = corpus_mod.resolve_sizes(args.sizes, len(all_paths))

    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.setdefault("invocations", []).append({
        "argv": ["python", "-m", "benchmarks.run", *(argv if argv is not None else sys.argv[1:])],
        "cwd": os.getcwd(), "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    meta["machine"] = envs.machine_info()
    meta["corpus"] = {"path": str(args.corpus.resolve()), "n_images": len(all_paths),
                      "shape_hw": corpus_mod.image_shape(args.corpus, all_paths)}
    meta["gnu_time"] = Path(monitor.GNU_TIME).exists()
    if not meta["gnu_time"]:
        print(f"[bench] {monitor.GNU_TIME} is missing: rows get no GNU time report. Install the "
              "Debian package 'time' (apt-get install time) to add it.", flush=True)
    ctx: dict[str, Any] = {"mem_cap": sc.parse_mem(args.mem_cap), "dask_python": None,
                           "dask_info": {}, "stream_cluster_cli": None}
    meta["caps"] = {"mem_cap_bytes": ctx["mem_cap"], "time_cap_s": args.time_cap}
    if any(p.startswith("dask-") for p in pipelines):
        ctx["dask_python"], ctx["dask_info"] = envs.dask_python(
            args.dask_python, not args.no_setup, args.out / "dask-venv-setup.log")
        meta["dask_env"] = ctx["dask_info"]
    if any(p.startswith("stream-cluster-") for p in pipelines):
        ctx["stream_cluster_cli"] = sc.find_cli(REPO_ROOT, args.stream_cluster_cmd)
        meta["stream_cluster_cli"] = ctx["stream_cluster_cli"]
    need_dirs = ctx["stream_cluster_cli"] is not None
    ctx.update(_prepare_sizes(args, sizes, all_paths, need_dirs))
    meta.setdefault("distinct_files", {}).update({str(n): d for n, d in ctx["distinct"].items()})
    meta_path.write_text(json.dumps(meta, indent=1, default=str), encoding="utf-8")

    results = args.out / "results.jsonl"
    done = {row_key(r): r for r in _load_rows(results)}
    # Repeats are interleaved (rep 0 of every pipeline, then rep 1, ...) so that a slow spell of
    # the shared machine hits all pipelines alike instead of all repeats of one.
    for n in sizes:
        for rep in range(args.repeats):
            for pipeline in pipelines:
                probe = {"pipeline": pipeline, "n": n, "rep": rep, "components": args.components,
                         "k": args.k, "seed": args.seed, "corpus": str(args.corpus.resolve()),
                         "options": _options(pipeline, args)}
                key = row_key(probe)
                if key in done and not args.redo:
                    continue
                smaller = [r for r in done.values() if r["pipeline"] == pipeline
                           and r["n"] < n and r.get("status") in FATAL
                           and r.get("components") == args.components]
                if smaller and not args.no_skip:
                    worst = min(smaller, key=lambda r: r["n"])
                    rec = {**probe, "label": _label(pipeline, probe["options"]),
                           "status": "skipped",
                           "reason": f"{worst['status']} at {worst['n']} images"}
                else:
                    print(f"[bench] {pipeline} n={n} rep={rep} ...", flush=True)
                    rec = _run_row(pipeline, n, rep, args, ctx)
                    print(f"[bench]   {rec['status']} {rec.get('wall_s', math.nan):.1f} s "
                          f"peak {rec.get('peak_rss_tree', 0) / 2**30:.2f} GiB "
                          f"{rec.get('reason', '')}", flush=True)
                _append_row(results, rec)
                done[key] = rec
    report.write_report(args.out, report_path)
    print(f"[bench] wrote {report_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
