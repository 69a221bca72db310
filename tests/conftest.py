"""Shared fixtures: small folders of generated images with a known cluster structure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

# How many threads BLAS and OpenMP use. Results are bitwise reproducible for one thread count
# (README, "Reproducibility"), and a Dask LocalCluster started in this process writes these into
# os.environ: every command a later test starts would inherit them.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_STARTING_THREADS = {k: os.environ.get(k) for k in _THREAD_VARS}


@pytest.fixture(autouse=True)
def _thread_settings_kept() -> Iterator[None]:
    """Give every test the thread settings the session started with."""
    yield
    for key, value in _STARTING_THREADS.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def make_shapes_corpus(root: Path, n: int = 60, size: tuple[int, int] = (24, 32),
                       seed: int = 0) -> list[int]:
    """Write ``n`` grey PNGs of three kinds (disc, bar, cross) with noise; return true kinds.

    Files go to ``root/<kind>/img-NNN.png`` in sorted order of the returned labels.
    """
    rng = np.random.default_rng(seed)
    w, h = size
    kinds = []
    for i in range(n):
        kind = i % 3
        img = np.full((h, w), 255, np.uint8)
        cx, cy = w // 2 + int(rng.integers(-2, 3)), h // 2 + int(rng.integers(-2, 3))
        if kind == 0:
            cv2.circle(img, (cx, cy), min(w, h) // 3, 0, -1)
        elif kind == 1:
            cv2.rectangle(img, (2, cy - 3), (w - 3, cy + 3), 0, -1)
        else:
            cv2.line(img, (2, 2), (w - 3, h - 3), 0, 3)
            cv2.line(img, (w - 3, 2), (2, h - 3), 0, 3)
        noise = rng.integers(0, 40, img.shape)
        img = np.clip(img.astype(int) - noise + 20, 0, 255).astype(np.uint8)
        path = root / f"kind{kind}" / f"img-{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)
        kinds.append(kind)
    return kinds


@pytest.fixture
def shapes_dir(tmp_path: Path) -> Path:
    """A folder of 60 small generated images in three kinds."""
    root = tmp_path / "images"
    make_shapes_corpus(root)
    return root
