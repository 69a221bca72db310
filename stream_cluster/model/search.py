"""Exact nearest-neighbour search over a finished run's feature store, read in blocks."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream_cluster.errors import InputError
from stream_cluster.storage.store import RowStore

__all__ = ["SEARCH_BLOCK", "Match", "nearest", "own_row", "run_settings"]

#: Feature rows compared with the query at a time by :func:`similar` (26 MB at 800 components).
SEARCH_BLOCK = 8192
# Bound on the float32 error of a squared distance, relative to |f|^2 + |q|^2 (a dot product
# of 800 float32 terms errs by at most ~800 * 6e-8 of |f| |q|; the bound doubles that).
_F32_REL = 1e-4


@dataclass(frozen=True)
class Match:
    """One result of :func:`similar`: rank (1 = nearest), the run image's path, distance."""

    rank: int
    path: str
    distance: float


def run_settings(run_dir: Path) -> dict[str, object]:
    try:
        doc = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        settings: dict[str, object] = doc["settings"]
        return settings
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"{run_dir} is not a finished run folder (run.json: {exc}). Finish the run first."
        ) from None


def own_row(run_dir: Path, image: Path, names: list[bytes]) -> int | None:
    """The store row of ``image`` when it is one of the run's own images, else None."""
    root = Path(str(run_settings(run_dir)["input_dir"]))
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


def nearest(features: RowStore, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
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
