"""The fitted model: PCA, k-means centres, preprocessing and training statistics, in one file.

``model.h5`` is self-describing and safe to open from anyone: plain numeric HDF5 arrays and
JSON attributes, a format name and version, and a SHA-256 digest of every array and of the
metadata. :meth:`FittedModel.load` refuses a file that is not one, is truncated, was changed
after it was written, or comes from a newer format, and says what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from . import __version__
from .errors import StoreError
from .kmeans import KMeansResult
from .pca import StreamingPCA
from .store import write_h5_atomically

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "PERCENTILES",
    "FittedModel",
    "Preprocessing",
    "cluster_statistics",
    "write_model",
]

FORMAT = "stream-cluster-model"
FORMAT_VERSION = 1
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


def _digest_update(h: Any, name: str, arr: np.ndarray) -> None:
    h.update(name.encode())
    h.update(str(arr.dtype).encode())
    h.update(np.ascontiguousarray(arr).tobytes())


def _digest_dataset(h: Any, name: str, src: _ArrayLike) -> None:
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


@dataclass
class FittedModel:
    """A fitted run: PCA (first ``n_components`` used), k-means centres and what they were fit on.

    Attributes
    ----------
    pca : StreamingPCA
        The incremental PCA (its full state: it can keep learning).
    n_components : int
        Leading components that make an image's features (``--variance`` may keep fewer).
    centers : ndarray of shape (k, n_components)
        k-means centres in feature space.
    cluster_sizes : ndarray of shape (k,)
        Training images per cluster.
    distance_percentiles : ndarray of shape (k, len(PERCENTILES))
        Percentiles of each cluster's training distances to its centre.
    preprocessing : Preprocessing
        How image files become rows (size, letterbox, alpha, scale).
    n_images : int
        Training images.

    Memory: the PCA's components (``n_components_ x d`` float32) dominate.
    """

    pca: StreamingPCA
    n_components: int
    centers: np.ndarray
    cluster_sizes: np.ndarray
    distance_percentiles: np.ndarray
    preprocessing: Preprocessing
    n_images: int
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centers.shape[0])

    @property
    def novelty_threshold(self) -> np.ndarray:
        """Per cluster, the distance beyond which an image is novel (99th percentile)."""
        return np.asarray(self.distance_percentiles[:, PERCENTILES.index(NOVELTY_PERCENTILE)])

    def rows(self, images: Sequence[str | os.PathLike[str] | np.ndarray]) -> np.ndarray:
        """Images (file paths or arrays) as preprocessed uint8 rows, as the run made them."""
        from .decode import decode_image, letterbox_array

        p = self.preprocessing
        out = np.empty((len(images), p.width * p.height), dtype=np.uint8)
        for i, img in enumerate(images):
            if isinstance(img, np.ndarray):
                out[i] = letterbox_array(img, p.width, p.height).reshape(-1)
            else:
                out[i] = decode_image(img, p.width, p.height).reshape(-1)
        return out

    def transform(self, images: Sequence[str | os.PathLike[str] | np.ndarray]) -> np.ndarray:
        """PCA features (``n_components`` float32 each) of images given as paths or arrays."""
        z = self.pca.transform(self.rows(images), scale=np.float32(self.preprocessing.scale))
        return np.ascontiguousarray(z[:, : self.n_components], dtype=np.float32)

    def predict(self, images: Sequence[str | os.PathLike[str] | np.ndarray]) -> np.ndarray:
        """The nearest cluster of each image (paths or arrays)."""
        from .fitted import assign_batch

        return assign_batch(self, self.rows(images))[0]

    def similar(self, image: str | os.PathLike[str] | np.ndarray, n: int = 12) -> list[Any]:
        """The ``n`` run images nearest to ``image`` (needs the run folder: use load_model)."""
        from .fitted import similar

        run = self.meta.get("run_dir")
        if run is None:
            raise StoreError(
                "similar() searches the run's feature store: load the model with "
                "stream_cluster.load_model(RUN) so it knows its run folder."
            )
        return similar(run, image, n, model=self)

    def save(self, path: str | Path) -> None:
        """Write the model to one HDF5 file (atomically)."""
        write_model(
            Path(path),
            self.pca.get_state(),
            n_components=self.n_components,
            centers=self.centers,
            cluster_sizes=self.cluster_sizes,
            distance_percentiles=self.distance_percentiles,
            preprocessing=self.preprocessing,
            n_images=self.n_images,
        )

    @classmethod
    def load(cls, path: str | Path) -> FittedModel:
        """Read a model file; refuse anything that is not a complete, unchanged model file."""
        path = Path(path)
        try:
            f = h5py.File(path, "r")
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"{path} cannot be opened as a stream-cluster model ({exc}); the file is "
                f"truncated, damaged or not a model. Rerun the clustering to write it again."
            ) from None
        with f:
            return cls._read(path, f)

    @classmethod
    def _read(cls, path: Path, f: h5py.File) -> FittedModel:
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{path} is not a stream-cluster model file.")
        version = int(f.attrs.get("format_version", -1))
        if version > FORMAT_VERSION:
            raise StoreError(
                f"{path} was written by a newer stream-cluster (model format {version}; this "
                f"version reads format {FORMAT_VERSION}). Upgrade stream-cluster to use it."
            )
        if version < 1 or f.attrs.get("complete") != 1:
            raise StoreError(f"{path} is an incomplete or unknown model file; rerun the run.")
        try:
            raw = str(f.attrs["meta"])
            meta = json.loads(raw)
            names: list[str] = []
            f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
            h = hashlib.sha256()
            for name in sorted(names):
                ds = f[name]
                if ds.dtype.kind not in "biufS":
                    raise StoreError(f"{path}: {name!r} is not a numeric array ({ds.dtype})")
                _digest_dataset(h, name, ds)
            h.update(raw.encode())
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(
                f"{path} is damaged ({exc}). Rerun the clustering to write it again."
            ) from None
        if h.hexdigest() != f.attrs.get("sha256"):
            raise StoreError(
                f"{path} was changed after it was written (its SHA-256 digest does not match). "
                f"Rerun the clustering to write it again; do not edit model files by hand."
            )
        # Verified block by block above; now each array is read once, straight into the model.
        arrays = {n: f[n] for n in names}
        try:
            pca = StreamingPCA.from_state(
                {k[len("pca/") :]: v for k, v in arrays.items() if k.startswith("pca/")}
            )
            return cls(
                pca=pca,
                n_components=int(meta["n_components"]),
                centers=arrays["kmeans/centers"][()],
                cluster_sizes=arrays["stats/cluster_sizes"][()],
                distance_percentiles=arrays["stats/distance_percentiles"][()],
                preprocessing=Preprocessing(**meta["preprocessing"]),
                n_images=int(meta["n_images"]),
                meta=meta,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{path} lacks part of a model ({exc}); rerun the run.") from None
