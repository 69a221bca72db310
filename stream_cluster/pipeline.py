"""Drive the stages (scan, ingest, pca, embed, elbow, cluster, report) with resume and budget.

:func:`iter_run` yields :class:`ProgressEvent` objects and does no printing; :func:`run`
consumes them. Every stage records its progress in ``state.json`` at batch granularity after
its data is durable, so rerunning the same command after a kill continues where it stopped and
ends with the same labels as an uninterrupted run.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .budget import READ_ROWS, MemoryPlan, plan_memory
from .checkpoint import RunLock, RunState, load_arrays, save_arrays
from .config import RunConfig, fingerprint, format_bytes
from .decode import DECODE_MEMORY_CAP, decode_cost_bound
from .errors import BudgetError, InputError
from .ingest import ingest
from .kmeans import FeatureSource, KMeansResult, fit_kmeans
from .memprofile import MemorySampler
from .pca import StreamingPCA
from .runfolder import check_disk, check_inputs, check_settings, prepare_out_dir
from .scan import scan
from .selection import find_knee
from .store import RowStore, atomic_write_bytes

__all__ = ["STAGES", "ProgressEvent", "RunResult", "iter_run", "plan", "plan_folder", "run"]

logger = logging.getLogger(__name__)

STAGES = ("scan", "ingest", "pca", "embed", "elbow", "cluster", "report")
#: Images are decoded and fitted in one fixed pseudo-random order (not the sorted one) so that
#: every batch is a fair sample of the folder: incremental PCA and mini-batch k-means assume
#: exchangeable batches, and sorted folders put one category in each. Outputs are sorted by path.
ORDER_SEED = 20260101


#: Niceness of decode workers running beside the PCA: they take only the CPU its BLAS threads
#: leave idle (eigh, statistics, I/O), so the PCA, which decides the wall time, never waits for a
#: core. When the PCA waits for rows instead, nothing else runs and decoding gets both cores.
BACKGROUND_NICE = 19

#: Pixels are stored as uint8 and fitted as float32 in 0..1.
PIXEL_SCALE = np.float32(1.0 / 255.0)


def _read_scaled(pixels: RowStore, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` of the pixel store as float32 in 0..1, read READ_ROWS rows at a time.

    Filling the batch in slices spares a uint8 copy of the whole batch (146 MB at the seed size).
    """
    x = np.empty((hi - lo, pixels.row_size), dtype=np.float32)
    for s0 in range(lo, hi, READ_ROWS):
        s1 = min(s0 + READ_ROWS, hi)
        np.multiply(pixels.read(s0, s1), PIXEL_SCALE, out=x[s0 - lo : s1 - lo])
    return x


def processing_order(n_files: int) -> np.ndarray:
    """The fixed order in which the sorted files are ingested (a seeded permutation)."""
    return np.random.default_rng(ORDER_SEED).permutation(n_files)


#: Files and folders a run creates; ``fresh=True`` removes only these.
@dataclass(frozen=True)
class ProgressEvent:
    """One step of progress: ``done`` of ``total`` units in ``stage``, and memory right now."""

    stage: str
    done: int
    total: int
    unit: str
    rss_bytes: int
    budget: int
    skipped: int = 0
    message: str = ""


@dataclass
class RunResult:
    """What a finished run produced (all paths inside ``out_dir``)."""

    out_dir: Path
    n_images: int
    n_skipped: int
    n_components: int
    explained_variance: float
    k: int
    inertia: float
    cluster_sizes: list[int]
    elbow: dict[int, float] = field(default_factory=dict)
    peak_rss: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


