"""The runner: scan, then the stages in order, with the lock, timing, memory and resume.

One stage sequence for every way of running; :class:`Steps` makes the pixel rows, the PCA and
the features (here, or on Dask). The bookkeeping (records, timing, memory labels, progress
events) is here once; each stage's durable record in ``state.json`` makes a rerun after a kill
end with the labels of an uninterrupted run."""

from __future__ import annotations

import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Generator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from stream_cluster.config import RunConfig
from stream_cluster.errors import CorruptSegmentError
from stream_cluster.images.scan import ScanResult, files_digest, scan
from stream_cluster.memory.budget import MemoryPlan
from stream_cluster.memory.planner import plan_run
from stream_cluster.memory.sampler import MemorySampler
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.report.results import RunResult, write_run_json
from stream_cluster.runner import runfolder
from stream_cluster.stages.base import Progress, ProgressEvent, StageRecord
from stream_cluster.stages.clustering import Elbow, cluster, elbow, feature_source
from stream_cluster.stages.update import compare_labels, previous_centers, start_update
from stream_cluster.storage.checkpoint import RunLock, RunState
from stream_cluster.storage.rows import RowSource
from stream_cluster.storage.store import RowStore

__all__ = ["STAGES", "Pixels", "Runner", "Steps", "execute"]

logger = logging.getLogger(__name__)

STAGES = ("scan", "ingest", "pca", "embed", "elbow", "cluster", "report")
T = TypeVar("T")


@dataclass
class Pixels:
    """What the ingest and PCA steps leave for the rest: the pixel rows, the store's names,
    the rows of the current files (None: all), the skipped files and the PCA if in memory."""

    source: RowSource
    names: list[bytes]
    rows: np.ndarray | None
    skipped: list[tuple[str, str]]
    model: StreamingPCA | None = None
    closing: list[Any] = field(default_factory=list)  #: closed when the run is done with them


class Steps(ABC):
    """How a run makes its pixel rows, its PCA and its features; the runner does the rest."""

    sampler: type[MemorySampler] = MemorySampler

    def check(self, config: RunConfig, fresh: bool, update: bool) -> None:  # noqa: B027 (an optional hook)
        """Checks before the run folder is touched."""

    def session(self, config: RunConfig) -> AbstractContextManager[Any]:
        """What stays open for the whole run (under the run lock)."""
        return nullcontext()

    def begin(self, run: Runner) -> None:  # noqa: B027 (an optional hook)
        """At the start of each attempt, under the run lock: checks, fresh per-attempt state."""

    @abstractmethod
    def prepare(
        self, run: Runner, found: ScanResult, digest: str, mem_plan: MemoryPlan
    ) -> tuple[MemoryPlan, str]:
        """Adapt the plan, check the disk, start the ingest; the plan and where the run runs."""

    @abstractmethod
    def pixels(
        self, run: Runner, found: ScanResult, mem_plan: MemoryPlan, skipped: list[tuple[str, str]]
    ) -> Generator[ProgressEvent, None, Pixels]:
        """Run the ingest and PCA stages (through ``run.stage``)."""

    @abstractmethod
    def embed(
        self, run: Runner, px: Pixels, mem_plan: MemoryPlan, n_keep: int, pca_key: Any
    ) -> Generator[Progress, None, RowStore]:
        """The embed stage: every current row projected by the PCA into the feature store."""

    def finish(self, run: Runner) -> None:  # noqa: B027 (an optional hook)
        """After ``run.json`` is written: add what this way of running measured."""


def execute(
    config: RunConfig, steps: Steps, *, fresh: bool = False, update: bool = False
) -> Generator[ProgressEvent, None, RunResult]:
    """Run the stage sequence with ``steps`` under the run lock; rebuild bit-rotten segments."""
    steps.check(config, fresh, update)
    runfolder.prepare_out_dir(config, fresh)
    csv_path = config.out_dir / "memory.csv" if config.profile_memory else None
    with RunLock(config.out_dir), steps.sampler(csv_path=csv_path) as sampler:
        runfolder.discard_partials(config.out_dir)  # left by a kill -9 or power loss
        with steps.session(config):
            for attempt in range(4):
                try:
                    return (yield from Runner(config, sampler, steps, update).run())
                except CorruptSegmentError as exc:  # bit rot: rebuild the segment, then resume
                    if attempt == 3 or not runfolder.repair(config, exc):
                        raise
                except BaseException:  # an error, Ctrl-C/SIGTERM (KeyboardInterrupt), close()
                    runfolder.discard_partials(config.out_dir)
                    raise
    raise AssertionError("unreachable")


