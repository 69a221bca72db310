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

from stream_cluster._cli.options import add_run_options, config_from_args
from stream_cluster._cli.signals import StopOnSignals, say, stopped_message
from stream_cluster._version import __version__
from stream_cluster.config import (
    RunConfig,
    format_bytes,
)

if TYPE_CHECKING:
    from stream_cluster.runner.pipeline import ProgressEvent, RunResult

EXIT_ERROR = 2


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
    add_run_options(p, demo=command == "demo")
    return p


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
        with StopOnSignals() as stop:
            return _main(command, args, stop)
    finally:
        pkg_logger.removeHandler(handler)
        if as_program:
            # The process ends next. Its final garbage collections walk every object of the
            # ~1,400 modules scikit-learn & co. import (0.8 s on a busy 2-core machine, 0.08 s
            # frozen); everything is already closed, so skip them and stop promptly.
            gc.freeze()


def _main(command: str, args: argparse.Namespace, stop: StopOnSignals) -> int:
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
            config = config_from_args(args, images, "32x32", 40, "10")
            stop.where = os.fspath(config.out_dir)
            result = _run(args, config)
            print(_summary(result))
            print(
                f"Agreement with the true digits (adjusted Rand index): "
                f"{demo_score(result.out_dir):.3f}"
            )
            return 0
        config = config_from_args(args, args.images, "300x430", 800, "auto")
        stop.where = os.fspath(config.out_dir)
        if command == "plan":
            from stream_cluster.images.scan import scan
            from stream_cluster.runner.pipeline import plan_folder, with_features

            found = scan(config.input_dir, follow_external_symlinks=config.follow_symlinks)
            print(f"{len(found.files)} image files in {config.input_dir}")
            config = with_features(config)[0]  # the plan and the Dask figures see --features
            mem_plan = plan_folder(config, found.root, found.files)
            print(mem_plan.describe())
            if config.dask is not None:
                from stream_cluster.parallel.dask_plan import describe_dask

                print(describe_dask(config, mem_plan, len(found.files)))
            return 0
        result = _run(args, config)
        print(_summary(result))
        return 0
    except DiskFullError as exc:
        say(f"stream-cluster: error: {exc}")
        if config is not None and exc.__cause__ is not None:  # a write failed, not the pre-check
            say(_disk_hint(config))
        return EXIT_ERROR
    except StreamClusterError as exc:
        say(f"stream-cluster: error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt as exc:
        signum = int(getattr(exc, "signum", signal.SIGINT))
        say(stopped_message(signum, stop.where))
        return 128 + signum
    except MemoryError:
        say(
            "stream-cluster: error: out of memory. Give a smaller --mem-budget than the memory "
            "actually free, or close other programs; rerun the same command to resume."
        )
        return EXIT_ERROR
