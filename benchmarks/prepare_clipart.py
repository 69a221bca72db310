#!/usr/bin/env python3
"""Build the seed-sized benchmark corpus from Debian's openclipart-png.

The seed article clustered 8,190 catalogue images of 430 x 300 pixels
(129,000 grey values each).  Debian's `openclipart-png` package ships
8,121 real clip-art PNGs in 22 category folders, with mixed sizes and
alpha channels.  This script turns them into a corpus of the seed's
shape: every image is composited over white, converted to grey,
letterboxed (aspect kept, white padding) and resized to 300 wide x 430
high, and written as an 8-bit grey PNG under OUT/<category>/<name>.png.

    apt-get install -y openclipart-png      # once per machine
    python3 prepare_clipart.py OUT [--width 300 --height 430] [--limit N]

Needs numpy and opencv-python-headless.  Idempotent: files already in OUT
are kept, so an interrupted run can simply be started again.
"""
from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

SRC = Path("/usr/share/openclipart/png")


def to_grey_letterbox(path: Path, width: int, height: int):
    im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if im is None:
        return None
    if im.dtype == np.uint16:
        im = (im >> 8).astype(np.uint8)
    if im.ndim == 2:
        im = im[:, :, None]
    # Shrink first, while still 8-bit: a few of the PNGs exceed 600 Mpx.
    h, w = im.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    small = cv2.resize(im, (nw, nh), interpolation=interp)
    del im
    if small.ndim == 2:
        small = small[:, :, None]
    if small.shape[2] == 4:
        alpha = small[:, :, 3:4].astype(np.float32) / 255.0
        rgb = small[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        small = np.clip(rgb, 0, 255).astype(np.uint8)
    if small.shape[2] >= 3:
        grey = cv2.cvtColor(small[:, :, :3], cv2.COLOR_BGR2GRAY)
    else:
        grey = small[:, :, 0]
    canvas = np.full((height, width), 255, dtype=np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    canvas[y:y + nh, x:x + nw] = grey
    return canvas


def work(job):
    src, dst, width, height = job
    if dst.exists():
        return 0
    img = to_grey_letterbox(src, width, height)
    if img is None:
        return 1
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp.png")
    cv2.imwrite(str(tmp), img)
    os.replace(tmp, dst)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--src", type=Path, default=SRC)
    ap.add_argument("--width", type=int, default=300)
    ap.add_argument("--height", type=int, default=430)
    ap.add_argument("--limit", type=int, default=0, help="first N files only (sorted)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()
    if not a.src.is_dir():
        sys.exit(f"{a.src} not found: run 'apt-get install -y openclipart-png' first")
    files = sorted(a.src.rglob("*.png"))
    if a.limit:
        files = files[: a.limit]
    jobs = [(f, a.out / f.relative_to(a.src), a.width, a.height) for f in files]
    with ProcessPoolExecutor(a.workers) as pool:
        failed = sum(pool.map(work, jobs, chunksize=32))
    print(f"{len(jobs) - failed} images written to {a.out}, {failed} unreadable")


if __name__ == "__main__":
    main()
