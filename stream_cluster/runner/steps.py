"""The seam between the runner and where the heavy work runs: :class:`Steps` makes a run's
pixel rows, its PCA and its features (in this process, or on Dask); :class:`Pixels` is what
they hand to the rest of the stage sequence (:mod:`stream_cluster.runner.sequence`)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Generator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from stream_cluster.config import RunConfig
from stream_cluster.images.scan import ScanResult
from stream_cluster.memory.budget import MemoryPlan
from stream_cluster.memory.sampler import MemorySampler
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.stages.base import Progress, ProgressEvent, StageRecord
from stream_cluster.storage.checkpoint import RunState
from stream_cluster.storage.rows import RowSource
from stream_cluster.storage.store import RowStore

__all__ = ["Pixels", "StageRunner", "Steps"]

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

    def begin(self, run: StageRunner) -> None:  # noqa: B027 (an optional hook)
        """At the start of each attempt, under the run lock: checks, fresh per-attempt state."""

    @abstractmethod
    def prepare(
        self, run: StageRunner, found: ScanResult, digest: str, mem_plan: MemoryPlan
    ) -> tuple[MemoryPlan, str]:
        """Adapt the plan, check the disk, start the ingest; the plan and where the run runs."""

    @abstractmethod
    def pixels(
        self, run: StageRunner, found: ScanResult, mem_plan: MemoryPlan,
        skipped: list[tuple[str, str]],
    ) -> Generator[ProgressEvent, None, Pixels]:
        """Run the ingest and PCA stages (through ``run.stage``)."""

    @abstractmethod
    def embed(
        self, run: StageRunner, px: Pixels, mem_plan: MemoryPlan, n_keep: int, pca_key: Any
    ) -> Generator[Progress, None, RowStore]:
        """The embed stage: every current row projected by the PCA into the feature store."""

    def finish(self, run: StageRunner) -> None:  # noqa: B027 (an optional hook)
        """After ``run.json`` is written: add what this way of running measured."""


class StageRunner:
    """A run attempt's bookkeeping, what :class:`Steps` may use: the stage records in
    ``state.json``, running a stage generator (memory label, timing, progress events), peaks."""

    def __init__(self, config: RunConfig, sampler: MemorySampler, update: bool) -> None:
        self.config, self.out, self.sampler, self.update = config, config.out_dir, sampler, update
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
