"""Adapter for stream-cluster: find its CLI, build the command, read back its run folder.

The CLI runs as a subprocess exactly as a user types it::

    stream-cluster SUBSET --mem-budget 2G --components 800 --k 10 --out RUNDIR --seed 0 \\
        --profile-memory --no-progress

What is read from RUNDIR (each piece optional; what is missing is reported, not guessed):

- ``run.json``: ``stages`` as ``{name: {"seconds", "peak_rss_bytes"}}``, ``peak_rss_bytes``,
  ``results.explained_variance`` (or any ``explained_variance*`` key);
- ``labels.csv``: columns ``path,cluster,distance`` (path relative to the input folder);
- features: ``features/seg-*.h5`` (datasets ``rows`` float (n, d) and ``names``), else the first
  2-D float dataset with one row per image in any ``*.h5`` of the folder;
- ``kmeans.h5`` dataset ``centers`` (k, d), else centres are the per-cluster means;
- ``memory.csv`` (``t_s,rss_bytes,stage``) for the memory timeline plot.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import metrics

__all__ = ["collect", "command", "find_cli", "parse_mem", "read_features", "stage_times"]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_mem(text: str) -> int:
    """``"4G"``/``"4GB"``/``"4GiB"``/``"512M"`` to bytes, binary units as stream-cluster uses."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    num = t.rstrip("KMGT")
    unit = t[len(num) :]
    try:
        return int(float(num) * _UNITS[unit])
    except (KeyError, ValueError):
        raise ValueError(f"memory size must look like 4G or 512M. Got {text!r}.") from None


def find_cli(repo_root: Path, override: str | None = None) -> list[str] | None:
    """The command prefix that runs stream-cluster, or None when it is not available.

    Order: ``override`` (split on spaces), the ``stream-cluster`` console script on PATH, then
    ``python -m stream_cluster`` if ``stream_cluster/__main__.py`` exists in ``repo_root``.
    """
    if override:
        return override.split()
    exe = shutil.which("stream-cluster")
    if exe:
        return [exe]
    if (repo_root / "stream_cluster" / "__main__.py").is_file():
        return [sys.executable, "-m", "stream_cluster"]
    if importlib.util.find_spec("stream_cluster") is not None:
        return [sys.executable, "-m", "stream_cluster"]
    return None


def command(
    cli: Sequence[str], images: Path, budget: str, components: int, k: int, out: Path, seed: int
) -> list[str]:
    """The exact CLI invocation the benchmark records and runs."""
    return [
        *cli, str(images), "--mem-budget", budget, "--components", str(components),
        "--k", str(k), "--out", str(out), "--seed", str(seed), "--profile-memory",
        "--no-progress",
    ]


def _find_key(obj: Any, needle: str) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(obj, dict):
        for key, val in obj.items():
            if needle in str(key):
                found.append((str(key), val))
            found.extend(_find_key(val, needle))
    return found


