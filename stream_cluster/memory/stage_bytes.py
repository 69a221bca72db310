"""The memory model of each stage: measured base sizes and the modelled peak of ingest, PCA,
embed, k-means and report, from which :mod:`~stream_cluster.memory.budget` plans a run."""

from __future__ import annotations

import numpy as np

from stream_cluster.images.decode import decode_worker_bytes
from stream_cluster.model.kmeans import Mode, kmeans_memory_bytes
from stream_cluster.model.space import SPACE_DIMS, SPACE_SAMPLE
from stream_cluster.pca.memory import pca_memory_bytes
from stream_cluster.storage.store import store_io_bytes

__all__ = [
    "CODEC_IMPORT_BYTES",
    "DECODE_CHUNK",
    "MAX_SEGMENT_ROWS",
    "MIN_KMEANS_BATCH",
    "MIN_SEGMENT_ROWS",
    "PARENT_BASE_BYTES",
    "PIPE_SEGMENT_ROWS",
    "READ_ROWS",
    "REPORT_BASE_BYTES",
    "REPORT_PER_IMAGE",
    "RESIDENT_AFTER_PCA_BYTES",
    "RESIDENT_PER_IMAGE",
    "SAFETY",
    "SCAN_PER_IMAGE",
    "SPACE_BASE_BYTES",
    "SPACE_PER_SAMPLE_PAIR",
    "WORKER_BASE_BYTES",
    "decoders_bytes",
    "embed_stage_bytes",
    "ingest_stage_bytes",
    "kmeans_stage_bytes",
    "min_ingest_bytes",
    "pca_stage_bytes",
    "report_stage_bytes",
    "resident_bytes",
    "space_stage_bytes",
]

#: RSS of the main process with numpy, scikit-learn, h5py, OpenCV, pyvips and matplotlib
#: imported and OpenBLAS buffers allocated (measured 199 MiB; rounded up for Python objects).
PARENT_BASE_BYTES = 260 * 2**20
#: RSS of a spawned decode worker with numpy, OpenCV and pyvips imported (measured 53 MiB).
WORKER_BASE_BYTES = 80 * 2**20
#: What the runner's process tree holds after the PCA beyond PARENT_BASE_BYTES: OpenBLAS's
#: thread buffers, heap the PCA and the decoding leave behind, loky's resource tracker (a
#: process of ~39 MiB). Measured at the start of the cluster stage of a run at --mem-budget 2G
#: (benchmarks/RESULTS.md): 374 MiB at 8,121 images, 381 MiB at 100,000; modelled with
#: RESIDENT_PER_IMAGE as 390 and 412 MiB.
RESIDENT_AFTER_PCA_BYTES = 128 * 2**20
#: Per image, what the runner holds from the scan to the end: file names, row names, signatures
#: (~80 B measured between those two runs).
RESIDENT_PER_IMAGE = 256
#: The space stage beyond the resident process: openTSNE's import and threads (measured: 124
#: MiB for openTSNE, scikit-learn and SciPy in a fresh interpreter, most of them already loaded
#: by then).
SPACE_BASE_BYTES = 64 * 2**20
#: Per pair of sampled images, the space's exact t-SNE: float64 distances, the affinities and
#: their copies (measured: 124 MiB for 1,797 sampled images, about 40 B per pair).
SPACE_PER_SAMPLE_PAIR = 48
#: The report stage beyond the resident process: matplotlib, t-SNE of the map's 2,000-image
#: sample and its threads (measured 65 MiB above the resident process at 8,121 images).
REPORT_BASE_BYTES = 96 * 2**20
#: Per image in the report: the map's inputs and positions, the cluster order, the names as
#: Python strings and one cluster page's HTML (measured 93 - 65 MiB over 92,000 images: 320 B).
REPORT_PER_IMAGE = 600
#: Per image in the scan stage: the file list, names, sizes and times (measured 183 MiB at
#: 100,000 images, 169 MiB at 8,121, below PARENT_BASE_BYTES: the libraries are not loaded yet).
SCAN_PER_IMAGE = 1024
#: Fraction of the budget the model may fill; the rest absorbs allocator slack and page noise.
SAFETY = 0.90
#: Images one decode task carries back to the parent.
DECODE_CHUNK = 8
#: Upper bound on rows per store segment (a segment is the unit lost to a kill during ingest).
MAX_SEGMENT_ROWS = 512
#: Lower bound on rows per store segment (two decode chunks).
MIN_SEGMENT_ROWS = 16
#: Rows read from the pixel store (uint8) and scaled into the float32 batch at a time.
READ_ROWS = 64
#: Rows per segment with ``--keep-pixels never``: the pipe to the PCA holds one segment besides
#: the ingest's own, and segments then only mark where a resumed ingest starts again.
PIPE_SEGMENT_ROWS = 128
#: Importing hdf5plugin (it registers the LZ4/Zstd filters), once per process (measured ~6 MiB).
CODEC_IMPORT_BYTES = 6 * 2**20
#: Fewest rows per MiniBatchKMeans step the planner will shrink the streamed k-means batch to.
MIN_KMEANS_BATCH = 256


