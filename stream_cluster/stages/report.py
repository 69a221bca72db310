"""The report stage: labels in, what a person looks at out.

:func:`report_stage` writes labels.csv, skipped.csv and model.h5, then :func:`write_report`
writes what a person opens: plots for choosing k (:mod:`stream_cluster.report.plots`), a thumbnail
of every image and each cluster's mean image (:mod:`stream_cluster.report.thumbs`), the map of the
collection (:mod:`stream_cluster.report.mapview`), a page per cluster and ``index.html``
(:mod:`stream_cluster.report.pages`), and one montage PNG per cluster
(:mod:`stream_cluster.report.montage`).
The map's t-SNE runs in a thread while the thumbnails are written, so the two cores share it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.config import RunConfig, format_bytes
from stream_cluster.images.decode import PIXEL_SCALE
from stream_cluster.model.format import (
    Preprocessing,
    cluster_statistics,
    features_meta,
    write_model,
)
from stream_cluster.model.kmeans import KMeansResult
from stream_cluster.model.space import ClusterSpace
from stream_cluster.report.cluster_pages import write_cluster_pages
from stream_cluster.report.mapview import (
    MAP_DIMS,
    MAP_SAMPLE,
    cluster_colours,
    embed_2d,
    leading_columns,
    quantize,
)
from stream_cluster.report.memory_plot import MEMORY_CSV_HEADER, plot_memory_timeline
from stream_cluster.report.montage import MontageLayout, display_name, montage_layout, write_montage
from stream_cluster.report.pages import (
    PER_PAGE,
    ClusterRow,
    MapData,
    cluster_page_name,
    write_index_html,
)
from stream_cluster.report.plots import plot_cluster_sizes, plot_elbow, plot_variance
from stream_cluster.report.results import write_labels, write_skipped
from stream_cluster.report.thumbs import (
    ClusterOrder,
    cluster_order,
    write_mean_images,
    write_pixel_means,
    write_thumbnails,
)
from stream_cluster.stages.base import Progress
from stream_cluster.stages.clustering import SILHOUETTE_SAMPLE, Elbow
from stream_cluster.storage.checkpoint import open_arrays
from stream_cluster.storage.rows import RowsOf, RowSource
from stream_cluster.storage.store import RowStore, read_in_batches, row_width

__all__ = [
    "MEMORY_CSV_HEADER",
    "ClusterRow",
    "MapData",
    "MontageLayout",
    "ReportInputs",
    "display_name",
    "montage_layout",
    "plot_cluster_sizes",
    "plot_elbow",
    "plot_memory_timeline",
    "plot_variance",
    "report_stage",
    "report_summary",
    "write_index_html",
    "write_montage",
    "write_report",
]

logger = logging.getLogger(__name__)

#: Thumbnails per cluster on the index page: nearest the centre, and farthest.
_INDEX_NEAREST, _INDEX_FARTHEST = 6, 3


@dataclass(frozen=True)
class ReportInputs:
    """What the report shows besides the stores and labels (settings and run figures)."""

    title: str
    summary: Mapping[str, str]
    width: int
    height: int
    explained_variance_ratio: Sequence[float]
    n_keep: int
    variance_target: float | None
    elbow: Mapping[int, float]
    elbow_k: int | None
    knee_method: str
    montage_images: int
    memory_csv: Path | None = None
    budget: int = 0
    silhouettes: Mapping[int, float] | None = None
    seed: int = 0
    pca_path: Path | None = None
    noise: int | None = None  #: the cluster that holds HDBSCAN's noise


def _plots(out_dir: Path, info: ReportInputs, sizes: Sequence[int],
           colours: Sequence[str]) -> dict[str, str]:
    """Draw the plots; return caption -> file name, in the order the page shows them."""
    images: dict[str, str] = {}
    if info.elbow and len(info.elbow) >= 3:
        ks = sorted(info.elbow)
        plot_elbow(ks, [info.elbow[x] for x in ks], out_dir / "elbow.png",
                   chosen_k=info.elbow_k, method=info.knee_method, scores=info.silhouettes,
                   score_label=f"silhouette (sample of {SILHOUETTE_SAMPLE:,})")
        caption = "Elbow: inertia vs k"
        if info.silhouettes:
            caption += f", and the silhouette of a sample of {SILHOUETTE_SAMPLE:,} images"
        images[caption + " (chosen k marked)"] = "elbow.png"
    plot_cluster_sizes(sizes, out_dir / "sizes.png", colours=colours)
    images["Cluster sizes"] = "sizes.png"
    plot_variance(np.asarray(info.explained_variance_ratio), out_dir / "variance.png",
                  n_kept=info.n_keep, target=info.variance_target)
    images["Cumulative explained variance"] = "variance.png"
    return images


def _montages(out_dir: Path, pixels: RowSource, names: Sequence[str], order: ClusterOrder,
              info: ReportInputs) -> Generator[int, None, None]:
    """One montage PNG per cluster of its nearest images (one montage's rows at a time)."""
    (out_dir / "montages").mkdir(exist_ok=True)
    for c in range(len(order.starts) - 1):
        shown = order.members(c)[: info.montage_images]
        rows = pixels.read_rows(shown.tolist())
        write_montage(
            [r.reshape(info.height, info.width) for r in rows],
            out_dir / f"montages/cluster-{c:03d}.png",
            title=f"cluster {c} - {order.size(c)} images (showing {len(shown)} nearest the "
                  "centre)",
            captions=[os.path.basename(names[i]) for i in shown],
        )
        yield c


def _cluster_rows(names: Sequence[str], order: ClusterOrder, k: int,
                  montage_images: int, noise: int | None = None) -> list[ClusterRow]:
    rows: list[ClusterRow] = []
    for c in range(k):
        members, size = order.members(c), order.size(c)
        far = range(size - 1, max(_INDEX_NEAREST - 1, size - 1 - _INDEX_FARTHEST), -1)
        rows.append(ClusterRow(
            cluster=c, size=size, page=f"clusters/{cluster_page_name(c)}",
            mean=f"means/{c}-small.png",
            nearest=[(f"thumbs/{c}/{r}.jpg", names[int(members[r])])
                     for r in range(min(size, _INDEX_NEAREST))],
            farthest=[(f"thumbs/{c}/{r}.jpg", names[int(members[r])]) for r in far],
            names=[names[int(i)] for i in members[:montage_images]],
            montage=f"montages/cluster-{c:03d}.png", noise=c == noise,
        ))
    return rows


def write_report(
    out_dir: Path,
    pixels: RowSource,
    names: Sequence[str],
    km: KMeansResult,
    skipped: Sequence[tuple[str, str]],
    info: ReportInputs,
    features: RowStore | np.ndarray | None = None,
    rows: np.ndarray | None = None,
    positions: np.ndarray | None = None,
) -> Generator[Progress, None, None]:
    """The report: plots, thumbnails, mean images, montages, cluster pages, the map, index.html.

    The map shows ``positions`` (the learned space the clusters were found in) if given, else a
    t-SNE of ``features``; with neither the page has no map. Mean images come through the
    pixel-space PCA at ``info.pca_path``, or without one (HOG, ONNX features) from the members'
    pixels, summed on the thumbnails' pass.

    Memory: one batch of 128 pixel rows (16 MB at 300 x 430), the map's inputs
    (``4 * n * 50`` bytes, 1.6 MB for 8,121 images) and t-SNE of 2,000 of them (~40 MB), the
    ``k`` mean images in float64 (``8 * k * pixels``: 10 MB for k = 10), one montage, one
    cluster page's HTML; never all thumbnails.
    """
    k = len(km.centers)
    if rows is not None:  # after an update: feature row i is pixel-store row rows[i]
        pixels = RowsOf(pixels, rows)
    n = len(names)
    order = cluster_order(km.labels, km.sq_distances, k)
    distances = np.sqrt(np.maximum(km.sq_distances, 0.0))
    colours = cluster_colours(k)
    for stale in ("clusters", "means"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    total = n + k

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="report-map") as pool:
        own_map = None  # --space pca: a t-SNE of its own, beside the thumbnails
        if positions is None and features is not None:
            own_map = pool.submit(embed_2d, leading_columns(features), seed=info.seed)
        images = _plots(out_dir, info, np.diff(order.starts).tolist(), colours)
        yield Progress("report", 0, total, "images", "thumbnails")
        # Without a pixel-space PCA (HOG, ONNX features) the mean images are the members'
        # pixel means, summed on the thumbnails' pass over the pixels.
        sums = np.zeros((k, info.width * info.height)) if info.pca_path is None else None
        thumbs = write_thumbnails(out_dir, pixels, km.labels, order.rank, width=info.width,
                                  height=info.height, sums=sums)  # fmt: skip
        while True:
            try:
                done = next(thumbs)
            except StopIteration as stop:
                thumb = stop.value
                break
            yield Progress("report", done, total, "images", "thumbnails")
        full = (info.width, info.height)
        # In the learned space a centre is a 2-D point: the mean image is the members' mean
        # PCA features mapped back.
        if sums is not None:
            write_pixel_means(out_dir, sums, np.bincount(km.labels, minlength=k),
                              width=info.width, height=info.height)  # fmt: skip
            del sums
        elif info.pca_path is not None:
            centres = km.centers if positions is None else \
                None if features is None else cluster_feature_means(features, km.labels, k)
            if centres is not None:
                with open_arrays(info.pca_path) as (state, _):
                    write_mean_images(out_dir, state, centres, width=info.width,
                                      height=info.height, scale=float(PIXEL_SCALE))
        for c in _montages(out_dir, pixels, names, order, info):
            yield Progress("report", n + c + 1, total, "images", "montages")
        write_cluster_pages(out_dir, title=info.title, names=names, order=order,
                            distances=distances, thumb=thumb, mean_size=full, noise=info.noise)
        if info.memory_csv is not None and info.memory_csv.exists():
            plot_memory_timeline(info.memory_csv, out_dir / "memory.png",
                                 budget_bytes=info.budget)
            images["Memory timeline (RSS of the process tree)"] = "memory.png"
        map_data = None
        mapped = positions if own_map is None else own_map.result()
        if mapped is not None:
            xy = quantize(mapped[order.order])
            map_data = MapData(xy, [order.size(c) for c in range(k)], colours, thumb, PER_PAGE)
    summary = dict(info.summary)
    if map_data is not None:
        summary["map"] = (("the space the clusters were found in: " if positions is not None
                           else "") +
                          f"t-SNE of {min(n, MAP_SAMPLE):,} images sampled with seed "
                          f"{info.seed} (first {MAP_DIMS} components); the others placed by "
                          "their 5 nearest sampled images")
    write_index_html(out_dir / "index.html", title=info.title, summary=summary,
                     clusters=_cluster_rows(names, order, k, info.montage_images, info.noise),
                     skipped=skipped, images=images, map_data=map_data)
    yield Progress("report", total, total, "images", "index.html")


def cluster_feature_means(features: RowStore | np.ndarray, labels: np.ndarray,
                          k: int, batch: int = 4096) -> np.ndarray:
    """Each cluster's mean feature row (``k x width`` float64), read in batches.

    Memory: the sums (``8 k width``: 64 KB for k = 10 and 800 features) and one batch.
    """
    sums = np.zeros((k, row_width(features)))
    for lo, rows in read_in_batches(features, batch, stop=len(labels)):
        np.add.at(sums, labels[lo : lo + len(rows)], rows.astype(np.float64))
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    out: np.ndarray = sums / np.maximum(counts, 1.0)[:, None]
    return out


def report_summary(
    config: RunConfig,
    *,
    n_images: int,
    n_skipped: int,
    n_keep: int,
    ev: float,
    k: int,
    at_knee: bool,
    inertia: float,
    peak: int,
) -> dict[str, str]:
    """The key/value table at the top of the report."""
    return {
        "input folder": os.fsdecode(config.input_dir),
        "images clustered": str(n_images),
        "images skipped": str(n_skipped),
        "size": f"{config.width}x{config.height}",
        "PCA components": f"{n_keep} (explained variance {ev:.4f})",
        "k": f"{k}" + (" (chosen at the elbow)" if at_knee else ""),
        "inertia (sum of squared distances)": f"{inertia:.6g}",
        "memory budget": format_bytes(config.mem_budget),
        "peak RSS (process tree)": format_bytes(peak),
    }


def report_stage(
    out_dir: Path,
    config: RunConfig,
    pixels: RowSource,
    names: Sequence[str],
    km: KMeansResult,
    skipped: Sequence[tuple[str, str]],
    *,
    n_keep: int,
    k: int,
    pca: Mapping[str, Any],
    elbow: Elbow,
    peak: int,
    sample: Callable[[], int] | None = None,
    features: RowStore | None = None,
    rows: np.ndarray | None = None,
    space: ClusterSpace | None = None,
    positions: np.ndarray | None = None,
    noise: int | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """The report stage: labels.csv, skipped.csv, model.h5 and the report (:func:`write_report`).

    ``pca`` is the PCA stage's record (explained variance); ``sample`` takes a last memory
    sample before the timeline is drawn; ``features`` (the run's feature store) gives the map,
    or ``positions`` does (the learned ``space`` the clusters were found in, also saved in
    model.h5).
    Returns the cluster sizes.

    Memory: see :func:`write_report`; model.h5 is copied from pca.h5 in 16 MB blocks.
    """
    write_labels(out_dir, names, km)
    write_skipped(out_dir, skipped)
    sizes, pct = cluster_statistics(km, k)
    with open_arrays(out_dir / "pca.h5") as (pca_state, _):
        write_model(
            out_dir / "model.h5", pca_state, n_components=n_keep, centers=km.centers,
            cluster_sizes=sizes, distance_percentiles=pct,
            preprocessing=Preprocessing(config.width, config.height), n_images=len(names),
            extra={"inertia": km.inertia, "seed": config.seed, "clusterer": config.clusterer,
                   "noise_cluster": noise, **features_meta(config)},
            space=space, density=None if config.clusterer != "hdbscan" or positions is None
            else (positions, km.labels),
        )  # fmt: skip
    ev = float(pca["explained_variance"])
    summary = report_summary(
        config, n_images=len(names), n_skipped=len(skipped), n_keep=n_keep, ev=ev, k=k,
        at_knee=config.k is None and elbow.knee is not None, inertia=km.inertia, peak=peak,
    )  # fmt: skip
    info = ReportInputs(
        "stream-cluster report", summary, config.width, config.height,
        pca["explained_variance_ratio"], n_keep, config.variance, elbow.inertias,
        k if config.k is not None else elbow.knee, elbow.method, config.montage_images,
        out_dir / "memory.csv" if config.profile_memory else None, config.mem_budget,
        elbow.silhouettes, config.seed,
        out_dir / "pca.h5" if config.features == "pixels" else None,  # mean images: pixel PCA
        noise,
    )  # fmt: skip
    if config.profile_memory and sample is not None:
        sample()
    yield from write_report(out_dir, pixels, names, km, skipped, info, features, rows,
                            positions)
    return sizes

