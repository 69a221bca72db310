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
import json
import logging
import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .budget import SAFETY, WORKER_BASE_BYTES, embed_bytes
from .config import format_bytes
from .decode import DECODE_MEMORY_CAP, DecodeTask, decode_image, decode_many, decode_worker_bytes
from .errors import BudgetError, InputError, StoreError
from .executor import Executor, InlineExecutor, LocalExecutor
from .fit_pca import PIXEL_SCALE
from .ingest import CHUNK, decode_in_order
from .kmeans import FeatureSource
from .kmeans import assign as nearest_centre
from .model import FittedModel
from .scan import scan
from .stage import Progress, run_to_end
from .store import RowStore, atomic_write_bytes

__all__ = [
    "AssignResult",
    "Match",
    "assign",
    "assign_batch",
    "iter_assign",
    "load_model",
    "similar",
]

logger = logging.getLogger(__name__)

#: Feature rows compared with the query at a time by :func:`similar` (26 MB at 800 components).
SEARCH_BLOCK = 8192
# Bound on the float32 error of a squared distance, relative to |f|^2 + |q|^2 (a dot product
# of 800 float32 terms errs by at most ~800 * 6e-8 of |f| |q|; the bound doubles that).
_F32_REL = 1e-4


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


def _assign_rows(model: FittedModel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and distances of preprocessed uint8 rows: the run's own arithmetic, row by row."""
    z = model.pca.transform(rows, scale=PIXEL_SCALE)[:, : model.n_components]
    km = nearest_centre(model.centers, FeatureSource(np.ascontiguousarray(z, dtype=np.float32)))
    return km.labels, np.sqrt(km.sq_distances)


def assign_batch(model: FittedModel, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cluster, distance, novel)`` for a batch of preprocessed uint8 rows (b x width*height)."""
    labels, dist = _assign_rows(model, rows)
    return labels, dist, dist > model.novelty_threshold[labels]


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


def _plan(model: FittedModel, budget: int, workers: int | None) -> tuple[int, int]:
    """Rows per batch and decode workers that keep the model, batch and workers under budget."""
    p = model.preprocessing
    d, k = p.width * p.height, int(model.pca.n_components_)
    usable = int(budget * SAFETY)
    per_worker = WORKER_BASE_BYTES + decode_worker_bytes(p.width, p.height, DECODE_MEMORY_CAP)
    want = max(1, os.cpu_count() or 1) if workers is None else workers
    for n_workers in range(want, -1, -1):
        decoders = n_workers * per_worker + 2 * max(n_workers, 1) * CHUNK * d
        if n_workers == 0:
            decoders = decode_worker_bytes(p.width, p.height, DECODE_MEMORY_CAP)
        for b in (1024, 512, 256, 128, 64, 32, 16, 8):
            # embed_bytes counts the interpreter, the model, one batch and transform's buffers;
            # the batch buffer being filled is one more b x d.
            if embed_bytes(k, b, d) + b * d + decoders <= usable:
                if workers is not None and n_workers < workers:
                    break
                return b, n_workers
    need = embed_bytes(k, 8, d) + 8 * d + decode_worker_bytes(p.width, p.height)
    raise BudgetError(
        f"--mem-budget {format_bytes(budget)} cannot hold this run's model "
        f"({k} x {d} components) and one batch: about {format_bytes(need / SAFETY)} is needed. "
        f"Use --mem-budget {format_bytes(need / SAFETY)} or more."
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
    workers; the batch is chosen so that all of it stays within ``mem_budget``.
    """
    run_dir = Path(run)
    model = load_model(run_dir)
    batch, n_workers = _plan(model, mem_budget, workers)
    csv_path = Path(out_csv) if out_csv is not None else run_dir / "assigned.csv"
    skipped_path = csv_path.with_name(csv_path.stem + "-skipped.csv")
    sources = list(_sources(inputs))
    total = sum(len(files) for _, files in sources)
    if total == 0:
        raise InputError(
            f"No images found in {', '.join(os.fspath(i) for i in inputs)} (looked recursively "
            f"for .png .jpg .jpeg .bmp .tif .tiff .webp .gif). Give image files or folders."
        )
    p = model.preprocessing
    d = p.width * p.height
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "cluster", "distance", "novel"])
    skipped: list[tuple[str, str]] = []
    buf = np.empty((batch, d), dtype=np.uint8)
    shown: list[str] = []
    done = n_novel = 0

    def flush() -> None:
        nonlocal n_novel
        if not shown:
            return
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
            fn = partial(decode_many, memory_cap=DECODE_MEMORY_CAP)
            task = DecodeTask(fn, os.fspath(root), p.width, p.height)
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


