"""What the PCA sees of an image: its pixels (the default), HOG, or an ONNX model's output.

``--features`` is parsed into a :class:`FeatureExtractor` (:func:`parse_features`). Each knows
its output dimension for an image size before any image is decoded and checks that it can work
on that size, so a bad choice fails before ingest with a message that says what would work.
HOG runs in the decode workers (:class:`FeatureDecode`); an ONNX model runs batched in the
ingest's own process (:mod:`stream_cluster.images.onnx_features`). scikit-image and onnxruntime
are imported only when asked for (scikit-image is a dependency; onnxruntime comes with
``pip install 'stream-cluster[features]'``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_cluster.errors import ConfigError
from stream_cluster.images.decode import decode_many
from stream_cluster.images.extractor import (
    INSTALL_HINT,
    FeatureExtractor,
    file_sha256,
    require_module,
)
from stream_cluster.images.onnx_features import OnnxFeatures

__all__ = [
    "INSTALL_HINT",
    "FeatureDecode",
    "FeatureExtractor",
    "HogFeatures",
    "OnnxFeatures",
    "PixelFeatures",
    "file_sha256",
    "hog_cell",
    "parse_features",
    "require_module",
    "split_rows",
]

def hog_cell(width: int, height: int) -> int:
    """The default HOG cell side: ``max(4, min(width, height) // 12)`` px (about 12 cells).

    Cells of 2 px measure the orientation of 4 pixels, which is noise: on the digits at 32x32
    (learned space, k-means) 2-px cells gave ARI 0.887, 4-px cells 0.901.
    """
    return max(4, min(width, height) // 12)


class PixelFeatures(FeatureExtractor):
    """The pixels themselves (scaled to 0..1 by the PCA): today's path, unchanged."""

    @property
    def spec(self) -> str:
        return "pixels"

    def dim(self, width: int, height: int) -> int:
        return width * height

    def transform(self, rows: np.ndarray, width: int, height: int) -> np.ndarray:
        return np.asarray(rows, dtype=np.float32) * np.float32(1.0 / 255.0)


class HogFeatures(FeatureExtractor):
    """scikit-image HOG: 9 orientations, ``cell`` px cells, 2x2-cell blocks, L2-Hys.

    Memory per worker: HOG's float64 gradients, histograms and normalised blocks, freed after
    each image; ``memory_bytes`` = 64 bytes a pixel + 16 a feature value (tracemalloc peaks:
    48 B/px at 300x430 with 25 px cells, 111 B/px at 48x48 with 2 px cells: both within).
    """

    in_workers = True

    def __init__(self, cell: int | None = None) -> None:
        self.cell = cell

    @property
    def spec(self) -> str:
        return "hog" if self.cell is None else f"hog:{self.cell}"

    def cell_for(self, width: int, height: int) -> int:
        """The cell side used at this size."""
        return hog_cell(width, height) if self.cell is None else self.cell

    def dim(self, width: int, height: int) -> int:
        c = self.cell_for(width, height)
        cx, cy = width // c, height // c
        if cx < 2 or cy < 2:
            most = min(width, height) // 2
            raise ConfigError(
                f"--features {self.spec}: HOG cells of {c} px do not fit --size {width}x{height} "
                f"(2x2-cell blocks need at least 2 cells across and down). Use a cell of at most "
                f"{most} px (hog:{max(1, most)}) or a larger --size."
            )
        return (cx - 1) * (cy - 1) * 2 * 2 * 9

    def transform(self, rows: np.ndarray, width: int, height: int) -> np.ndarray:
        feature = require_module("skimage.feature", "hog")
        c = self.cell_for(width, height)
        out = np.empty((len(rows), self.dim(width, height)), dtype=np.float32)
        for i, row in enumerate(rows):
            out[i] = feature.hog(
                row.reshape(height, width), orientations=9, pixels_per_cell=(c, c),
                cells_per_block=(2, 2), block_norm="L2-Hys", feature_vector=True,
            )  # fmt: skip
        return out

    def memory_bytes(self, width: int, height: int) -> int:
        return 64 * width * height + 16 * self.dim(width, height)


def parse_features(spec: str, threads: int = 1) -> FeatureExtractor:
    """The extractor ``--features spec`` names: ``pixels``, ``hog``, ``hog:CELL``, ``onnx:PATH``.

    An ONNX file is hashed (and must exist) here; it is opened by ``dim``.
    """
    text = str(spec).strip()
    if text == "pixels":
        return PixelFeatures()
    if text == "hog" or text.startswith("hog:"):
        require_module("skimage.feature", "hog")
        if text == "hog":
            return HogFeatures()
        try:
            cell = int(text[4:])
        except ValueError:
            cell = 0
        if cell < 1:
            raise ConfigError(
                f"--features hog:CELL needs a cell size in pixels >= 1, e.g. hog:8. "
                f"Got {text!r} instead."
            )
        return HogFeatures(cell)
    if text.startswith("onnx:") and len(text) > 5:
        require_module("onnxruntime", "onnx")
        return OnnxFeatures(text[5:], threads)
    raise ConfigError(
        f"--features must be pixels, hog, hog:CELL or onnx:MODEL.onnx. Got {spec!r} instead."
    )


@dataclass(frozen=True)
class FeatureDecode:
    """A decode chunk that also computes a worker-side extractor's features (HOG).

    Each returned row is the image's pixel bytes followed by its float32 features' bytes, so
    the executor's in-order, crash-tolerant decode carries both; :func:`split_rows` parts them.
    """

    extractor: FeatureExtractor
    memory_cap: int

    def __call__(
        self, root: str, rel_paths: Any, width: int, height: int
    ) -> tuple[np.ndarray, list[str | None]]:
        rows, reasons = decode_many(root, rel_paths, width, height, memory_cap=self.memory_cap)
        d = width * height
        f = self.extractor.dim(width, height)
        out = np.full((len(rows), d + 4 * f), 255, dtype=np.uint8)
        out[:, :d] = rows
        for i, why in enumerate(reasons):
            if why is None:
                try:
                    feat = self.extractor.transform(rows[i : i + 1], width, height)
                    out[i, d:] = feat.reshape(-1).view(np.uint8)
                except Exception as exc:  # a feature bug on one image must not end the run
                    reasons[i] = f"feature extraction failed: {type(exc).__name__}: {exc}"[:300]
        return out, reasons


def split_rows(rows: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """The pixel rows (uint8) and feature rows (float32) of :class:`FeatureDecode`'s rows."""
    d = width * height
    return rows[:, :d], np.ascontiguousarray(rows[:, d:]).view(np.float32)
