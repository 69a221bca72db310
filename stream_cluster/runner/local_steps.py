"""The run in this process: ingest on local decode workers (overlapped with the PCA when the
plan holds both), the PCA over the pixel store or the ``--keep-pixels never`` pipe, and the
embed here."""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import Any

import numpy as np

from stream_cluster.errors import ConfigError
from stream_cluster.images.features import FeatureExtractor
from stream_cluster.images.scan import ScanResult
from stream_cluster.memory.budget import MemoryPlan
from stream_cluster.memory.planner import disk_need
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.report.results import write_skipped
from stream_cluster.runner import runfolder
from stream_cluster.runner.sequence import STAGES
from stream_cluster.runner.steps import Pixels, StageRunner, Steps
from stream_cluster.stages.base import Progress, ProgressEvent, in_background, timed
from stream_cluster.stages.embed import embed, feature_store
from stream_cluster.stages.fit_pca import RowsFeed, fit_pca, load_pca, resume_cursor
from stream_cluster.stages.ingest import run_ingest, start_ingest
from stream_cluster.stages.keep_pixels_never import PixelPipe, SourcePixels, rewind_ingest
from stream_cluster.stages.update import active_rows, ingest_order
from stream_cluster.storage.rows import RowSource
from stream_cluster.storage.store import RowStore

__all__ = ["BACKGROUND_NICE", "LocalSteps"]

logger = logging.getLogger(__name__)

BACKGROUND_NICE = 19  #: decode workers beside the PCA take only the CPU its BLAS leaves idle


class LocalSteps(Steps):
    """Pixels, PCA and features made in this process and its decode workers.

    With an ``extractor`` (``--features`` other than pixels), the ingest also writes each
    image's feature row to a second store (``descriptors/``, float32), which the PCA and the
    embed read instead of the pixels; the pixel store stays for the report.
    """

    def __init__(self, extractor: FeatureExtractor | None = None) -> None:
        self.extractor = extractor
        self.descriptors: RowStore | None = None

    def begin(self, run: StageRunner) -> None:
        if run.config.keep_pixels == "never" and run.update:
            raise ConfigError(
                "--update grows a run from its pixel store; this run keeps none "
                "(--keep-pixels never). Rerun with --fresh, or start it with --keep-pixels always."
            )

    def prepare(
        self, run: StageRunner, found: ScanResult, digest: str, mem_plan: MemoryPlan
    ) -> tuple[MemoryPlan, str]:
        cfg, out, files = run.config, run.out, found.files
        pca_rec = run.record("pca")
        if pca_rec.data and not pca_rec.done and pca_rec.get("batch") != mem_plan.pca_batch:
            logger.warning("the PCA batch no longer fits the budget; the PCA restarts")
            run.state.reset(list(STAGES[2:]))
            (out / "pca-checkpoint.h5").unlink(missing_ok=True)
        ingest_rec = run.record("ingest")
        runfolder.check_disk(out, disk_need(out, cfg, len(files), run.record("pca").done,
                                            int(ingest_rec.get("next_file", 0)), recheck=True))
        start_ingest(ingest_rec, out, found.root, files, digest, cfg.stage_key("ingest"))
        return mem_plan, ""

    def pixels(
        self, run: StageRunner, found: ScanResult, mem_plan: MemoryPlan,
        skipped: list[tuple[str, str]],
    ) -> Generator[ProgressEvent, None, Pixels]:
        cfg, out, files, scan_skipped = run.config, run.out, found.files, skipped
        ingest_rec = run.record("ingest")
        pixels: RowStore | PixelPipe
        ordered = ingest_order(out, files)
        never = cfg.keep_pixels == "never"
        if never:  # rows go from the decoders to the PCA in memory; only names are kept
            pixels = PixelPipe(out / "names", cfg.n_features, capacity=mem_plan.segment_rows)
            pca_at = resume_cursor(run.record("pca"), out, batch=mem_plan.pca_batch,
                                   key=cfg.stage_key("pca"))  # fmt: skip
            if not run.record("pca").done:
                rewind_ingest(pixels, ingest_rec, pca_at, ordered)
        else:
            pixels = RowStore(out / "pixels", cfg.n_features, np.uint8, cfg.store_compression)
        if self.extractor is not None:
            dim = self.extractor.dim(cfg.width, cfg.height)
            self.descriptors = RowStore(out / "descriptors", dim, np.float32)
        fitted: RowStore | PixelPipe = pixels if self.descriptors is None else self.descriptors
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
                extractor=self.extractor, features=self.descriptors,
            )  # fmt: skip
            write_skipped(out, [*scan_skipped, *decoded])
            return decoded

        def check_rows(n: int) -> None:
            runfolder.check_decoded(cfg, n, len(files), [*scan_skipped, *decoded])

        def pca_stage(feed: RowsFeed) -> Generator[Progress, None, StreamingPCA]:
            return fit_pca(
                run.record("pca"), fitted, feed, out_dir=out, key=cfg.stage_key("pca"),
                n_components=cfg.n_components, solver=cfg.pca_solver, batch=mem_plan.pca_batch,
                expected_rows=len(files), variance=cfg.variance,
                checkpoint_seconds=cfg.checkpoint_seconds, check_rows=check_rows,
            )  # fmt: skip

        model: StreamingPCA | None = None
        if mem_plan.overlap and not ingest_rec.done:
            run.sampler.stage = "ingest+pca"
            t0 = time.perf_counter()

            with in_background(timed(ingest_rec, ingest_stage(BACKGROUND_NICE))) as bg:
                try:
                    model = yield from run.stage("pca", pca_stage(RowsFeed(fitted, bg)), False)
                finally:
                    if isinstance(pixels, PixelPipe):
                        pixels.close()  # a decoder waiting on the pipe stops
            run.leave("ingest+pca", t0)
        else:
            yield from run.stage("ingest", ingest_stage(0))
            check_rows(len(pixels))
            if not (run.record("pca").done and (out / "pca.h5").exists()):
                model = yield from run.stage("pca", pca_stage(RowsFeed(fitted)))
        run.skipped = len(scan_skipped) + len(decoded)

        all_names = pixels.names()  # read once: embed, labels and the report use them
        rows = active_rows(all_names, files)  # after updates: each current file's row
        source: RowSource = pixels if isinstance(pixels, RowStore) else SourcePixels(
            found.root, all_names, cfg.width, cfg.height, workers=mem_plan.workers,
            memory_cap=mem_plan.decode_cap, stderr_log=out / "decode.log",
        )  # fmt: skip
        closing = [source] if isinstance(source, SourcePixels) else []
        return Pixels(source, all_names, rows, [*scan_skipped, *decoded], model, closing)

    def embed(
        self, run: StageRunner, px: Pixels, mem_plan: MemoryPlan, n_keep: int, pca_key: Any
    ) -> Generator[Progress, None, RowStore]:
        out = run.out
        assert px.rows is not None
        source: RowSource = px.source if self.descriptors is None else self.descriptors
        features = yield from embed(
            run.record("embed"), source, feature_store(out, n_keep),
            lambda: px.model or load_pca(out / "pca.h5"), pca_key=pca_key,
            batch=mem_plan.embed_batch, rows=px.rows, names=px.names,
        )  # fmt: skip
        px.model = None
        if isinstance(px.source, SourcePixels):
            px.source.close()  # no decode workers beside k-means
        return features
