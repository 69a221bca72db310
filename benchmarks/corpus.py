"""The benchmark corpus: sorted image list, first-N subsets, grey reads and total pixel variance.

Every pipeline sees the same images in the same order: the first N of the corpus's relative
paths sorted as POSIX strings. Pixels are grey ``uint8`` values 0..255 flattened row-major, so
features of all non-stream-cluster pipelines are in the same units.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "count_distinct",
    "image_shape",
    "list_images",
    "make_subset_dir",
    "read_block",
    "read_gray",
    "resolve_sizes",
    "total_variance",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


def list_images(corpus: Path) -> list[str]:
    """Relative POSIX paths of every image under ``corpus``, sorted.

    Parameters
    ----------
    corpus : Path
        Folder searched recursively; files are kept by suffix (see ``IMAGE_SUFFIXES``).

    Returns
    -------
    list of str
        Sorted relative paths; the benchmark's subset of size N is the first N of them.
    """
    corpus = Path(corpus)
    if not corpus.is_dir():
        raise FileNotFoundError(f"corpus must be an existing folder. Got {str(corpus)!r} instead.")
    found = [
        p.relative_to(corpus).as_posix()
        for p in corpus.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    ]
    return sorted(found)


def resolve_sizes(text: str, total: int) -> list[int]:
    """Parse ``"1000,2000,all"`` into sorted distinct sizes capped at ``total``.

    Parameters
    ----------
    text : str
        Comma-separated positive integers or ``all``.
    total : int
        Number of images in the corpus.
    """
    sizes: set[int] = set()
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part == "all":
            sizes.add(total)
            continue
        try:
            n = int(part)
        except ValueError:
            raise ValueError(f"--sizes entries must be integers or 'all'. Got {part!r}.") from None
        if n < 1:
            raise ValueError(f"--sizes entries must be >= 1. Got {n}.")
        if n > total:
            raise ValueError(f"--sizes entry {n} exceeds the corpus ({total} images).")
        sizes.add(n)
    if not sizes:
        raise ValueError(f"--sizes must name at least one size. Got {text!r}.")
    return sorted(sizes)


def read_gray(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read one image as grey ``uint8`` with OpenCV, resized to ``shape`` (h, w) if it differs.

    Raises
    ------
    OSError
        If OpenCV cannot decode the file (the prepared corpus has no such files).
    """
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise OSError(f"OpenCV could not read {str(path)!r}")
    if shape is not None and img.shape != tuple(shape):
        img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    return img


def image_shape(corpus: Path, rel_paths: Sequence[str]) -> tuple[int, int]:
    """Shape (h, w) of the first image: every image is brought to it, so rows have equal length."""
    h, w = read_gray(Path(corpus) / rel_paths[0]).shape
    return int(h), int(w)


def read_block(
    corpus: Path, rel_paths: Sequence[str], shape: tuple[int, int], dtype: str = "float32"
) -> np.ndarray:
    """Read images into one ``(len(rel_paths), h*w)`` array of ``dtype``.

    Memory: ``len(rel_paths) * h * w * itemsize`` bytes (500 images of 300x430 in float32:
    258 MB).
    """
    out = np.empty((len(rel_paths), shape[0] * shape[1]), dtype=dtype)
    for i, rel in enumerate(rel_paths):
        out[i] = read_gray(Path(corpus) / rel, shape).reshape(-1)
    return out


def total_variance(
    corpus: Path, rel_paths: Sequence[str], shape: tuple[int, int], batch: int = 250
) -> float:
    """Sum over pixels of the sample variance (ddof=1) of the first-N subset, streamed.

    This is the denominator of the harness's own explained-variance check. Memory:
    two float64 vectors of ``h*w`` plus one float64 batch.
    """
    n_feat = shape[0] * shape[1]
    total = np.zeros(n_feat)
    total_sq = np.zeros(n_feat)
    for start in range(0, len(rel_paths), batch):
        block = read_block(corpus, rel_paths[start : start + batch], shape, "float64")
        total += block.sum(axis=0)
        total_sq += np.einsum("ij,ij->j", block, block)
    n = len(rel_paths)
    if n < 2:
        return 0.0
    mean = total / n
    return float(((total_sq - n * mean * mean) / (n - 1)).sum())


def count_distinct(corpus: Path, rel_paths: Sequence[str]) -> int:
    """Number of byte-distinct files among ``rel_paths`` (clip-art collections repeat images).

    Duplicates lower the rank of the pixel matrix, which is why 800 components can explain
    nearly all the variance of the first 1,000 images.
    """
    import hashlib

    return len({hashlib.sha1((Path(corpus) / r).read_bytes()).hexdigest() for r in rel_paths})


def make_subset_dir(corpus: Path, rel_paths: Sequence[str], dest: Path) -> Path:
    """Make ``dest`` hold exactly ``rel_paths`` (hard links, else symlinks), for CLI pipelines.

    An existing ``dest`` whose manifest matches is reused. Costs no image copies when the
    output lies on the corpus's file system.
    """
    dest = Path(dest)
    # The manifest sits beside the folder so the CLI under test sees only images inside it.
    manifest = dest.parent / f"{dest.name}.json"
    want = {"corpus": str(Path(corpus).resolve()), "paths": list(rel_paths)}
    if manifest.is_file() and dest.is_dir():
        if json.loads(manifest.read_text(encoding="utf-8")) == want:
            return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel in rel_paths:
        src = (Path(corpus) / rel).resolve()
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, target)
        except OSError:
            target.symlink_to(src)
    manifest.write_text(json.dumps(want), encoding="utf-8")
    return dest
