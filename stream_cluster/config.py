"""Settings in one place: a frozen RunConfig, parsed and validated once, before any I/O."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_cluster.errors import ConfigError

__all__ = ["MIN_HOG_SIDE", "RunConfig", "auto_features", "format_bytes", "parse_k",
           "parse_k_range", "parse_mem", "parse_size"]

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_MEM_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)

PCA_SOLVERS = ("gram", "sklearn")
#: Pixel-store codecs (stream_cluster.storage.store.COMPRESSIONS; "auto" is zstd for pixels).
STORE_COMPRESSIONS = ("auto", "none", "lz4", "zstd")
#: ``--keep-pixels``: keep the decoded pixels in a store, or decode the images again instead.
KEEP_PIXELS = ("always", "never")
#: ``--space``: cluster in the learned 2-D space (t-SNE of a sample, every image placed) or,
#: the seed's path, on the PCA features themselves.
SPACES = ("tsne", "pca")
#: ``--cluster``: k-means (k fixed or picked) or HDBSCAN (finds its groups and its noise).
CLUSTERERS = ("kmeans", "hdbscan")
#: Below this many pixels on the shorter side, HOG's cells say little (8x8 digits: ARI 0.70 with
#: HOG, 0.89 with pixels in the learned space): ``--features auto`` keeps the pixels.
MIN_HOG_SIDE = 16
#: ``--features``: what the PCA sees (stream_cluster.images.features checks the rest).
_FEATURES_RE = re.compile(r"pixels|hog(:\d+)?|onnx:.+", re.DOTALL)
#: ``local:N`` or a scheduler address (``tcp://host:8786``, ``tls://...``, ``host:port``).
_DASK_RE = re.compile(
    r"local:[1-9]\d*|(?!local:)((tcp|tls|ucx|ws|wss|inproc)://)?([\w.\-]+|\[[\dA-Fa-f:.]+\])(:\d+)?"
)


def parse_mem(text: str | int) -> int:
    """Parse a memory size such as ``4G``, ``4GB``, ``4GiB``, ``512M`` or ``1.5G`` into bytes.

    Units are binary (1G = 2**30 bytes) whether written G, GB or GiB; a bare number is bytes.

    >>> parse_mem("1.5G")
    1610612736
    >>> parse_mem("512M") == 512 * 2**20
    True
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = _MEM_RE.match(str(text))
        if not m:
            raise ConfigError(
                f"--mem-budget must be a size such as 4G, 4GB, 4GiB, 512M or 1.5G. "
                f"Got {text!r} instead."
            )
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise ConfigError(f"--mem-budget must be greater than zero. Got {text!r} instead.")
    return value


def format_bytes(n: float) -> str:
    """Human-readable binary size, e.g. ``1.50 GiB``.

    >>> format_bytes(3 * 2**30 // 2)
    '1.50 GiB'
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def parse_size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` (e.g. ``300x430``) into ``(width, height)``.

    >>> parse_size("300x430")
    (300, 430)
    """
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise ConfigError(f"--size must be WIDTHxHEIGHT, e.g. 300x430. Got {text!r} instead.")
    w, h = int(m.group(1)), int(m.group(2))
    if w < 1 or h < 1:
        raise ConfigError(f"--size must have width and height >= 1. Got {text!r} instead.")
    if w * h > 50_000_000:
        raise ConfigError(
            f"--size {w}x{h} has {w * h:,} pixels per image; the limit is 50,000,000."
        )
    return w, h


def parse_k(text: str | int | None) -> int | None:
    """Parse ``--k``: ``auto`` (or None) picks k from the elbow; otherwise an integer >= 2."""
    if text is None or (isinstance(text, str) and text.strip().lower() == "auto"):
        return None
    try:
        k = int(text)
    except (TypeError, ValueError):
        raise ConfigError(f"--k must be 'auto' or an integer >= 2. Got {text!r} instead.") from None
    if k < 2:
        raise ConfigError(f"--k must be 'auto' or an integer >= 2. Got {k} instead.")
    return k


