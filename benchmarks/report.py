"""RESULTS.md and the plots, rebuilt from ``results.jsonl`` and ``meta.json`` after every run.

Agreement with the in-memory reference (ARI of labels, ratio of explained variance) is computed
here from the rows' saved ``labels.npy``, so rows run in different invocations still compare.
Plots use matplotlib's Figure API with the Agg canvas (no pyplot state, no display).
"""

from __future__ import annotations

import csv
import json
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import metrics

__all__ = ["plot_memory_timeline", "plot_peak_rss", "stage_group", "write_report"]

REFERENCE = "sklearn-inmem"
GROUPS = ("read", "pca", "kmeans", "other")
_GIB = 2**30

DESCRIPTIONS = {
    "sklearn-inmem": "all images in one float32 array; PCA(svd_solver='randomized'); KMeans",
    "ipca-loop": "IncrementalPCA.partial_fit over 1,000-image batches from disk; "
    "MiniBatchKMeans",
    "dask-chunked": "one dask.delayed read per 500-image float32 block; dask-ml PCA + KMeans",
    "dask-seed": "the seed: OpenCV grey, flatten, da.from_array per image, da.concatenate; "
    "dask-ml PCA + KMeans",
}


def stage_group(name: str) -> str:
    """Map a pipeline's stage name onto the table's columns: read, pca, kmeans, other."""
    n = name.lower()
    if n in ("read", "scan", "ingest") or n.startswith("read"):
        return "read"
    if n.startswith(("pca", "embed", "transform", "ingest+pca")):
        return "pca"
    if n.startswith(("kmeans", "cluster", "elbow")):
        return "kmeans"
    return "other"


def _load(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    path = out / "results.jsonl"
    if path.is_file():
        from benchmarks.run import row_key

        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row_key(rec)] = rec  # the last record of a key wins (--redo)
    meta_path = out / "meta.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    return list(rows.values()), meta


def _labels(out: Path, rec: dict[str, Any]) -> np.ndarray | None:
    rel = rec.get("labels")
    if not rel or not (out / rel).is_file():
        return None
    return np.load(out / rel, allow_pickle=False)


def _median(values: list[Any]) -> float | None:
    vals = [float(v) for v in values if isinstance(v, (int, float)) and np.isfinite(v)]
    return statistics.median(vals) if vals else None


def _group_times(rec: dict[str, Any]) -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    stages = rec.get("stages") or []
    # stream-cluster decoding beside its PCA reports both clocks and their shared wall time
    # ("ingest+pca"); only the shared one adds up to the row's wall time.
    overlapped = any(st.get("name") == "ingest+pca" for st in stages)
    for st in stages:
        if overlapped and st["name"] in ("ingest", "pca"):
            continue
        if isinstance(st.get("seconds"), (int, float)) and st["name"] != "eval":
            acc[stage_group(st["name"])] += float(st["seconds"])
    return dict(acc)


def _wall_without_eval(rec: dict[str, Any]) -> float | None:
    """Process wall time less the harness's own ``eval`` stage (the reference's yardstick)."""
    wall = rec.get("wall_s")
    if not isinstance(wall, (int, float)):
        return None
    extra = sum(float(st.get("seconds") or 0) for st in rec.get("stages") or []
                if st.get("name") == "eval")
    return float(wall) - extra


