"""Pictures for the report pages: a small JPEG per image, each cluster's mean image.

Thumbnails are written while the pixel store is streamed once in row order, each to
``thumbs/<cluster>/<rank>.jpg`` where rank 0 is the image nearest its cluster's centre, so a
page (or the map's script) finds any image's thumbnail from two integers and never from a
file name. Only one batch of pixel rows is held at a time, never all thumbnails.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from stream_cluster.errors import StoreError
from stream_cluster.storage.rows import RowSource

__all__ = ["ClusterOrder", "ThumbSize", "cluster_order", "thumb_size", "write_mean_images",
           "write_pixel_means", "write_thumbnails"]

#: Thumbnails fit in this box (pixels, width x height), aspect ratio kept.
THUMB_BOX = (96, 128)
#: Bytes of pixel rows (or of float64 mean images) held at a time.
BLOCK_BYTES = 16 * 2**20
_JPEG = [cv2.IMWRITE_JPEG_QUALITY, 85]
_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 3]


@dataclass(frozen=True)
class ThumbSize:
    """Width and height in pixels of every thumbnail of a run."""

    width: int
    height: int


def thumb_size(width: int, height: int, box: tuple[int, int] = THUMB_BOX) -> ThumbSize:
    """The size of an image of ``width x height`` scaled down to fit ``box``, aspect kept.

    Examples
    --------
    >>> thumb_size(300, 430)
    ThumbSize(width=89, height=128)
    >>> thumb_size(20, 16)
    ThumbSize(width=20, height=16)
    """
    scale = min(1.0, box[0] / width, box[1] / height)
    return ThumbSize(max(1, round(width * scale)), max(1, round(height * scale)))


@dataclass(frozen=True)
class ClusterOrder:
    """Every image's place in its cluster, nearest the centre first.

    Attributes
    ----------
    order : numpy.ndarray
        Row indices, cluster by cluster, each cluster's nearest first (``n`` int64).
    starts : numpy.ndarray
        ``order[starts[c]:starts[c + 1]]`` are cluster ``c``'s rows (``k + 1`` int64).
    rank : numpy.ndarray
        ``rank[i]`` is row ``i``'s position in its cluster (``n`` int64).
    """

    order: np.ndarray
    starts: np.ndarray
    rank: np.ndarray

    def members(self, c: int) -> np.ndarray:
        """Rows of cluster ``c``, nearest the centre first."""
        return self.order[self.starts[c] : self.starts[c + 1]]

    def size(self, c: int) -> int:
        """Number of images in cluster ``c``."""
        return int(self.starts[c + 1] - self.starts[c])


def cluster_order(labels: np.ndarray, sq_distances: np.ndarray, k: int) -> ClusterOrder:
    """Sort every cluster's images by distance to its centre (ties by row: deterministic).

    Memory: three int64 arrays of ``n``.

    Examples
    --------
    >>> co = cluster_order(np.array([1, 0, 1, 1]), np.array([3.0, 1.0, 0.5, 3.0]), 2)
    >>> co.members(1).tolist(), co.rank.tolist()
    ([2, 0, 3], [1, 0, 0, 2])
    """
    labels = np.asarray(labels)
    order = np.lexsort((np.arange(len(labels)), np.asarray(sq_distances), labels))
    sizes = np.bincount(labels, minlength=k)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - starts[labels[order]]
    return ClusterOrder(order.astype(np.int64), starts, rank)


def _encode(img: np.ndarray, ext: str, params: list[int], what: str) -> bytes:
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise StoreError(f"OpenCV could not encode {what} as {ext}.")
    return bytes(buf.data)


def write_thumbnails(
    out_dir: Path,
    pixels: RowSource,
    labels: np.ndarray,
    rank: np.ndarray,
    *,
    width: int,
    height: int,
    batch: int | None = None,
    sums: np.ndarray | None = None,
) -> Generator[int, None, ThumbSize]:
    """Write ``out_dir/thumbs/<cluster>/<rank>.jpg`` for every row of ``pixels``.

    ``sums`` (``k x width*height`` float64), if given, receives each cluster's sum of pixel
    rows on the way (for :func:`write_pixel_means`: the mean images of a run whose PCA is not
    in pixel space).

    Any earlier ``thumbs/`` folder is removed first (a rerun with another k renames every
    file). Yields the number of rows done after each batch; returns the thumbnail size.

    Memory: one batch of pixel rows (by default as many as fit in :data:`BLOCK_BYTES`, 16 MB:
    130 rows of 300 x 430) and one thumbnail. Disk: about 4 KB per image.
    """
    if batch is None:
        batch = max(1, BLOCK_BYTES // max(1, width * height))
    size = thumb_size(width, height)
    root = Path(out_dir) / "thumbs"
    if root.exists():
        shutil.rmtree(root)
    for c in np.unique(labels):
        (root / str(int(c))).mkdir(parents=True, exist_ok=True)
    interp = cv2.INTER_AREA if size.width < width else cv2.INTER_LINEAR
    for lo, rows in pixels.iter_batches(batch):
        if sums is not None:
            got = labels[lo : lo + len(rows)]
            for c in np.unique(got):
                sums[c] += rows[got == c].sum(axis=0, dtype=np.float64)
        for j, row in enumerate(rows):
            i = lo + j
            img = cv2.resize(row.reshape(height, width), (size.width, size.height),
                             interpolation=interp)
            data = _encode(img, ".jpg", _JPEG, f"the thumbnail of row {i}")
            with open(root / str(int(labels[i])) / f"{int(rank[i])}.jpg", "wb") as fh:
                fh.write(data)
        yield lo + len(rows)
    return size


def write_mean_images(
    out_dir: Path,
    pca_state: Mapping[str, Any],
    centers: np.ndarray,
    *,
    width: int,
    height: int,
    scale: float,
    block: int | None = None,
) -> ThumbSize:
    """Write each cluster's mean image: the centre mapped back through the PCA.

    ``means/<c>.png`` is ``mean_ + centre @ components_[:n_keep]`` divided by the pixel
    ``scale``, clipped to 0..255, at full size; ``means/<c>-small.png`` fits the thumbnail box.

    Parameters
    ----------
    pca_state : mapping
        ``mean_`` and ``components_`` as arrays or h5py datasets (read ``block`` components at
        a time, by default 16 MB of them, so the whole components matrix is never loaded).
    centers : numpy.ndarray
        ``(k, n_keep)`` cluster centres in feature space.

    Notes
    -----
    Memory: up to 16 MB of float64 mean images at a time (16 clusters at 300 x 430; more
    clusters take more passes over the components) plus one block of components (16 MB).
    """
    c = np.asarray(centers, dtype=np.float64)
    k, n_keep = c.shape
    d = width * height
    if block is None:
        block = max(1, BLOCK_BYTES // (4 * d))
    group = max(1, BLOCK_BYTES // (8 * d))
    mean = np.asarray(pca_state["mean_"][()], dtype=np.float64)
    comps = pca_state["components_"]
    root = Path(out_dir) / "means"
    root.mkdir(parents=True, exist_ok=True)
    small = thumb_size(width, height)
    for first in range(0, k, group):
        cs = c[first : first + group]
        img = np.tile(mean, (len(cs), 1))
        for lo in range(0, n_keep, block):
            hi = min(n_keep, lo + block)
            img += cs[:, lo:hi] @ np.asarray(comps[lo:hi], dtype=np.float64)
        pictures = np.clip(np.rint(img / scale), 0, 255).astype(np.uint8)
        del img
        for j, picture in enumerate(pictures):
            _write_mean(root, first + j, picture.reshape(height, width), small)
    return small


def write_pixel_means(out_dir: Path, sums: np.ndarray, counts: np.ndarray, *, width: int,
                      height: int) -> ThumbSize:  # fmt: skip
    """Write each cluster's mean image from its members' pixel sums (see write_thumbnails).

    Memory: one mean image at a time beyond ``sums``.
    """
    root = Path(out_dir) / "means"
    root.mkdir(parents=True, exist_ok=True)
    small = thumb_size(width, height)
    for c in range(len(sums)):
        mean = sums[c] / max(1.0, float(counts[c]))
        picture = np.clip(np.rint(mean), 0, 255).astype(np.uint8)
        _write_mean(root, c, picture.reshape(height, width), small)
    return small


def _write_mean(root: Path, label: int, full: np.ndarray, small: ThumbSize) -> None:
    """Write ``<label>.png`` and ``<label>-small.png`` atomically."""
    tiny = cv2.resize(full, (small.width, small.height), interpolation=cv2.INTER_AREA)
    for name, picture in ((f"{label}.png", full), (f"{label}-small.png", tiny)):
        data = _encode(picture, ".png", _PNG, f"the mean image of cluster {label}")
        tmp = root / (name + ".partial")
        tmp.write_bytes(data)
        os.replace(tmp, root / name)
