"""The run options the CLI shares between ``run``, ``plan`` and ``demo``, and the RunConfig
they make."""

from __future__ import annotations

import argparse
from pathlib import Path

from stream_cluster.config import (
    CLUSTERERS,
    SPACES,
    RunConfig,
    parse_k,
    parse_k_range,
    parse_mem,
    parse_size,
)

__all__ = ["add_run_options", "config_from_args"]


def add_run_options(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    """Add the options shared by ``run``, ``plan`` and ``demo`` (``demo`` takes no IMAGES)."""
    if not demo:
        p.add_argument("images", type=Path, help="folder of images (searched recursively)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run folder (default: ./stream-cluster-runs/<folder name>); "
        "rerunning with the same folder resumes",
    )
    p.add_argument(
        "--mem-budget",
        default="4G",
        help="peak RSS of the whole process tree, e.g. 4G, 512M, 1.5GiB (default 4G)",
    )
    p.add_argument(
        "--size",
        default=None if demo else "300x430",
        help="every image is letterboxed to WIDTHxHEIGHT grey (default 300x430)",
    )
    p.add_argument(
        "--components",
        type=int,
        default=None,
        help="PCA components (default 800); with --variance, the cap",
    )
    p.add_argument(
        "--variance",
        type=float,
        default=None,
        help="keep the fewest components reaching this explained variance, e.g. 0.8",
    )
    p.add_argument(
        "--k",
        default=None if demo else "auto",
        help="number of clusters, or 'auto' to pick it at the elbow (default auto)",
    )
    p.add_argument("--k-range", default="2:20", help="k values swept for the elbow (default 2:20)")
    p.add_argument(
        "--elbow", action="store_true", help="draw the elbow sweep even when --k is fixed"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decode worker processes (default: as many as cores and budget allow)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per PCA batch (default: planned from the budget)",
    )
    p.add_argument(
        "--pca-solver",
        choices=("gram", "sklearn"),
        default="gram",
        help="gram: fast exact update (default); sklearn: scikit-learn IncrementalPCA",
    )
    p.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="follow symlinks that point outside the image folder",
    )
    p.add_argument("--strict", action="store_true", help="stop if any image cannot be used")
    p.add_argument(
        "--profile-memory",
        action="store_true",
        help="write memory.csv (RSS of the process tree every 0.1 s, per stage) "
        "and memory.png into the run folder",
    )
    p.add_argument(
        "--montage-images", type=int, default=48, help="images per cluster montage (default 48)"
    )
    p.add_argument(
        "--checkpoint-every",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="save the PCA state at most this often (default 20 s; 0 = every batch)",
    )
    p.add_argument(
        "--store-compression",
        choices=("auto", "none", "lz4", "zstd"),
        default="auto",
        help="codec of the pixel store (default auto = zstd level 1: about 0.1x the raw size "
        "on clip-art, 0.85x on photos; every chunk carries a Fletcher-32 checksum)",
    )
    p.add_argument(
        "--keep-pixels",
        choices=("always", "never"),
        default="always",
        help="never: write no pixel store (saves ~0.1-0.9x the images' raw size on disk); "
        "the images are decoded again for the embed pass and the report, so a run takes "
        "longer (same labels). Not with --update or --dask.",
    )
    p.add_argument("--features", default="auto", metavar="auto|pixels|hog[:CELL]|onnx:FILE",
                   help="what the PCA is fitted on: auto (default) = hog with --space tsne, a "
                   "pixel store (local or --dask) and images of 16 px or more, else pixels; "
                   "pixels: the grey pixels; hog: scikit-image HOG (9 orientations, CELL px "
                   "cells, default max(4, min(w,h)//12), 2x2 blocks); onnx:FILE: that ONNX "
                   "image model's output, run on the CPU (nothing is downloaded; pip install "
                   "'stream-cluster[features]')")  # fmt: skip
    p.add_argument(
        "--space",
        choices=SPACES,
        default="tsne",
        help="where the clusters are found: tsne (default) = a 2-D t-SNE map of the PCA "
        "features (a sample of 2,000 images, every image placed from its nearest sampled "
        "ones), where images group by what they look like; pca = k-means on the PCA features "
        "themselves (the seed's path: groups follow overall ink density)",
    )
    p.add_argument(
        "--cluster",
        choices=CLUSTERERS,
        default="kmeans",
        help="kmeans (default; k from --k) or hdbscan (--space tsne; finds the number of "
        "clusters itself, and images that belong to none form a 'noise' group of their own)",
    )
    p.add_argument(
        "--fresh", action="store_true", help="discard what the run folder holds and start over"
    )
    p.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS|local:N",
        help="run on Dask: a scheduler address (e.g. tcp://host:8786) or local:N worker "
        "processes; --mem-budget is then per worker and for this process. Needs "
        "pip install 'stream-cluster[dask]'",
    )
    if not demo:
        p.add_argument(
            "--update",
            action="store_true",
            help="grow a finished run whose folder changed: ingest only the new files, continue "
            "the PCA with them, re-embed every image and rerun k-means from the previous centres "
            "(same k unless --k). Removed files leave the labels and features; the PCA keeps "
            "what it learned from them (--fresh refits from scratch)",
        )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("-v", "--verbose", action="store_true", help="log what happens (INFO)")



def config_from_args(
    args: argparse.Namespace,
    images: Path,
    default_size: str,
    default_components: int,
    default_k: str,
) -> RunConfig:
    """Build the RunConfig from parsed options, filling what was not given from the defaults."""
    width, height = parse_size(args.size or default_size)
    out = args.out or Path("stream-cluster-runs") / (images.resolve().name or "images")
    return RunConfig(
        input_dir=images,
        out_dir=out,
        mem_budget=parse_mem(args.mem_budget),
        width=width,
        height=height,
        n_components=args.components if args.components is not None else default_components,
        variance=args.variance,
        k=parse_k(args.k or default_k),
        k_range=parse_k_range(args.k_range),
        elbow=args.elbow,
        seed=args.seed,
        workers=args.workers,
        batch_size=args.batch_size,
        pca_solver=args.pca_solver,
        follow_symlinks=args.follow_symlinks,
        strict=args.strict,
        profile_memory=args.profile_memory,
        montage_images=args.montage_images,
        checkpoint_seconds=args.checkpoint_every,
        store_compression=args.store_compression,
        keep_pixels=args.keep_pixels,
        space=args.space,
        clusterer=args.cluster,
        features=args.features,
        dask=args.dask,
    )