def _summarise(out: Path, rows: list[dict[str, Any]]) -> dict[tuple[int, str], dict[str, Any]]:
    """One summary per (size, pipeline): medians over ok repeats, agreement with the reference."""
    by: dict[tuple[int, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        name = r.get("label") or r["pipeline"]
        by[(r["n"], name, json.dumps([r.get("components"), r.get("k")]))].append(r)
    summ: dict[tuple[int, str], dict[str, Any]] = {}
    for (n, pipe, _ck), recs in by.items():
        recs.sort(key=lambda r: r.get("rep", 0))
        ok = [r for r in recs if r.get("status") == "ok"]
        use = ok or recs
        s: dict[str, Any] = {"n": n, "pipeline": pipe, "kind": use[0]["pipeline"],
                             "status": use[0].get("status"),
                             "reps": len(recs), "ok_reps": len(ok), "first": use[0],
                             "components": use[0].get("components"), "k": use[0].get("k")}
        for f in ("peak_rss_tree", "peak_rss_time_v", "explained_variance", "ev_check",
                  "inertia", "inertia_frac", "ari_own_features"):
            s[f] = _median([r.get(f) for r in use])
        s["wall_s"] = _median([_wall_without_eval(r) for r in use])
        groups = [_group_times(r) for r in use]
        for g in GROUPS:
            s[f"t_{g}"] = _median([gt.get(g) for gt in groups if g in gt])
        summ[(n, pipe)] = s
    for (n, pipe), s in summ.items():
        ref = summ.get((n, REFERENCE))
        if ref is None or ref["status"] != "ok" or pipe == REFERENCE:
            continue
        ref_labels = _labels(out, ref["first"])
        mine = _labels(out, s["first"])
        if ref_labels is not None and mine is not None and s["status"] == "ok":
            s["ari_vs_ref"] = metrics.adjusted_rand(mine, ref_labels)
        if s.get("explained_variance") and ref.get("explained_variance"):
            s["ev_ratio"] = s["explained_variance"] / ref["explained_variance"]
        if s["status"] == "ok":
            if s.get("wall_s") and ref.get("wall_s"):
                s["time_ratio"] = s["wall_s"] / ref["wall_s"]
            if s.get("peak_rss_tree") and ref.get("peak_rss_tree"):
                s["rss_ratio"] = s["peak_rss_tree"] / ref["peak_rss_tree"]
    return summ


def _f(v: Any, fmt: str = "{:.1f}", scale: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    return fmt.format(v / scale)


def _note(s: dict[str, Any]) -> str:
    r = s["first"]
    if s["status"] == "ok":
        bits = []
        if r.get("dask_pca_solver_used"):
            bits.append(f"solver {r['dask_pca_solver_used']}")
        if s["reps"] > 1:
            bits.append(f"median of {s['ok_reps']}/{s['reps']}")
        if r.get("notes"):
            bits.extend(r["notes"])
        return "; ".join(bits)
    bits = [r.get("reason", "")]
    if r.get("stage_reached"):
        bits.append(f"reached stage {r['stage_reached']}")
    done = [st["name"] for st in r.get("stages") or [] if st.get("finished")]
    if done:
        bits.append(f"finished {', '.join(done)}")
    return "; ".join(b for b in bits if b).replace("|", "/").replace("\n", " ")[:300]


def _table(summ: dict[tuple[int, str], dict[str, Any]], n: int, pipelines: list[str]) -> str:
    head = ("| pipeline | status | total s | read s | PCA s | k-means s | other s | "
            "peak RSS tree GiB | parent maxRSS GiB (time -v) | EV | EV check | EV / ref | "
            "inertia / TSS | ARI vs ref | ARI own feats | time × ref | RSS × ref | note |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for pipe in pipelines:
        s = summ.get((n, pipe))
        if s is None:
            continue
        lines.append("| " + " | ".join([
            pipe, s["status"], _f(s["wall_s"]), _f(s["t_read"]), _f(s["t_pca"]),
            _f(s["t_kmeans"]), _f(s["t_other"]), _f(s["peak_rss_tree"], "{:.2f}", _GIB),
            _f(s["peak_rss_time_v"], "{:.2f}", _GIB), _f(s["explained_variance"], "{:.4f}"),
            _f(s["ev_check"], "{:.4f}"), _f(s.get("ev_ratio"), "{:.4f}"),
            _f(s["inertia_frac"], "{:.4f}"), _f(s.get("ari_vs_ref"), "{:.3f}"),
            _f(s.get("ari_own_features"), "{:.3f}"), _f(s.get("time_ratio"), "{:.2f}"),
            _f(s.get("rss_ratio"), "{:.2f}"), _note(s),
        ]) + " |")
    return "\n".join(lines)


def _new_figure(w: float = 7.0, h: float = 4.5) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def plot_peak_rss(summ: dict[tuple[int, str], dict[str, Any]], path: Path,
                  mem_cap: int | None = None) -> None:
    """Peak RSS of the process tree against the number of images, one line per pipeline.

    Rows killed at a cap are drawn as an ``x`` at the RSS reached when killed.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    pipes = sorted({p for _n, p in summ})
    for pipe in pipes:
        pts = sorted((n, s) for (n, p), s in summ.items() if p == pipe)
        ok = [(n, s["peak_rss_tree"] / _GIB) for n, s in pts
              if s["status"] == "ok" and s["peak_rss_tree"]]
        bad = [(n, s["peak_rss_tree"] / _GIB) for n, s in pts
               if s["status"] not in ("ok", "skipped", "not available") and s["peak_rss_tree"]]
        line = None
        if ok:
            (line,) = ax.plot(*zip(*ok), marker="o", label=pipe)
        if bad:
            color = line.get_color() if line is not None else None
            ax.plot(*zip(*bad), linestyle="none", marker="x", markersize=10, color=color,
                    label=None if line is not None else f"{pipe} (failed)")
        if pipe.startswith("stream-cluster-") and _budget(pipe):
            color = line.get_color() if line is not None else "grey"
            ax.axhline(_budget(pipe) / _GIB, color=color, linestyle=":", linewidth=1)
    if mem_cap:
        ax.axhline(mem_cap / _GIB, color="red", linestyle="--", linewidth=1,
                   label=f"harness kill cap {mem_cap / _GIB:.0f} GiB")
    ax.set_xlabel("images")
    ax.set_ylabel("peak RSS of the process tree (GiB)")
    ax.set_title("Peak memory vs corpus size (x = killed or failed; dotted = budget)")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _budget(pipeline: str) -> int:
    """Bytes of a ``stream-cluster-<budget>`` pipeline's budget; 0 for other names."""
    from benchmarks.pipe_stream_cluster import parse_mem

    if not pipeline.startswith("stream-cluster-"):
        return 0
    try:
        return parse_mem(pipeline.removeprefix("stream-cluster-"))
    except ValueError:
        return 0


def _read_memory_csv(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    t, rss, stage = [], [], []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            t.append(float(row["t_s"]))
            rss.append(float(row["rss_bytes"]))
            stage.append(row.get("stage") or "")
    return np.array(t), np.array(rss), stage


def plot_memory_timeline(csv_path: Path, path: Path, budget_bytes: int | None,
                         title: str) -> None:
    """RSS against time from a ``t_s,rss_bytes,stage`` CSV, stages shaded, budget line."""
    t, rss, stage = _read_memory_csv(csv_path)
    fig = _new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    if t.size:
        spans: list[tuple[str, float, float]] = []
        for i, name in enumerate(stage):
            if spans and spans[-1][0] == name:
                spans[-1] = (name, spans[-1][1], t[i])
            else:
                if spans:  # close the previous stage where this one begins: no gaps
                    spans[-1] = (spans[-1][0], spans[-1][1], t[i])
                spans.append((name, t[i], t[i]))
        colors = {}
        palette = ["#cfe2f3", "#d9ead3", "#fff2cc", "#f4cccc", "#d9d2e9", "#fce5cd", "#eeeeee"]
        for name, a, b in spans:
            color = colors.setdefault(name, palette[len(colors) % len(palette)])
            ax.axvspan(a, b, color=color, alpha=0.8, linewidth=0)
        for name, color in colors.items():
            ax.axvspan(0, 0, color=color, label=name)
        ax.plot(t, rss / _GIB, color="black", linewidth=1, label="RSS of the process tree")
    if budget_bytes:
        ax.axhline(budget_bytes / _GIB, color="red", linestyle="--",
                   label=f"budget {budget_bytes / _GIB:.1f} GiB")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("RSS (GiB)")
    ax.set_title(title)
    top = max([float(rss.max()) if rss.size else 0.0, float(budget_bytes or 0)]) / _GIB
    ax.set_ylim(0, top * 1.1 or 1.0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)


def _paired_with_dask(rows: list[dict[str, Any]], n: int) -> list[str]:
    """stream-cluster wall time and peak RSS over dask-chunked's, per repeat (same rep index)."""
    ok = [r for r in rows if r.get("n") == n and r.get("status") == "ok"]
    dask = {r["rep"]: r for r in ok if r["pipeline"] == "dask-chunked"}
    pipes = sorted({r["pipeline"] for r in ok if r["pipeline"].startswith("stream-cluster-")})
    if not dask or not pipes:
        return []
    lines = [
        "Paired with dask-chunked, repeat by repeat (repeats run interleaved: rep 0 of every "
        "pipeline, then rep 1, ...):",
        "",
        "| pipeline | wall / dask-chunked per repeat | median | peak RSS / dask-chunked |",
        "|---|---|---|---|",
    ]
    for p in pipes:
        pairs = [(r, dask[r["rep"]]) for r in ok if r["pipeline"] == p and r["rep"] in dask]
        walls = [_wall_without_eval(a) / _wall_without_eval(b) for a, b in pairs
                 if _wall_without_eval(a) and _wall_without_eval(b)]
        rss = [a["peak_rss_tree"] / b["peak_rss_tree"] for a, b in pairs
               if a.get("peak_rss_tree") and b.get("peak_rss_tree")]
        if walls:
            lines.append(f"| {p} | {', '.join(f'{w:.2f}' for w in walls)} | "
                         f"**{statistics.median(walls):.2f}** | "
                         f"{_f(_median(rss), '{:.2f}')} |")
    return [*lines, ""]


def _versions_section(rows: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    lines = ["## Versions", ""]
    harness = meta.get("machine", {}).get("harness", {})
    lines.append("- harness / scikit-learn / IPCA rows: " + ", ".join(
        f"{k} {v}" for k, v in harness.items() if k not in ("threadpools", "executable")))
    dask = meta.get("dask_env")
    if dask:
        lines.append("- Dask rows (benchmarks/.venv, benchmarks/requirements-dask.txt): " +
                     ", ".join(f"{k} {v}" for k, v in dask.items()
                               if k not in ("threadpools", "executable")))
    cli = meta.get("stream_cluster_cli")
    lines.append(f"- stream-cluster CLI: `{' '.join(cli)}`" if cli else
                 "- stream-cluster CLI: not available when the rows ran")
    return lines + [""]


def write_report(out: Path, report_path: Path) -> None:
    """Write the Markdown report and the two plots from ``out``'s results and metadata."""
    rows, meta = _load(out)
    summ = _summarise(out, rows)
    sizes = sorted({n for n, _p in summ})
    order = ["sklearn-inmem", "ipca-loop", "dask-chunked", "dask-seed"]
    rank = {p: i for i, p in enumerate(order)}
    pipes = sorted({p for _n, p in summ},
                   key=lambda p: (rank.get(p.split(" ")[0], len(order)), -_budget(p), p))
    rel = os.path.relpath(out, report_path.parent)
    mem_cap = meta.get("caps", {}).get("mem_cap_bytes")
    lines = ["# Benchmark results", ""]
    corpus = meta.get("corpus", {})
    lines += [
        f"Corpus: `{corpus.get('path')}`, {corpus.get('n_images')} images of "
        f"{corpus.get('shape_hw')} (h, w) grey; size N = the first N sorted relative paths, the "
        "same images for every pipeline. Reference (\"ref\") = in-memory scikit-learn at the "
        "same N. Each row ran in its own watched subprocess; caps: "
        f"{(mem_cap or 0) / _GIB:.0f} GiB tree RSS, "
        f"{meta.get('caps', {}).get('time_cap_s', 0):.0f} s.", "",
    ]
    m = meta.get("machine", {})
    blas = [f"{tp.get('internal_api')} {tp.get('version')} ({tp.get('architecture')}, "
            f"{tp.get('num_threads')} threads, {Path(str(tp.get('filepath'))).name})"
            for tp in (m.get("harness", {}).get("threadpools") or []) if isinstance(tp, dict)]
    lines += [
        "## Machine", "",
        f"- CPU: {m.get('cpu_model')}; {m.get('logical_cpus')} logical cores "
        f"({m.get('physical_cpus')} physical), shared with other users during the run "
        f"(1-min load average at start: {_f(m.get('load_avg_at_start', [None])[0], '{:.2f}')})",
        f"- RAM: {_f(m.get('ram_bytes'), '{:.1f}', _GIB)} GiB; OS: {m.get('platform')}",
        f"- BLAS (threadpoolctl): {'; '.join(blas) or 'unknown'}",
        f"- thread/BLAS env: {m.get('env') or 'none set'}",
        "- GNU time: " + ("/usr/bin/time -v wraps every row" if meta.get("gnu_time")
                          else "missing (apt-get install time)"),
        "",
    ]
    lines += _versions_section(rows, meta)
    lines += ["## Commands", ""]
    for inv in meta.get("invocations", [])[-10:]:
        lines.append(f"- {inv.get('at')}: `{' '.join(inv.get('argv', []))}`")
    lines.append("")
    lines.append("Per-row commands (exact argv) are in `results.jsonl` (`command`).")
    lines.append("")
    lines += ["## Pipelines", ""]
    kinds = {p: s["kind"] for (_n, p), s in summ.items()}
    for p in pipes:
        if p in kinds:
            desc = DESCRIPTIONS.get(kinds[p], "stream-cluster CLI, `--mem-budget "
                                    f"{p.removeprefix('stream-cluster-')}`")
            lines.append(f"- **{p}**: {desc}")
    lines.append("")
    distinct = meta.get("distinct_files", {})
    for n in sizes:
        head = f"## {n} images"
        if str(n) in distinct:
            head += f" ({distinct[str(n)]} distinct files)"
        lines += [head, "", _table(summ, n, pipes), ""]
        lines += _paired_with_dask(rows, n)
        ref = summ.get((n, REFERENCE))
        seed_ari = _median([r.get("ari_seed_to_seed") for r in [ref["first"]]]) if ref else None
        if seed_ari is not None:
            lines += [f"Yardstick: scikit-learn KMeans({ref['k']}) with seed {ref['first']['seed']}"
                      f" vs seed {ref['first']['seed'] + 1} on the same in-memory features: "
                      f"ARI {seed_ari:.3f}.", ""]
    lines += [
        "Columns: total = wall time of the row's process (what a user waits, imports "
        "included; the reference's extra `eval` KMeans for the yardstick is subtracted); "
        "stage times are the pipeline's own (dask-chunked reads images inside PCA, "
        "the IPCA loop inside its fit and transform passes, stream-cluster decodes beside its "
        "PCA when the budget holds both); peak RSS tree = max over 0.1 s "
        "samples of the summed RSS of the row's process and all descendants (psutil); EV = the "
        "estimator's summed explained_variance_ratio_; EV check = variance carried by the "
        "features / total pixel variance (harness, same for all); inertia / TSS = sum of "
        "squared distances of every sample to its assigned centre, computed by the harness, "
        "divided by the features' total sum of squares (scale-free, so comparable across "
        "pipelines); ARI vs ref = adjusted Rand index of the labels against in-memory "
        "scikit-learn; ARI own feats = stream-cluster's labels against scikit-learn "
        "KMeans(k) run on stream-cluster's own features.", "",
    ]
    if summ:
        plot_peak_rss(summ, out / "peak_rss.png", mem_cap)
        lines += ["## Peak memory", "", f"![peak RSS vs images]({rel}/peak_rss.png)", ""]
    timeline = _timeline_source(out, summ)
    if timeline is not None:
        s, csv_path = timeline
        plot_memory_timeline(csv_path, out / "memory_timeline.png", _budget(s["pipeline"]),
                             f"{s['pipeline']}, {s['n']} images: RSS of the process tree")
        lines += ["## Memory timeline", "",
                  f"{s['pipeline']} at {s['n']} images, from the run folder's `memory.csv`.", "",
                  f"![memory timeline]({rel}/memory_timeline.png)", ""]
    else:
        lines += ["## Memory timeline", "", "No stream-cluster run with a memory.csv yet.", ""]
    report_path.write_text("\n".join(lines), encoding="utf-8")


def _timeline_source(out: Path, summ: dict[tuple[int, str], dict[str, Any]]
                     ) -> tuple[dict[str, Any], Path] | None:
    cands = [s for (_n, p), s in summ.items() if p.startswith("stream-cluster-")
             and s["first"].get("memory_csv") and (out / s["first"]["memory_csv"]).is_file()]
    if not cands:
        return None
    def rank(s: dict[str, Any]) -> tuple[int, int, int]:
        return (s["status"] == "ok", s["n"], -_budget(s["pipeline"]))

    best = max(cands, key=rank)
    return best, out / best["first"]["memory_csv"]
