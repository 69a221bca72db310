"""Command line: parse arguments into a RunConfig, call the library, render progress and errors.

stream-cluster IMAGES [--mem-budget 4G] [--k auto|N] ...   run or resume the pipeline
stream-cluster plan IMAGES [--mem-budget 2G] ...            show the memory plan, run nothing
stream-cluster demo [--out DIR]                             cluster scikit-learn's digits
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

# GRACE_SECONDS and _StopOnSignals are part of what the CLI offers (tests use them from here).
from stream_cluster._cli.signals import GRACE_SECONDS, _say, _StopOnSignals, _stopped_message  # noqa: F401
from stream_cluster._version import __version__
from stream_cluster.config import (
    RunConfig,
    format_bytes,
    parse_k,
    parse_k_range,
    parse_mem,
    parse_size,
)

if TYPE_CHECKING:
    from stream_cluster.runner.pipeline import ProgressEvent, RunResult

EXIT_ERROR = 2


def _add_run_options(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
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
    p.add_argument("--features", default="pixels", metavar="pixels|hog[:CELL]|onnx:FILE",
                   help="what the PCA is fitted on: the grey pixels (default); hog: scikit-image "
                   "HOG (9 orientations, CELL px cells, default min(w,h)//12, 2x2 blocks); onnx:"
                   "FILE: that ONNX image model's output, run on the CPU (nothing is downloaded). "
                   "hog and onnx need pip install 'stream-cluster[features]'")  # fmt: skip
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


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"stream-cluster{'' if command == 'run' else ' ' + command}",
        description={
            "run": "Cluster a folder of images under a memory budget (resumes if interrupted).",
            "plan": "Show the memory plan for a folder and settings; runs nothing heavy.",
            "demo": "Cluster scikit-learn's 1,797 bundled handwritten digits and score the result.",
        }[command],
        epilog="Subcommands: 'stream-cluster plan IMAGES ...', 'stream-cluster assign RUN "
        "IMAGES ...', 'stream-cluster similar RUN IMAGE', 'stream-cluster demo'.",
    )
    p.add_argument("--version", action="version", version=f"stream-cluster {__version__}")
    _add_run_options(p, demo=command == "demo")
    return p


def _config(args: argparse.Namespace, images: Path, default_size: str, default_components: int,
            default_k: str) -> RunConfig:  # fmt: skip
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
        dask=args.dask,
        features=args.features,
    )


class _Bars:
    """tqdm bars, one per stage, with images/s and RSS against the budget."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.stage: str | None = None

    def update(self, ev: ProgressEvent) -> None:
        from tqdm import tqdm

        if not self.enabled:
            return
        if ev.stage != self.stage:
            self.close()
            self.stage = ev.stage
            self.bar = tqdm(
                total=ev.total,
                desc=f"{ev.stage:<8}",
                unit=ev.unit[:-1] or "it",
                initial=ev.done,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        self.bar.total = ev.total
        self.bar.n = ev.done
        post = f"RSS {format_bytes(ev.rss_bytes)} / {format_bytes(ev.budget)}"
        if ev.skipped:
            post += f", {ev.skipped} skipped"
        self.bar.set_postfix_str(post, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _run(args: argparse.Namespace, config: RunConfig) -> RunResult:
    from stream_cluster.runner.pipeline import iter_run

    bars = _Bars(enabled=not args.no_progress)
    gen = iter_run(config, fresh=args.fresh, update=getattr(args, "update", False))
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                result: RunResult = stop.value
                return result
            if ev.stage == "scan" and ev.message:
                logging.getLogger("stream_cluster").info(ev.message)
            bars.update(ev)
    finally:
        bars.close()
        gen.close()


def _summary(r: RunResult) -> str:
    return (
        f"{r.n_images} images clustered into k={r.k} ({r.n_skipped} skipped); "
        f"{r.n_components} PCA components explain {r.explained_variance:.3f} of the variance; "
        f"inertia {r.inertia:.6g}; peak RSS {format_bytes(r.peak_rss)}.\n"
        f"Results in {r.out_dir}: index.html (the report: open it in a browser), labels.csv, "
        f"model.h5, run.json"
    )


def _disk_hint(config: RunConfig) -> str:
    """How much free space the rerun of a run stopped by a full disk needs (what it checks first).

    The figure is :func:`stream_cluster.memory.planner.disk_need` for what the run folder holds now,
    the same one the rerun requires before it starts, so freeing that much is enough.
    """
    import shutil

    from stream_cluster.errors import StreamClusterError
    from stream_cluster.memory.planner import disk_need
    from stream_cluster.storage.checkpoint import RunState

    out = config.out_dir
    try:
        state = RunState(out / "state.json")
        n_files = int(state.stage("ingest").get("n_files", 0))
        free = shutil.disk_usage(out).free
        need = disk_need(out, config, n_files, bool(state.stage("pca").get("done")),
                         int(state.stage("ingest").get("next_file", 0)))  # fmt: skip
    except (OSError, ValueError, StreamClusterError):
        return "stream-cluster: free some space there, then rerun the same command to resume."
    return (
        f"stream-cluster: {out} has {format_bytes(free)} free; finishing this run needs about "
        f"{format_bytes(need)} there (free {format_bytes(max(need - free, 0))} more), then "
        f"rerun the same command to resume."
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stream-cluster`` command; returns the exit code.

    Exit codes: 0 done, 2 error (one line, no traceback), 128 + signal number when stopped by
    Ctrl-C (130), SIGTERM (143) or SIGHUP (129), with finished work kept for the rerun.
    """
    as_program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("assign", "similar"):
        from stream_cluster._cli.use import main_use

        return main_use(argv)
    command = "run"
    if argv and argv[0] in ("run", "plan", "demo"):
        command = argv.pop(0)
    args = _parser(command).parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    pkg_logger = logging.getLogger("stream_cluster")
    pkg_logger.addHandler(handler)
    pkg_logger.setLevel(logging.INFO if args.verbose else logging.WARNING)
    try:
        with _StopOnSignals() as stop:
            return _main(command, args, stop)
    finally:
        pkg_logger.removeHandler(handler)
        if as_program:
            # The process ends next. Its final garbage collections walk every object of the
            # ~1,400 modules scikit-learn & co. import (0.8 s on a busy 2-core machine, 0.08 s
            # frozen); everything is already closed, so skip them and stop promptly.
            gc.freeze()


def _main(command: str, args: argparse.Namespace, stop: _StopOnSignals) -> int:
    from stream_cluster.errors import DiskFullError, StreamClusterError

    config: RunConfig | None = None
    try:
        if command == "demo":
            from stream_cluster._cli.demo import demo_score, write_digits

            out = args.out or Path("stream-cluster-runs") / "demo"
            images = out.parent / (out.name + "-images")
            n = write_digits(images)
            print(
                f"wrote {n} digit images (scikit-learn's bundled set) to {images}", file=sys.stderr
            )
            args.out = out
            args.elbow = True
            config = _config(args, images, "32x32", 40, "10")
            stop.where = os.fspath(config.out_dir)
            result = _run(args, config)
            print(_summary(result))
            print(
                f"Agreement with the true digits (adjusted Rand index): "
                f"{demo_score(result.out_dir):.3f}"
            )
            return 0
        config = _config(args, args.images, "300x430", 800, "auto")
        stop.where = os.fspath(config.out_dir)
        if command == "plan":
            from stream_cluster.images.scan import scan
            from stream_cluster.runner.pipeline import plan_folder, with_features

            found = scan(config.input_dir, follow_external_symlinks=config.follow_symlinks)
            print(f"{len(found.files)} image files in {config.input_dir}")
            mem_plan = plan_folder(with_features(config)[0], found.root, found.files)
            print(mem_plan.describe())
            if config.dask is not None:
                from stream_cluster.parallel.dask_plan import describe_dask

                print(describe_dask(config, mem_plan, len(found.files)))
            return 0
        result = _run(args, config)
        print(_summary(result))
        return 0
    except DiskFullError as exc:
        _say(f"stream-cluster: error: {exc}")
        if config is not None and exc.__cause__ is not None:  # a write failed, not the pre-check
            _say(_disk_hint(config))
        return EXIT_ERROR
    except StreamClusterError as exc:
        _say(f"stream-cluster: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        signum = int(getattr(exc, "signum", signal.SIGINT))
        _say(_stopped_message(signum, stop.where))
        return 128 + signum
    except MemoryError:
        _say(
            "stream-cluster: error: out of memory. Give a smaller --mem-budget than the memory "
            "actually free, or close other programs; rerun the same command to resume."
        )
        return EXIT_ERROR
