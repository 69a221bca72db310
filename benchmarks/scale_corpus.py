"""Make a large seed-shaped corpus (300x430 grey PNGs) from the prepared clip-art, for scale runs.

Image ``i`` is one source image (picked by a generator seeded with ``(seed, i)``) under a fixed
random augmentation drawn from the same generator: a horizontal flip, a shift of up to 8 % of
each side, a rotation of up to 8 degrees and a zoom of 0.85-1.15, with white fill where the
picture moved away. So image ``i`` depends only on the source folder, ``seed`` and ``i``: a run
is resumable (existing files are skipped, each file is written to a temporary name and renamed)
and any ``--n`` gives a prefix of a larger one. Files go to ``OUT/000/000000.png``,
``OUT/000/000001.png``, ... with at most ``--per-folder`` (1,000) files a folder.

This corpus measures **time, memory and disk** of a run at 100,000 images. It says nothing
about cluster quality: its images are near-copies of a few thousand sources, so clusters of it
reflect the sources, not a real collection.

Usage::

    python -m benchmarks.scale_corpus /work/data/clipart /work/data/scale --n 100000 --seed 0
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import resource
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from benchmarks.corpus import list_images
from stream_cluster.images.decode import decode_image

__all__ = ["WIDTH", "HEIGHT", "augment", "main", "make_image", "output_path"]

WIDTH, HEIGHT = 300, 430
#: Indices handed to a worker at a time (small enough to keep both workers busy to the end).
TASK = 50

_sources: list[Path] = []


def output_path(out: Path, i: int, per_folder: int = 1000) -> Path:
    """Where image ``i`` goes: ``out/<i // per_folder, 3+ digits>/<i, 6+ digits>.png``."""
    return Path(out) / f"{i // per_folder:03d}" / f"{i:06d}.png"


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Flip, shift, rotate and zoom ``img`` (grey, ``(HEIGHT, WIDTH)``) by draws from ``rng``.

    The draws are always made in the same order and number, so the result depends only on the
    generator's state. Uncovered pixels are white (255), as the prepared images' background.
    """
    flip, dx, dy = rng.random() < 0.5, rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)
    angle, zoom = rng.uniform(-8.0, 8.0), rng.uniform(0.85, 1.15)
    h, w = img.shape
    if flip:
        img = img[:, ::-1]
    m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, zoom)
    m[:, 2] += (dx * w, dy * h)
    return cv2.warpAffine(
        np.ascontiguousarray(img),
        m,
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=255,
    )


def make_image(sources: Sequence[Path], seed: int, i: int) -> np.ndarray:
    """Image ``i`` of the corpus ``seed``: a seeded source under a seeded augmentation."""
    rng = np.random.default_rng([seed, i])
    src = sources[int(rng.integers(len(sources)))]
    return augment(decode_image(src, WIDTH, HEIGHT), rng)


def _init(sources: list[Path]) -> None:
    cv2.setNumThreads(1)
    _sources[:] = sources


def _work(task: tuple[Path, int, list[int], int]) -> int:
    """Write the missing images of ``indices``; return how many were written."""
    out, seed, indices, per_folder = task
    written = 0
    for i in indices:
        path = output_path(out, i, per_folder)
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        ok, png = cv2.imencode(".png", make_image(_sources, seed, i))
        if not ok:
            raise RuntimeError(f"PNG encoding failed for image {i}")
        tmp = path.with_name(path.name + ".partial")
        tmp.write_bytes(png.tobytes())
        os.replace(tmp, path)
        written += 1
    return written


def _tasks(
    out: Path, seed: int, n: int, per_folder: int
) -> Iterator[tuple[Path, int, list[int], int]]:
    for lo in range(0, n, TASK):
        todo = [
            i for i in range(lo, min(lo + TASK, n)) if not output_path(out, i, per_folder).exists()
        ]
        if todo:
            yield out, seed, todo, per_folder


def main(argv: list[str] | None = None) -> int:
    """Generate the corpus; print images/s, CPU per image, workers' peak RSS and disk use."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src", type=Path, help="folder of source images (the prepared clip-art)")
    ap.add_argument("out", type=Path, help="output folder (created; existing images are kept)")
    ap.add_argument("--n", type=int, required=True, help="number of images")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2, help="worker processes")
    ap.add_argument("--per-folder", type=int, default=1000, help="images per sub-folder")
    args = ap.parse_args(argv)
    if args.n < 1 or args.workers < 1 or args.per_folder < 1:
        ap.error("--n, --workers and --per-folder must be >= 1")
    sources = [args.src / p for p in list_images(args.src)]
    if not sources:
        ap.error(f"no images under {args.src}")
    args.out.mkdir(parents=True, exist_ok=True)
    t0, done = time.perf_counter(), 0
    step = max(1, math.ceil(args.n / 20))
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init, initargs=(sources,)) as pool:
        tasks = _tasks(args.out, args.seed, args.n, args.per_folder)
        for written in pool.imap_unordered(_work, tasks):
            before, done = done, done + written
            if done // step > before // step:
                rate = done / (time.perf_counter() - t0)
                print(f"{done} new images, {rate:.0f} images/s", flush=True)
        pool.close()
        pool.join()
    elapsed = time.perf_counter() - t0
    files = [output_path(args.out, i, args.per_folder) for i in range(args.n)]
    disk = sum(p.stat().st_size for p in files)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak, cpu = usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime
    print(
        f"{done} images written, {args.n - done} kept, in {elapsed:.1f} s "
        f"({done / elapsed if elapsed else 0:.0f} images/s with {args.workers} workers, "
        f"{f'{1e3 * cpu / done:.1f}' if done else '-'} ms of worker CPU an image, load average "
        f"{os.getloadavg()[0]:.1f}); "
        f"{args.n} files, {disk / 1e6:.0f} MB on disk ({disk / args.n / 1e3:.1f} KB an image); "
        f"peak RSS of one worker {peak / 2**20:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
