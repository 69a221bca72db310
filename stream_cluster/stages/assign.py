"""Use a fitted run: put new images into its clusters, and find the run's most similar images.

:func:`load_model` opens a finished run's ``model.h5``. :func:`assign` decodes images with
the run's own preprocessing on an executor, projects them with the run's PCA and takes the
nearest centre, streaming in batches under a memory budget; an image is *novel* when its
distance is beyond its cluster's 99th percentile of training distances. :func:`similar` is an
exact nearest-neighbour search over the run's feature store, read in blocks.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.config import format_bytes
from stream_cluster.errors import BudgetError, InputError
from stream_cluster.images.decode import (
    DECODE_MEMORY_CAP,
    DecodeTask,
    decode_many,
    decode_worker_bytes,
)
from stream_cluster.images.features import FeatureDecode, split_rows
from stream_cluster.images.scan import scan
from stream_cluster.memory.stage_bytes import SAFETY, WORKER_BASE_BYTES, embed_stage_bytes
from stream_cluster.model.fitted import FittedModel, assign_batch, assign_features, load_model
from stream_cluster.parallel.executor import Executor, InlineExecutor, LocalExecutor
from stream_cluster.stages.base import Progress, run_to_end
from stream_cluster.stages.ingest import CHUNK, decode_in_order
from stream_cluster.storage.atomic import atomic_write_bytes

__all__ = [
    "AssignResult",
    "assign",
    "iter_assign",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AssignResult:
    """What :func:`assign` wrote: counts and the two CSV files."""

    n_assigned: int
    n_novel: int
    n_skipped: int
    csv_path: Path
    skipped_path: Path
    batch: int
    workers: int


def _plan(
    model: FittedModel, budget: int, workers: int | None, worker_extra: int = 0,
    row_extra: int = 0,
) -> tuple[int, int]:
    """Rows per batch and decode workers that keep the model, batch and workers under budget.

    ``worker_extra``: bytes a worker-side extractor (HOG) adds to each decoder; ``row_extra``:
    the bytes of its features that travel with each decoded row.
    """
    p = model.preprocessing
    dp = p.width * p.height  # a decoded row's pixels (uint8)
    df = int(model.pca.n_features_in_)  # what the PCA projects: pixels, or float32 features
    item = 1 if model.features == "pixels" else 4
    k = int(model.pca.n_components_)
    usable = int(budget * SAFETY)
    per_worker = (WORKER_BASE_BYTES + decode_worker_bytes(p.width, p.height, DECODE_MEMORY_CAP)
                  + worker_extra)  # fmt: skip
    want = max(1, os.cpu_count() or 1) if workers is None else workers

    def need(b: int, n_workers: int) -> int:
        # the interpreter, the model, one batch of what the PCA projects and transform's
        # buffers; the batch buffer being filled (pixels, + features from the workers); the
        # decoders and their chunks in flight
        decoders = n_workers * per_worker + 2 * max(n_workers, 1) * CHUNK * (dp + row_extra)
        if n_workers == 0:
            decoders = decode_worker_bytes(p.width, p.height, DECODE_MEMORY_CAP) + worker_extra
        return embed_stage_bytes(k, b, df, itemsize=item) + b * (dp + row_extra) + decoders

    for n_workers in range(want, -1, -1):
        for b in (1024, 512, 256, 128, 64, 32, 16, 8):
            if need(b, n_workers) <= usable:
                if workers is not None and n_workers < workers:
                    break
                return b, n_workers
    least = need(8, 0) / SAFETY
    raise BudgetError(
        f"--mem-budget {format_bytes(budget)} cannot hold this run's model "
        f"({k} x {df} components) and one batch: about {format_bytes(least)} is needed. "
        f"Use --mem-budget {format_bytes(least)} or more."
    )


def _sources(
    inputs: Sequence[str | os.PathLike[str]],
) -> Iterator[tuple[Path, list[tuple[str, str]]]]:
    """Per input: a root and its (relative path to decode, path to show) pairs, sorted."""
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = scan(path)
            yield found.root, [(rel, rel) for rel in found.files]
            for rel, why in found.skipped:
                logger.warning("skipped %s: %s", rel, why)
        elif path.exists() or path.is_symlink():
            yield path.parent, [(path.name, os.fspath(given))]
        else:
            raise InputError(f"{given} does not exist. Give image files or folders of images.")


def iter_assign(
    run: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    out_csv: str | os.PathLike[str] | None = None,
    mem_budget: int = 4 * 2**30,
    workers: int | None = None,
    executor: Executor | None = None,
) -> Generator[Progress, None, AssignResult]:
    """Assign images (files, or folders searched recursively) to the clusters of a finished run.

    Writes ``path,cluster,distance,novel`` (default ``RUN/assigned.csv``; paths as given for
    files, relative to each input folder for folders) and the files that could not be used with
    their reasons to ``<csv stem>-skipped.csv``; both appear only when complete. ``novel`` is true
    when the distance is beyond the cluster's 99th percentile of training distances.

    Memory: the model's components, one batch of rows and its projection, and the decode
    workers (which compute HOG for a HOG run, as its ingest did); the batch is chosen so that
    all of it stays within ``mem_budget``.
    """
    run_dir = Path(run)
    model = load_model(run_dir)
    # --features: a changed or missing ONNX file is refused before decoding. A worker-side
    # extractor (HOG) runs in the decode workers, as in the run's ingest; another (ONNX) runs
    # here on each batch, its bytes set aside from the budget.
    ext, p = model.extractor(), model.preprocessing
    ext_bytes = 0 if ext is None else ext.memory_bytes(p.width, p.height)
    in_workers = ext is not None and ext.in_workers
    f_bytes = 4 * int(model.pca.n_features_in_) if in_workers else 0
    if in_workers:
        batch, n_workers = _plan(model, mem_budget, workers, ext_bytes, f_bytes)
        # One worker or none: this process computing HOG beside the one decoder is faster.
        in_workers = n_workers >= 2
        f_bytes = f_bytes if in_workers else 0
    if not in_workers:
        batch, n_workers = _plan(model, mem_budget - ext_bytes, workers)
    csv_path = Path(out_csv) if out_csv is not None else run_dir / "assigned.csv"
    skipped_path = csv_path.with_name(csv_path.stem + "-skipped.csv")
    sources = list(_sources(inputs))
    total = sum(len(files) for _, files in sources)
    if total == 0:
        raise InputError(
            f"No images found in {', '.join(os.fspath(i) for i in inputs)} (looked recursively "
            f"for .png .jpg .jpeg .bmp .tif .tiff .webp .gif). Give image files or folders."
        )
    d = p.width * p.height
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "cluster", "distance", "novel"])
    skipped: list[tuple[str, str]] = []
    buf = np.empty((batch, d + f_bytes), dtype=np.uint8)
    shown: list[str] = []
    done = n_novel = 0

    def flush() -> None:
        nonlocal n_novel
        if not shown:
            return
        if in_workers:
            _, feats = split_rows(buf[: len(shown)], p.width, p.height)
            labels, dist, novel = assign_features(model, feats)
        else:
            labels, dist, novel = assign_batch(model, buf[: len(shown)])
        for name, c, r, nv in zip(shown, labels, dist, novel):
            writer.writerow([name, int(c), f"{r:.6g}", "true" if nv else "false"])
        n_novel += int(novel.sum())
        shown.clear()

    own = executor is None
    if executor is None:
        executor = LocalExecutor(n_workers) if n_workers else InlineExecutor()
    try:
        yield Progress("assign", 0, total)
        for root, files in sources:
            chunks = [files[i : i + CHUNK] for i in range(0, len(files), CHUNK)]
            fn: Any = partial(decode_many, memory_cap=DECODE_MEMORY_CAP)
            if in_workers and ext is not None:
                fn = FeatureDecode(ext, DECODE_MEMORY_CAP)
            row_bytes = d + f_bytes if in_workers else 0
            task = DecodeTask(fn, os.fspath(root), p.width, p.height, row_bytes)
            rel_chunks = [[rel for rel, _ in chunk] for chunk in chunks]
            for chunk, (rows, reasons) in zip(chunks, decode_in_order(executor, task, rel_chunks)):
                for (_, name), row, why in zip(chunk, rows, reasons):
                    if why is not None:
                        skipped.append((name, why))
                        continue
                    buf[len(shown)] = row
                    shown.append(name)
                    if len(shown) == batch:
                        flush()
                done += len(chunk)
                yield Progress("assign", done, total, skipped=len(skipped))
        flush()
    finally:
        if own:
            executor.close()
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    skip_buf = io.StringIO()
    skip_writer = csv.writer(skip_buf, lineterminator="\n")
    skip_writer.writerow(["path", "reason"])
    skip_writer.writerows(skipped)
    atomic_write_bytes(skipped_path, skip_buf.getvalue().encode("utf-8", "surrogateescape"))
    atomic_write_bytes(csv_path, out.getvalue().encode("utf-8", "surrogateescape"))
    return AssignResult(
        total - len(skipped), n_novel, len(skipped), csv_path, skipped_path, batch, n_workers
    )


def assign(
    run: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    **options: object,
) -> AssignResult:
    """Run :func:`iter_assign` to the end (same options) and return its result."""
    result: AssignResult = run_to_end(iter_assign(run, inputs, **options))  # type: ignore[arg-type]
    return result


