"""Peak RSS of the whole process tree (this process and every descendant), sampled in a thread.

The budget promise is about what the OS reports for all our processes together, so this sums
RSS over the tree (shared pages are counted once per process: conservative). Optionally writes
every sample to a CSV (``t_s,rss_bytes,stage``) that ``report.plot_memory_timeline`` draws.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TextIO

import psutil

__all__ = ["MemorySampler", "OwnRssSampler", "tree_rss"]


def tree_rss(proc: psutil.Process | None = None) -> int:
    """Current RSS in bytes of ``proc`` (default: this process) plus all its descendants."""
    proc = proc or psutil.Process()
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        procs = [proc]
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


class MemorySampler:
    """Sample tree RSS every ``interval`` seconds; keep overall and per-stage peaks.

    Use as a context manager; set :attr:`stage` as the pipeline moves on.
    """

    def __init__(self, interval: float = 0.1, csv_path: Path | None = None) -> None:
        self.interval = interval
        self.csv_path = csv_path
        self.stage = "start"
        self.peak = 0
        self.current = 0
        self.stage_peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._proc = psutil.Process()
        self._t0 = time.perf_counter()
        self._fh: TextIO | None = None

    def sample(self) -> int:
        """Take one sample now (also called by the thread)."""
        rss = tree_rss(self._proc)
        self.current = rss
        self.peak = max(self.peak, rss)
        stage = self.stage
        self.stage_peaks[stage] = max(self.stage_peaks.get(stage, 0), rss)
        if self._fh is not None:
            self._fh.write(f"{time.perf_counter() - self._t0:.3f},{rss},{stage}\n")
        return rss

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        if self.csv_path is not None:
            self._fh = open(self.csv_path, "w", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._fh.write("t_s,rss_bytes,stage\n")
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class OwnRssSampler(MemorySampler):
    """RSS of this process only, not its children's: a Dask client's ``local:N`` workers are
    its children, and each of them has its own budget (their peaks come from the tasks)."""

    def sample(self) -> int:
        rss = int(psutil.Process().memory_info().rss)
        self.current = rss
        self.peak = max(self.peak, rss)
        self.stage_peaks[self.stage] = max(self.stage_peaks.get(self.stage, 0), rss)
        if self._fh is not None:
            self._fh.write(f"{time.perf_counter() - self._t0:.3f},{rss},{self.stage}\n")
        return rss
