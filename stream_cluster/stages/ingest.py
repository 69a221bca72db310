"""Ingest stage: decode images, shard by shard on an executor, into the pixel RowStore.

Files are decoded in chunks of :data:`CHUNK` on the
:mod:`~stream_cluster.parallel.executor` the caller
gives (local worker processes by default); results are put back in file order, so the store's
row order is the given file order whatever the timing. A file that cannot be decoded is skipped
with its reason; a chunk whose worker died is retried one file at a time, so only a file that
really kills its decoder is skipped ("decoder crashed").
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.errors import CorruptSegmentError
from stream_cluster.images.decode import DECODE_MEMORY_CAP, DecodeChunk, DecodeTask, decode_many
from stream_cluster.images.features import FeatureDecode, FeatureExtractor, split_rows
from stream_cluster.images.scan import file_signatures
from stream_cluster.parallel.executor import Executor, InlineExecutor, LocalExecutor
from stream_cluster.stages.base import Progress, StageRecord
from stream_cluster.storage.atomic import atomic_write_bytes
from stream_cluster.storage.rows import RowSink
from stream_cluster.storage.store import RowStore

__all__ = [
    "CHUNK",
    "ORDER_SEED",
    "IngestProgress",
    "decode_in_order",
    "decode_many",
    "ingest",
    "processing_order",
    "repair_segment",
    "run_ingest",
    "start_ingest",
]

logger = logging.getLogger(__name__)

#: Files per decode task (one shard of the executor).
CHUNK = 8
#: Images are decoded and fitted in one fixed pseudo-random order (not the sorted one) so that
#: every batch is a fair sample of the folder: incremental PCA and mini-batch k-means assume
#: exchangeable batches, and sorted folders put one category in each. Outputs are sorted by path.
ORDER_SEED = 20260101
#: Reason recorded for a file whose decoder killed its worker process.
CRASHED = "decoder crashed: the worker process died on this file"

def processing_order(n_files: int) -> np.ndarray:
    """The fixed order in which the sorted files are ingested (a seeded permutation)."""
    return np.random.default_rng(ORDER_SEED).permutation(n_files)


def decode_in_order(
    executor: Executor, task: DecodeTask, chunks: Sequence[Sequence[str]]
) -> Iterator[tuple[np.ndarray, list[str | None]]]:
    """Decode ``chunks`` on ``executor`` and yield their results in the order given.

    At most ``executor.max_in_flight`` chunks wait out of order (the executor's window), so
    memory stays bounded whatever the timing.
    """
    held: dict[int, tuple[np.ndarray, list[str | None]]] = {}
    nxt = 0
    for res in executor.map_unordered(task, chunks, window=executor.max_in_flight):
        if res.died is None:
            assert res.value is not None
            held[res.index] = res.value
        else:
            held[res.index] = _one_by_one(executor, task, res.shard)
        while nxt in held:
            yield held.pop(nxt)
            nxt += 1


def _one_by_one(
    executor: Executor, task: DecodeTask, chunk: Sequence[str]
) -> tuple[np.ndarray, list[str | None]]:
    """Decode a chunk whose worker died file by file; only files that kill a worker are lost."""
    if len(chunk) == 1:
        logger.warning("skipped %s: %s", chunk[0], CRASHED)
        return np.full((1, task.row_bytes or task.width * task.height), 255, np.uint8), [CRASHED]
    logger.warning("a decode worker died; decoding its chunk's %d files one by one", len(chunk))
    rows = np.full((len(chunk), task.row_bytes or task.width * task.height), 255, dtype=np.uint8)
    reasons: list[str | None] = [CRASHED] * len(chunk)
    for res in executor.map_unordered(task, [[f] for f in chunk]):
        if res.died is None and res.value is not None:
            rows[res.index] = res.value[0][0]
            reasons[res.index] = res.value[1][0]
    return rows, reasons


def _append_both(
    rows: np.ndarray,
    names: list[bytes],
    pixels: RowSink,
    features: RowSink | None,
    extractor: FeatureExtractor,
    width: int,
    height: int,
) -> None:
    """Append a segment's pixels, then its feature rows (computed here unless the workers did)."""
    if features is None:
        raise ValueError("an extractor needs a feature store")
    if extractor.in_workers:
        px, feats = split_rows(rows, width, height)
        pixels.append(np.ascontiguousarray(px), names)
    else:
        pixels.append(rows, names)
        feats = extractor.transform(rows, width, height)
    features.append(feats, names)


@dataclass(frozen=True)
class IngestProgress:
    """Emitted after each store segment: files handled so far and the skips among them."""

    next_file: int
    n_segments: int
    rows: int
    skipped: list[tuple[str, str]]


def ingest(
    root: Path,
    files: Sequence[str],
    store: RowSink,
    *,
    width: int,
    height: int,
    workers: int,
    segment_rows: int,
    start_file: int = 0,
    skipped: Sequence[tuple[str, str]] = (),
    on_images: Callable[[int], None] | None = None,
    stderr_log: Path | None = None,
    memory_cap: int = DECODE_MEMORY_CAP,
    nice: int = 0,
    executor: Executor | None = None,
    decode_chunk: DecodeChunk | None = None,
    extractor: FeatureExtractor | None = None,
    features: RowSink | None = None,
) -> Iterator[IngestProgress]:
    """Decode ``files[start_file:]`` into ``store``, one atomic segment at a time.

    Yields an :class:`IngestProgress` after every segment is durable; that is the resume point.
    ``on_images(n)`` is called as decoded chunks arrive (for progress bars). Without an
    ``executor``, ``workers`` local processes at niceness ``nice`` decode (none: in this
    process), their stderr going to ``stderr_log``; ``decode_chunk`` replaces
    :func:`decode_many` (tests inject failures with it). With an ``extractor`` (not pixels),
    each segment's feature rows go to ``features`` (float32), segment for segment with the
    pixels: a worker-side one (HOG) runs in the decode workers, another (ONNX) here, batched.

    Memory: ``segment_rows`` rows of uint8 in the parent, plus ``2 * workers`` chunks in flight,
    plus each worker's decode workspace (see
    :func:`stream_cluster.images.decode.decode_worker_bytes`),
    which ``memory_cap`` bounds: images whose modelled decode cost is higher are skipped.
    """
    d = width * height
    skipped_all = list(skipped)
    chunks = [list(files[i : i + CHUNK]) for i in range(start_file, len(files), CHUNK)]
    in_workers = extractor is not None and extractor.in_workers
    row_bytes = d + 4 * extractor.dim(width, height) if in_workers and extractor else d
    buf = np.empty((segment_rows, row_bytes), dtype=np.uint8)
    names: list[bytes] = []
    next_file = start_file
    fn = decode_chunk or partial(decode_many, memory_cap=memory_cap)
    if in_workers and extractor is not None:
        fn = FeatureDecode(extractor, memory_cap)
    task = DecodeTask(fn, os.fspath(root), width, height, row_bytes if in_workers else 0)
    own = executor is None
    if executor is None:
        log = None if stderr_log is None else os.fspath(stderr_log)
        executor = (
            LocalExecutor(workers, nice=nice, stderr_log=log) if workers else InlineExecutor()
        )
    try:
        for chunk, (rows, reasons) in zip(chunks, decode_in_order(executor, task, chunks)):
            for rel, row, why in zip(chunk, rows, reasons):
                if why is None:
                    buf[len(names)] = row
                    names.append(os.fsencode(rel))
                else:
                    logger.warning("skipped %s: %s", rel, why)
                    skipped_all.append((rel, why))
            next_file += len(chunk)
            if on_images is not None:
                on_images(len(chunk))
            # Segments close on chunk boundaries so the resume point is a file index.
            if len(names) + CHUNK > segment_rows or next_file == len(files):
                if names and extractor is None:
                    store.append(buf[: len(names)], names)
                elif names and extractor is not None:
                    _append_both(buf[: len(names)], names, store, features, extractor, width,
                                 height)  # fmt: skip
                names = []
                yield IngestProgress(next_file, store.n_segments, len(store), list(skipped_all))
    finally:
        if own:
            executor.close()
    if next_file != len(files) or start_file == len(files):
        yield IngestProgress(next_file, store.n_segments, len(store), list(skipped_all))


def start_ingest(
    record: StageRecord,
    out_dir: Path,
    root: Path,
    files: Sequence[str],
    digest: str,
    key: dict[str, Any],
) -> None:
    """Record a new ingest, the sorted file list (``files.json``) and each file's size and
    mtime (``files-sig.json``, which tells a later ``--update`` what changed); no-op if one
    exists."""
    if record.data:
        return
    sigs = file_signatures(root, files)
    atomic_write_bytes(out_dir / "files-sig.json", json.dumps(sigs).encode("utf-8"))
    atomic_write_bytes(out_dir / "files.json", json.dumps(list(files)).encode("utf-8"))
    record.update(
        key=key, files_digest=digest, n_files=len(files), next_file=0, segments=0, skipped=[]
    )


def run_ingest(
    record: StageRecord,
    root: Path,
    files: Sequence[str],
    pixels: RowSink,
    *,
    width: int,
    height: int,
    workers: int,
    segment_rows: int,
    memory_cap: int,
    prior_skipped: Sequence[tuple[str, str]] = (),
    stderr_log: Path | None = None,
    nice: int = 0,
    on_segment: Callable[[], None] | None = None,
    extractor: FeatureExtractor | None = None,
    features: RowSink | None = None,
) -> Generator[Progress, None, list[tuple[str, str]]]:
    """The ingest stage: decode ``files`` (in processing order) into ``pixels``, resumably.

    Resumes at the record's ``next_file`` with its ``segments`` (later ones, written before a
    kill, are dropped). ``prior_skipped`` (e.g. the scan's skips) count in the progress.
    ``on_segment()`` is called after each segment is recorded (the runner checks the disk).
    Returns every file skipped while decoding, with its reason. ``extractor`` and
    ``features``: see :func:`ingest` (the feature store is cut back with the pixel store).
    """
    skipped = [(str(a), str(b)) for a, b in record.get("skipped", [])]
    total = len(files)
    if record.done:
        return skipped
    pixels.truncate_segments(int(record.get("segments", 0)))
    if features is not None:
        features.truncate_segments(int(record.get("segments", 0)))
    start = int(record.get("next_file", 0))
    yield Progress("ingest", start, total, skipped=len(prior_skipped) + len(skipped))
    for prog in ingest(
        root,
        files,
        pixels,
        width=width,
        height=height,
        workers=workers,
        segment_rows=segment_rows,
        start_file=start,
        skipped=skipped,
        stderr_log=stderr_log,
        memory_cap=memory_cap,
        nice=nice,
        extractor=extractor,
        features=features,
    ):
        skipped = prog.skipped
        record.update(
            next_file=prog.next_file,
            segments=prog.n_segments,
            skipped=[list(s) for s in skipped],
        )
        if on_segment is not None:
            on_segment()
        yield Progress(
            "ingest", prog.next_file, total, skipped=len(prior_skipped) + len(skipped)
        )
    record.update(done=True, rows=len(pixels))
    return skipped


def repair_segment(
    pixels: RowStore, index: int, root: Path, width: int, height: int
) -> int:
    """Decode a corrupt pixel segment's images again from their source files and rewrite it.

    Decoding is deterministic, so the rows are the bytes first written. Returns the number of
    images re-ingested; raises CorruptSegmentError naming the segment when a source is gone.
    """
    names = pixels.segment_names(index)
    rels = [os.fsdecode(n) for n in names]
    rows, reasons = decode_many(os.fspath(root), rels, width, height)
    lost = [(rel, why) for rel, why in zip(rels, reasons) if why is not None]
    if lost:
        raise CorruptSegmentError(
            f"Segment {pixels.directory / f'seg-{index:06d}.h5'} is corrupt and cannot be "
            f"rebuilt: its source image {lost[0][0]!r} is gone or unreadable ({lost[0][1]}). "
            f"Restore the file, or rerun with --fresh to start over.",
            None,
            index,
        )
    pixels.replace_segment(index, rows, names)
    return len(names)