def plan(
    config: RunConfig,
    n_images: int,
    decode_cap: int = DECODE_MEMORY_CAP,
    batch_size: int | None = None,
) -> MemoryPlan:
    """The memory plan for ``config`` on ``n_images`` images (raises BudgetError).

    ``decode_cap`` bounds each decode worker (default: any image); ``batch_size`` overrides the
    configured PCA batch (a resumed PCA keeps its own).
    """
    return plan_memory(
        config.mem_budget,
        n_images=n_images,
        width=config.width,
        height=config.height,
        n_components=config.n_components,
        solver=config.pca_solver,
        workers=config.workers,
        batch_size=config.batch_size if batch_size is None else batch_size,
        cpu_count=os.cpu_count() or 1,
        max_k=max(config.k_range[1], config.k or 2),
        decode_cap=decode_cap,
    )


def plan_folder(
    config: RunConfig,
    root: str | os.PathLike[str],
    files: list[str],
    batch_size: int | None = None,
) -> MemoryPlan:
    """The memory plan for ``config`` on these files, with decode workers sized to the folder.

    The plan for the worst image ``decode_image`` accepts is tried first; if it does not
    overlap decoding with the PCA (or does not fit), the files' headers are read (~15 us each)
    and the plan is made again for the largest decode any of them needs. The PCA batch is the
    same either way, so the results do not depend on it.
    """
    n = len(files)
    try:
        worst = plan(config, n, batch_size=batch_size)
        if worst.overlap:
            return worst
    except BudgetError:
        worst = None
    w, h = config.width, config.height
    cap = max((decode_cost_bound(os.path.join(root, rel), w, h) for rel in files), default=0)
    try:
        return plan(config, n, decode_cap=max(cap, 1), batch_size=batch_size)
    except BudgetError:
        if worst is not None:
            return worst
        raise


def run(config: RunConfig, *, fresh: bool = False) -> RunResult:
    """Run (or resume) the whole pipeline and return its result."""
    gen = iter_run(config, fresh=fresh)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            result: RunResult = stop.value
            return result


def _versions() -> dict[str, str]:
    import cv2
    import h5py
    import sklearn

    try:
        import pyvips

        vips = f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    except Exception:  # libvips missing: decode falls back to OpenCV only
        vips = "unavailable"
    return {
        "stream_cluster": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "h5py": h5py.__version__,
        "opencv": cv2.__version__,
        "libvips": vips,
    }


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    # Non-UTF-8 file names keep their original bytes (surrogateescape) so they map back to files.
    atomic_write_bytes(path, buf.getvalue().encode("utf-8", errors="surrogateescape"))


def iter_run(
    config: RunConfig, *, fresh: bool = False
) -> Generator[ProgressEvent, None, RunResult]:
    """Run the pipeline, yielding progress; returns a :class:`RunResult` (``StopIteration.value``).

    Everything that can be checked before heavy work is checked first: settings, input folder,
    image count against components and k, the memory plan and free disk space.
    """
    prepare_out_dir(config, fresh)
    out = config.out_dir
    csv_path = out / "memory.csv" if config.profile_memory else None
    with RunLock(out), MemorySampler(csv_path=csv_path) as sampler:
        runner = _Runner(config, out, sampler)
        result = yield from runner.run()
        return result