def decoders_bytes(workers: int, n_features: int, width: int, height: int, cap: int) -> int:
    """Decode workers (or decoding in the main process) and their uint8 results in flight."""
    in_flight = 2 * max(workers, 1) * DECODE_CHUNK * n_features
    decoders = workers * (WORKER_BASE_BYTES + decode_worker_bytes(width, height, cap))
    if workers == 0:  # decode in the main process
        decoders = decode_worker_bytes(width, height, cap)
    return in_flight + decoders


def _store_io(n_features: int, rows: int, stored: bool, itemsize: int = 1) -> int:
    # one read or append of the pixel store (uint8) or the descriptors/ store (float32,
    # ``itemsize`` 4): the codec's buffers and its import
    if not stored:
        return 0
    dtype = np.uint8 if itemsize == 1 else np.float32
    return store_io_bytes(n_features, dtype=dtype, rows=rows) + CODEC_IMPORT_BYTES


def ingest_stage_bytes(
    workers: int,
    segment_rows: int,
    n_features: int,
    width: int,
    height: int,
    cap: int,
    stored: bool = True,
) -> int:
    """Modelled peak of the ingest stage: decoders, one store segment, the store's codec."""
    decoders = decoders_bytes(workers, n_features, width, height, cap)
    io = _store_io(n_features, segment_rows, stored)
    return PARENT_BASE_BYTES + segment_rows * n_features + decoders + io


def min_ingest_bytes(n_features: int, width: int, height: int, cap: int) -> int:
    """The smallest ingest the planner can make: decoding in-process, the smallest segment."""
    return ingest_stage_bytes(0, MIN_SEGMENT_ROWS, n_features, width, height, cap)


def pca_stage_bytes(
    k: int, b: int, d: int, solver: str, stored: bool = True, itemsize: int = 1
) -> int:
    """Modelled peak of the PCA stage: the model, the float32 batch, the solver workspace, reads."""
    # pca_memory_bytes counts the model, the float32 batch and the solver workspace (the
    # pipeline lets the solver centre the batch in place: copy=False); the batch is filled from
    # the store READ_ROWS rows at a time: uint8 pixels, or float32 --features rows (itemsize 4)
    # of ``d`` values each.
    model = pca_memory_bytes(k, b, d, solver, copy=False)
    return (PARENT_BASE_BYTES + model + READ_ROWS * itemsize * d
            + _store_io(d, READ_ROWS, stored, itemsize))  # fmt: skip


def embed_stage_bytes(
    k: int,
    b: int,
    d: int,
    stored: bool = False,
    base: int = PARENT_BASE_BYTES,
    itemsize: int = 1,
) -> int:
    """Modelled peak of the embed stage: ``b`` rows of ``d`` values onto ``k`` components."""
    # components (float32) + mean (float64, float32) + the batch's rows (uint8 pixels, or
    # float32 --features rows: itemsize 4) + the float32 column block transform scales and
    # centres them into + features (float64 sum, one block's GEMM result, float32 copy,
    # contiguous slice) + reading the store; ``base``: the process before
    cb = min(8192, d)
    io = _store_io(d, b, stored, itemsize)
    return base + k * d * 4 + d * 12 + itemsize * b * d + 4 * b * cb + b * k * 24 + io


def resident_bytes(n_images: int) -> int:
    """What the runner's process tree holds after the PCA, before a later stage's own work."""
    return PARENT_BASE_BYTES + RESIDENT_AFTER_PCA_BYTES + RESIDENT_PER_IMAGE * n_images


def kmeans_stage_bytes(n_images: int, n_features: int, max_k: int, mode: Mode, batch: int) -> int:
    """Modelled peak of one k-means fit (any k <= ``max_k``) on a feature source of this mode."""
    return resident_bytes(n_images) + kmeans_memory_bytes(n_images, n_features, max_k, mode, batch)


def report_stage_bytes(n_images: int, max_k: int, d: int) -> int:
    """Modelled peak of the report stage."""
    # one batch of 128 pixel rows for the thumbnails, the k mean images (float64, and their
    # uint8 copies), model.h5 copied in 16 MiB blocks
    work = 128 * d + 9 * max_k * d + 16 * 2**20
    return resident_bytes(n_images) + REPORT_BASE_BYTES + REPORT_PER_IMAGE * n_images + work


def space_stage_bytes(n_images: int, n_components: int) -> int:
    """Modelled peak of the space stage (:mod:`stream_cluster.stages.space`)."""
    # the space stage (stages/space.py): the leading features, every position and nearest-
    # sample distance, the sample's exact t-SNE, one placement block, one batch of feature rows
    s = min(SPACE_SAMPLE, n_images)
    work = (
        4 * n_images * min(SPACE_DIMS, n_components)
        + 24 * n_images
        + SPACE_PER_SAMPLE_PAIR * s * s
        + 4 * 4096 * s
        + 4 * 4096 * n_components
    )
    return resident_bytes(n_images) + SPACE_BASE_BYTES + work
