"""The runner: scan, then the stages in order, with the lock, timing, memory and resume.

:func:`iter_run` yields :class:`ProgressEvent` objects and does no printing; :func:`run`
consumes them. Each stage lives in its own module and keeps its own durable progress record
in ``state.json``, so a rerun after a kill ends with the labels of an uninterrupted run."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Generator
from typing import TypeVar

import numpy as np

from stream_cluster.config import RunConfig
from stream_cluster.errors import ConfigError, CorruptSegmentError
from stream_cluster.images.scan import files_digest, scan
from stream_cluster.memory.budget import MemoryPlan
from stream_cluster.memory.planner import disk_need, plan, plan_folder, plan_run
from stream_cluster.memory.sampler import MemorySampler
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.report.results import RunResult, write_run_json, write_skipped
from stream_cluster.runner import runfolder
from stream_cluster.stages.base import (
    Progress,
    ProgressEvent,
    StageRecord,
    in_background,
    run_to_end,
    timed,
)
from stream_cluster.stages.clustering import Elbow, cluster, elbow, feature_source
from stream_cluster.stages.embed import embed, feature_store
from stream_cluster.stages.fit_pca import RowsFeed, fit_pca, load_pca, resume_cursor
from stream_cluster.stages.ingest import run_ingest, start_ingest
from stream_cluster.stages.keep_pixels_never import PixelPipe, SourcePixels, rewind_ingest
from stream_cluster.stages.update import (
    active_rows,
    compare_labels,
    ingest_order,
    previous_centers,
    start_update,
)
from stream_cluster.storage.checkpoint import RunLock, RunState
from stream_cluster.storage.rows import RowSource
from stream_cluster.storage.store import RowStore

__all__ = ["STAGES", "ProgressEvent", "RunResult", "iter_run", "plan", "plan_folder", "run"]

logger = logging.getLogger(__name__)

STAGES = ("scan", "ingest", "pca", "embed", "elbow", "cluster", "report")
BACKGROUND_NICE = 19  #: decode workers beside the PCA take only the CPU its BLAS leaves idle
T = TypeVar("T")


def run(config: RunConfig, *, fresh: bool = False, update: bool = False) -> RunResult:
    """Run (or resume, or with ``update`` grow) the whole pipeline and return its result."""
    return run_to_end(iter_run(config, fresh=fresh, update=update))


def iter_run(
    config: RunConfig, *, fresh: bool = False, update: bool = False
) -> Generator[ProgressEvent, None, RunResult]:
    """Run the pipeline, yielding progress; returns a :class:`RunResult` (``StopIteration.value``).

    Everything that can be checked before heavy work is checked first: settings, input folder,
    image count against components and k, the memory plan and free disk space. With
    ``update``, a finished run whose folder changed grows (see :mod:`stream_cluster.stages.update`).
    """
    if config.dask is not None:  # the same stages spread over a Dask cluster
        from stream_cluster.runner.dask_steps import iter_run_dask

        return (yield from iter_run_dask(config, fresh=fresh, update=update))
    runfolder.prepare_out_dir(config, fresh)
    csv_path = config.out_dir / "memory.csv" if config.profile_memory else None
    with RunLock(config.out_dir), MemorySampler(csv_path=csv_path) as sampler:
        runfolder.discard_partials(config.out_dir)  # left by a kill -9 or power loss
        for attempt in range(4):
            try:
                return (yield from _Runner(config, sampler, update).run())
            except CorruptSegmentError as exc:  # bit rot: rebuild the segment, then resume
                if attempt == 3 or not runfolder.repair(config, exc):
                    raise
            except BaseException:  # an error, Ctrl-C/SIGTERM (KeyboardInterrupt), close()
                runfolder.discard_partials(config.out_dir)
                raise
    raise AssertionError("unreachable")


class _Runner:
    """One invocation: sequences the stages; each stage's work is in its own module."""

    def __init__(self, config: RunConfig, sampler: MemorySampler, update: bool) -> None:
        self.config, self.out, self.sampler, self.update = config, config.out_dir, sampler, update
        self.state = RunState(self.out / "state.json")
        self.skipped = 0
        self.model: StreamingPCA | None = None  # the fitted PCA, until the embed is done

    def record(self, stage: str) -> StageRecord:
        return StageRecord(self.state, stage)

    def _leave(self, stage: str, t0: float, accumulate: bool = True) -> None:
        self.sampler.sample()
        rec = self.state.stage(stage)
        seconds = time.perf_counter() - t0 + (float(rec.get("seconds", 0.0)) if accumulate else 0)
        peak = max(int(rec.get("peak_rss", 0)), self.sampler.stage_peaks.get(stage, 0))
        self.state.update(stage, seconds=seconds, peak_rss=peak)

    def stage(
        self, name: str, gen: Generator[Progress, None, T], timed: bool = True
    ) -> Generator[ProgressEvent, None, T]:
        """Run one stage generator: set the memory label, turn Progress into events, time it."""
        if timed:
            self.sampler.stage = name
        t0, worked = time.perf_counter(), False
        try:
            while True:
                try:
                    p = next(gen)
                except StopIteration as stop:
                    value: T = stop.value
                    break
                worked = True
                self.skipped = self.skipped if p.skipped is None else p.skipped
                yield ProgressEvent(
                    p.stage, p.done, p.total, p.unit, self.sampler.current,
                    self.config.mem_budget, self.skipped, p.message,
                )  # fmt: skip
        finally:
            gen.close()
        if worked:
            self._leave(name, t0, accumulate=timed)
        return value

    def run(self) -> Generator[ProgressEvent, None, RunResult]:
        cfg, out = self.config, self.out
        never = cfg.keep_pixels == "never"
        if never and self.update:
            raise ConfigError(
                "--update grows a run from its pixel store; this run keeps none "
                "(--keep-pixels never). Rerun with --fresh, or start it with --keep-pixels always."
            )
        runfolder.check_settings(self.state, cfg)
        self.sampler.stage = "scan"
        t0 = time.perf_counter()
        found = scan(cfg.input_dir, follow_external_symlinks=cfg.follow_symlinks)
        files, digest = found.files, files_digest(found.files, found.root)
        if self.update:
            start_update(self.state, out, found.root, files, digest)
        runfolder.check_inputs(self.state, out, files, digest)
        runfolder.check_counts(cfg, len(files))
        mem_plan = plan_run(cfg, found.root, files, self.record("pca").data)
        pca_rec = self.record("pca")
        if pca_rec.data and not pca_rec.done and pca_rec.get("batch") != mem_plan.pca_batch:
            logger.warning("the PCA batch no longer fits the budget; the PCA restarts")
            self.state.reset(list(STAGES[2:]))
            (out / "pca-checkpoint.h5").unlink(missing_ok=True)
        ingest_rec = self.record("ingest")
        runfolder.check_disk(out, disk_need(out, cfg, len(files), self.record("pca").done,
                                            int(ingest_rec.get("next_file", 0)), recheck=True))
        start_ingest(ingest_rec, out, found.root, files, digest, cfg.stage_key("ingest"))
        scan_skipped = [(str(a), str(b)) for a, b in found.skipped]
        self._leave("scan", t0)
        what = f"{len(files)} image files; plan: {mem_plan.describe()}"
        yield ProgressEvent("scan", len(files), len(files), "files", self.sampler.current,
                            cfg.mem_budget, len(scan_skipped), what)  # fmt: skip

        # -- ingest and PCA (overlapped when the plan holds both) ---------------------------
        pixels: RowStore | PixelPipe
        ordered = ingest_order(out, files)
        if never:  # rows go from the decoders to the PCA in memory; only names are kept
            pixels = PixelPipe(out / "names", cfg.n_features, capacity=mem_plan.segment_rows)
            pca_at = resume_cursor(self.record("pca"), out, batch=mem_plan.pca_batch,
                                   key=cfg.stage_key("pca"))  # fmt: skip
            if not self.record("pca").done:
                rewind_ingest(pixels, ingest_rec, pca_at, ordered)
        else:
            pixels = RowStore(out / "pixels", cfg.n_features, np.uint8, cfg.store_compression)
        decoded: list[tuple[str, str]] = []

        recheck = not never and len(pixels) == 0  # a compressed store's ratio is known

        def check_disk_again() -> None:  # once the first segment shows the codec's ratio
            nonlocal recheck
            if recheck:
                recheck = False
                need = disk_need(out, cfg, len(files), False, int(ingest_rec.get("next_file")))
                runfolder.check_disk(out, need)

        def ingest_stage(nice: int) -> Generator[Progress, None, list[tuple[str, str]]]:
            nonlocal decoded
            decoded = yield from run_ingest(
                ingest_rec, found.root, ordered, pixels, width=cfg.width, height=cfg.height,
                workers=mem_plan.workers, segment_rows=mem_plan.segment_rows,
                memory_cap=mem_plan.decode_cap, prior_skipped=scan_skipped,
                stderr_log=out / "decode.log", nice=nice, on_segment=check_disk_again,
            )  # fmt: skip
            write_skipped(out, [*scan_skipped, *decoded])
            return decoded

        def check_rows(n: int) -> None:
            runfolder.check_decoded(cfg, n, len(files), [*scan_skipped, *decoded])

        def pca_stage(feed: RowsFeed) -> Generator[Progress, None, StreamingPCA]:
            return fit_pca(
                self.record("pca"), pixels, feed, out_dir=out, key=cfg.stage_key("pca"),
                n_components=cfg.n_components, solver=cfg.pca_solver, batch=mem_plan.pca_batch,
                expected_rows=len(files), variance=cfg.variance,
                checkpoint_seconds=cfg.checkpoint_seconds, check_rows=check_rows,
            )  # fmt: skip

        model: StreamingPCA | None = None
        if mem_plan.overlap and not ingest_rec.done:
            self.sampler.stage = "ingest+pca"
            t0 = time.perf_counter()

            with in_background(timed(ingest_rec, ingest_stage(BACKGROUND_NICE))) as bg:
                try:
                    model = yield from self.stage("pca", pca_stage(RowsFeed(pixels, bg)), False)
                finally:
                    if isinstance(pixels, PixelPipe):
                        pixels.close()  # a decoder waiting on the pipe stops
            self._leave("ingest+pca", t0)
        else:
            yield from self.stage("ingest", ingest_stage(0))
            check_rows(len(pixels))
            if not (self.record("pca").done and (out / "pca.h5").exists()):
                model = yield from self.stage("pca", pca_stage(RowsFeed(pixels)))
        self.skipped = len(scan_skipped) + len(decoded)

        # -- embed, elbow, cluster ------------------------------------------------------------
        all_names = pixels.names()  # read once: embed, labels and the report use them
        rows = active_rows(all_names, files)  # after updates: each current file's row
        source: RowSource = pixels if isinstance(pixels, RowStore) else SourcePixels(
            found.root, all_names, cfg.width, cfg.height, workers=mem_plan.workers,
            memory_cap=mem_plan.decode_cap, stderr_log=out / "decode.log",
        )  # fmt: skip
        self.model, model = model, None  # _finish drops it after the embed
        try:
            return (yield from self._finish(source, all_names, rows, mem_plan,
                                            [*scan_skipped, *decoded]))  # fmt: skip
        finally:
            if isinstance(source, SourcePixels):
                source.close()

    def _finish(
        self,
        pixels: RowSource,
        all_names: list[bytes],
        rows: np.ndarray,
        mem_plan: MemoryPlan,
        skipped: list[tuple[str, str]],
    ) -> Generator[ProgressEvent, None, RunResult]:
        """Embed, elbow, cluster and report, from the pixel rows ``pixels``."""
        cfg, out = self.config, self.out
        pca_rec = self.record("pca")
        n_keep = int(pca_rec.get("n_keep"))
        features = yield from self.stage(
            "embed",
            embed(self.record("embed"), pixels, feature_store(out, n_keep),
                  lambda: self.model or load_pca(out / "pca.h5"), pca_key=pca_rec.get("key"),
                  batch=mem_plan.embed_batch, rows=rows, names=all_names),
        )  # fmt: skip
        self.model = None
        if isinstance(pixels, SourcePixels):
            pixels.close()  # no decode workers beside k-means
        self.sampler.stage = "elbow"
        source = feature_source(features, mem_plan)
        curve: Elbow = yield from self.stage(
            "elbow",
            elbow(self.record("elbow"), source, enabled=cfg.do_elbow, k_range=cfg.k_range,
                  seed=cfg.seed, key=cfg.stage_key("elbow")),
        )  # fmt: skip
        if curve.inertias and curve.knee is None and cfg.k is None:
            logger.warning("no clear knee in the inertia curve; using k=%d (set --k to choose)",
                           cfg.k_range[0])  # fmt: skip
        grown = self.record("update").data
        k = cfg.k or (grown["previous_k"] if grown else None) or curve.knee or cfg.k_range[0]
        km = yield from self.stage(
            "cluster",
            cluster(self.record("cluster"), source, k, seed=cfg.seed,
                    key=cfg.stage_key("cluster"), out_dir=out,
                    init=previous_centers(out, self.state, k)),
        )  # fmt: skip
        del source

        # -- results: labels, model, report, run.json -----------------------------------------
        names = [os.fsdecode(all_names[i]) for i in rows]
        compare_labels(out, self.state, names, km)
        from stream_cluster.stages.report import report_stage  # imports matplotlib: only now

        sizes = yield from self.stage(
            "report",
            report_stage(out, cfg, pixels, names, km, skipped, n_keep=n_keep, k=k,
                         pca=pca_rec.data, elbow=curve, peak=self._peak(),
                         sample=self.sampler.sample, features=features, rows=rows),
        )  # fmt: skip
        ev = float(pca_rec.get("explained_variance"))
        stages = self.state.data["stages"]
        result = RunResult(
            out_dir=out, n_images=len(names), n_skipped=len(skipped), n_components=n_keep,
            explained_variance=ev, k=k, inertia=km.inertia,
            cluster_sizes=[int(x) for x in sizes], elbow=dict(curve.inertias),
            peak_rss=self._peak(),
            stage_seconds={s: float(stages.get(s, {}).get("seconds", 0.0)) for s in STAGES},
        )  # fmt: skip
        write_run_json(out, cfg, mem_plan, stages, STAGES, self._peak(), result, curve.knee)
        self.record("report").update(done=True)
        return result

    def _peak(self) -> int:
        stages = self.state.data["stages"].values()
        return max([self.sampler.peak, *[int(r.get("peak_rss", 0)) for r in stages]])
