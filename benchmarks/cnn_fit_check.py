"""Pad or squash? Leave-one-out cosine 1-NN top-folder agreement of ONNX features on the clip-art.

15 images per category (seeded pick), decoded by stream-cluster at 300x430 and fed through its
``OnnxFeatures``, for each model file given (``benchmarks/export_cnn.py --fit pad|squash``), and
the raw pixels for scale. A quick check that the graph's resize choice does not cost quality::

    PYTHONPATH=$PWD python -m benchmarks.cnn_fit_check /tmp/cnn/lite0.onnx \
        /tmp/cnn/lite0-squash.onnx
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

from stream_cluster.images.decode import decode_many
from stream_cluster.images.onnx_features import OnnxFeatures

ROOT = "/work/data/clipart"


def loo_1nn(x: np.ndarray, y: np.ndarray) -> float:
    """Share of images whose nearest other image (cosine, centred) has the same label."""
    x = x - x.mean(0)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-9
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return float((y[s.argmax(1)] == y).mean())


def main(models: list[str]) -> None:
    random.seed(0)
    cats = sorted(p.name for p in Path(ROOT).iterdir() if p.is_dir())
    rel: list[str] = []
    labels: list[int] = []
    for i, c in enumerate(cats):
        files = sorted(str(p.relative_to(ROOT)) for p in Path(ROOT, c).rglob("*.png"))
        random.shuffle(files)
        rel += files[:15]
        labels += [i] * len(files[:15])
    y = np.array(labels)
    rows, _ = decode_many(ROOT, rel, 300, 430)
    print(f"{len(rel)} images, {len(cats)} categories (chance {1 / len(cats):.3f})")
    for m in models:
        print(f"{m}: {loo_1nn(OnnxFeatures(m).transform(rows, 300, 430), y):.3f}")
    print(f"pixels: {loo_1nn(rows.astype(np.float32), y):.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
