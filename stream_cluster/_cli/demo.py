"""A one-command demo on real images that ship with scikit-learn: 1,797 handwritten digits.

The digits are written out as PNG files in one folder per true digit, clustered like any other
folder, and the clusters are scored against the true digits (adjusted Rand index).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import cv2
import numpy as np

__all__ = ["demo_score", "write_digits"]


def write_digits(folder: Path) -> int:
    """Write scikit-learn's bundled 8x8 digits as PNGs under ``folder/digit-N/``; return count.

    Ink is dark on white (as in the clip-art corpus) so letterbox padding matches the background.
    Existing files are kept, so calling it twice is cheap.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        path = Path(folder) / f"digit-{label}" / f"{i:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        grey = (255 - np.clip(img * 16, 0, 255)).astype(np.uint8)
        if not cv2.imwrite(os.fspath(path), grey):
            raise OSError(f"could not write {path}")
    return len(digits.images)


def demo_score(run_dir: Path) -> float:
    """Adjusted Rand index between a run's clusters and the true digits (from folder names)."""
    from sklearn.metrics import adjusted_rand_score

    truth, pred = [], []
    with open(Path(run_dir) / "labels.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            truth.append(Path(row["path"]).parent.name)
            pred.append(int(row["cluster"]))
    return float(adjusted_rand_score(truth, pred))
