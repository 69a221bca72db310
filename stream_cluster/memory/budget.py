"""Memory planner: from the budget, image size and components to batch sizes and worker count.

Pure functions, no I/O. Each stage's peak is modelled explicitly (interpreter and libraries,
model arrays, batch buffers, solver workspace, decode workers) from terms measured on the real
code; the plan takes the largest batches that keep every stage under the budget, or raises
BudgetError with the smallest budget that would work and settings that would fit this one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from stream_cluster.config import format_bytes
from stream_cluster.errors import BudgetError
from stream_cluster.images.decode import DECODE_MEMORY_CAP
from stream_cluster.memory.stage_bytes import (
    DECODE_CHUNK,
    MAX_SEGMENT_ROWS,
    MIN_KMEANS_BATCH,
    MIN_SEGMENT_ROWS,
    PARENT_BASE_BYTES,
    PIPE_SEGMENT_ROWS,
    SAFETY,
    SCAN_PER_IMAGE,
    decoders_bytes,
    embed_stage_bytes,
    ingest_stage_bytes,
    kmeans_stage_bytes,
    min_ingest_bytes,
    pca_stage_bytes,
    report_stage_bytes,
    resident_bytes,
    space_stage_bytes,
)
from stream_cluster.model.kmeans import ASSIGN_BATCH, Mode

__all__ = [
    "MemoryPlan",
    "plan_memory",
]


def _best_pca_batch(n_components: int) -> int:
    # Flops per image of the Gram update ~ k^2/b + 2k + b/2 (in units of 2*d): least at
    # b = k*sqrt(2).
    return max(n_components, int(round(n_components * math.sqrt(2))), 256)


@dataclass(frozen=True)
class MemoryPlan:
    """Batch sizes and workers for one run, with the modelled peak of every stage in bytes."""

    budget: int
    pca_batch: int
    embed_batch: int
    segment_rows: int
    workers: int
    features_in_memory: bool
    overlap: bool = False
    #: Largest modelled decode cost a worker accepts (``decode_image``'s ``memory_cap``).
    decode_cap: int = DECODE_MEMORY_CAP
    stage_bytes: dict[str, int] = field(default_factory=dict)
    #: Rows per k-means batch (``FeatureSource``'s ``batch_size``): :data:`ASSIGN_BATCH` in
    #: memory, the MiniBatchKMeans step when streamed.
    kmeans_batch: int = ASSIGN_BATCH
    #: The k-means source the "kmeans" stage models, as ``FeatureSource.mode``: "array" (the
    #: features read into a float32 array), "load" (``FeatureSource(store,
    #: fit_in_memory=True)``) or "stream" (``FeatureSource(store)``).
    kmeans_mode: str = "array"
    #: ``--keep-pixels``: "always" (a pixel store) or "never" (decode again for the embed).
    keep_pixels: str = "always"

    @property
    def peak_bytes(self) -> int:
        """Largest modelled stage peak."""
        return max(self.stage_bytes.values())

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form for run.json."""
        return asdict(self)

    def describe(self) -> str:
        """Multi-line human summary of the plan."""
        lines = [
            f"memory budget {format_bytes(self.budget)} (plan fills at most {SAFETY:.0%})",
            f"  PCA batch {self.pca_batch} images, embed batch {self.embed_batch}, "
            f"store segments of {self.segment_rows}, {self.workers} decode worker(s), "
            f"features {_KMEANS_WORDS.get(self.kmeans_mode, self.kmeans_mode)} for k-means "
            f"(batches of {self.kmeans_batch}), "
            f"decoding {'overlapped with' if self.overlap else 'before'} PCA",
        ]
        if self.keep_pixels == "never":
            lines.append("  no pixel store: the images are decoded again for the embed and report")
        if self.decode_cap < DECODE_MEMORY_CAP:
            lines.append(
                f"  decode workers sized to the largest image's header: "
                f"{format_bytes(self.decode_cap)} each (cap {format_bytes(DECODE_MEMORY_CAP)})"
            )
        for stage, b in self.stage_bytes.items():
            lines.append(f"  {stage:<8} modelled peak {format_bytes(b)}")
        return "\n".join(lines)


_KMEANS_WORDS = {"array": "in memory", "load": "loaded from the store", "stream": "streamed"}


