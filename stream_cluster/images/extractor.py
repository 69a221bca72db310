"""The feature extractor's interface, shared by every ``--features`` choice, and its helpers.

Kept apart from the extractors so that :mod:`~stream_cluster.images.features` (pixels, HOG,
the parser) and :mod:`~stream_cluster.images.onnx_features` both build on it without importing
each other.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from stream_cluster.errors import ConfigError

__all__ = ["INSTALL_HINT", "FeatureExtractor", "file_sha256", "require_module"]

INSTALL_HINT = "pip install 'stream-cluster[features]'"


def require_module(module: str, what: str) -> Any:
    """Import an optional dependency (for ``--features what``) or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"--features {what} needs the {module.split('.')[0]} package, which is not "
            f"installed. Install it with: "
            f"{INSTALL_HINT if module.startswith('onnx') else 'pip install scikit-image'}"
        ) from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FeatureExtractor(ABC):
    """Turns letterboxed grey uint8 rows (``n x width*height``) into float32 feature rows."""

    #: Whether it runs in the decode workers (per image) rather than batched in the ingest.
    in_workers: bool = False

    @property
    @abstractmethod
    def spec(self) -> str:
        """The ``--features`` text that makes this extractor again."""

    @abstractmethod
    def dim(self, width: int, height: int) -> int:
        """Values per image for images of ``width x height`` (raises ConfigError if none)."""

    @abstractmethod
    def transform(self, rows: np.ndarray, width: int, height: int) -> np.ndarray:
        """Feature rows (float32, ``n x dim``) of uint8 pixel rows."""

    def memory_bytes(self, width: int, height: int) -> int:
        """Bytes the extractor adds where it runs (a worker, or the ingest's process)."""
        return 0

    def describe(self) -> dict[str, Any]:
        """What ``model.h5`` records so ``assign`` can apply the same extractor."""
        return {"features": self.spec}
