"""``stream-cluster assign`` and ``stream-cluster similar``: use a finished run (thin layer)."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from stream_cluster._version import __version__
from stream_cluster.config import parse_mem
from stream_cluster.model.format import NOVELTY_PERCENTILE

__all__ = ["main_use"]

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def _assign_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stream-cluster assign",
        description=(
            "Put new images into the clusters of a finished run: each image is decoded with the "
            "run's own preprocessing, projected with its PCA and given the nearest centre. "
            f"'novel' is true when the distance is beyond that cluster's "
            f"{NOVELTY_PERCENTILE:g}th percentile of training distances (stored in the run's "
            f"model.h5)."
        ),
    )
    p.add_argument("run", type=Path, help="folder of a finished run")
    p.add_argument("images", type=Path, nargs="+", help="image files or folders (recursive)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CSV to write: path,cluster,distance,novel (default RUN/assigned.csv); files that "
        "could not be used go to <name>-skipped.csv beside it",
    )
    p.add_argument("--mem-budget", default="4G", help="peak RSS of the process tree (default 4G)")
    p.add_argument("--workers", type=int, default=None, help="decode worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--version", action="version", version=f"stream-cluster {__version__}")
    return p


def _similar_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stream-cluster similar",
        description=(
            "The run images nearest to IMAGE in PCA space (exact search), as CSV "
            "rank,path,distance on stdout; the image itself comes first, at distance 0, when "
            "it is one of the run's images."
        ),
    )
    p.add_argument("run", type=Path, help="folder of a finished run")
    p.add_argument("image", type=Path, help="an image file")
    p.add_argument("-n", type=int, default=12, help="how many (default 12)")
    p.add_argument("--montage", type=Path, default=None, help="also draw them into this PNG")
    return p


def _montage(run: Path, matches: list[object], out: Path) -> None:
    import json

    import numpy as np

    from stream_cluster.report.montage import write_montage
    from stream_cluster.storage.store import RowStore

    settings = json.loads((run / "run.json").read_text(encoding="utf-8"))["settings"]
    w, h = int(settings["width"]), int(settings["height"])
    import os

    paths = [os.fsencode(m.path) for m in matches]  # type: ignore[attr-defined]
    if (run / "pixels").is_dir():
        pixels = RowStore(run / "pixels", w * h, np.uint8)
        names = {n: i for i, n in enumerate(pixels.names())}
        rows = pixels.read_rows([names[p] for p in paths])
    else:  # --keep-pixels never: decode the run's images again from its input folder
        from stream_cluster.stages.keep_pixels_never import SourcePixels

        with SourcePixels(settings["input_dir"], paths, w, h) as source:
            rows = source.read(0, len(paths))
    imgs = [r.reshape(h, w) for r in rows]
    write_montage(
        imgs,
        out,
        title=f"{len(imgs)} nearest images",
        captions=[
            f"{m.rank}. {os.path.basename(m.path)}"  # type: ignore[attr-defined]
            for m in matches
        ],
    )


def main_use(argv: Sequence[str]) -> int:
    """Run ``assign`` or ``similar`` (``argv[0]``); returns the exit code."""
    from stream_cluster.errors import StreamClusterError

    command, rest = argv[0], list(argv[1:])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    pkg_logger = logging.getLogger("stream_cluster")
    pkg_logger.addHandler(handler)
    try:
        if command == "assign":
            args = _assign_parser().parse_args(rest)
            from stream_cluster.stages.assign import iter_assign

            gen = iter_assign(
                args.run,
                args.images,
                out_csv=args.out,
                mem_budget=parse_mem(args.mem_budget),
                workers=args.workers,
            )
            bar = None
            try:
                while True:
                    try:
                        ev = next(gen)
                    except StopIteration as stop:
                        result = stop.value
                        break
                    if not args.no_progress:
                        if bar is None:
                            from tqdm import tqdm

                            bar = tqdm(
                                total=ev.total, desc="assign", unit="image", file=sys.stderr
                            )
                        bar.n = ev.done
                        bar.refresh()
            finally:
                if bar is not None:
                    bar.close()
            print(
                f"{result.n_assigned} images assigned ({result.n_novel} novel, "
                f"{result.n_skipped} skipped): {result.csv_path}"
                + (f"; skipped, with reasons: {result.skipped_path}" if result.n_skipped else "")
            )
            return 0
        args = _similar_parser().parse_args(rest)
        from stream_cluster.model.fitted import similar

        matches = similar(args.run, args.image, args.n)
        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["rank", "path", "distance"])
        for m in matches:
            w.writerow([m.rank, m.path, f"{m.distance:.6g}"])
        if args.montage is not None:
            _montage(args.run, list(matches), args.montage)
        return 0
    except StreamClusterError as exc:
        print(f"stream-cluster {command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"\nstream-cluster {command}: interrupted; nothing was written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        pkg_logger.removeHandler(handler)
