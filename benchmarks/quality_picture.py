"""README's picture: what a few clusters of two runs of the same folder hold, side by side.

For each run folder given, the ``--clusters`` largest clusters, each as a strip of the
``--per-cluster`` thumbnails nearest its centre (the report's own ``thumbs/<c>/<rank>.jpg``),
under a caption with the run's label. Writes one PNG.

    python -m benchmarks.quality_picture OUT.png "k-means on PCA features=RUN_A" \
        "default (learned space, HOG)=RUN_B" --clusters 4 --per-cluster 10
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

_CELL = 96  # px per thumbnail in the picture
_GAP = 6


def _strip(run: Path, cluster: int, per: int) -> np.ndarray:
    row = np.full((_CELL, per * (_CELL + _GAP) - _GAP, 3), 255, np.uint8)
    for r in range(per):
        img = cv2.imread(str(run / "thumbs" / str(cluster) / f"{r}.jpg"))
        if img is None:
            break
        h, w = img.shape[:2]
        s = _CELL / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))),
                         interpolation=cv2.INTER_AREA)  # fmt: skip
        y, x = (_CELL - img.shape[0]) // 2, r * (_CELL + _GAP) + (_CELL - img.shape[1]) // 2
        row[y : y + img.shape[0], x : x + img.shape[1]] = img
    return row


def _label(text: str, width: int, height: int = 30, scale: float = 0.6) -> np.ndarray:
    band = np.full((height, width, 3), 255, np.uint8)
    cv2.putText(band, text, (4, height - 9), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                cv2.LINE_AA)  # fmt: skip
    return band


def picture(runs: list[tuple[str, Path]], clusters: int, per: int) -> np.ndarray:
    """The picture as a BGR array."""
    blocks = []
    width = per * (_CELL + _GAP) - _GAP
    for title, run in runs:
        with open(run / "labels.csv", newline="", encoding="utf-8") as fh:
            sizes = Counter(int(r["cluster"]) for r in csv.DictReader(fh))
        blocks.append(_label(title, width, 36, 0.75))
        for c, n in sizes.most_common(clusters):
            blocks.append(_label(f"cluster {c}: {n:,} images (nearest its centre)", width, 24,
                                 0.5))  # fmt: skip
            blocks.append(_strip(run, c, per))
        blocks.append(np.full((14, width, 3), 255, np.uint8))
    return np.concatenate(blocks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", nargs="+", help="TITLE=RUN_FOLDER")
    ap.add_argument("--clusters", type=int, default=4)
    ap.add_argument("--per-cluster", type=int, default=10)
    a = ap.parse_args(argv)
    runs = [(t, Path(p)) for t, p in (r.rsplit("=", 1) for r in a.runs)]
    img = picture(runs, a.clusters, a.per_cluster)
    if not cv2.imwrite(str(a.out), img, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise OSError(f"could not write {a.out}")
    print(f"{a.out}: {img.shape[1]}x{img.shape[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