@dataclass(frozen=True)
class Match:
    """One result of :func:`similar`: rank (1 = nearest), the run image's path, distance."""

    rank: int
    path: str
    distance: float


def _run_settings(run_dir: Path) -> dict[str, object]:
    try:
        doc = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        settings: dict[str, object] = doc["settings"]
        return settings
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"{run_dir} is not a finished run folder (run.json: {exc}). Finish the run first."
        ) from None


def _own_row(run_dir: Path, image: Path, names: list[bytes]) -> int | None:
    """The store row of ``image`` when it is one of the run's own images, else None."""
    root = Path(str(_run_settings(run_dir)["input_dir"]))
    try:
        rel = os.path.relpath(image.resolve(), root.resolve())
    except ValueError:
        return None
    if rel.startswith(os.pardir):
        return None
    key = os.fsencode(rel)
    for i, name in enumerate(names):
        if name == key:
            return i
    return None


def _search(features: RowStore, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact ``n`` nearest rows: a float32 pass over each block, then float64 distances for the
    rows that could be among the nearest given float32's error bound. Ties go to the lower row.
    """
    q32 = query.astype(np.float32)
    q_sq = float(query @ query)
    best_d = np.empty(0)
    best_i = np.empty(0, dtype=np.int64)
    for lo in range(0, len(features), SEARCH_BLOCK):
        block = features.read(lo, lo + SEARCH_BLOCK)
        norms = np.einsum("ij,ij->i", block, block)
        approx = norms - 2.0 * (block @ q32) + np.float32(q_sq)
        bound = 2.0 * _F32_REL * (float(norms.max()) + q_sq) + 1e-12
        kth = np.partition(approx, min(n, len(approx)) - 1)[min(n, len(approx)) - 1]
        if len(best_d) == n:
            kth = min(kth, best_d[-1])
        cand = np.nonzero(approx <= kth + bound)[0]
        rows = block[cand].astype(np.float64)
        exact = np.maximum(np.einsum("ij,ij->i", rows, rows) - 2.0 * (rows @ query) + q_sq, 0.0)
        cand_d = np.concatenate([best_d, exact])
        cand_i = np.concatenate([best_i, cand + lo])
        order = np.lexsort((cand_i, cand_d))[:n]
        best_d, best_i = cand_d[order], cand_i[order]
    return best_d, best_i


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
    _run_settings(run_dir)
    n_keep = json.loads((run_dir / "run.json").read_text())["results"]["n_components"]
    try:
        features = RowStore(run_dir / "features", int(n_keep), np.float32)
    except StoreError as exc:
        raise InputError(f"{run_dir} has no usable feature store ({exc}).") from None
    names = features.names()
    row = None if isinstance(image, np.ndarray) else _own_row(run_dir, Path(image), names)
    if row is not None:
        query = features.read(row, row + 1)[0].astype(np.float64)
    else:
        model = model or load_model(run_dir)
        p = model.preprocessing
        if isinstance(image, np.ndarray):
            from .decode import letterbox_array

            pixels = letterbox_array(image, p.width, p.height)
        else:
            pixels = decode_image(image, p.width, p.height)
        # One image: a matrix-vector product over the contiguous components is ~4x faster than
        # transform's column blocks (same values to float32 rounding).
        x = pixels.reshape(-1).astype(np.float32) * PIXEL_SCALE - model.pca.mean_.astype(np.float32)
        query = (model.pca.components_[: model.n_components] @ x).astype(np.float64)
    best_d, best_i = _search(features, query, n)
    if row is not None:  # the image itself first, at exactly 0 (round-off could reorder ties)
        keep = best_i != row
        best_i = np.concatenate([[row], best_i[keep]])[:n]
        best_d = np.concatenate([[0.0], best_d[keep]])[:n]
    return [
        Match(r + 1, os.fsdecode(names[int(i)]), float(np.sqrt(dd)))
        for r, (i, dd) in enumerate(zip(best_i, best_d))
    ]
