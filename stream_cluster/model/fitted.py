"""The fitted model a finished run is used through: :func:`load_model`, then ``predict`` new
images (nearest centre, novelty) or find the run's most :func:`similar` images.

:class:`FittedModel` holds the PCA, the k-means centres, the preprocessing and the training
statistics; :mod:`~stream_cluster.model.format` reads and writes its file (``model.h5``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stream_cluster.errors import InputError, StoreError
from stream_cluster.images.decode import PIXEL_SCALE, decode_image, letterbox_array
from stream_cluster.images.features import FeatureExtractor, file_sha256, parse_features
from stream_cluster.model.density import NearestLabels
from stream_cluster.model.format import (
    FORMAT,
    FORMAT_VERSION,
    NOVELTY_PERCENTILE,
    PERCENTILES,
    Preprocessing,
    digest_dataset,
    write_model,
)
from stream_cluster.model.kmeans import FeatureSource
from stream_cluster.model.kmeans import assign as nearest_centre
from stream_cluster.model.search import Match, nearest, own_row, run_settings
from stream_cluster.model.space import ClusterSpace, read_space
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.storage.checkpoint import open_h5
from stream_cluster.storage.store import RowStore

__all__ = ["FittedModel", "Match", "assign_batch", "assign_features", "load_model", "similar"]


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
    space : ClusterSpace or None
        The learned 2-D space the centres live in (``--space tsne``), or None: the centres are
        in PCA feature space (``--space pca``, and model files of format 1).
    density : (positions, labels) or None
        With ``--cluster hdbscan``: every training image's position and group; a new image
        joins the group of its nearest training image (the groups have no centres to go by).

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
    space: ClusterSpace | None = None
    density: tuple[np.ndarray, np.ndarray] | None = None
    _nearest: NearestLabels | None = field(default=None, repr=False, compare=False)
    _extractor: FeatureExtractor | None = field(default=None, repr=False, compare=False)

    @property
    def features(self) -> str:
        """The ``--features`` the run used (a model written before the option: pixels)."""
        return str(self.meta.get("features", "pixels"))

    def extractor(self) -> FeatureExtractor | None:
        """The run's feature extractor (None for pixels); an ONNX file must be the same bytes.

        Raises
        ------
        InputError
            The ONNX model file is gone, or its SHA-256 is not the one the run recorded.
        """
        if self.features == "pixels" or self._extractor is not None:
            return self._extractor
        want = self.meta.get("features_sha256")
        if want is not None:
            path = Path(str(self.meta.get("features_path", self.features[5:])))
            if not path.is_file():
                raise InputError(
                    f"This run's features come from the ONNX model {path}, which does not exist "
                    f"(from here). Run from the folder the run was made in, or put the same "
                    f"file (SHA-256 {want}) back at that path."
                )
            found = file_sha256(path)
            if found != want:
                raise InputError(
                    f"The ONNX model {path} changed since the run: its SHA-256 is {found}, the "
                    f"run recorded {want}. Features from another model do not match the "
                    f"clusters: restore the run's model file, or rerun the clustering with "
                    f"this one."
                )
        p = self.preprocessing
        extractor = parse_features(self.features, threads=os.cpu_count() or 1)
        extractor.dim(p.width, p.height)  # checks the input shape before any image is decoded
        self._extractor = extractor
        return extractor

    def featurize(self, rows: np.ndarray) -> tuple[np.ndarray, np.float32 | None]:
        """What the PCA saw of uint8 pixel rows, and the scale ``transform`` applies to it."""
        extractor = self.extractor()
        if extractor is None:
            return rows, np.float32(self.preprocessing.scale)
        p = self.preprocessing
        return extractor.transform(rows, p.width, p.height), None

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
        x, scale = self.featurize(self.rows(images))
        z = self.pca.transform(x, scale=scale)
        return np.ascontiguousarray(z[:, : self.n_components], dtype=np.float32)

    def nearest_labels(self) -> NearestLabels:
        """HDBSCAN's groups for new positions: the nearest training image's (built once)."""
        if self._nearest is None:
            assert self.density is not None
            self._nearest = NearestLabels(*self.density)
        return self._nearest

    def positions(self, images: Sequence[str | os.PathLike[str] | np.ndarray]) -> np.ndarray:
        """Where images land in the space the clusters live in: ``(n, 2)`` positions in the
        learned space, or the PCA features when the run clustered those."""
        z = self.transform(images)
        return z if self.space is None else self.space.place(z)

    def predict(self, images: Sequence[str | os.PathLike[str] | np.ndarray]) -> np.ndarray:
        """The nearest cluster of each image (paths or arrays)."""
        return assign_batch(self, self.rows(images))[0]

    def similar(self, image: str | os.PathLike[str] | np.ndarray, n: int = 12) -> list[Any]:
        """The ``n`` run images nearest to ``image`` (needs the run folder: use load_model)."""
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
            space=self.space,
            density=self.density,
            extra={k: v for k, v in self.meta.items()
                   if k.startswith("features") or k in ("clusterer", "noise_cluster")},
        )

    @classmethod
    def load(cls, path: str | Path) -> FittedModel:
        """Read a model file; refuse anything that is not a complete, unchanged model file."""
        path = Path(path)
        f = open_h5(path, lambda exc: (
            f"{path} cannot be opened as a stream-cluster model ({exc}); the file is truncated, "
            f"damaged or not a model. Rerun the clustering to write it again."))  # fmt: skip
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
                digest_dataset(h, name, ds)
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
                space=_space(meta, arrays),
                density=(arrays["space/positions"][()], arrays["space/labels"][()])
                if "space/labels" in arrays else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{path} lacks part of a model ({exc}); rerun the run.") from None


def _space(meta: dict[str, Any], arrays: dict[str, Any]) -> ClusterSpace | None:
    """The learned space a model file holds, or None (centres in PCA feature space)."""
    info = meta.get("space")
    return None if info is None else read_space(arrays, info, prefix="space/")


def load_model(run: str | os.PathLike[str]) -> FittedModel:
    """The fitted model of a finished run folder (``RUN/model.h5``).

    Raises
    ------
    InputError
        ``run`` is not a finished run folder (says what is missing and what to do).
    StoreError
        ``model.h5`` is damaged, changed after it was written, or from a newer version.
    """
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir} is not a folder. Give the run folder a finished run wrote.")
    if not (run_dir / "model.h5").exists() or not (run_dir / "run.json").exists():
        what = "is still running or was interrupted" if (run_dir / "state.json").exists() else (
            "is not a stream-cluster run folder"
        )
        raise InputError(
            f"{run_dir} {what}: it has no model.h5 and run.json. Finish the run first (rerun "
            f"the same stream-cluster command), or give the folder of a finished run."
        )
    model = FittedModel.load(run_dir / "model.h5")
    model.meta["run_dir"] = os.fspath(run_dir)
    return model


def assign_batch(model: FittedModel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cluster, distance, novel)`` for a batch of preprocessed uint8 rows (b x width*height).

    The run's own arithmetic, row by row. In the learned space the distance is to the centre
    in that space, and an image is novel when it is farther from every sampled training image
    than 99 % of the training images are (placement interpolates, so distance to a centre
    there cannot tell); on PCA features, when it is farther from its centre than 99 % of the
    cluster's training images.
    """
    x, scale = model.featurize(rows)
    return assign_features(model, x, scale)