class _RowsFeed:
    """Rows committed to the pixel store so far; with a background ingest, also its events."""

    def __init__(
        self,
        store: RowStore,
        events: queue.Queue[ProgressEvent | BaseException | None] | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.background = events is not None
        self.finished = events is None

    def wait(self, need: int) -> Generator[ProgressEvent, None, int]:
        """Yield ingest events until ``need`` rows are committed or ingest ends; return rows."""
        while self.events is not None and not self.finished and len(self.store) < need:
            try:
                item = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is None:
                self.finished = True
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
        return len(self.store)


class _Runner:
    """State of one invocation; each stage is a method that yields progress events."""

    def __init__(self, config: RunConfig, out: Path, sampler: MemorySampler) -> None:
        self.config = config
        self.out = out
        self.sampler = sampler
        self.state = RunState(out / "state.json")
        self.stage_seconds: dict[str, float] = {}
        self.skipped: list[tuple[str, str]] = []
        self.scan_skipped: list[tuple[str, str]] = []
        self.knee_method = ""

    def event(
        self, stage: str, done: int, total: int, unit: str = "images", message: str = ""
    ) -> ProgressEvent:
        return ProgressEvent(
            stage,
            done,
            total,
            unit,
            self.sampler.current,
            self.config.mem_budget,
            len(self.skipped),
            message,
        )

    def _enter(self, stage: str) -> float:
        self.sampler.stage = stage
        return time.perf_counter()

    def _leave(self, stage: str, t0: float) -> None:
        self.sampler.sample()
        dt = time.perf_counter() - t0
        rec = self.state.stage(stage)
        self.stage_seconds[stage] = dt
        self.state.update(
            stage,
            seconds=float(rec.get("seconds", 0.0)) + dt,
            peak_rss=max(int(rec.get("peak_rss", 0)), self.sampler.stage_peaks.get(stage, 0)),
        )

    # -- the whole run ---------------------------------------------------------------------
    def run(self) -> Generator[ProgressEvent, None, RunResult]:
        cfg = self.config
        check_settings(self.state, cfg)
        t0 = self._enter("scan")
        found = scan(cfg.input_dir, follow_external_symlinks=cfg.follow_symlinks)
        from .scan import files_digest

        files = found.files
        digest = files_digest(files, found.root)
        check_inputs(self.state, self.out, files, digest)
        if not files:
            raise InputError(
                f"No images found in {cfg.input_dir} (looked recursively for .png .jpg .jpeg "
                f".bmp .tif .tiff .webp .gif; hidden files are ignored). "
                f"Point to a folder of images."
            )
        if len(files) < cfg.n_components:
            raise InputError(
                f"{cfg.input_dir} has {len(files)} images but --components is {cfg.n_components}: "
                f"PCA needs at least as many images as components. Use --components "
                f"{len(files)} or fewer, or add images."
            )
        if cfg.k is not None and cfg.k > len(files):
            raise InputError(
                f"--k {cfg.k} is larger than the number of images ({len(files)}). "
                f"Use a smaller --k."
            )
        mem_plan = self._plan(found.root, files)
        d = cfg.n_features
        check_disk(self.out, self._disk_need(len(files), mem_plan))
        if not self.state.stage("ingest"):
            atomic_write_bytes(self.out / "files.json", json.dumps(files).encode("utf-8"))
            self.state.update(
                "ingest",
                key=cfg.stage_key("ingest"),
                files_digest=digest,
                n_files=len(files),
                next_file=0,
                segments=0,
                skipped=[],
            )
        self.scan_skipped = [(str(a), str(b)) for a, b in found.skipped]
        self._leave("scan", t0)
        yield self.event(
            "scan",
            len(files),
            len(files),
            "files",
            f"{len(files)} image files; plan: {mem_plan.describe()}",
        )

        pixels = RowStore(self.out / "pixels", d, np.uint8)
        ingest_rec = self.state.stage("ingest")
        if not ingest_rec.get("done"):
            # Segments written after the last recorded one (a kill between the two) are redone.
            pixels.truncate_segments(int(ingest_rec.get("segments", 0)))
        ordered = [files[i] for i in processing_order(len(files))]
        if mem_plan.overlap and not self.state.stage("ingest").get("done"):
            model = yield from self._ingest_and_pca(found.root, ordered, pixels, mem_plan)
        else:
            yield from self._ingest(found.root, ordered, pixels, mem_plan)
            self._check_ingested(len(pixels), len(files))
            model = yield from self._pca(pixels, mem_plan, _RowsFeed(pixels), len(files))
        n = len(pixels)
        features = yield from self._embed(pixels, model, mem_plan)
        del model
        source = self._feature_source(features, mem_plan)
        elbow, knee = yield from self._elbow(source)
        k = cfg.k if cfg.k is not None else (knee or cfg.k_range[0])
        km = yield from self._cluster(source, k)
        yield from self._report(pixels, km, elbow, knee, k, mem_plan)
        return self._result(n, km, elbow, k)

    def _plan(self, root: Path, files: list[str]) -> MemoryPlan:
        mem_plan = plan_folder(self.config, root, files)
        rec = self.state.stage("pca")
        # A PCA in progress keeps its batch size (the result depends on it) if it still fits.
        if rec and not rec.get("done") and rec.get("batch") and rec["batch"] != mem_plan.pca_batch:
            try:
                mem_plan = plan_folder(self.config, root, files, batch_size=int(rec["batch"]))
            except BudgetError:
                logger.warning("PCA batch %s no longer fits the budget; PCA restarts", rec["batch"])
                self.state.reset(["pca", "embed", "elbow", "cluster", "report"])
                (self.out / "pca-checkpoint.h5").unlink(missing_ok=True)
        return mem_plan

    def _disk_need(self, n_files: int, mem_plan: MemoryPlan) -> int:
        cfg = self.config
        done_rows = 0
        if (self.out / "pixels").exists():
            done_rows = sum(p.stat().st_size for p in (self.out / "pixels").glob("seg-*.h5"))
        pixels = max(0, n_files * cfg.n_features - done_rows)
        model = (
            2
            * cfg.n_components
            * cfg.n_features
            * 4
            * (0 if self.state.stage("pca").get("done") else 1)
        )
        return int(pixels + model + n_files * cfg.n_components * 4 + 16 * 2**20)

    # -- stages ------------------------------------------------------------------------------
    def _check_ingested(self, n: int, n_files: int) -> None:
        cfg = self.config
        if n < cfg.n_components:
            raise InputError(
                f"Only {n} of {n_files} images could be decoded ({len(self.skipped)} skipped, "
                f"see {self.out / 'skipped.csv'}), fewer than --components {cfg.n_components}. "
                f"Use --components {max(n, 1)} or fewer."
            )
        if cfg.strict and self.skipped:
            raise InputError(
                f"--strict: {len(self.skipped)} image(s) could not be used, e.g. "
                f"{self.skipped[0][0]!r}: {self.skipped[0][1]}. See {self.out / 'skipped.csv'}."
            )

    def _ingest_and_pca(
        self, root: Path, files: list[str], pixels: RowStore, mem_plan: MemoryPlan
    ) -> Generator[ProgressEvent, None, StreamingPCA]:
        """Decode in a background thread (and its worker processes) while PCA fits batches.

        The PCA only reads rows whose segment is committed, in the same fixed batches as the
        sequential path, so the model is identical either way and each side resumes on its own.
        """
        t0 = self._enter("ingest+pca")
        events: queue.Queue[ProgressEvent | BaseException | None] = queue.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                for ev in self._ingest(
                    root, files, pixels, mem_plan, stop=stop, account=False, nice=BACKGROUND_NICE
                ):
                    events.put(ev)
            except BaseException as exc:  # handed to the main thread, which raises it
                events.put(exc)
            finally:
                events.put(None)

        thread = threading.Thread(target=produce, name="ingest", daemon=True)
        thread.start()
        try:
            model = yield from self._pca(pixels, mem_plan, _RowsFeed(pixels, events), len(files))
        finally:
            stop.set()
            thread.join()
        self._leave("ingest+pca", t0)
        return model

    def _ingest(
        self,
        root: Path,
        files: list[str],
        pixels: RowStore,
        mem_plan: MemoryPlan,
        *,
        stop: threading.Event | None = None,
        account: bool = True,
        nice: int = 0,
    ) -> Generator[ProgressEvent, None, None]:
        cfg = self.config
        rec = self.state.stage("ingest")
        prior = [(str(a), str(b)) for a, b in rec.get("skipped", [])]
        self.skipped = [*self.scan_skipped, *prior]
        if rec.get("done"):
            return
        t0 = self._enter("ingest") if account else time.perf_counter()
        pixels.truncate_segments(int(rec.get("segments", 0)))
        start = int(rec.get("next_file", 0))
        done = start
        total = len(files)
        yield self.event("ingest", done, total)
        for prog in ingest(
            root,
            files,
            pixels,
            width=cfg.width,
            height=cfg.height,
            workers=mem_plan.workers,
            segment_rows=mem_plan.segment_rows,
            start_file=start,
            skipped=prior,
            stderr_log=self.out / "decode.log",
            memory_cap=mem_plan.decode_cap,
            nice=nice,
        ):
            self.state.update(
                "ingest",
                next_file=prog.next_file,
                segments=prog.n_segments,
                skipped=[list(s) for s in prog.skipped],
            )
            self.skipped = [*self.scan_skipped, *prog.skipped]
            done = prog.next_file
            yield self.event("ingest", done, total)
            if stop is not None and stop.is_set():
                return
        self._write_skipped()
        self.state.update("ingest", done=True, rows=len(pixels))
        if account:
            self._leave("ingest", t0)
        else:
            self.state.update("ingest", seconds=time.perf_counter() - t0)

    def _write_skipped(self) -> None:
        _write_csv(self.out / "skipped.csv", ["path", "reason"], [[p, r] for p, r in self.skipped])

    def _pca(
        self, pixels: RowStore, mem_plan: MemoryPlan, feed: _RowsFeed, n_files: int
    ) -> Generator[ProgressEvent, None, StreamingPCA]:
        cfg = self.config
        rec = self.state.stage("pca")
        final = self.out / "pca.h5"
        if rec.get("done") and final.exists():
            arrays, _ = load_arrays(final)
            return StreamingPCA.from_state(arrays)
        t0 = self._enter("pca") if feed.finished else time.perf_counter()
        n = len(pixels) if feed.finished else n_files  # an estimate until ingest ends
        b = mem_plan.pca_batch
        ckpt = self.out / "pca-checkpoint.h5"
        model: StreamingPCA | None = None
        cursor = 0
        if rec.get("batch") == b and ckpt.exists():
            arrays, meta = load_arrays(ckpt)
            if meta.get("batch") == b and meta.get("key") == cfg.stage_key("pca"):
                model = StreamingPCA.from_state(arrays)
                cursor = int(meta["cursor"])
                logger.info("resuming PCA at image %d of %d", cursor, n)
            del arrays  # from_state copied them: holding both would cost another k*d floats
        if model is None:
            model = StreamingPCA(cfg.n_components, solver=cfg.pca_solver, copy=False)
        self.state.update("pca", key=cfg.stage_key("pca"), batch=b, done=False)
        last_save = time.perf_counter()
        saved_at = cursor
        yield self.event("pca", cursor, n)
        # Batches sit at fixed offsets so a resumed run replays exactly the same partial_fits.
        # Only the first batch must hold >= n_components rows (b >= k and n >= k ensure it).
        lo = cursor
        while True:
            avail = yield from feed.wait(lo + b)
            if feed.finished:
                n = avail
                self._check_ingested(n, n_files)
            if lo >= avail:
                break
            hi = min(lo + b, avail)
            x = _read_scaled(pixels, lo, hi)
            model.partial_fit(x)
            del x
            cursor = lo = hi
            now = time.perf_counter()
            if (feed.finished and cursor == n) or now - last_save >= cfg.checkpoint_seconds:
                save_arrays(
                    ckpt,
                    model.get_state(),
                    {"cursor": cursor, "batch": b, "key": cfg.stage_key("pca")},
                )
                self.state.update("pca", cursor=cursor)
                last_save = time.perf_counter()
                saved_at = cursor
            yield self.event("pca", cursor, n)
        if saved_at != cursor or not ckpt.exists():  # ingest ended after the last batch's fit
            save_arrays(
                ckpt, model.get_state(), {"cursor": cursor, "batch": b, "key": cfg.stage_key("pca")}
            )
        evr = np.asarray(model.explained_variance_ratio_, dtype=np.float64)
        n_keep = len(evr)
        if cfg.variance is not None:
            reach = np.nonzero(np.cumsum(evr) >= cfg.variance - 1e-12)[0]
            if len(reach):
                n_keep = int(reach[0]) + 1
            else:
                logger.warning(
                    "%d components explain %.3f of the variance, below --variance %.3f; keeping "
                    "all. Raise --components to reach the target.",
                    len(evr),
                    float(np.sum(evr)),
                    cfg.variance,
                )
        os.replace(ckpt, final)
        self.state.update(
            "pca",
            done=True,
            n_keep=n_keep,
            explained_variance=float(np.sum(evr[:n_keep])),
            explained_variance_ratio=[float(v) for v in evr],
        )
        if feed.background:
            self.state.update("pca", seconds=time.perf_counter() - t0)
        else:
            self._leave("pca", t0)
        return model

    def _embed(
        self, pixels: RowStore, model: StreamingPCA, mem_plan: MemoryPlan
    ) -> Generator[ProgressEvent, None, RowStore]:
        n_keep = int(self.state.stage("pca")["n_keep"])
        features = RowStore(self.out / "features", n_keep, np.float32)
        rec = self.state.stage("embed")
        n = len(pixels)
        if rec.get("done") and len(features) == n:
            return features
        t0 = self._enter("embed")
        if rec.get("key") != self.state.stage("pca").get("key"):
            features.truncate_segments(0)
            self.state.update("embed", key=self.state.stage("pca").get("key"), segments=0)
            rec = self.state.stage("embed")
        features.truncate_segments(int(rec.get("segments", 0)))
        b = mem_plan.embed_batch
        names = pixels.names()
        yield self.event("embed", len(features), n)
        for lo in range(len(features), n, b):
            # transform scales the uint8 rows block by block: no float32 copy of the batch.
            x = pixels.read(lo, lo + b)
            z = model.transform(x, scale=PIXEL_SCALE)[:, :n_keep]
            del x
            features.append(np.ascontiguousarray(z, dtype=np.float32), names[lo : lo + len(z)])
            self.state.update("embed", segments=features.n_segments)
            yield self.event("embed", len(features), n)
        self.state.update("embed", done=True)
        self._leave("embed", t0)
        return features

    def _feature_source(self, features: RowStore, mem_plan: MemoryPlan) -> FeatureSource:
        # Features that fit the budget are read once and clustered in memory (fast, exact).
        if mem_plan.features_in_memory:
            return FeatureSource(features.read(0, len(features)), batch_size=4096)
        return FeatureSource(features, batch_size=max(mem_plan.embed_batch, 1024))

    def _elbow(
        self, source: FeatureSource
    ) -> Generator[ProgressEvent, None, tuple[dict[int, float], int | None]]:
        cfg = self.config
        if not cfg.do_elbow:
            return {}, None
        lo, hi = cfg.k_range
        hi = min(hi, len(source) - 1)
        ks = list(range(lo, hi + 1))
        rec = self.state.stage("elbow")
        if rec.get("key") != cfg.stage_key("elbow"):
            self.state.update("elbow", key=cfg.stage_key("elbow"), inertias={}, done=False)
            rec = self.state.stage("elbow")
        inertias = {int(k): float(v) for k, v in rec.get("inertias", {}).items()}
        if len(ks) < 3:
            logger.warning(
                "only %d values of k fit %d images; no elbow sweep", len(ks), len(source)
            )
            return inertias, None
        if not rec.get("done"):
            t0 = self._enter("elbow")
            yield self.event("elbow", len(inertias), len(ks), "k")
            for k in ks:
                if k in inertias:
                    continue
                inertias[k] = fit_kmeans(source, k, seed=cfg.seed).inertia
                self.state.update("elbow", inertias={str(a): v for a, v in inertias.items()})
                yield self.event("elbow", len(inertias), len(ks), "k", f"k={k}")
            self.state.update("elbow", done=True)
            self._leave("elbow", t0)
        curve = [inertias[k] for k in ks]
        knee = find_knee(ks, curve)
        self.knee_method = knee.method
        if knee.k is None and cfg.k is None:
            logger.warning(
                "no clear knee in the inertia curve; using k=%d (set --k to choose)", cfg.k_range[0]
            )
        return inertias, knee.k

    def _cluster(
        self, source: FeatureSource, k: int
    ) -> Generator[ProgressEvent, None, KMeansResult]:
        cfg = self.config
        rec = self.state.stage("cluster")
        path = self.out / "kmeans.h5"
        key = {**cfg.stage_key("cluster"), "k_used": k}
        if rec.get("done") and rec.get("key") == key and path.exists():
            arrays, meta = load_arrays(path, required=("centers", "labels", "sq_distances"))
            return KMeansResult(
                arrays["centers"], arrays["labels"], arrays["sq_distances"], float(meta["inertia"])
            )
        t0 = self._enter("cluster")
        yield self.event("cluster", 0, 1, "k", f"k={k}")
        km = fit_kmeans(source, k, seed=cfg.seed)
        save_arrays(
            path,
            {"centers": km.centers, "labels": km.labels, "sq_distances": km.sq_distances},
            {"k": k, "inertia": km.inertia, "seed": cfg.seed},
        )
        self.state.update("cluster", key=key, done=True, k=k, inertia=km.inertia)
        self._leave("cluster", t0)
        yield self.event("cluster", 1, 1, "k", f"k={k}")
        return km

    def _report(
        self,
        pixels: RowStore,
        km: KMeansResult,
        elbow: dict[int, float],
        knee: int | None,
        k: int,
        mem_plan: MemoryPlan,
    ) -> Generator[ProgressEvent, None, None]:
        from . import report

        cfg = self.config
        t0 = self._enter("report")
        names = [os.fsdecode(b) for b in pixels.names()]
        dist = np.sqrt(km.sq_distances)
        by_path = sorted(range(len(names)), key=lambda i: os.fsencode(names[i]))
        _write_csv(
            self.out / "labels.csv",
            ["path", "cluster", "distance"],
            [[names[i], int(km.labels[i]), f"{dist[i]:.6g}"] for i in by_path],
        )
        self._write_skipped()
        pca_rec = self.state.stage("pca")
        evr = np.asarray(pca_rec["explained_variance_ratio"])
        n_keep = int(pca_rec["n_keep"])
        report.plot_variance(evr, self.out / "variance.png", n_kept=n_keep, target=cfg.variance)
        images = {"Cumulative explained variance": "variance.png"}
        if elbow and len(elbow) >= 3:
            ks = sorted(elbow)
            report.plot_elbow(
                ks,
                [elbow[x] for x in ks],
                self.out / "elbow.png",
                chosen_k=k if cfg.k is not None else knee,
                method=self.knee_method,
            )
            images["Elbow: inertia vs k"] = "elbow.png"
        montage_dir = self.out / "montages"
        montage_dir.mkdir(exist_ok=True)
        clusters = []
        sizes = np.bincount(km.labels, minlength=k)
        for c in range(k):
            members = np.nonzero(km.labels == c)[0]
            order = members[np.argsort(km.sq_distances[members], kind="stable")]
            shown = order[: cfg.montage_images]
            rel = f"montages/cluster-{c:03d}.png"
            if len(shown):
                rows = pixels.read_rows(shown.tolist())
                imgs = [r.reshape(cfg.height, cfg.width) for r in rows]
                report.write_montage(
                    imgs,
                    self.out / rel,
                    title=f"cluster {c} - {sizes[c]} images "
                    f"(showing {len(shown)} nearest the centre)",
                    captions=[os.path.basename(names[i]) for i in shown],
                )
            clusters.append(
                report.ClusterSummary(
                    cluster=c, size=int(sizes[c]), montage=rel, examples=[names[i] for i in shown]
                )
            )
            yield self.event("report", c + 1, k, "clusters")
        self._leave("report", t0)
        ev = float(pca_rec["explained_variance"])
        summary = {
            "input folder": os.fsdecode(cfg.input_dir),
            "images clustered": str(len(names)),
            "images skipped": str(len(self.skipped)),
            "size": f"{cfg.width}x{cfg.height}",
            "PCA components": f"{n_keep} (explained variance {ev:.4f})",
            "k": f"{k}" + (" (chosen at the elbow)" if cfg.k is None and knee else ""),
            "inertia (sum of squared distances)": f"{km.inertia:.6g}",
            "memory budget": format_bytes(cfg.mem_budget),
            "peak RSS (process tree)": format_bytes(self._peak()),
        }
        if cfg.profile_memory and (self.out / "memory.csv").exists():
            self.sampler.sample()
            report.plot_memory_timeline(
                self.out / "memory.csv", self.out / "memory.png", budget_bytes=cfg.mem_budget
            )
            images["Memory timeline (RSS of the process tree)"] = "memory.png"
        report.write_index_html(
            self.out / "index.html",
            title="stream-cluster report",
            summary=summary,
            clusters=clusters,
            skipped=self.skipped,
            images=images,
        )
        self._write_run_json(km, k, knee, elbow, mem_plan, len(names))

    def _peak(self) -> int:
        stages = self.state.data["stages"]
        return max([self.sampler.peak, *[int(r.get("peak_rss", 0)) for r in stages.values()]])

    def _write_run_json(
        self,
        km: KMeansResult,
        k: int,
        knee: int | None,
        elbow: dict[int, float],
        mem_plan: MemoryPlan,
        n: int,
    ) -> None:
        stages = self.state.data["stages"]
        pca_rec = stages.get("pca", {})
        doc = {
            "settings": self.config.as_dict(),
            "fingerprint": fingerprint(self.config.as_dict()),
            "versions": _versions(),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "plan": mem_plan.as_dict(),
            # With decoding overlapped, "ingest+pca" holds the shared peak; "ingest" and "pca"
            # then give each side's own wall time.
            "stages": {
                s: {
                    "seconds": round(float(stages.get(s, {}).get("seconds", 0.0)), 3),
                    "peak_rss_bytes": int(stages.get(s, {}).get("peak_rss", 0)),
                }
                for s in (*STAGES[:3], "ingest+pca", *STAGES[3:])
                if s != "ingest+pca" or s in stages
            },
            "peak_rss_bytes": self._peak(),
            "results": {
                "n_images": n,
                "n_skipped": len(self.skipped),
                "n_components": int(pca_rec.get("n_keep", 0)),
                "explained_variance": float(pca_rec.get("explained_variance", 0.0)),
                "explained_variance_ratio": pca_rec.get("explained_variance_ratio", []),
                "k": k,
                "k_at_knee": knee,
                "inertia": km.inertia,
                "cluster_sizes": [int(x) for x in np.bincount(km.labels, minlength=k)],
                "elbow_inertias": {str(a): v for a, v in sorted(elbow.items())},
            },
        }
        atomic_write_bytes(self.out / "run.json", json.dumps(doc, indent=1).encode())
        self.state.update("report", done=True)

    def _result(self, n: int, km: KMeansResult, elbow: dict[int, float], k: int) -> RunResult:
        pca_rec = self.state.stage("pca")
        stages = self.state.data["stages"]
        return RunResult(
            out_dir=self.out,
            n_images=n,
            n_skipped=len(self.skipped),
            n_components=int(pca_rec["n_keep"]),
            explained_variance=float(pca_rec["explained_variance"]),
            k=k,
            inertia=km.inertia,
            cluster_sizes=[int(x) for x in np.bincount(km.labels, minlength=k)],
            elbow=dict(elbow),
            peak_rss=self._peak(),
            stage_seconds={s: float(stages.get(s, {}).get("seconds", 0.0)) for s in STAGES},
        )