class Runner:
    """One attempt: sequences the stages and keeps their records; ``steps`` does the pixels."""

    def __init__(
        self, config: RunConfig, sampler: MemorySampler, steps: Steps, update: bool
    ) -> None:
        self.config, self.out, self.sampler, self.update = config, config.out_dir, sampler, update
        self.steps = steps
        self.state = RunState(self.out / "state.json")
        self.skipped = 0

    def record(self, stage: str) -> StageRecord:
        """The durable record of ``stage`` in ``state.json``."""
        return StageRecord(self.state, stage)

    def leave(self, stage: str, t0: float, accumulate: bool = True) -> None:
        """Record a stage's wall time since ``t0`` (added to earlier attempts') and its peak."""
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
                yield self.event(p.stage, p.done, p.total, p.unit, self.skipped, p.message)
        finally:
            gen.close()
        if worked:
            self.leave(name, t0, accumulate=timed)
        return value

    def event(self, stage: str, done: int, total: int, unit: str, skipped: int, message: str = ""
              ) -> ProgressEvent:  # fmt: skip
        """A progress event with the memory figures of now."""
        return ProgressEvent(stage, done, total, unit, self.sampler.current,
                             self.config.mem_budget, skipped, message)  # fmt: skip

    def peak(self) -> int:
        """The run's peak RSS so far, over every attempt."""
        stages = self.state.data["stages"].values()
        return max([self.sampler.peak, *[int(r.get("peak_rss", 0)) for r in stages]])

    def run(self) -> Generator[ProgressEvent, None, RunResult]:
        cfg, out = self.config, self.out
        self.steps.begin(self)
        runfolder.check_settings(self.state, cfg)
        self.sampler.stage, t0 = "scan", time.perf_counter()
        found = scan(cfg.input_dir, follow_external_symlinks=cfg.follow_symlinks)
        files, digest = found.files, files_digest(found.files, found.root)
        if self.update:
            start_update(self.state, out, found.root, files, digest)
        runfolder.check_inputs(self.state, out, files, digest)
        runfolder.check_counts(cfg, len(files))
        mem_plan = plan_run(cfg, found.root, files, self.record("pca").data)
        mem_plan, where = self.steps.prepare(self, found, digest, mem_plan)
        scan_skipped = [(str(a), str(b)) for a, b in found.skipped]
        self.leave("scan", t0)
        what = f"{len(files)} image files{where}; plan: {mem_plan.describe()}"
        yield self.event("scan", len(files), len(files), "files", len(scan_skipped), what)
        px = yield from self.steps.pixels(self, found, mem_plan, scan_skipped)
        try:
            return (yield from self._finish(px, mem_plan))
        finally:
            for item in px.closing:
                item.close()

    def _finish(
        self, px: Pixels, mem_plan: MemoryPlan
    ) -> Generator[ProgressEvent, None, RunResult]:
        """Embed, elbow, cluster and report, from the pixel rows the steps made."""
        cfg, out = self.config, self.out
        pca_rec = self.record("pca")
        n_keep = int(pca_rec.get("n_keep"))
        embedding = self.steps.embed(self, px, mem_plan, n_keep, pca_rec.get("key"))
        features = yield from self.stage("embed", embedding)
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
        rows = range(len(px.names)) if px.rows is None else px.rows
        names = [os.fsdecode(px.names[i]) for i in rows]
        compare_labels(out, self.state, names, km)
        from stream_cluster.stages.report import report_stage  # imports matplotlib: only now

        sizes = yield from self.stage(
            "report",
            report_stage(out, cfg, px.source, names, km, px.skipped, n_keep=n_keep, k=k,
                         pca=pca_rec.data, elbow=curve, peak=self.peak(),
                         sample=self.sampler.sample, features=features, rows=px.rows),
        )  # fmt: skip
        stages = self.state.data["stages"]
        result = RunResult(
            out_dir=out, n_images=len(names), n_skipped=len(px.skipped), n_components=n_keep,
            explained_variance=float(pca_rec.get("explained_variance")), k=k,
            inertia=km.inertia, cluster_sizes=[int(x) for x in sizes], elbow=dict(curve.inertias),
            peak_rss=self.peak(),
            stage_seconds={s: float(stages.get(s, {}).get("seconds", 0.0)) for s in STAGES},
        )  # fmt: skip
        write_run_json(out, cfg, mem_plan, stages, STAGES, self.peak(), result, curve.knee)
        self.steps.finish(self)
        self.record("report").update(done=True)
        return result

