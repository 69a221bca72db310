"""The embed of a distributed run: one task per segment, the PCA model scattered once.

Feature segment ``i`` is the projection of pixel segment ``i`` (with ``--features`` other than
pixels, of feature segment ``i`` in ``descriptors/``, read as float32 like the local embed).
A segment already written is not projected again, so a rerun after the client died keeps them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

from stream_cluster.config import RunConfig
from stream_cluster.errors import StreamClusterError
from stream_cluster.parallel.dask_executor import DaskExecutor
from stream_cluster.stages.base import Progress, StageRecord
from stream_cluster.stages.embed import feature_store
from stream_cluster.stages.fit_pca import load_pca
from stream_cluster.stages.shard_tasks import EmbedJob, embed_segment, segment_name
from stream_cluster.storage.store import RowStore

__all__ = ["embed_stage", "transfers"]


def embed_stage(
    record: StageRecord,
    dask_record: StageRecord,
    client: Any,
    config: RunConfig,
    out: Path,
    seg_rows: list[int],
    n_keep: int,
    pca_key: Any,
    note: Callable[[dict[str, Any], str, int], None],
) -> Generator[Progress, None, RowStore]:
    """Project every segment not yet projected (``seg_rows``: rows of each segment); records
    the scatter's size and time and the workers' transfers in ``dask_record``."""
    features_dir = out / "features"
    n_rows = sum(seg_rows)
    if record.get("key") != pca_key:
        shutil.rmtree(features_dir, ignore_errors=True)
        record.update(key=pca_key, done=False)
    features_dir.mkdir(parents=True, exist_ok=True)
    if record.done:
        return feature_store(out, n_keep)
    for stale in features_dir.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    missing = [i for i in range(len(seg_rows)) if not (features_dir / segment_name(i)).exists()]
    done = n_rows - sum(seg_rows[i] for i in missing)
    yield Progress("embed", done, n_rows)
    if missing:
        model = load_pca(out / "pca.h5")
        scatter_bytes = int(model.components_.nbytes + model.mean_.nbytes * 2)
        t0 = time.perf_counter()
        shared = client.scatter(model, hash=False)
        scatter_seconds = time.perf_counter() - t0
        del model
        float_rows = config.features != "pixels"
        rows_dir = (out / ("descriptors" if float_rows else "pixels")).resolve()
        fdir = os.fspath(features_dir.resolve())
        jobs = [(EmbedJob(i, os.fspath(rows_dir / segment_name(i)), config.pca_dim, fdir,
                          n_keep, float_rows), shared) for i in missing]  # fmt: skip
        try:
            for res in DaskExecutor(client).map_unordered(embed_segment, jobs):
                if res.died is not None or res.value is None:
                    raise StreamClusterError(
                        f"Embedding segment {res.shard[0].index} killed every Dask worker it "
                        f"ran on; give the workers at least --mem-budget each."
                    )
                note(res.value, "embed", int(res.value.get("rows", 0)))
                done += int(res.value.get("rows", 0))
                yield Progress("embed", done, n_rows)
        finally:
            shared.release()
        dask_record.update(
            scatter={"bytes": scatter_bytes, "seconds": scatter_seconds},
            transfers=transfers(client),
        )
    record.update(done=True)
    return feature_store(out, n_keep)


def transfers(client: Any) -> dict[str, int]:
    """Bytes each worker fetched from other workers so far (Dask's transfer log)."""

    def fetched(dask_worker: Any) -> int:
        return int(sum(e["total"] for e in getattr(dask_worker, "transfer_incoming_log", [])))

    try:
        return {str(a): int(v) for a, v in client.run(fetched).items()}
    except Exception:  # a diagnostic only: never fail a run for it
        return {}