def _kmeans_plan(
    n_images: int, k_out: int, max_k: int, embed_batch: int, usable: int, in_memory: Mode
) -> tuple[Mode, int, int]:
    """``(mode, batch, modelled bytes)`` of the k-means stages (elbow sweep and clustering).

    Exact k-means (``in_memory``: "array" or "load") when it fits, else MiniBatchKMeans with
    the pipeline's batch (the embed batch, at least 1024), halved while it does not fit.
    """
    need = kmeans_stage_bytes(n_images, k_out, max_k, in_memory, ASSIGN_BATCH)
    if need <= usable:
        return in_memory, ASSIGN_BATCH, need
    batch = max(embed_batch, 1024)
    need = kmeans_stage_bytes(n_images, k_out, max_k, "stream", batch)
    while need > usable and batch > MIN_KMEANS_BATCH:
        batch = max(batch // 2, MIN_KMEANS_BATCH)
        need = kmeans_stage_bytes(n_images, k_out, max_k, "stream", batch)
    return "stream", batch, need


def plan_memory(
    budget: int,
    *,
    n_images: int,
    width: int,
    height: int,
    n_components: int,
    solver: str = "gram",
    workers: int | None = None,
    batch_size: int | None = None,
    cpu_count: int = 2,
    max_k: int = 20,
    decode_cap: int = DECODE_MEMORY_CAP,
    kmeans_from_store: bool = False,
    keep_pixels: str = "always",
    space: bool = False,
    features_dim: int | None = None,
    reserved: int = 0,
) -> MemoryPlan:
    """Choose batch sizes and workers so that every stage's modelled peak fits ``budget``.

    ``decode_cap`` is the largest decode cost a worker will accept (default: any image
    ``decode_image`` accepts); a folder's largest
    :func:`~stream_cluster.images.decode_memory.decode_cost_bound` makes smaller workers, so
    more of them or decoding overlapped with the PCA may fit.

    ``max_k`` is the largest k the elbow sweep or the final clustering fits. In-memory k-means
    is modelled on the features read into a float32 array (``FeatureSource(store.read(...))``),
    or, with ``kmeans_from_store``, on ``FeatureSource(store, fit_in_memory=True)``, which
    loads the store for each fit and needs ``4 n d`` bytes less; ``kmeans_mode`` says which.

    ``keep_pixels="never"`` plans the run without a pixel store: decoding always overlaps the
    PCA (with fewer workers if need be), and the embed stage decodes again.

    ``features_dim`` (``--features`` other than pixels) is the values per image of the float32
    ``descriptors/`` store the PCA and the embed read instead of the pixels; the ingest and the
    report still hold ``width x height`` uint8 pixels. None: the PCA reads the pixels.
    ``reserved`` bytes of ``budget`` are set aside first (the extractor's own memory); the
    plan's ``budget`` is what is left, and advice names the whole budget again.

    Raises
    ------
    BudgetError
        If even the smallest batch IncrementalPCA accepts (``n_components`` rows) does not fit;
        the message gives the minimum budget and smaller settings that would fit this budget.
    """
    d = width * height
    # What the PCA and the embed read: f values of `item` bytes per image.
    f, item = (d, 1) if features_dim is None else (int(features_dim), 4)
    k = n_components
    usable = int((budget - reserved) * SAFETY)
    min_batch = k

    def pca_bytes(b: int, stored: bool = True) -> int:
        return pca_stage_bytes(k, b, f, solver, stored or features_dim is not None, item)

    if batch_size is not None:
        if batch_size < k:
            raise BudgetError(
                f"--batch-size must be >= --components ({k}) for incremental PCA. "
                f"Got {batch_size} instead."
            )
        candidates = [batch_size]
    else:
        best = _best_pca_batch(k)
        candidates = sorted(
            {best, *range(best, min_batch - 1, -max(1, (best - min_batch) // 16 or 1)), min_batch},
            reverse=True,
        )
    pca_batch = next((b for b in candidates if pca_bytes(b) <= usable), None)
    # The smallest workable run: the smallest PCA batch, and decoding in-process.
    floor = max(pca_bytes(candidates[-1]), min_ingest_bytes(d, width, height, decode_cap))
    if pca_batch is None or floor > usable:
        raise BudgetError(_too_small_message(
            budget, floor, k, width, height, solver, batch_size, decode_cap, features_dim,
            reserved,
        ))  # fmt: skip
    # Never read more than there is: a batch past the image count only wastes budget.
    pca_batch = max(min(pca_batch, max(n_images, min_batch)), min_batch)

    embed_batch = pca_batch
    stored = keep_pixels != "never"
    segment_rows = min(MAX_SEGMENT_ROWS if stored else PIPE_SEGMENT_ROWS, pca_batch)
    n_workers = max(1, cpu_count) if workers is None else workers

    def ingest_bytes(workers: int, rows: int) -> int:
        return ingest_stage_bytes(workers, rows, d, width, height, decode_cap, stored)

    while n_workers > 0 and ingest_bytes(n_workers, segment_rows) > usable:
        n_workers -= 1
    while segment_rows > MIN_SEGMENT_ROWS and ingest_bytes(n_workers, segment_rows) > usable:
        segment_rows //= 2
    if workers is not None and n_workers < workers:
        raise BudgetError(
            f"--workers {workers} does not fit --mem-budget {format_bytes(budget)}: at most "
            f"{n_workers} decode worker(s) fit. Lower --workers or raise the budget."
        )

    k_out = k
    exact: Mode = "load" if kmeans_from_store else "array"
    kmeans_mode, kmeans_batch, kmeans_bytes = _kmeans_plan(
        n_images, k_out, max(max_k, 1), embed_batch, usable, exact
    )
    if kmeans_bytes > usable:
        # A larger budget may plan a larger PCA batch, so advise for the largest there can be.
        widest = max(min(candidates[0], max(n_images, min_batch)), min_batch, 1024)
        need = max(kmeans_bytes,
                   kmeans_stage_bytes(n_images, k_out, max(max_k, 1), "stream", widest),
                   PARENT_BASE_BYTES + SCAN_PER_IMAGE * n_images,
                   report_stage_bytes(n_images, max(max_k, 1), d))  # fmt: skip
        raise BudgetError(
            f"--mem-budget {format_bytes(budget)} is too small to cluster {n_images:,} images: "
            f"streamed k-means needs {format_bytes(kmeans_bytes)} (the labels and distances of "
            f"every image and batches of {kmeans_batch}) plus {1 - SAFETY:.0%} headroom. "
            f"Use --mem-budget {_round_up(need / SAFETY + reserved)} or more."
        )

    # Decoding while the PCA fits (the pipeline's faster path) holds both at once. Take it when
    # it fits with every planned worker and the same PCA batch (the batch decides the result,
    # so it must not depend on whether decoding overlaps). With fewer workers, a folder of big
    # images would decode slower beside the PCA than on all workers before it. Without a
    # pixel store it is the only path: the pipe to the PCA holds one more segment, and fewer
    # workers are taken if need be.
    def overlap_bytes(workers: int) -> int:
        pca = pca_bytes(pca_batch, stored)
        pipe = 0 if stored else segment_rows * d
        return ingest_bytes(workers, segment_rows) + pipe + pca - PARENT_BASE_BYTES

    # With feature rows (HOG in the decode workers, an ONNX model beside them) decoding is the
    # long stage and the PCA of the short rows a small one: overlapping them saves little, holds
    # both at once and runs the decoders at the lowest priority. Measured on the seed workload
    # with HOG, 3 interleaved pairs: 1.03x the wall time and +180 MiB. So decoding goes first.
    overlap_ok = features_dim is None and n_workers > 0
    overlap_workers = n_workers if overlap_ok and overlap_bytes(n_workers) <= usable else 0
    if not stored:
        overlap_workers = n_workers
        while overlap_workers > 0 and overlap_bytes(overlap_workers) > usable:
            overlap_workers -= 1
        if overlap_bytes(overlap_workers) > usable:
            need = overlap_bytes(0)
            raise BudgetError(
                f"--keep-pixels never decodes the images while the PCA fits, which needs "
                f"{format_bytes(need)} at --mem-budget {format_bytes(budget)} plus "
                f"{1 - SAFETY:.0%} headroom. Use --mem-budget "
                f"{_round_up(need / SAFETY + reserved)} or more, or --keep-pixels always."
            )
        n_workers = overlap_workers
    # Without a store, the embed and the report decode again: workers, chunks in flight and
    # one chunk being copied out.
    decoders = 0
    if not stored:
        decoders = decoders_bytes(n_workers, d, width, height, decode_cap) + DECODE_CHUNK * d
    resident = resident_bytes(n_images)
    stage_bytes = {
        "scan": PARENT_BASE_BYTES + SCAN_PER_IMAGE * n_images,
        "ingest": ingest_bytes(n_workers, segment_rows),
        "pca": pca_bytes(pca_batch, stored),
        "embed": embed_stage_bytes(
            k, embed_batch, f, stored or features_dim is not None, resident, item
        )
        + decoders,
        "kmeans": kmeans_bytes,
        "report": report_stage_bytes(n_images, max(max_k, 1), d) + decoders,
    }
    if space:  # the learned cluster space (--space tsne)
        stage_bytes["space"] = space_stage_bytes(n_images, k_out)
    if overlap_workers or not stored:
        stage_bytes["ingest+pca"] = overlap_bytes(overlap_workers)
    stage, need = max(stage_bytes.items(), key=lambda item: item[1])
    if need > usable:
        raise BudgetError(
            f"--mem-budget {format_bytes(budget)} is too small for {n_images:,} images: the "
            f"{stage} stage needs {format_bytes(need)} plus {1 - SAFETY:.0%} headroom. "
            f"Use --mem-budget {_round_up(need / SAFETY + reserved)} or more."
        )
    return MemoryPlan(
        budget=budget - reserved,
        pca_batch=pca_batch,
        embed_batch=embed_batch,
        segment_rows=segment_rows,
        workers=overlap_workers or n_workers,
        features_in_memory=kmeans_mode != "stream",
        overlap=overlap_workers > 0 or not stored,
        decode_cap=int(decode_cap),
        stage_bytes=stage_bytes,
        kmeans_batch=kmeans_batch,
        kmeans_mode=kmeans_mode,
        keep_pixels=keep_pixels,
    )


def _round_up(nbytes: float) -> str:
    """Smallest budget string in 0.25 GiB (or 64 MiB) steps that holds ``nbytes``."""
    if nbytes >= 2**30:
        return f"{math.ceil(nbytes / 2**28) / 4:g}G"
    return f"{math.ceil(nbytes / 2**26) * 64}M"


def _too_small_message(
    budget: int,
    need: int,
    k: int,
    width: int,
    height: int,
    solver: str,
    batch: int | None,
    cap: int,
    features_dim: int | None = None,
    reserved: int = 0,
) -> str:
    usable = (budget - reserved) * SAFETY
    d = width * height
    f, item = (d, 1) if features_dim is None else (features_dim, 4)
    # Largest component count that fits at this size, and the largest size (same aspect) that
    # fits these components: both by bisection on the same model.
    lo, hi = 0, k
    while lo < hi:
        mid = (lo + hi + 1) // 2
        need_mid = max(pca_stage_bytes(mid, mid, f, solver, itemsize=item),
                       min_ingest_bytes(d, width, height, cap))  # fmt: skip
        ok = need_mid <= usable
        lo, hi = (mid, hi) if ok else (lo, mid - 1)
    fit_k = lo
    lo_s, hi_s = 0.0, 1.0
    for _ in range(30):
        mid_s = (lo_s + hi_s) / 2
        w, h = max(1, int(width * mid_s)), max(1, int(height * mid_s))
        ok = (
            w * h >= k
            and max(pca_stage_bytes(k, k, w * h, solver), min_ingest_bytes(w * h, w, h, cap))
            <= usable
        )
        lo_s, hi_s = (mid_s, hi_s) if ok else (lo_s, mid_s)
    fit_w, fit_h = int(width * lo_s), int(height * lo_s)
    options = [f"--mem-budget {_round_up(need / SAFETY + reserved)} or more"]
    if fit_k >= 1:
        options.append(f"--components {fit_k}")
    # A --features width does not follow --size as the pixels do: no size advice for it.
    if features_dim is None and fit_w * fit_h >= k and fit_w >= 1 and fit_h >= 1:
        options.append(f"--size {fit_w}x{fit_h}")
    rows = "" if features_dim is None else f" ({features_dim:,} feature values each)"
    what = f"a PCA batch of {batch}" if batch else f"the smallest PCA batch ({k} images)"
    return (
        f"--mem-budget {format_bytes(budget)} is too small for {k} PCA components on "
        f"{width}x{height} images{rows}: the smallest workable plan ({what}, decoding in one "
        f"process) needs {format_bytes(need)} plus {1 - SAFETY:.0%} headroom. "
        f"Use {', or '.join(options)}."
    )