def stage_times(run_json: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{stage: {"seconds", "peak_rss"}}`` from run.json's ``stages`` (dict or list form)."""
    raw = run_json.get("stages", {})
    items = raw.items() if isinstance(raw, dict) else [(r.get("name"), r) for r in raw]
    out: dict[str, dict[str, float | None]] = {}
    for name, rec in items:
        if not isinstance(rec, dict):
            rec = {"seconds": rec}
        sec = next((rec[k] for k in ("seconds", "wall_s", "wall_time_s", "time_s") if k in rec),
                   None)
        rss = next((rec[k] for k in ("peak_rss_bytes", "peak_rss") if k in rec), None)
        out[str(name)] = {"seconds": sec, "peak_rss": rss}
    return out


def _explained_variance(run_json: dict[str, Any]) -> float | None:
    res = run_json.get("results", {})
    if isinstance(res.get("explained_variance"), (int, float)):
        return float(res["explained_variance"])
    for _key, val in _find_key(run_json, "explained_variance"):
        if isinstance(val, (int, float)):
            return float(val)
    for _key, val in _find_key(run_json, "explained_variance_ratio"):
        if isinstance(val, list) and val:
            return float(np.sum(val))
    return None


def read_features(run_dir: Path, n_rows: int) -> tuple[np.ndarray, list[str] | None, str] | None:
    """Features (n, d) float, their row names if stored, and where they came from."""
    import h5py

    segs = sorted((run_dir / "features").glob("seg-*.h5"))
    if segs:
        rows, names = [], []
        for seg in segs:
            with h5py.File(seg, "r") as f:
                rows.append(np.asarray(f["rows"][:], dtype=np.float64))
                if "names" in f:
                    names.extend(x.decode() if isinstance(x, bytes) else str(x)
                                 for x in f["names"][:])
        feats = np.vstack(rows)
        return feats, names if len(names) == len(feats) else None, "features/seg-*.h5:rows"
    for path in sorted(run_dir.rglob("*.h5")):
        with h5py.File(path, "r") as f:
            names_2d: list[str] = []
            f.visititems(lambda name, obj, acc=names_2d: acc.append(name)
                         if isinstance(obj, h5py.Dataset) and obj.ndim == 2
                         and obj.dtype.kind == "f" and obj.shape[0] == n_rows else None)
            if names_2d:
                arr = np.asarray(f[names_2d[0]][()], dtype=np.float64)
                return arr, None, f"{path.name}:{names_2d[0]}"
    return None


def _read_labels_csv(path: Path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    paths = [r["path"] for r in rows]
    labels = np.array([int(r["cluster"]) for r in rows], dtype=np.int64)
    dist = None
    if rows and "distance" in rows[0]:
        dist = np.array([float(r["distance"]) for r in rows])
    return paths, labels, dist


def _normalise(p: str, roots: Sequence[Path]) -> str:
    q = Path(p)
    if q.is_absolute():
        for root in roots:
            try:
                return q.relative_to(root).as_posix()
            except ValueError:
                continue
    return q.as_posix()


def collect(
    run_dir: Path,
    rel_paths: Sequence[str],
    images_dir: Path,
    total_var: float,
    k: int,
    seed: int,
    labels_out: Path,
) -> dict[str, Any]:
    """Read a finished run folder and compute the harness's numbers for it.

    Saves labels aligned to ``rel_paths`` (``-1`` where an image is missing) to ``labels_out``.
    Returns explained variance (stream-cluster's own and the harness check), inertia of its
    features/labels, and the ARI of its labels against scikit-learn ``KMeans(k)`` fitted on
    its own features.
    """
    out: dict[str, Any] = {"notes": []}
    run_json_path = run_dir / "run.json"
    if run_json_path.is_file():
        rj = json.loads(run_json_path.read_text(encoding="utf-8"))
        out["stages_reported"] = stage_times(rj)
        out["peak_rss_reported"] = rj.get("peak_rss_bytes")
        out["explained_variance"] = _explained_variance(rj)
    else:
        out["notes"].append("no run.json")
    labels_csv = run_dir / "labels.csv"
    if not labels_csv.is_file():
        out["notes"].append("no labels.csv")
        return out
    paths, labels, dist = _read_labels_csv(labels_csv)
    roots = [images_dir, images_dir.resolve()]
    index = {p: i for i, p in enumerate(rel_paths)}
    pos = np.array([index.get(_normalise(p, roots), -1) for p in paths])
    if (pos < 0).any():
        out["notes"].append(f"{int((pos < 0).sum())} labels.csv paths not in the subset")
    aligned = np.full(len(rel_paths), -1, dtype=np.int32)
    aligned[pos[pos >= 0]] = labels[pos >= 0]
    np.save(labels_out, aligned)
    out["n_labelled"] = int((aligned >= 0).sum())
    out["n_clusters_found"] = int(np.unique(labels).size)
    if dist is not None:
        out["inertia_labels_csv"] = float(np.sum(dist**2))
    got = read_features(run_dir, len(paths))
    if got is None:
        out["notes"].append("no features found in the run folder")
        return out
    feats, names, source = got
    out["features_source"] = source
    if names is not None and len(names) == len(paths) and names != paths:
        # Reorder the features to labels.csv order by name.
        where = {n: i for i, n in enumerate(names)}
        feats = feats[[where[p] for p in paths]]
    if feats.shape[0] != len(paths):
        out["notes"].append(f"features have {feats.shape[0]} rows, labels.csv {len(paths)}")
        return out
    centers = None
    km_path = run_dir / "kmeans.h5"
    if km_path.is_file():
        import h5py

        with h5py.File(km_path, "r") as f:
            if "centers" in f and f["centers"].shape == (labels.max() + 1, feats.shape[1]):
                centers = np.asarray(f["centers"][:], dtype=np.float64)
    if centers is None:
        centers, idx = metrics.cluster_means(feats, labels)
        out["notes"].append("centres = per-cluster means of its features")
        inert = metrics.inertia(feats, idx, centers)
    else:
        inert = metrics.inertia(feats, labels, centers)
    tss = metrics.total_sum_of_squares(feats)
    out["inertia"] = inert
    out["inertia_frac"] = inert / tss if tss > 0 else None
    # stream-cluster scales pixels to [0, 1]; the harness's total variance is in 0..255 units.
    raw = metrics.ev_check(feats, total_var)
    if raw is not None:
        scale = 255.0**2 if raw < 0.01 else 1.0
        if raw * scale <= 1.05:
            out["ev_check"] = raw * scale
            out["feature_scale"] = "1/255" if scale > 1 else "1"
        else:
            out["notes"].append("features not in the corpus's pixel space (resized?): no EV check")
    from sklearn.cluster import KMeans

    ref = KMeans(n_clusters=k, random_state=seed).fit(feats).labels_
    out["ari_own_features"] = metrics.adjusted_rand(labels, ref)
    out["n_components"] = int(feats.shape[1])
    return out
