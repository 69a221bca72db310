"""Cluster quality of stream-cluster and reference pipelines on a labelled image folder.

A labelled folder holds images under ``<label>/...`` (see ``benchmarks/labelled_sets.py``). Every
pipeline clusters the same images (sorted relative paths) into k groups, k = the number of labels
unless a row picks k itself, and is scored against the folder labels with ARI, AMI, NMI and
majority-label purity (the share of images whose cluster's majority label is their own; a noise
group counts as one cluster). Each row runs in its own process, watched by
``benchmarks.monitor.run_watched``: wall time and the peak summed RSS of its process tree.

Rows
----
``stream-cluster``
    The CLI as it is: ``python -m stream_cluster FOLDER --out RUN --k K --components C
    --mem-budget 2G --size WxH --seed S --no-progress``; labels from ``RUN/labels.csv``.
    ``stream-cluster-kauto`` is the same with ``--k auto``; ``stream-cluster[--opt=v ...]``
    adds those options (e.g. ``stream-cluster[--space=pca]``, the seed's path; no ``--k`` with
    ``--cluster=hdbscan`` or a ``--k=`` of its own).
``raw-kmeans``
    ``KMeans(k)`` on the pixels (grey, scaled to [0, 1]).
``features[pixels]``, ``features[hog]``
    Not clusterings: decode the images (and compute scikit-image HOG, cell = ``--hog-cell`` px,
    9 orientations, 2x2 blocks) and take an exact PCA to ``C`` components (Gram or covariance
    eigendecomposition, whichever is smaller), cached as ``.npy`` for the rows below. Their
    time and memory are the shared first step of every ``pca-*`` / ``hog-pca-*`` row.
``pca-kmeans``, ``hog-pca-kmeans``
    ``KMeans(k)`` on all ``C`` PCA features (the seed's path, in memory).
``pca-umap-kmeans`` (and ``hog-...``)
    First ``--embed-components`` PCA features -> UMAP (umap-learn, n_neighbors=30,
    min_dist=0, 10 dims, random_state=seed) -> ``KMeans(k)``.
``pca-tsne-kmeans``
    The same features -> openTSNE (2 dims, perplexity 30, seed) -> ``KMeans(k)``.
``pca-umap-hdbscan``
    The UMAP space -> ``sklearn.cluster.HDBSCAN(min_cluster_size=max(10, n // (4k)))``; its
    noise is one more group, never dropped (k is HDBSCAN's own).
``pca-umap-kmeans@S``, ``pca-tsne-kmeans@S``
    Bounded-memory form: the embedding is fitted on a seeded sample of S images, every other
    image is placed in batches of ``--place-batch`` (UMAP ``transform``, openTSNE
    ``TSNEEmbedding.transform``), then ``KMeans(k)`` on all placed points.
``kauto``
    Not a clustering: sweeps ``KMeans`` k = 2..20 on the PCA features, the UMAP space and the
    t-SNE space and records which k the knee of the inertia curve (largest distance to the
    chord) and the best silhouette would pick, with the ARI at that k.
``clustimage``, ``clustimage-k``
    The peer clustimage with its defaults (PCA features, t-SNE, agglomerative, k by silhouette
    in 3..25) and with ``min_clust = max_clust = k``, fed the file paths. Runs in the
    interpreter ``--clustimage-python`` (a venv, so its opencv-python does not shadow ours).

UMAP rows also record ``jit_s``: a throwaway UMAP fit on 300 points made first in the same
process, which carries numba's compilation (or cache load), so ``stage_s`` is the warm cost.

Usage (from the repository root)::

    python -m benchmarks.quality /tmp/qsets/digits8 --name digits8 --size 8x8 --components 40 \\
        --pipelines stream-cluster,raw-kmeans,pca-kmeans,pca-umap-kmeans --repeats 3

Writes ``OUT/NAME.jsonl`` (one JSON object per row and repeat, appended) and ``OUT/NAME.md``
(medians per row over every record in that JSONL, so runs of different rows of one set add up;
``--fresh`` starts the JSONL anew).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ALL_PIPELINES",
    "CHEAP_PIPELINES",
    "discover",
    "knee_index",
    "main",
    "pca_scores",
    "purity",
    "scores",
]

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
CHEAP_PIPELINES = ("stream-cluster", "raw-kmeans", "features[pixels]", "pca-kmeans")
ALL_PIPELINES = (
    "stream-cluster",
    "stream-cluster-kauto",
    "raw-kmeans",
    "features[pixels]",
    "pca-kmeans",
    "pca-umap-kmeans",
    "pca-tsne-kmeans",
    "pca-umap-hdbscan",
    "pca-umap-kmeans@S",
    "pca-tsne-kmeans@S",
    "features[hog]",
    "hog-pca-kmeans",
    "hog-pca-umap-kmeans",
    "hog-pca-tsne-kmeans",
    "kauto",
    "clustimage",
    "clustimage-k",
)
UMAP_PARAMS: dict[str, Any] = {"n_neighbors": 30, "min_dist": 0.0, "n_components": 10}


# --------------------------------------------------------------------------- metrics


def purity(truth: Sequence[Any] | np.ndarray, pred: Sequence[Any] | np.ndarray) -> float:
    """Share of items whose cluster's most common true label is their own label.

    Every distinct value of ``pred`` is one cluster (a noise label such as -1 included).
    """
    t = np.asarray(truth)
    p = np.asarray(pred)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(
            f"truth and pred must be non-empty and equal in length. Got {t.shape}, {p.shape}"
        )
    hits = 0
    for c in np.unique(p):
        hits += Counter(t[p == c].tolist()).most_common(1)[0][1]
    return hits / t.size


def scores(truth: Sequence[Any] | np.ndarray, pred: Sequence[Any] | np.ndarray) -> dict[str, float]:
    """ARI, AMI, NMI (arithmetic mean normalisation) and purity of ``pred`` against ``truth``."""
    from sklearn.metrics import (
        adjusted_mutual_info_score,
        adjusted_rand_score,
        normalized_mutual_info_score,
    )

    t, p = np.asarray(truth), np.asarray(pred)
    return {
        "ari": float(adjusted_rand_score(t, p)),
        "ami": float(adjusted_mutual_info_score(t, p)),
        "nmi": float(normalized_mutual_info_score(t, p)),
        "purity": float(purity(t, p)),
        "clusters": int(np.unique(p).size),
    }


def knee_index(values: Sequence[float]) -> int:
    """Index of the point farthest from the chord joining the first and last values.

    Both axes are scaled to [0, 1] first, so the answer does not depend on the units of the
    curve (the "max distance to the chord" rule of shared/research/PEERS.md).
    """
    y = np.asarray(values, dtype=np.float64)
    if y.size < 3:
        return 0
    x = np.linspace(0.0, 1.0, y.size)
    span = y.max() - y.min()
    yn = (y - y.min()) / span if span > 0 else np.zeros_like(y)
    x0, y0, x1, y1 = x[0], yn[0], x[-1], yn[-1]
    dist = np.abs((y1 - y0) * x - (x1 - x0) * yn + x1 * y0 - y1 * x0)
    return int(np.argmax(dist))


# --------------------------------------------------------------------------- data


def discover(folder: Path) -> tuple[list[str], list[str]]:
    """Sorted relative paths of the images under ``folder`` and their labels (top folder)."""
    exts = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
    rel = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in exts and p.is_file() and len(p.relative_to(folder).parts) > 1
    )
    return rel, [r.split("/", 1)[0] for r in rel]


def load_pixels(folder: Path, rel: Sequence[str], width: int, height: int) -> np.ndarray:
    """Grey images as one float32 array (n, height * width) in [0, 1], letterboxed if needed."""
    import cv2

    from benchmarks.labelled_sets import letterbox

    out = np.empty((len(rel), width * height), dtype=np.float32)
    for i, r in enumerate(rel):
        img = cv2.imread(str(folder / r), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise OSError(f"cannot decode {folder / r}")
        if img.shape != (height, width):
            img = letterbox(img, width, height)
        out[i] = img.reshape(-1) * np.float32(1 / 255)
    return out


def hog_features(pixels: np.ndarray, width: int, height: int, cell: int) -> np.ndarray:
    """scikit-image HOG (9 orientations, ``cell`` px cells, 2x2 blocks, L2-Hys) of every row."""
    from skimage.feature import hog

    def one(row: np.ndarray) -> np.ndarray:
        return np.asarray(
            hog(
                row.reshape(height, width),
                orientations=9,
                pixels_per_cell=(cell, cell),
                cells_per_block=(2, 2),
                feature_vector=True,
            ),
            dtype=np.float32,
        )

    first = one(pixels[0])
    out = np.empty((pixels.shape[0], first.size), dtype=np.float32)
    out[0] = first
    for i in range(1, pixels.shape[0]):
        out[i] = one(pixels[i])
    return out


def pca_scores(x: np.ndarray, n_components: int) -> tuple[np.ndarray, float]:
    """Exact PCA scores (n, c) of ``x`` and the explained variance ratio of the c components.

    Centres ``x`` in place, then eigendecomposes the smaller of the Gram (n x n) and covariance
    (d x d) matrices, so 1,797 x 129,000 images need a 1,797^2 matrix, not an SVD of the data.
    Signs are arbitrary (irrelevant to clustering).
    """
    n, d = x.shape
    c = min(n_components, n - 1, d)
    x -= x.mean(axis=0, dtype=np.float64).astype(x.dtype)
    total = float(np.einsum("ij,ij->", x, x, dtype=np.float64))
    if n <= d:
        g = (x @ x.T).astype(np.float64)
        w, u = np.linalg.eigh(g)
        w, u = w[::-1][:c], u[:, ::-1][:, :c]
        feats = (u * np.sqrt(np.clip(w, 0, None))).astype(np.float32)
    else:
        cov = (x.T @ x).astype(np.float64)
        w, v = np.linalg.eigh(cov)
        w, v = w[::-1][:c], v[:, ::-1][:, :c]
        feats = (x @ v.astype(np.float32)).astype(np.float32)
    return feats, float(w.sum() / total) if total > 0 else 0.0


# --------------------------------------------------------------------------- worker side


def _kmeans(x: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return np.asarray(KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit_predict(x))


def _umap(seed: int) -> Any:
    import umap  # type: ignore[import-untyped]

    return umap.UMAP(**UMAP_PARAMS, random_state=seed)


def _umap_jit(seed: int) -> float:
    """Time a throwaway UMAP fit on 300 random points: numba compilation (or cache loading)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    _umap(seed).fit(rng.normal(size=(300, 20)).astype(np.float32))
    return time.perf_counter() - t0


