"""The run on a Dask cluster (``--dask ADDRESS|local:N``): the same stages, spread over workers.

What runs where:

- scan, the memory plan and the shared-storage check on the client;
- **ingest**: one task per pixel segment decodes a fixed slice of the processing order and
  writes that segment (with ``--features`` other than pixels, also its feature rows in
  ``descriptors/``, which the PCA and embed then read) and its manifest into the run folder (an
  :class:`~stream_cluster.parallel.dask_executor.DaskExecutor` map);
- **PCA**: one task per shard fits a :class:`~stream_cluster.pca.streaming.StreamingPCA` on its own
  segments; the states are merged by :meth:`StreamingPCA.merge` in the fixed tree of
  :func:`~stream_cluster.pca.merge_tree` (by shard index), each merge a task that depends on
  its two children's futures; the root is ``pca.h5``;
- **embed**: one task per segment, the model scattered once;
- **elbow, cluster, report**: the single-process stage functions, on the client (k-means holds
  the features in memory when the plan says they fit, else streams them).

Every task's output is a file written atomically under its own name, so a worker killed
mid-task (the nanny restarts it, Dask reruns the task) and a rerun of the same command after
the client died both keep what was finished and end with the same labels. The layout (segments,
shards, PCA batch) is recorded at the first start and never depends on the number of workers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.config import RunConfig
from stream_cluster.errors import (
    CheckpointMismatchError,
    ConfigError,
    StreamClusterError,
)
from stream_cluster.images.decode import DecodeChunk
from stream_cluster.images.scan import ScanResult
from stream_cluster.memory.budget import MemoryPlan
from stream_cluster.memory.planner import disk_need, plan_folder, with_features
from stream_cluster.memory.sampler import OwnRssSampler
from stream_cluster.parallel.dask_executor import (
    DaskExecutor,
    check_shared_storage,
    connect,
    require_dask,
    worker_stats,
)
from stream_cluster.parallel.dask_plan import DaskLayout, check_worker_budget, make_layout
from stream_cluster.report.results import RunResult, write_skipped
from stream_cluster.runner import runfolder
from stream_cluster.runner.dask_embed import embed_stage
from stream_cluster.runner.dask_pca import pca_stage
from stream_cluster.runner.sequence import execute
from stream_cluster.runner.steps import Pixels, StageRunner, Steps
from stream_cluster.stages.base import Progress, ProgressEvent, StageRecord
from stream_cluster.stages.ingest import start_ingest
from stream_cluster.stages.shard_tasks import SegmentJob, decode_alone, ingest_segment
from stream_cluster.stages.update import ingest_order
from stream_cluster.storage.atomic import atomic_write_bytes
from stream_cluster.storage.store import RowStore

__all__ = ["STAGES", "iter_run_dask"]

logger = logging.getLogger(__name__)

STAGES = ("scan", "ingest", "pca", "embed", "space", "elbow", "cluster", "report")
#: Files of the distributed run besides the single-process ones (manifests, shard states).
DASK_DIR = "dask"


def iter_run_dask(
    config: RunConfig,
    *,
    fresh: bool = False,
    update: bool = False,
    shard_images: int | None = None,
    decode_chunk: DecodeChunk | None = None,
) -> Generator[ProgressEvent, None, RunResult]:
    """Run the pipeline on the Dask cluster ``config.dask``; yields progress, returns the result.

    ``shard_images`` sets the images per PCA shard of a new run folder (default: see
    :func:`~stream_cluster.parallel.dask_plan.make_layout`); ``decode_chunk`` replaces the
    decoder (tests inject failures with it). ``config.mem_budget`` is per worker and for the
    client.
    """
    if config.features != "pixels" and "features_dim" not in config.extra:
        config = with_features(config)[0]  # called directly, not through iter_run
    steps = DaskSteps(shard_images, decode_chunk)
    return (yield from execute(config, steps, fresh=fresh, update=update))


class DaskSteps(Steps):
    """Ingest, PCA and embed as Dask tasks; the runner does the rest on the client."""

    sampler = OwnRssSampler  # local:N workers are children with budgets of their own

    def __init__(self, shard_images: int | None, decode_chunk: DecodeChunk | None) -> None:
        self.shard_images, self.decode_chunk = shard_images, decode_chunk
        self.client: Any = None
        self.peaks: dict[str, dict[str, Any]] = {}  # worker -> host, pid, peak RSS
        self.work: dict[str, dict[str, float]] = {}  # stage -> task seconds and images
        self._lock = threading.Lock()

    def check(self, config: RunConfig, fresh: bool, update: bool) -> None:
        require_dask()
        if config.dask is None:
            raise ConfigError("iter_run_dask needs config.dask (local:N or a scheduler address).")
        if update:
            raise ConfigError("--update is not available with --dask yet; run it without --dask.")
        if fresh:
            shutil.rmtree(config.out_dir / DASK_DIR, ignore_errors=True)

    @contextmanager
    def session(self, config: RunConfig) -> Iterator[None]:
        assert config.dask is not None
        with connect(config.dask, config.mem_budget) as client:
            self.client = client
            yield

    def begin(self, run: StageRunner) -> None:
        self.run, self.config, self.out = run, run.config, run.out
        self.executor = DaskExecutor(self.client)
        self.peaks, self.work = {}, {}

    def record(self, stage: str) -> StageRecord:
        return self.run.record(stage)

    def note(self, info: dict[str, Any], stage: str = "", images: int = 0) -> None:
        """Keep the largest peak RSS each worker process reported; add up a stage's task time."""
        if "peak" not in info:
            return
        if stage:
            work = self.work.setdefault(stage, {"seconds": 0.0, "images": 0, "tasks": 0})
            work["seconds"] += float(info.get("seconds", 0.0))
            work["images"] += images
            work["tasks"] += 1
        who = info.get("worker") or f"{info['host']}:{info['pid']}"
        with self._lock:
            old = self.peaks.get(who, {}).get("peak", 0)
            if info["peak"] >= old:
                self.peaks[who] = {"host": info["host"], "pid": info["pid"], "peak": info["peak"]}

    # -- the steps -------------------------------------------------------------------------------
    def prepare(
        self, run: StageRunner, found: ScanResult, digest: str, mem_plan: MemoryPlan
    ) -> tuple[MemoryPlan, str]:
        cfg, out, files = run.config, run.out, found.files
        self.layout, mem_plan = self._layout(mem_plan, os.fspath(found.root), files)
        check_worker_budget(cfg, mem_plan)
        runfolder.check_disk(out, disk_need(out, cfg, len(files), self.record("pca").done))
        ingest_rec = self.record("ingest")
        start_ingest(ingest_rec, out, found.root, files, digest, cfg.stage_key("ingest"))
        self.ordered = ingest_order(out, files)
        root = Path(found.root)
        self.n_workers = check_shared_storage(
            self.client, out, [root / self.ordered[0], root / self.ordered[-1]]
        )
        layout = self.layout
        return mem_plan, (
            f" on {self.n_workers} Dask worker(s); {layout.n_segments} "
            f"segments, {layout.n_shards} PCA shard(s)"
        )

    def pixels(
        self, run: StageRunner, found: ScanResult, mem_plan: MemoryPlan,
        skipped: list[tuple[str, str]],
    ) -> Generator[ProgressEvent, None, Pixels]:
        cfg, out, layout = run.config, run.out, self.layout
        ingest = self._ingest(self.record("ingest"), layout, Path(found.root), self.ordered,
                              mem_plan, skipped)  # fmt: skip
        decoded = yield from run.stage("ingest", ingest)
        skipped = [*skipped, *decoded]
        write_skipped(out, skipped)
        pixels = RowStore(out / "pixels", cfg.n_features, np.uint8)
        runfolder.check_decoded(cfg, len(pixels), len(found.files), skipped)
        run.skipped = len(skipped)
        yield from run.stage("pca", self._pca(layout, self._segment_rows(layout)))
        return Pixels(pixels, pixels.names(), None, skipped)

    def embed(
        self, run: StageRunner, px: Pixels, mem_plan: MemoryPlan, n_keep: int, pca_key: Any
    ) -> Generator[Progress, None, RowStore]:
        return self._embed(self.layout, n_keep, pca_key, len(px.names))

    def finish(self, run: StageRunner) -> None:
        self._write_dask_section(self.layout, self.n_workers)

    def _layout(
        self, mem_plan: Any, root: str, files: list[str]
    ) -> tuple[DaskLayout, Any]:
        """The recorded layout (and a plan with its PCA batch), or a new one for a new folder."""
        rec = self.record("dask")
        if rec.get("layout"):
            layout = DaskLayout.from_dict(rec.get("layout"))
            if layout.pca_batch != mem_plan.pca_batch:
                mem_plan = plan_folder(self.config, root, files, batch_size=layout.pca_batch)
            return layout, mem_plan
        if self.record("ingest").data:
            raise CheckpointMismatchError(
                f"The run folder {self.out} holds a run made without --dask; its store is laid "
                f"out differently. Rerun without --dask to continue it, with --fresh to start "
                f"over on Dask, or give another --out folder."
            )
        for name in (DASK_DIR, "pixels", "descriptors", "features"):  # unrecorded leftovers
            shutil.rmtree(self.out / name, ignore_errors=True)
        for name in ("pca.h5", "pca-checkpoint.h5"):
            (self.out / name).unlink(missing_ok=True)
        layout = make_layout(len(files), mem_plan.segment_rows, mem_plan.pca_batch,
                             self.shard_images)  # fmt: skip
        rec.update(layout=layout.as_dict(), address=self.config.dask)
        return layout, mem_plan

    # -- ingest ----------------------------------------------------------------------------------
    def _manifest(self, i: int) -> Path:
        return self.out / DASK_DIR / "ingest" / f"seg-{i:06d}.json"

    def _ingest(
        self,
        rec: StageRecord,
        layout: DaskLayout,
        root: Path,
        ordered: Sequence[str],
        mem_plan: Any,
        scan_skipped: list[tuple[str, str]],
    ) -> Generator[Progress, None, list[tuple[str, str]]]:
        """Decode every segment that has no manifest yet, one task per segment."""
        if rec.done:
            return [(str(a), str(b)) for a, b in rec.get("skipped", [])]
        cfg = self.config
        pixels_dir, manifests = self.out / "pixels", self.out / DASK_DIR / "ingest"
        descriptors = self.out / "descriptors"  # --features rows, segment for segment
        folders = [pixels_dir, manifests] + ([descriptors] if cfg.features != "pixels" else [])
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".tmp-*"):  # attempts killed with the previous client
                shutil.rmtree(stale, ignore_errors=True)
        jobs, done_files, n_skipped = [], 0, len(scan_skipped)
        for i in range(layout.n_segments):
            lo, hi = layout.files_of(i)
            if self._manifest(i).exists():
                doc = json.loads(self._manifest(i).read_text(encoding="utf-8"))
                done_files, n_skipped = done_files + hi - lo, n_skipped + len(doc["skipped"])
                continue
            jobs.append(SegmentJob(
                i, tuple(ordered[lo:hi]), os.fspath(root), os.fspath(pixels_dir.resolve()),
                os.fspath(manifests.resolve()), cfg.width, cfg.height, mem_plan.decode_cap,
                decode_chunk=self.decode_chunk, features=cfg.features,
                descriptors_dir=os.fspath(descriptors.resolve()),
                features_sha256=cfg.extra.get("features_sha256"),
            ))  # fmt: skip
        total = len(ordered)
        yield Progress("ingest", done_files, total, skipped=n_skipped)
        for res in self.executor.map_unordered(ingest_segment, jobs):
            info = res.value if res.died is None else self._crashed(res.shard)
            assert info is not None
            self.note(info, "ingest", int(info["files"]))
            done_files, n_skipped = done_files + info["files"], n_skipped + len(info["skipped"])
            yield Progress("ingest", done_files, total, skipped=n_skipped)
        skipped: list[tuple[str, str]] = []
        rows = 0
        for i in range(layout.n_segments):
            doc = json.loads(self._manifest(i).read_text(encoding="utf-8"))
            skipped += [(str(a), str(b)) for a, b in doc["skipped"]]
            rows += int(doc["rows"])
        rec.update(done=True, rows=rows, segments=layout.n_segments, next_file=total,
                   skipped=[list(s) for s in skipped])  # fmt: skip
        return skipped

    def _crashed(self, job: SegmentJob) -> dict[str, Any]:
        """A segment whose task killed its workers: find the files that do, skip only those."""
        logger.warning("a Dask worker died on segment %d; decoding its %d files one by one",
                       job.index, len(job.files))  # fmt: skip
        crashed = []
        # One file at a time: a task waiting on a worker that dies is blamed along with the
        # one that killed it, so nothing may share a worker with a file under suspicion.
        alone = DaskExecutor(self.client, max_in_flight=1)
        for res in alone.map_unordered(decode_alone, [replace(job, files=(f,)) for f in job.files]):
            if res.died is not None:
                logger.warning("skipped %s: the decoder killed its Dask worker", res.shard.files[0])
                crashed.append(res.shard.files[0])
        retry = [replace(job, crashed=tuple(crashed))]
        again = list(self.executor.map_unordered(ingest_segment, retry))
        if again[0].died is not None or again[0].value is None:
            raise StreamClusterError(
                f"Segment {job.index} killed its Dask workers even without the files that kill "
                f"a worker alone; check the workers' logs (memory limit, native crashes)."
            )
        return again[0].value

    def _segment_rows(self, layout: DaskLayout) -> list[int]:
        return [int(json.loads(self._manifest(i).read_text(encoding="utf-8"))["rows"])
                for i in range(layout.n_segments)]  # fmt: skip

    # -- PCA -------------------------------------------------------------------------------------
    def _pca(self, layout: DaskLayout, seg_rows: list[int]) -> Generator[Progress, None, None]:
        """Fit every shard and merge the states in the fixed tree; the root is ``pca.h5``."""
        states = self.out / DASK_DIR / "pca"
        return pca_stage(self.record("pca"), self.record("dask"), self.client, self.config,
                         layout, seg_rows, self.out, states, self.note)  # fmt: skip

    # -- embed -----------------------------------------------------------------------------------
    def _embed(
        self, layout: DaskLayout, n_keep: int, pca_key: Any, n_rows: int
    ) -> Generator[Progress, None, RowStore]:
        """Project every segment with the model scattered once; feature segment i = pixel i."""
        return embed_stage(self.record("embed"), self.record("dask"), self.client, self.config,
                           self.out, self._segment_rows(layout), n_keep, pca_key, self.note)

    def _write_dask_section(self, layout: DaskLayout, n_workers: int) -> None:
        """Add the distributed figures to run.json: layout, fits, merges, worker peaks."""
        try:
            for addr, info in self.client.run(worker_stats).items():
                self.note({**info, "worker": addr})
        except Exception:  # a diagnostic only
            pass
        rec = self.record("dask")
        work = {**rec.get("work", {}), **self.work}
        rec.update(worker_peaks=self.peaks, work=work)
        path = self.out / "run.json"
        doc = json.loads(path.read_text(encoding="utf-8"))
        doc["dask"] = {
            "address": self.config.dask,
            "workers": n_workers,
            "layout": layout.as_dict(),
            "worker_peak_rss_bytes": {w: int(p["peak"]) for w, p in self.peaks.items()},
            "client_peak_rss_bytes": self.run.peak(),
            **{k: rec.get(k) for k in ("work", "fits", "merges", "scatter", "transfers")},
        }
        atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