def parse_k_range(text: str | tuple[int, int]) -> tuple[int, int]:
    """Parse ``--k-range`` such as ``2:20`` or ``2-20`` (inclusive) into ``(lo, hi)``."""
    if isinstance(text, tuple):
        lo, hi = text
    else:
        m = re.fullmatch(r"\s*(\d+)\s*[:\-]\s*(\d+)\s*", str(text))
        if not m:
            raise ConfigError(f"--k-range must be LO:HI, e.g. 2:20. Got {text!r} instead.")
        lo, hi = int(m.group(1)), int(m.group(2))
    if lo < 2 or hi < lo + 2:
        raise ConfigError(
            f"--k-range must be LO:HI with LO >= 2 and at least 3 values of k (HI >= LO + 2). "
            f"Got {lo}:{hi} instead."
        )
    return lo, hi


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on. Construct it directly or via :meth:`from_options`.

    Parameters
    ----------
    input_dir : Path
        Folder searched recursively for images.
    out_dir : Path
        Run folder; holds the store, checkpoints and results. Rerunning with the same
        folder resumes.
    mem_budget : int
        Peak RSS of the whole process tree (workers included) in bytes.
    width, height : int
        Every image is letterboxed to this size, grey, so one image is ``width*height`` features.
    n_components : int
        PCA components; with ``variance`` set, the cap up to which PCA is fitted.
    variance : float or None
        Keep the fewest components whose cumulative explained variance reaches this.
    k : int or None
        Number of clusters; None picks it from the elbow of ``k_range``.
    space : str
        ``"tsne"`` (default): cluster in a 2-D t-SNE space of the PCA features, where images
        group by what they show; ``"pca"``: k-means on the PCA features (the seed's path).
    clusterer : str
        ``"kmeans"`` (default) or ``"hdbscan"`` (``space="tsne"`` only; finds the number of
        groups itself, images in no group form a "noise" group of their own).
    dask : str or None
        Run on Dask: ``local:N`` (N local worker processes) or a scheduler address such as
        ``tcp://host:8786``; ``mem_budget`` then applies to each worker and to the client.
    features : str
        What the PCA is fitted on: ``pixels``, ``hog``, ``hog:CELL`` or ``onnx:MODEL.onnx`` (see
        :mod:`stream_cluster.images.features`), or ``auto`` (default), which becomes ``hog``
        for the learned space where HOG can run (a pixel store, locally or on Dask, images at
        least :data:`MIN_HOG_SIDE` px on the shorter side) and ``pixels`` otherwise, so
        ``space="pca"`` alone is the seed's path.
    """

    input_dir: Path
    out_dir: Path
    mem_budget: int = 4 * 2**30
    width: int = 300
    height: int = 430
    n_components: int = 800
    variance: float | None = None
    k: int | None = None
    k_range: tuple[int, int] = (2, 20)
    elbow: bool | None = None
    seed: int = 0
    workers: int | None = None
    batch_size: int | None = None
    pca_solver: str = "gram"
    follow_symlinks: bool = False
    strict: bool = False
    profile_memory: bool = False
    montage_images: int = 48
    checkpoint_seconds: float = 20.0
    store_compression: str = "auto"
    keep_pixels: str = "always"
    space: str = "tsne"
    clusterer: str = "kmeans"
    dask: str | None = None
    features: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_dir", Path(self.input_dir))
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.features == "auto":
            object.__setattr__(self, "features", auto_features(self))
        self.validate()

    def validate(self) -> None:
        """Check every setting against its rule; raise ConfigError naming the first bad one."""
        if self.mem_budget <= 0:
            raise ConfigError(f"--mem-budget must be > 0. Got {self.mem_budget} instead.")
        if self.width < 1 or self.height < 1:
            raise ConfigError(f"--size must be >= 1x1. Got {self.width}x{self.height} instead.")
        if self.n_components < 1:
            raise ConfigError(f"--components must be >= 1. Got {self.n_components} instead.")
        if self.n_components > self.width * self.height:
            raise ConfigError(
                f"--components ({self.n_components}) cannot exceed the number of pixels per image "
                f"({self.width}x{self.height} = {self.width * self.height}). Use fewer components "
                f"or a larger --size."
            )
        if self.variance is not None and not (0.0 < self.variance <= 1.0):
            raise ConfigError(f"--variance must be in (0, 1]. Got {self.variance} instead.")
        if self.k is not None and self.k < 2:
            raise ConfigError(f"--k must be 'auto' or an integer >= 2. Got {self.k} instead.")
        parse_k_range(self.k_range)
        if self.pca_solver not in PCA_SOLVERS:
            raise ConfigError(
                f"--pca-solver must be one of {', '.join(PCA_SOLVERS)}. "
                f"Got {self.pca_solver!r} instead."
            )
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers must be >= 0. Got {self.workers} instead.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1. Got {self.batch_size} instead.")
        if self.checkpoint_seconds < 0:
            raise ConfigError(
                f"--checkpoint-every must be >= 0 seconds. Got {self.checkpoint_seconds} instead."
            )
        if self.store_compression not in STORE_COMPRESSIONS:
            raise ConfigError(
                f"--store-compression must be one of {', '.join(STORE_COMPRESSIONS)}. "
                f"Got {self.store_compression!r} instead."
            )
        if self.keep_pixels not in KEEP_PIXELS:
            raise ConfigError(
                f"--keep-pixels must be one of {', '.join(KEEP_PIXELS)}. "
                f"Got {self.keep_pixels!r} instead."
            )
        if self.keep_pixels == "never" and self.dask is not None:
            raise ConfigError(
                "--keep-pixels never cannot be used with --dask: Dask workers hand the pixels "
                "to each other through the store. Use --keep-pixels always (the default)."
            )
        if self.space not in SPACES:
            raise ConfigError(
                f"--space must be one of {', '.join(SPACES)}. Got {self.space!r} instead."
            )
        if self.clusterer not in CLUSTERERS:
            raise ConfigError(
                f"--cluster must be one of {', '.join(CLUSTERERS)}. Got {self.clusterer!r} instead."
            )
        if self.clusterer == "hdbscan" and self.space != "tsne":
            raise ConfigError(
                "--cluster hdbscan needs --space tsne: density clustering of hundreds of PCA "
                "features neither scales nor finds groups. Use --space tsne (the default) or "
                "--cluster kmeans."
            )
        if self.clusterer == "hdbscan" and self.k is not None:
            raise ConfigError(
                f"--cluster hdbscan finds the number of clusters itself; --k {self.k} cannot "
                f"apply. Leave --k out (or --k auto), or use --cluster kmeans."
            )
        if self.montage_images < 1:
            raise ConfigError(f"--montage-images must be >= 1. Got {self.montage_images}.")
        if self.dask is not None and not _DASK_RE.fullmatch(self.dask):
            raise ConfigError(
                f"--dask must be local:N (N >= 1 worker processes on this machine) or a Dask "
                f"scheduler address such as tcp://host:8786. Got {self.dask!r} instead."
            )
        if not _FEATURES_RE.fullmatch(self.features):
            raise ConfigError(
                f"--features must be pixels, hog, hog:CELL or onnx:MODEL.onnx. "
                f"Got {self.features!r} instead."
            )
        if self.features != "pixels" and self.keep_pixels == "never":
            raise ConfigError(
                f"--features {self.features} is computed in the ingest beside a pixel store: it "
                f"cannot be used with --keep-pixels never yet. Drop that flag, or use "
                f"--features pixels."
            )
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise ConfigError(
                f"--out {self.out_dir} exists and is a file, not a folder. Give a folder path."
            )

    @property
    def n_features(self) -> int:
        """Values per image (one grey byte per pixel)."""
        return self.width * self.height

    @property
    def pca_dim(self) -> int:
        """Values per image the PCA sees: the pixels, or ``--features``' dimension (which
        :func:`~stream_cluster.memory.planner.with_features` records in ``extra``)."""
        if self.features == "pixels":
            return self.n_features
        return int(self.extra.get("features_dim", self.n_features))

    @property
    def do_elbow(self) -> bool:
        """Sweep k for the elbow plot: always with ``k=auto``, on request with a fixed k."""
        return True if self.k is None else bool(self.elbow)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready settings (paths as strings)."""
        d = dataclasses.asdict(self)
        d.pop("extra")
        d["input_dir"] = os.fsdecode(self.input_dir)
        d["out_dir"] = os.fsdecode(self.out_dir)
        d["k_range"] = list(self.k_range)
        return d

    def stage_key(self, stage: str) -> dict[str, Any]:
        """The settings that decide a stage's result; a change in them invalidates the stage."""
        keys = {
            "ingest": ["width", "height", "follow_symlinks", "keep_pixels"],
            # The PCA is deterministic and takes no seed: --seed affects only k-means.
            "pca": ["n_components", "pca_solver"],
            "space": ["space", "seed", "variance"],
            "elbow": ["k_range", "seed", "variance", "space"],
            "cluster": ["k", "seed", "variance", "space", "clusterer"],
        }[stage]
        d = self.as_dict()
        if stage == "ingest" and self.features != "pixels":  # pixels: keys as before
            d["features_sha256"] = self.extra.get("features_sha256")
            keys += ["features", "features_sha256"]
        return {k: d[k] for k in keys}


def auto_features(config: RunConfig) -> str:
    """What ``--features auto`` means for these settings: ``hog`` for the learned space where
    HOG runs (an ingest with a pixel store, local or on Dask, images >= MIN_HOG_SIDE px), else
    ``pixels``: a Dask run and a local one of the same settings fit the same features.

    HOG gave better clusters than pixels in the learned space on every labelled set of real
    pictures measured (benchmarks/RESULTS_quality.md); ``--space pca`` keeps the seed's path.
    """
    stored = config.keep_pixels == "always"
    hog = config.space == "tsne" and stored and min(config.width, config.height) >= MIN_HOG_SIDE
    return "hog" if hog else "pixels"


def fingerprint(obj: Any) -> str:
    """Stable short hash of a JSON-serialisable object."""
    raw = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]