def _tsne(seed: int) -> Any:
    from openTSNE import TSNE

    return TSNE(n_components=2, perplexity=30, random_state=seed, n_jobs=1, verbose=False)


def _embed(method: str, x: np.ndarray, seed: int, sample: int, batch: int) -> np.ndarray:
    """UMAP or t-SNE coordinates of every row, fitted on all rows or on a seeded sample."""
    if sample <= 0 or sample >= x.shape[0]:
        if method == "umap":
            return np.asarray(_umap(seed).fit_transform(x), dtype=np.float32)
        return np.asarray(_tsne(seed).fit(x), dtype=np.float32)
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(x.shape[0], size=sample, replace=False))
    rest = np.setdiff1d(np.arange(x.shape[0]), idx)
    out = np.empty((x.shape[0], 10 if method == "umap" else 2), dtype=np.float32)
    if method == "umap":
        model = _umap(seed).fit(x[idx])
        out[idx] = model.embedding_
        place = model.transform
    else:
        model = _tsne(seed).fit(x[idx])
        out[idx] = np.asarray(model)
        place = model.transform
    for s in range(0, rest.size, batch):
        part = rest[s : s + batch]
        out[part] = np.asarray(place(x[part]))
    return out


def _kauto(x: np.ndarray, truth: np.ndarray, seed: int, n_init: int, e: int) -> dict[str, Any]:
    from sklearn.metrics import adjusted_rand_score, silhouette_score

    spaces = {
        "pca": x,
        "pca-umap": _embed("umap", x[:, :e], seed, 0, 0),
        "pca-tsne": _embed("tsne", x[:, :e], seed, 0, 0),
    }
    ks = list(range(2, 21))
    out: dict[str, Any] = {"ks": ks}
    for name, z in spaces.items():
        from sklearn.cluster import KMeans

        inertia, sil, ari = [], [], []
        for k in ks:
            km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(z)
            inertia.append(float(km.inertia_))
            sil.append(
                float(
                    silhouette_score(
                        z, km.labels_, sample_size=min(5000, z.shape[0]), random_state=seed
                    )
                )
            )
            ari.append(float(adjusted_rand_score(truth, km.labels_)))
        kn, ks_ = ks[knee_index(inertia)], ks[int(np.argmax(sil))]
        out[name] = {
            "inertia": inertia,
            "silhouette": sil,
            "ari": ari,
            "knee_k": kn,
            "knee_ari": ari[ks.index(kn)],
            "silhouette_k": ks_,
            "silhouette_ari": ari[ks.index(ks_)],
        }
    return out


