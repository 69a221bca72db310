"""The model file's format: PCA, k-means centres, preprocessing and training statistics.

``model.h5`` is self-describing and safe to open from anyone: plain numeric HDF5 arrays and
JSON attributes, a format name and version, and a SHA-256 digest of every array and of the
metadata. :meth:`FittedModel.load` refuses a file that is not one, is truncated, was changed
after it was written, or comes from a newer format, and says what to do.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from stream_cluster._version import __version__
from stream_cluster.config import RunConfig
from stream_cluster.errors import StoreError
from stream_cluster.model.kmeans import KMeansResult
from stream_cluster.model.space import ClusterSpace
from stream_cluster.storage.atomic import write_h5_atomically

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "NOVELTY_PERCENTILE",
    "PERCENTILES",
    "Preprocessing",
    "cluster_statistics",
    "digest_dataset",
    "features_meta",
    "write_model",
]

FORMAT = "stream-cluster-model"
#: 2 added the learned cluster space (``space/*`` arrays, ``space`` in the metadata); a
#: version-1 file is read as a model clustered on the PCA features.
FORMAT_VERSION = 2
#: Percentiles of each cluster's training distances kept in the model (100 is the farthest).
PERCENTILES = (50.0, 90.0, 95.0, 99.0, 100.0)
#: The percentile beyond which ``assign`` calls an image novel.
NOVELTY_PERCENTILE = 99.0
# Rows copied and hashed at a time when writing: bounds the memory of writing from a file.
_BLOCK_BYTES = 16 * 2**20


class _ArrayLike(Protocol):
    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True)
class Preprocessing:
    """How an image file becomes a row: what ``decode_image`` does, and the scale PCA saw."""

    width: int
    height: int
    letterbox: str = "aspect kept, centred, white fill"
    alpha: str = "composited over white"
    grey: str = "BT.601 (OpenCV COLOR_BGR2GRAY)"
    bit_depth: str = "16-bit reduced by >> 8"
    scale: float = 1.0 / 255.0


def cluster_statistics(km: KMeansResult, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sizes and distance percentiles (:data:`PERCENTILES`) of the training images.

    Empty clusters get NaN percentiles. Memory: one float64 distance per image.
    """
    dist = np.sqrt(np.maximum(km.sq_distances, 0.0))
    sizes = np.bincount(km.labels, minlength=k).astype(np.int64)
    pct = np.full((k, len(PERCENTILES)), np.nan)
    order = np.argsort(km.labels, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for c in range(k):
        members = dist[order[bounds[c] : bounds[c + 1]]]
        if len(members):
            pct[c] = np.percentile(members, PERCENTILES)
    return sizes, pct


def features_meta(config: RunConfig) -> dict[str, Any]:
    """What model.h5 records of ``--features``: the spec and, for an ONNX model, its file's
    SHA-256 and path as given. Nothing for pixels (a model without the field is pixels)."""
    if config.features == "pixels":
        return {}
    meta: dict[str, Any] = {"features": config.features}
    if config.features.startswith("onnx:"):
        meta.update(features_sha256=config.extra.get("features_sha256"),
                    features_path=config.features[5:])  # fmt: skip
    return meta


def _digest_update(h: Any, name: str, arr: np.ndarray) -> None:
    h.update(name.encode())
    h.update(str(arr.dtype).encode())
    h.update(np.ascontiguousarray(arr).tobytes())


def digest_dataset(h: Any, name: str, src: _ArrayLike) -> None:
    """Hash an array (or h5py dataset) as :func:`_digest_update` would, in 16 MB blocks."""
    h.update(name.encode())
    h.update(str(src.dtype).encode())
    if len(src.shape) == 0:
        h.update(np.ascontiguousarray(src[()]).tobytes())
        return
    row = max(1, int(np.prod(src.shape[1:])) * src.dtype.itemsize)
    step = max(1, _BLOCK_BYTES // row)
    for lo in range(0, src.shape[0], step):
        h.update(np.ascontiguousarray(src[lo : lo + step]).tobytes())


def write_model(
    path: Path,
    pca_state: Mapping[str, _ArrayLike],
    *,
    n_components: int,
    centers: np.ndarray,
    cluster_sizes: np.ndarray,
    distance_percentiles: np.ndarray,
    preprocessing: Preprocessing,
    n_images: int,
    extra: Mapping[str, Any] | None = None,
    space: ClusterSpace | None = None,
    density: tuple[np.ndarray, np.ndarray] | None = None,
) -> None:
    """Write ``model.h5`` atomically from PCA state arrays (numpy arrays or h5py datasets).

    Arrays are copied in blocks of about 16 MB, so a model can be written straight from the
    run's ``pca.h5`` without loading the components. Memory: one block.
    """
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "stream_cluster": __version__,
        "n_components": int(n_components),
        "n_images": int(n_images),
        "percentiles": list(PERCENTILES),
        "novelty_percentile": NOVELTY_PERCENTILE,
        "preprocessing": asdict(preprocessing),
        **dict(extra or {}),
    }
    arrays: dict[str, _ArrayLike] = {f"pca/{k}": v for k, v in pca_state.items()}
    arrays["kmeans/centers"] = np.asarray(centers, dtype=np.float64)
    arrays["stats/cluster_sizes"] = np.asarray(cluster_sizes, dtype=np.int64)
    arrays["stats/distance_percentiles"] = np.asarray(distance_percentiles, dtype=np.float64)
    if space is not None:  # the centres are positions in this space (model format 2)
        meta["space"] = {"method": "tsne", "dims": space.dims, "neighbours": space.neighbours,
                         "novelty_distance": space.novelty_distance}
        arrays["space/sample_features"] = np.asarray(space.sample_features, dtype=np.float32)
        arrays["space/sample_positions"] = np.asarray(space.sample_positions, dtype=np.float64)
    if density is not None:  # HDBSCAN's groups: a new image joins its nearest training image's
        arrays["space/positions"] = np.asarray(density[0], dtype=np.float64)
        arrays["space/labels"] = np.asarray(density[1], dtype=np.int32)

    def fill(f: h5py.File) -> None:
        h = hashlib.sha256()
        for name in sorted(arrays):
            src = arrays[name]
            if src.dtype.kind not in "biufS":
                raise StoreError(f"model array {name!r} has dtype {src.dtype}; numeric only")
            dst = f.create_dataset(name, shape=src.shape, dtype=src.dtype)
            if len(src.shape) == 0:
                value = np.asarray(src[()])
                dst[()] = value
                _digest_update(h, name, value)
                continue
            row = max(1, int(np.prod(src.shape[1:])) * src.dtype.itemsize)
            step = max(1, _BLOCK_BYTES // row)
            h.update(name.encode())
            h.update(str(src.dtype).encode())
            for lo in range(0, src.shape[0], step):
                block = np.ascontiguousarray(src[lo : lo + step])
                dst[lo : lo + len(block)] = block
                h.update(block.tobytes())
        raw = json.dumps(meta, sort_keys=True)
        h.update(raw.encode())
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["meta"] = raw
        f.attrs["sha256"] = h.hexdigest()

    write_h5_atomically(Path(path), fill)
