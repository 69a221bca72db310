"""The runner: scan, then the stages in order, with the lock, timing, memory and resume.

One stage sequence for every way of running; :class:`Steps` makes the pixel rows, the PCA and
the features (here, or on Dask). The bookkeeping (records, timing, memory labels, progress
events) is here once; each stage's durable record in ``state.json`` makes a rerun after a kill
end with the labels of an uninterrupted run."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Generator
from typing import TypeVar

from stream_cluster.config import RunConfig
from stream_cluster.errors import CorruptSegmentError
from stream_cluster.images.scan import files_digest, scan
from stream_cluster.memory.budget import MemoryPlan
from stream_cluster.memory.planner import plan_run
from stream_cluster.memory.sampler import MemorySampler
from stream_cluster.report.results import RunResult, write_run_json
from stream_cluster.runner import runfolder
from stream_cluster.runner.steps import Pixels, StageRunner, Steps
from stream_cluster.stages.base import ProgressEvent
from stream_cluster.stages.clustering import (
    Elbow,
    cluster,
    elbow,
    feature_source,
    position_source,
)
from stream_cluster.stages.space import space_stage
from stream_cluster.stages.update import compare_labels, previous_centers, start_update
from stream_cluster.storage.checkpoint import RunLock

__all__ = ["STAGES", "Runner", "execute"]

logger = logging.getLogger(__name__)

STAGES = ("scan", "ingest", "pca", "embed", "space", "elbow", "cluster", "report")
T = TypeVar("T")


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


class Runner(StageRunner):
    """One attempt: sequences the stages and keeps their records; ``steps`` does the pixels."""

    def __init__(
        self, config: RunConfig, sampler: MemorySampler, steps: Steps, update: bool
    ) -> None:
        super().__init__(config, sampler, update)
        self.steps = steps

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
        space = positions = None
        if cfg.space == "tsne":
            space, positions = yield from self.stage(
                "space",
                space_stage(self.record("space"), features, seed=cfg.seed,
                            key=cfg.stage_key("space"), out_dir=out),
            )  # fmt: skip
        self.sampler.stage = "elbow"
        source = feature_source(features, mem_plan) if positions is None else \
            position_source(positions)
        curve: Elbow = yield from self.stage(
            "elbow",
            elbow(self.record("elbow"), source, k_range=cfg.k_range,
                  enabled=cfg.do_elbow if cfg.clusterer == "kmeans" else bool(cfg.elbow),
                  seed=cfg.seed, key=cfg.stage_key("elbow"),
                  pick="knee" if positions is None else "silhouette"),
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
                    init=previous_centers(out, self.state, k) if positions is None else None,
                    method=cfg.clusterer),
        )  # fmt: skip
        k = len(km.centers)  # HDBSCAN found its own
        del source
        rows = range(len(px.names)) if px.rows is None else px.rows
        names = [os.fsdecode(px.names[i]) for i in rows]
        compare_labels(out, self.state, names, km)
        from stream_cluster.stages.report import report_stage  # imports matplotlib: only now

        sizes = yield from self.stage(
            "report",
            report_stage(out, cfg, px.source, names, km, px.skipped, n_keep=n_keep, k=k,
                         pca=pca_rec.data, elbow=curve, peak=self.peak(),
                         sample=self.sampler.sample, features=features, rows=px.rows,
                         space=space, positions=positions,
                         noise=self.record("cluster").get("noise")),
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

