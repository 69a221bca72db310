"""A decode function for tests that kills its worker process on files named ``crash*``."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from stream_cluster.stages.ingest import decode_many


def decode_or_die(
    root: str, rel_paths: Sequence[str], width: int, height: int
) -> tuple[np.ndarray, list[str | None]]:
    """Like decode_many, but a file whose name starts with 'crash' kills the process."""
    if any(os.path.basename(r).startswith("crash") for r in rel_paths):
        os._exit(3)  # what a segfaulting decoder looks like to the pool
    return decode_many(root, rel_paths, width, height)
