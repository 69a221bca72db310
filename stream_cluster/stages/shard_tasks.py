"""Tasks a Dask worker runs for a distributed run (see :mod:`stream_cluster.runner.dask_steps`).

Every task writes its output into the run folder, which all workers share, and returns a small
dict (paths, counts, seconds, the worker's peak RSS). Each is idempotent: a file is written
under a name no other attempt uses and then renamed into place, so a task retried after its
worker died, or run twice, leaves one whole file; a task whose output already exists returns at
once (``"cached": True``). Nothing here imports Dask except :func:`worker_stats`, which asks
which worker it runs on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.errors import ConfigError, CorruptSegmentError, StoreError
from stream_cluster.images.decode import DECODE_MEMORY_CAP, PIXEL_SCALE, DecodeChunk, decode_many
from stream_cluster.images.features import FeatureExtractor, parse_features
from stream_cluster.parallel.dask_executor import worker_stats
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.stages.fit_pca import load_pca, read_scaled
from stream_cluster.stages.ingest import CHUNK
from stream_cluster.storage.atomic import atomic_write_bytes, fsync_dir
from stream_cluster.storage.checkpoint import open_arrays, save_arrays
from stream_cluster.storage.store import RowStore

__all__ = [
    "EmbedJob",
    "SegmentJob",
    "ShardJob",
    "embed_segment",
    "fit_shard",
    "ingest_segment",
    "is_complete_state",
    "merge_node",
    "segment_name",
    "segment_view",
]

_SEG = "seg-{:06d}.h5"


def segment_name(index: int) -> str:
    """File name of store segment ``index`` (the name :class:`~stream_cluster.storage.RowStore`
    gives its ``index``-th segment)."""
    return _SEG.format(index)


@contextmanager
def _private_store(final_dir: Path, row_size: int, dtype: type) -> Iterator[RowStore]:
    """A one-segment RowStore in a hidden folder of this attempt's own, removed afterwards."""
    tmp = final_dir / f".tmp-{uuid.uuid4().hex}"
    try:
        yield RowStore(tmp, row_size, dtype)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _publish_segment(store: RowStore, final: Path) -> None:
    """Move the private store's single segment to ``final`` (an atomic rename, then fsync)."""
    os.replace(store.directory / segment_name(0), final)
    fsync_dir(final.parent)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
    atomic_write_bytes(tmp, json.dumps(doc).encode("utf-8"))
    os.replace(tmp, path)