def assign_features(
    model: FittedModel, x: np.ndarray, scale: np.float32 | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`assign_batch` from what the PCA sees of each image (``featurize``'s output):
    for a run whose features were computed elsewhere, e.g. HOG in the decode workers."""
    z = model.pca.transform(x, scale=scale)[:, : model.n_components]
    z = np.ascontiguousarray(z, dtype=np.float32)
    if model.space is None:
        km = nearest_centre(model.centers, FeatureSource(z))
        dist = np.sqrt(km.sq_distances)
        return km.labels, dist, dist > model.novelty_threshold[km.labels]
    near = np.empty(len(z))
    pos = model.space.place(z, nearest=near)
    novel = near > model.space.novelty_distance
    if model.density is None:
        km = nearest_centre(model.centers, FeatureSource(pos))
        return km.labels, np.sqrt(km.sq_distances), novel
    labels = model.nearest_labels()(pos).astype(np.int32)
    return labels, np.sqrt(((pos - model.centers[labels]) ** 2).sum(axis=1)), novel


def similar(
    run: str | os.PathLike[str],
    image: str | os.PathLike[str] | np.ndarray,
    n: int = 12,
    *,
    model: FittedModel | None = None,
) -> list[Match]:
    """The ``n`` run images nearest to ``image`` in PCA space (exact; ties by store order).

    ``image`` is a file or a uint8 array. One of the run's own images is looked up in the
    feature store (it comes first, at distance 0) and needs no model; another is decoded with
    the run's preprocessing and projected (``model`` is loaded if not given).

    Memory: one block of ``SEARCH_BLOCK`` feature rows and the ``n`` best so far.
    """
    if n < 1:
        raise InputError(f"-n must be >= 1. Got {n} instead.")
    run_dir = Path(run)
    run_settings(run_dir)
    n_keep = json.loads((run_dir / "run.json").read_text())["results"]["n_components"]
    try:
        features = RowStore(run_dir / "features", int(n_keep), np.float32)
    except StoreError as exc:
        raise InputError(f"{run_dir} has no usable feature store ({exc}).") from None
    names = features.names()
    row = None if isinstance(image, np.ndarray) else own_row(run_dir, Path(image), names)
    if row is not None:
        query = features.read(row, row + 1)[0].astype(np.float64)
    else:
        model = model or load_model(run_dir)
        p = model.preprocessing
        if isinstance(image, np.ndarray):
            pixels = letterbox_array(image, p.width, p.height)
        else:
            pixels = decode_image(image, p.width, p.height)
        if model.features != "pixels":
            z = model.transform([pixels])[0]
            query = z.astype(np.float64)
        # One image: a matrix-vector product over the contiguous components is ~4x faster than
        # transform's column blocks (same values to float32 rounding).
        else:
            x = pixels.reshape(-1).astype(np.float32) * PIXEL_SCALE
            x -= model.pca.mean_.astype(np.float32)
            query = (model.pca.components_[: model.n_components] @ x).astype(np.float64)
    best_d, best_i = nearest(features, query, n)
    if row is not None:  # the image itself first, at exactly 0 (round-off could reorder ties)
        keep = best_i != row
        best_i = np.concatenate([[row], best_i[keep]])[:n]
        best_d = np.concatenate([[0.0], best_d[keep]])[:n]
    return [
        Match(r + 1, os.fsdecode(names[int(i)]), float(np.sqrt(dd)))
        for r, (i, dd) in enumerate(zip(best_i, best_d))
    ]
