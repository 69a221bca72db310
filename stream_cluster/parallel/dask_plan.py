"""How a distributed run splits the work (segments, PCA shards) and what each worker holds.

Pure functions, no Dask: ``stream-cluster plan --dask`` uses them without the extra installed.
The layout depends only on the file count, the store segment size and the PCA batch (never on
the number of workers), and is recorded in the run folder, so the same folder always makes the
same shards and, with the same seed, the same labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from stream_cluster.config import RunConfig, format_bytes
from stream_cluster.errors import BudgetError
from stream_cluster.memory.budget import MemoryPlan
from stream_cluster.memory.stage_bytes import PARENT_BASE_BYTES, SAFETY

__all__ = [
    "SHARD_BATCHES",
    "DaskLayout",
    "check_worker_budget",
    "describe_dask",
    "make_layout",
    "merge_memory_bytes",
]

#: A PCA shard holds about this many PCA batches. A merge of two states costs about one batch
#: of fitting (two Gram passes over ``2k + 1`` rows), so shards of 4 batches keep the merges
#: near a quarter of the fitting work while leaving enough shards to spread over many workers.
SHARD_BATCHES = 4


@dataclass(frozen=True)
class DaskLayout:
    """Pixel segments (one ingest and one embed task each) and PCA shards (runs of segments).

    Segment ``i`` holds the files at positions ``[i * segment_files, (i + 1) * segment_files)``
    of the processing order; shard ``j`` holds segments ``[shard_bounds[j], shard_bounds[j+1])``.
    """

    n_files: int
    segment_files: int
    shard_bounds: tuple[int, ...]
    pca_batch: int

    @property
    def n_segments(self) -> int:
        """Number of pixel segments."""
        return math.ceil(self.n_files / self.segment_files)

    @property
    def n_shards(self) -> int:
        """Number of PCA shards (leaves of the merge tree)."""
        return len(self.shard_bounds) - 1

    def files_of(self, segment: int) -> tuple[int, int]:
        """Positions ``[lo, hi)`` in the processing order of segment ``segment``'s files."""
        lo = segment * self.segment_files
        return lo, min(lo + self.segment_files, self.n_files)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (state.json)."""
        return {
            "n_files": self.n_files,
            "segment_files": self.segment_files,
            "shard_bounds": list(self.shard_bounds),
            "pca_batch": self.pca_batch,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DaskLayout:
        """Inverse of :meth:`as_dict`."""
        return cls(int(d["n_files"]), int(d["segment_files"]),
                   tuple(int(b) for b in d["shard_bounds"]), int(d["pca_batch"]))  # fmt: skip


def make_layout(
    n_files: int, segment_files: int, pca_batch: int, shard_images: int | None = None
) -> DaskLayout:
    """Segments of ``segment_files`` files; shards of about ``shard_images`` images each.

    ``shard_images`` defaults to ``SHARD_BATCHES * pca_batch``; shards are whole runs of
    segments, as equal as the segments allow, at least one.

    >>> make_layout(8121, 512, 1131).shard_bounds
    (0, 8, 16)
    """
    if n_files < 1 or segment_files < 1 or pca_batch < 1:
        raise ValueError(
            f"make_layout needs n_files, segment_files and pca_batch >= 1. Got {n_files}, "
            f"{segment_files}, {pca_batch} instead."
        )
    n_seg = math.ceil(n_files / segment_files)
    target = shard_images or SHARD_BATCHES * pca_batch
    n_shards = min(n_seg, max(1, round(n_files / target)))
    bounds = tuple(n_seg * j // n_shards for j in range(n_shards + 1))
    return DaskLayout(n_files, segment_files, bounds, pca_batch)


def merge_memory_bytes(n_components: int, n_features: int, block_columns: int = 8192) -> int:
    """Modelled peak of a worker merging two ``n_components`` PCA states.

    Both inputs and the result (``3 * 4 k d``), their means and variances, the Gram matrix, its
    eigenvectors and the projection weights (``~4 m^2`` float64, ``m = 2k + 1``), and two
    float32 column blocks of the stack (``2 * 4 m * block_columns``).
    """
    k, d = n_components, n_features
    m = 2 * k + 1
    cb = min(block_columns, d)
    return PARENT_BASE_BYTES + 12 * k * d + 48 * d + 32 * m * m + 8 * m * cb


def _worker_peaks(config: RunConfig, plan: MemoryPlan) -> dict[str, int]:
    d = config.n_features
    # --features: the extractor and the segment's feature rows (with_features' reserve)
    features = int(config.extra.get("features_bytes", 0))
    return {
        "ingest": PARENT_BASE_BYTES + plan.segment_rows * d + 2 * d * 8 + features,
        "PCA fit": plan.stage_bytes["pca"],
        "merge": merge_memory_bytes(config.n_components, config.pca_dim),
        "embed": plan.stage_bytes["embed"],
    }


def check_worker_budget(config: RunConfig, plan: MemoryPlan) -> None:
    """Raise BudgetError when a worker cannot hold a merge of two PCA states in the budget."""
    need = merge_memory_bytes(config.n_components, config.pca_dim)
    if need > config.mem_budget * SAFETY:
        gib = math.ceil(need / SAFETY / 2**28) / 4
        raise BudgetError(
            f"--mem-budget {format_bytes(config.mem_budget)} per Dask worker cannot hold a merge "
            f"of two {config.n_components}-component PCA states ({format_bytes(need)} plus "
            f"{1 - SAFETY:.0%} headroom). Use --mem-budget {gib:g}G or more, or fewer "
            f"--components."
        )


def describe_dask(config: RunConfig, plan: MemoryPlan, n_files: int) -> str:
    """What ``stream-cluster plan --dask`` adds: the budget is per worker and for the client."""
    layout = make_layout(n_files, plan.segment_rows, plan.pca_batch)
    where = config.dask or ""
    local = where.startswith("local:")
    who = (
        f"each of the {where[6:]} local worker processes (their Dask memory_limit)"
        if local
        else "each worker of the cluster (start them with --memory-limit of at least this)"
    )
    sizes = [
        sum(min(layout.files_of(i)[1], n_files) - layout.files_of(i)[0]
            for i in range(layout.shard_bounds[j], layout.shard_bounds[j + 1]))
        for j in range(layout.n_shards)
    ]  # fmt: skip
    peaks = _worker_peaks(config, plan)
    lines = [
        f"Dask ({where}): --mem-budget {format_bytes(config.mem_budget)} applies to {who} "
        f"and to this client process; the nanny restarts a worker past 95% of its limit.",
        f"  {layout.n_segments} pixel segments of up to {layout.segment_files} images (one "
        f"ingest task and one embed task each); {layout.n_shards} PCA shard(s) of "
        f"{min(sizes)}-{max(sizes)} images (PCA batch {layout.pca_batch}), merged in a fixed "
        f"tree by shard index ({layout.n_shards - 1} merge(s)); k-means on the client",
        "  per worker: " + ", ".join(f"{s} {format_bytes(b)}" for s, b in peaks.items()),
        f"  client: k-means {format_bytes(plan.stage_bytes['kmeans'])} (features "
        f"{'in memory' if plan.features_in_memory else 'streamed'}), the model to scatter "
        f"{format_bytes(PARENT_BASE_BYTES + 4 * config.n_components * config.pca_dim)}",
    ]
    return "\n".join(lines)
