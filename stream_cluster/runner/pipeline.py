"""Run the pipeline: :func:`iter_run` yields :class:`ProgressEvent` objects and does no printing;
:func:`run` consumes them.

Both ways of running (this process and its decode workers, or a Dask cluster with
``config.dask``) are the one stage sequence of :mod:`~stream_cluster.runner.sequence` with
different steps for the pixels, the PCA and the embed.
"""

from __future__ import annotations

from collections.abc import Generator

from stream_cluster.config import RunConfig
from stream_cluster.memory.planner import plan, plan_folder, with_features
from stream_cluster.report.results import RunResult
from stream_cluster.runner.local_steps import LocalSteps
from stream_cluster.runner.sequence import STAGES, execute
from stream_cluster.stages.base import ProgressEvent, run_to_end

__all__ = [
    "STAGES", "ProgressEvent", "RunResult", "iter_run", "plan", "plan_folder", "run",
    "with_features",
]  # fmt: skip


def run(config: RunConfig, *, fresh: bool = False, update: bool = False) -> RunResult:
    """Run (or resume, or with ``update`` grow) the whole pipeline and return its result."""
    return run_to_end(iter_run(config, fresh=fresh, update=update))


def iter_run(
    config: RunConfig, *, fresh: bool = False, update: bool = False
) -> Generator[ProgressEvent, None, RunResult]:
    """Run the pipeline, yielding progress; returns a :class:`RunResult` (``StopIteration.value``).

    Everything that can be checked before heavy work is checked first: settings, input folder,
    image count against components and k, the memory plan and free disk space. With
    ``update``, a finished run whose folder changed grows (see
    :mod:`stream_cluster.stages.update`).
    """
    config, extractor = with_features(config)  # a bad --features fails here, before ingest
    if config.dask is not None:  # the same stages, with Dask steps for the pixels and PCA
        from stream_cluster.runner.dask_steps import iter_run_dask

        return (yield from iter_run_dask(config, fresh=fresh, update=update))
    return (yield from execute(config, LocalSteps(extractor), fresh=fresh, update=update))