def _clustimage(folder: Path, rel: Sequence[str], k: int | None, seed: int) -> np.ndarray:
    from clustimage import Clustimage  # type: ignore[import-not-found,unused-ignore]

    np.random.seed(seed)
    cl = Clustimage(verbose="error")
    paths = [str(folder / r) for r in rel]
    kw: dict[str, Any] = {} if k is None else {"min_clust": k, "max_clust": k}
    res = cl.fit_transform(paths, **kw)
    got = {os.path.realpath(p): int(lab) for p, lab in zip(res["pathnames"], res["labels"])}
    return np.array([got[os.path.realpath(p)] for p in paths])


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one pipeline described by ``spec`` in this process; returns labels and timings."""
    pipe = spec["pipeline"]
    folder, work = Path(spec["folder"]), Path(spec["work"])
    rel, truth = discover(folder)
    w, h, k, seed = spec["width"], spec["height"], spec["k"], spec["seed"]
    n_init, e, c = spec["n_init"], spec["embed_components"], spec["components"]
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    if pipe.startswith("features["):
        kind = pipe[len("features[") : -1]
        x = load_pixels(folder, rel, w, h)
        res["load_s"] = time.perf_counter() - t0
        if kind == "hog":
            t1 = time.perf_counter()
            x = hog_features(x, w, h, spec["hog_cell"])
            res["hog_s"] = time.perf_counter() - t1
            res["hog_dims"] = int(x.shape[1])
        t1 = time.perf_counter()
        feats, evr = pca_scores(x, c)
        res["pca_s"] = time.perf_counter() - t1
        res["explained_variance"] = evr
        res["components"] = int(feats.shape[1])
        np.save(work / f"feat_{kind}.npy", feats)
        res["stage_s"] = time.perf_counter() - t0
        return res
    if pipe == "raw-kmeans":
        x = load_pixels(folder, rel, w, h)
        res["load_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        res["labels"] = _kmeans(x, k, seed, n_init).tolist()
        res["stage_s"] = time.perf_counter() - t1
        return res
    if pipe in ("clustimage", "clustimage-k"):
        lab = _clustimage(folder, rel, None if pipe == "clustimage" else k, seed)
        res["labels"] = lab.tolist()
        res["stage_s"] = time.perf_counter() - t0
        return res
    kind = "hog" if pipe.startswith("hog-") else "pixels"
    feats = np.load(work / f"feat_{kind}.npy")
    method = pipe.removeprefix("hog-").removeprefix("pca-")
    if "umap" in method or method == "kauto":
        res["jit_s"] = _umap_jit(seed)
    t1 = time.perf_counter()
    if method == "kmeans":
        labels = _kmeans(feats, k, seed, n_init)
    elif method == "kauto":
        res["kauto"] = _kauto(feats, np.asarray(truth), seed, n_init, e)
        res["stage_s"] = time.perf_counter() - t1
        return res
    else:
        base, _, sample_s = method.partition("@")
        sample = int(spec["sample"]) if sample_s else 0
        emb_kind = "umap" if "umap" in base else "tsne"
        z = _embed(emb_kind, feats[:, :e], seed, sample, spec["place_batch"])
        res["embed_s"] = time.perf_counter() - t1
        if base.endswith("hdbscan"):
            from sklearn.cluster import HDBSCAN

            mcs = max(10, len(rel) // (4 * k))
            labels = HDBSCAN(min_cluster_size=mcs).fit_predict(z)
            res["min_cluster_size"] = mcs
            res["noise"] = int((labels == -1).sum())
        else:
            labels = _kmeans(z, k, seed, n_init)
    res["stage_s"] = time.perf_counter() - t1
    res["labels"] = np.asarray(labels).tolist()
    return res


# --------------------------------------------------------------------------- driver side


def _stream_cluster_labels(run: Path, rel: Sequence[str]) -> list[int]:
    import csv

    with open(run / "labels.csv", newline="") as fh:
        got = {row["path"]: int(row["cluster"]) for row in csv.DictReader(fh)}
    missing = [r for r in rel if r not in got]
    if missing:
        raise RuntimeError(f"labels.csv lacks {len(missing)} images, e.g. {missing[0]}")
    return [got[r] for r in rel]


def cli_options(pipe: str) -> list[str]:
    """The extra CLI options of a ``stream-cluster[--opt=value --opt=value]`` row.

    >>> cli_options("stream-cluster[--space=pca --features=hog]")
    ['--space=pca', '--features=hog']
    >>> cli_options("stream-cluster")
    []
    """
    if "[" not in pipe:
        return []
    inner = pipe[pipe.index("[") + 1 : pipe.rindex("]")]
    return inner.split()


def _run_row(pipe: str, a: argparse.Namespace, work: Path, rep: int) -> dict[str, Any]:
    from benchmarks.monitor import run_watched

    rel, truth = discover(a.folder)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = work / f"{pipe.replace('/', '_')}.{rep}.log"
    row: dict[str, Any] = {
        "set": a.name,
        "pipeline": pipe.replace("@S", f"@{a.sample}"),
        "repeat": rep,
        "n": len(rel),
        "k": a.k,
        "components": a.components,
        "seed": a.seed,
        "size": f"{a.width}x{a.height}",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if pipe.startswith("stream-cluster"):
        run = work / f"run-{len(pipe)}-{rep}"
        shutil.rmtree(run, ignore_errors=True)
        options = cli_options(pipe)
        k = "auto" if pipe.endswith("kauto") else str(a.k)
        given = any(o.startswith(("--k=", "--cluster=hdbscan")) for o in options)
        cmd = [
            sys.executable,
            "-m",
            "stream_cluster",
            str(a.folder),
            "--out",
            str(run),
            *([] if given else ["--k", k]),
            *options,
            "--components",
            str(a.components),
            "--mem-budget",
            a.mem_budget,
            "--size",
            f"{a.width}x{a.height}",
            "--seed",
            str(a.seed),
            "--no-progress",
        ]
        row["command"] = " ".join(cmd[1:])
        out = run_watched(
            cmd, log_path=log, mem_cap=a.mem_cap, time_cap=a.time_cap, cwd=REPO, env=env
        )
        extra: dict[str, Any] = {}
        if out.returncode == 0:
            extra["labels"] = _stream_cluster_labels(run, rel)
        shutil.rmtree(run, ignore_errors=True)
    else:
        spec = {
            "pipeline": pipe,
            "folder": str(a.folder),
            "work": str(work),
            "width": a.width,
            "height": a.height,
            "k": a.k,
            "seed": a.seed,
            "n_init": a.n_init,
            "components": a.components,
            "embed_components": a.embed_components,
            "sample": a.sample,
            "place_batch": a.place_batch,
            "hog_cell": a.hog_cell,
        }
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        result_path = work / "result.json"
        result_path.unlink(missing_ok=True)
        python = a.clustimage_python if pipe.startswith("clustimage") else sys.executable
        cmd = [python, "-m", "benchmarks.quality", "_worker", str(spec_path), str(result_path)]
        out = run_watched(
            cmd, log_path=log, mem_cap=a.mem_cap, time_cap=a.time_cap, cwd=REPO, env=env
        )
        extra = json.loads(result_path.read_text()) if out.returncode == 0 else {}
    row.update(
        wall_s=round(out.wall_s, 3),
        peak_rss_mib=round(out.peak_rss / 2**20, 1),
        returncode=out.returncode,
        killed_by=out.killed_by,
    )
    if out.returncode != 0:
        row["error_tail"] = log.read_text(errors="replace")[-600:]
    labels = extra.pop("labels", None)
    for key, val in extra.items():
        row[key] = round(val, 3) if isinstance(val, float) else val
    if labels is not None:
        row.update(scores(truth, labels))
        row["labels_sha"] = _labels_digest(labels)
    return row


def _labels_digest(labels: Sequence[int]) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(labels, dtype=np.int64).tobytes()).hexdigest()[:12]


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    """Table of medians per pipeline (first appearance order) plus the k-auto sweep if present."""
    order: list[str] = []
    for r in rows:
        if r["pipeline"] not in order:
            order.append(r["pipeline"])
    lines = [
        f"### {title}",
        "",
        "| pipeline | ARI | AMI | NMI | purity | clusters | stage s | wall s | peak RSS MiB "
        "| runs | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v: float | None, nd: int = 3) -> str:
        return "" if v is None else f"{v:.{nd}f}"

    kauto: dict[str, Any] | None = None
    for p in order:
        rs = [r for r in rows if r["pipeline"] == p]
        ok = [r for r in rs if r.get("returncode") == 0]
        notes = []
        if len({r.get("labels_sha") for r in ok}) > 1:
            notes.append("labels differ between repeats")
        for key in ("jit_s", "embed_s", "load_s", "hog_s", "pca_s"):
            m = _median(ok, key)
            if m is not None:
                notes.append(f"{key[:-2]} {m:.1f} s")
        for key in ("explained_variance", "noise", "min_cluster_size", "hog_dims"):
            m = _median(ok, key)
            if m is not None:
                notes.append(f"{key} {m:g}")
        failed = [r for r in rs if r.get("returncode") != 0]
        if failed:
            why = failed[0].get("killed_by") or f"exit code {failed[0].get('returncode')}"
            notes.append(f"{len(failed)} failed ({why})")
        if ok and "kauto" in ok[-1]:
            kauto = ok[-1]["kauto"]
        clusters = _median(ok, "clusters")
        lines.append(
            f"| {p} | {f(_median(ok, 'ari'))} | {f(_median(ok, 'ami'))} | {f(_median(ok, 'nmi'))} "
            f"| {f(_median(ok, 'purity'))} | {'' if clusters is None else int(clusters)} "
            f"| {f(_median(ok, 'stage_s'), 1)} | {f(_median(ok, 'wall_s'), 1)} "
            f"| {f(_median(ok, 'peak_rss_mib'), 0)} | {len(ok)}/{len(rs)} | {'; '.join(notes)} |"
        )
    if kauto:
        lines += [
            "",
            "k picked by a k-means sweep k = 2..20 (ARI at that k):",
            "",
            "| space | knee k | ARI | silhouette k | ARI | best ARI over k (k) |",
            "|---|---|---|---|---|---|",
        ]
        for space in ("pca", "pca-umap", "pca-tsne"):
            s = kauto[space]
            best = int(np.argmax(s["ari"]))
            lines.append(
                f"| {space} | {s['knee_k']} | {s['knee_ari']:.3f} | {s['silhouette_k']} "
                f"| {s['silhouette_ari']:.3f} | {s['ari'][best]:.3f} ({kauto['ks'][best]}) |"
            )
    return "\n".join(lines) + "\n"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from benchmarks.labelled_sets import parse_size

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="labelled folder: images under <label>/")
    ap.add_argument("--name", help="name of the set in the outputs (default: folder name)")
    ap.add_argument(
        "--pipelines",
        default=",".join(CHEAP_PIPELINES),
        help=f"comma-separated rows, or 'all' ({', '.join(ALL_PIPELINES)})",
    )
    ap.add_argument("--k", type=int, default=0, help="clusters (default: number of labels)")
    ap.add_argument("--size", type=parse_size, default=(300, 430), help="WIDTHxHEIGHT")
    ap.add_argument("--components", type=int, default=800, help="PCA components (all rows)")
    ap.add_argument(
        "--embed-components",
        type=int,
        default=50,
        help="first PCA features fed to UMAP / t-SNE (default 50)",
    )
    ap.add_argument("--sample", type=int, default=2000, help="S of the @S rows")
    ap.add_argument("--place-batch", type=int, default=1000, help="images placed per batch")
    ap.add_argument(
        "--hog-cell",
        type=int,
        default=0,
        help="HOG cell in px (default: max(2, min(width, height) // 12))",
    )
    ap.add_argument("--n-init", type=int, default=10, help="KMeans restarts")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all rows (interleaved)")
    ap.add_argument("--mem-budget", default="2G", help="stream-cluster --mem-budget")
    ap.add_argument("--mem-cap", default="16G", help="kill a row above this tree RSS")
    ap.add_argument("--time-cap", type=float, default=3600.0, help="kill a row after this many s")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "quality")
    ap.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default /tmp/quality-work/NAME)"
    )
    ap.add_argument("--fresh", action="store_true", help="discard OUT/NAME.jsonl first")
    ap.add_argument(
        "--reuse-features",
        action="store_true",
        help="use the PCA features a previous run left in the work folder (same settings)",
    )
    ap.add_argument(
        "--report-only", action="store_true", help="rebuild OUT/NAME.md from the JSONL, run nothing"
    )
    ap.add_argument(
        "--clustimage-python", default=sys.executable, help="interpreter with clustimage installed"
    )
    a = ap.parse_args(argv)
    a.folder = a.folder.resolve()
    a.name = a.name or a.folder.name
    a.width, a.height = a.size
    a.hog_cell = a.hog_cell or max(2, min(a.width, a.height) // 12)
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    cap = a.mem_cap.upper().rstrip("IB")
    a.mem_cap = int(float(cap[:-1]) * units[cap[-1]]) if cap[-1] in units else int(cap)
    pipes = ALL_PIPELINES if a.pipelines == "all" else tuple(a.pipelines.split(","))
    # stream-cluster[--opt=value ...]: the CLI with those options (k from the labels unless
    # given, or HDBSCAN)
    unknown = [p for p in pipes if p not in ALL_PIPELINES and not p.startswith("stream-cluster[")]
    if unknown:
        ap.error(f"unknown pipelines {unknown}; choose from {', '.join(ALL_PIPELINES)}")
    a.pipes = pipes
    return a


def run(a: argparse.Namespace) -> list[dict[str, Any]]:
    """Run every row ``a.repeats`` times, interleaved, appending to the JSONL as rows finish."""
    rel, truth = discover(a.folder)
    if not rel:
        raise SystemExit(f"no images under label folders in {a.folder}")
    a.k = a.k or len(set(truth))
    work = a.work or Path("/tmp/quality-work") / a.name
    work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    jsonl = a.out / f"{a.name}.jsonl"
    if a.fresh:
        jsonl.unlink(missing_ok=True)
    # A row on PCA features needs its features row first, once, even if not asked for.
    pipes = list(a.pipes)
    for kind in ("pixels", "hog"):
        feat = f"features[{kind}]"
        needs = any(
            p.startswith("hog-" if kind == "hog" else "pca-") or (kind == "pixels" and p == "kauto")
            for p in pipes
        )
        cached = a.reuse_features and (work / f"feat_{kind}.npy").is_file()
        if needs and feat not in pipes and not cached:
            pipes.insert(0, feat)
    rows: list[dict[str, Any]] = []
    for rep in range(0 if a.report_only else a.repeats):
        for pipe in pipes:
            row = _run_row(pipe, a, work, rep)
            row["argv"] = " ".join(sys.argv[1:])
            rows.append(row)
            with open(jsonl, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            print(
                f"[{a.name} rep {rep}] {row['pipeline']}: ARI {row.get('ari', '-')} "
                f"wall {row['wall_s']} s peak {row['peak_rss_mib']} MiB rc {row['returncode']}",
                flush=True,
            )
    every = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
    (a.out / f"{a.name}.md").write_text(
        markdown(
            every,
            f"{a.name}: {len(rel)} images, {len(set(truth))} labels, k={a.k}, "
            f"{a.width}x{a.height}, components {a.components}",
        )
    )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """Command line (see the module docstring); ``_worker SPEC RESULT`` is the per-row process."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["_worker"]:
        spec = json.loads(Path(args[1]).read_text())
        res = worker(spec)
        Path(args[2]).write_text(json.dumps(res))
        return 0
    a = _parse_args(args)
    run(a)
    print((a.out / f"{a.name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