def _save_state(path: Path, model: StreamingPCA, meta: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}")
    save_arrays(tmp, model.get_state(), meta)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def is_complete_state(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a complete saved PCA state (opened, not read)."""
    if not os.path.exists(path):
        return False
    try:
        with open_arrays(Path(path), required=("components_",)):
            return True
    except StoreError:
        return False


# -- ingest ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SegmentJob:
    """Decode ``files`` (a fixed slice of the processing order) into pixel segment ``index``.

    ``crashed`` files killed their worker before and are skipped; ``decode_chunk`` replaces
    :func:`~stream_cluster.images.decode.decode_many` (tests inject failures with it).
    """

    index: int
    files: tuple[str, ...]
    root: str
    pixels_dir: str
    manifest_dir: str
    width: int
    height: int
    memory_cap: int = DECODE_MEMORY_CAP
    crashed: tuple[str, ...] = ()
    decode_chunk: DecodeChunk | None = None
    features: str = "pixels"  #: ``--features``; other than pixels, rows go to descriptors_dir
    descriptors_dir: str = ""
    features_sha256: str | None = None  #: an ONNX file's hash as the client saw it


CRASHED = "decoder crashed: the worker process died on this file"


def ingest_segment(job: SegmentJob) -> dict[str, Any]:
    """Decode the job's files and write its pixel segment and manifest (``seg-NNNNNN.json``);
    with ``--features`` other than pixels, also its feature segment (same index and names)
    in ``descriptors_dir``, before the manifest, so a finished job always has both.

    Memory: ``len(files) * width * height`` bytes of rows plus one image's decode workspace;
    with features, the extractor's own bytes and ``len(files) * dim`` float32 values.
    """
    manifest = Path(job.manifest_dir) / f"seg-{job.index:06d}.json"
    if manifest.exists():
        return {**json.loads(manifest.read_text(encoding="utf-8")), "cached": True}
    t0 = time.perf_counter()
    try:
        import cv2

        cv2.setNumThreads(1)  # one task per worker thread: OpenCV must not add threads
    except ImportError:  # pragma: no cover - cv2 is a dependency
        pass
    fn = job.decode_chunk or partial(decode_many, memory_cap=job.memory_cap)
    d = job.width * job.height
    rows = np.empty((len(job.files), d), dtype=np.uint8)
    names: list[bytes] = []
    skipped: list[list[str]] = []
    crashed = set(job.crashed)
    todo = [f for f in job.files if f not in crashed]
    for lo in range(0, len(todo), CHUNK):
        chunk = todo[lo : lo + CHUNK]
        pixels, reasons = fn(job.root, chunk, job.width, job.height)
        for rel, row, why in zip(chunk, pixels, reasons):
            if why is None:
                rows[len(names)] = row
                names.append(os.fsencode(rel))
            else:
                skipped.append([rel, why])
    skipped += [[f, CRASHED] for f in job.files if f in crashed]
    pixels = rows[: len(names)]
    if job.features != "pixels":
        pixels, names = _publish_features(job, pixels, names, skipped)
    position = {f: i for i, f in enumerate(job.files)}
    skipped.sort(key=lambda s: position[s[0]])
    final_dir = Path(job.pixels_dir)
    with _private_store(final_dir, d, np.uint8) as store:
        store.append(np.ascontiguousarray(pixels), names)
        _publish_segment(store, final_dir / segment_name(job.index))
    doc = {"index": job.index, "files": len(job.files), "rows": len(names), "skipped": skipped}
    _write_json(manifest, doc)
    return {**doc, "seconds": time.perf_counter() - t0, **worker_stats()}


#: Per worker process, by spec and file hash: an ONNX session opens once, not once a task.
_EXTRACTORS: dict[tuple[str, str | None], FeatureExtractor] = {}


def _extractor(job: SegmentJob) -> FeatureExtractor:
    """The job's extractor (one thread: a Dask worker runs one task at a time), checked to be
    the one the client planned for (an ONNX file with other bytes is refused)."""
    key = (job.features, job.features_sha256)
    ext = _EXTRACTORS.get(key)
    if ext is None:
        ext = parse_features(job.features, threads=1)
    seen = ext.describe().get("features_sha256")
    if seen != job.features_sha256:
        raise ConfigError(
            f"--features {job.features}: a Dask worker reads a model file other than the "
            f"client's (SHA-256 {seen}, not {job.features_sha256}). Give the workers the same file."
        )
    _EXTRACTORS[key] = ext
    return ext


def _publish_features(
    job: SegmentJob, pixels: np.ndarray, names: list[bytes], skipped: list[list[str]]
) -> tuple[np.ndarray, list[bytes]]:
    """Write the segment's feature rows (float32) to ``descriptors_dir``; return the pixel rows
    and names kept. As in the local ingest, an image the extractor fails on is skipped when it
    runs per image (HOG); a batched one (ONNX) that fails ends the task."""
    ext = _extractor(job)
    w, h = job.width, job.height
    if ext.in_workers:
        feats = np.empty((len(names), ext.dim(w, h)), dtype=np.float32)
        keep: list[int] = []
        for i in range(len(names)):
            try:
                feats[len(keep)] = ext.transform(pixels[i : i + 1], w, h)[0]
                keep.append(i)
            except Exception as exc:  # a feature bug on one image must not end the run
                why = f"feature extraction failed: {type(exc).__name__}: {exc}"[:300]
                skipped.append([os.fsdecode(names[i]), why])
        pixels, names, feats = pixels[keep], [names[i] for i in keep], feats[: len(keep)]
    else:
        feats = np.ascontiguousarray(ext.transform(pixels, w, h), dtype=np.float32)
    final_dir = Path(job.descriptors_dir)
    with _private_store(final_dir, feats.shape[1], np.float32) as store:
        store.append(feats, names)
        _publish_segment(store, final_dir / segment_name(job.index))
    return pixels, names


def decode_alone(job: SegmentJob) -> bool:
    """Decode the job's single file and discard it: True if the worker survived it."""
    fn = job.decode_chunk or partial(decode_many, memory_cap=job.memory_cap)
    fn(job.root, list(job.files), job.width, job.height)
    return True


# -- PCA ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardJob:
    """Fit a StreamingPCA on the rows of ``segments`` (pixel segment paths, in order; with
    ``float_rows``, feature segments of float32 rows, fitted as they are)."""

    index: int
    segments: tuple[str, ...]
    row_size: int
    rows: int
    n_components: int
    solver: str
    batch: int
    out: str
    float_rows: bool = False


@contextmanager
def segment_view(paths: Sequence[str], row_size: int, dtype: type) -> Iterator[RowStore]:
    """A read-only RowStore over the given segment files, in order (a local folder of links).

    Reads go through the store's own code (codec, checksums) and open only these segments,
    not the whole store (thousands of files in a large run).
    """
    view = Path(tempfile.mkdtemp(prefix="stream-cluster-view-"))
    try:
        for i, p in enumerate(paths):
            os.symlink(p, view / segment_name(i))
        yield RowStore(view, row_size, dtype)
    except CorruptSegmentError as exc:  # name the store's own segment, so it can be repaired
        if not 0 <= exc.index < len(paths):
            raise
        real = Path(paths[exc.index])
        index = int(real.stem.split("-")[-1])
        text = str(exc).replace(str(exc.segment), str(real))
        raise CorruptSegmentError(text, real, index) from exc
    finally:
        shutil.rmtree(view, ignore_errors=True)


def _state_info(path: str, t0: float, **extra: Any) -> dict[str, Any]:
    return {"path": path, "seconds": time.perf_counter() - t0, **extra, **worker_stats()}


def fit_shard(job: ShardJob) -> dict[str, Any]:
    """Fit the shard's PCA over its rows in batches of ``job.batch`` and save its state.

    Memory: as the single-process PCA stage (model, one float32 batch, the solver's workspace).
    """
    t0 = time.perf_counter()
    if is_complete_state(job.out):
        return _state_info(job.out, t0, rows=job.rows, cached=True)
    model = StreamingPCA(job.n_components, solver=job.solver, copy=False)
    dtype = np.float32 if job.float_rows else np.uint8
    with segment_view(job.segments, job.row_size, dtype) as pixels:
        if len(pixels) != job.rows:
            raise StoreError(f"shard {job.index}: {len(pixels)} rows, expected {job.rows}")
        for lo in range(0, job.rows, job.batch):
            x = read_scaled(pixels, lo, min(lo + job.batch, job.rows))
            model.partial_fit(x)
            del x
    _save_state(Path(job.out), model, {"shard": job.index, "rows": job.rows})
    return _state_info(job.out, t0, rows=job.rows, fit_seconds=time.perf_counter() - t0)


def merge_node(
    left: dict[str, Any], right: dict[str, Any], out: str, n_components: int
) -> dict[str, Any]:
    """Merge the PCA states saved by two child tasks (``left``, ``right``) into ``out``, then
    delete the two inputs.

    Memory: both input models, the merged one (``3 * 4 k d`` bytes) and the merge's buffers.
    """
    t0 = time.perf_counter()
    if is_complete_state(out):
        return _state_info(out, t0, rows=left["rows"] + right["rows"], cached=True)
    a = load_pca(Path(left["path"]))
    b = load_pca(Path(right["path"]))
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    merged = a.merge(b, n_components=n_components)
    t_merge = time.perf_counter() - t1
    del a, b
    t2 = time.perf_counter()
    _save_state(Path(out), merged, {"rows": left["rows"] + right["rows"]})
    read_bytes = os.path.getsize(left["path"]) + os.path.getsize(right["path"])
    # The inputs are needed only until their merge is saved (a retry finds the output and
    # returns): dropping them keeps the disk to a few states per worker, not one per node.
    for child in (left, right):
        Path(child["path"]).unlink(missing_ok=True)
    return _state_info(
        out,
        t0,
        rows=left["rows"] + right["rows"],
        read_bytes=read_bytes,
        written_bytes=os.path.getsize(out),
        load_seconds=t_load,
        merge_seconds=t_merge,
        save_seconds=time.perf_counter() - t2,
    )


# -- embed -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EmbedJob:
    """Project pixel segment ``index`` (with ``float_rows``, its float32 feature segment)
    onto the first ``n_keep`` components."""

    index: int
    pixels: str
    row_size: int
    features_dir: str
    n_keep: int
    float_rows: bool = False


def embed_segment(job_and_model: tuple[EmbedJob, StreamingPCA]) -> dict[str, Any]:
    """Write feature segment ``index`` (float32, ``n_keep`` per image, the pixel segment's names).

    The model comes from a future the client scattered once (Dask resolves it in the tuple).
    Memory: the model's components, the segment's uint8 rows and ``transform``'s buffers.
    """
    job, model = job_and_model
    t0 = time.perf_counter()
    final = Path(job.features_dir) / segment_name(job.index)
    if final.exists():
        return {"index": job.index, "cached": True}
    dtype = np.float32 if job.float_rows else np.uint8
    with segment_view([job.pixels], job.row_size, dtype) as pixels:
        x = pixels.read(0, len(pixels))
        names = pixels.names()
    # As the local embed: uint8 pixels scaled block by block, feature rows as they are.
    z = model.transform(x, scale=PIXEL_SCALE if x.dtype == np.uint8 else None)[:, : job.n_keep]
    del x
    with _private_store(final.parent, job.n_keep, np.float32) as store:
        store.append(np.ascontiguousarray(z, dtype=np.float32), names)
        _publish_segment(store, final)
    return {"index": job.index, "rows": len(names), "seconds": time.perf_counter() - t0,
            **worker_stats()}  # fmt: skip


# -- the shared-storage probe ------------------------------------------------------------------
