"""One benchmark row in its own process: run a Python pipeline, time its stages, save its answer.

Invoked by ``benchmarks.run`` as ``python -m benchmarks.worker --pipeline NAME ...`` (the Dask
pipelines with the benchmark venv's python). Writes into ``--out``:

- ``progress.json``: stages begun and ended (epoch seconds), rewritten atomically at every
  change, so a row that is killed still tells how far it got;
- ``result.json``: status, explained variance, inertia, versions, BLAS;
- ``labels.npy``: one int label per image in corpus order (no pickle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import metrics
from benchmarks.corpus import image_shape

__all__ = ["Context", "PipelineOutput", "StageLog", "main", "module_versions", "write_json"]

VERSION_MODULES = (
    "numpy", "scipy", "sklearn", "cv2", "h5py", "dask", "distributed", "dask_ml", "pandas",
    "numba", "threadpoolctl", "psutil",
)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + replace), so readers never see half a file."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=1, default=_json_default), encoding="utf-8")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def module_versions() -> dict[str, str]:
    """Versions of the numeric modules this process has imported, plus Python's."""
    out = {"python": platform.python_version(), "executable": sys.executable}
    for name in VERSION_MODULES:
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
    return out


class StageLog:
    """Records named stages (start/end epoch seconds) into ``progress.json`` as they happen."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.stages: list[dict[str, Any]] = []
        self.current: str | None = None
        self._flush()

    def _flush(self) -> None:
        write_json(
            self.path, {"pid": os.getpid(), "current": self.current, "stages": self.stages}
        )

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed block as stage ``name``; an exception leaves it open (unfinished)."""
        rec: dict[str, Any] = {"name": name, "start": time.time(), "end": None}
        self.stages.append(rec)
        self.current = name
        self._flush()
        yield
        rec["end"] = time.time()
        self.current = None
        self._flush()


@dataclass
class Context:
    """What a pipeline gets: the images, the settings and the stage timer."""

    corpus: Path
    rel_paths: list[str]
    shape: tuple[int, int]
    components: int
    k: int
    seed: int
    stage: Callable[[str], Any]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineOutput:
    """What a pipeline returns: features (n, d), labels (n,), centres (k, d), its own EV."""

    features: np.ndarray
    labels: np.ndarray
    centers: np.ndarray
    explained_variance: float | None
    extras: dict[str, Any] = field(default_factory=dict)


def _pipelines() -> dict[str, Callable[[Context], PipelineOutput]]:
    # Imported lazily: the Dask module only imports in the benchmark venv.
    def sklearn_inmem(ctx: Context) -> PipelineOutput:
        from benchmarks import pipe_sklearn

        return pipe_sklearn.run(ctx)

    def ipca_loop(ctx: Context) -> PipelineOutput:
        from benchmarks import pipe_ipca

        return pipe_ipca.run(ctx)

    def dask_seed(ctx: Context) -> PipelineOutput:
        from benchmarks import pipe_dask

        return pipe_dask.run_seed(ctx)

    def dask_chunked(ctx: Context) -> PipelineOutput:
        from benchmarks import pipe_dask

        return pipe_dask.run_chunked(ctx)

    return {
        "sklearn-inmem": sklearn_inmem,
        "ipca-loop": ipca_loop,
        "dask-seed": dask_seed,
        "dask-chunked": dask_chunked,
    }


def main(argv: list[str] | None = None) -> int:
    """Run one pipeline on the first-N list in ``--paths-file``; exit 0 on success, 1 on error."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    ap.add_argument("--pipeline", required=True, choices=sorted(_pipelines()))
    ap.add_argument("--corpus", required=True, type=Path)
    ap.add_argument("--paths-file", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--components", type=int, default=800)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--total-var", type=float, default=0.0)
    ap.add_argument("--options", default="{}", help="JSON dict of pipeline options")
    args = ap.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    log = StageLog(args.out / "progress.json")
    rel_paths = args.paths_file.read_text(encoding="utf-8").splitlines()
    result: dict[str, Any] = {"pipeline": args.pipeline, "n_images": len(rel_paths)}
    try:
        shape = image_shape(args.corpus, rel_paths)
        ctx = Context(
            corpus=args.corpus, rel_paths=rel_paths, shape=shape, components=args.components,
            k=args.k, seed=args.seed, stage=log.stage, options=json.loads(args.options),
        )
        out = _pipelines()[args.pipeline](ctx)
        t_done = time.time()
        feats = np.asarray(out.features)
        labels = np.asarray(out.labels).astype(np.int32)
        np.save(args.out / "labels.npy", labels)
        inert = metrics.inertia(feats, labels, out.centers)
        tss = metrics.total_sum_of_squares(feats)
        result.update(
            status="ok",
            n_features=shape[0] * shape[1],
            explained_variance=out.explained_variance,
            ev_check=metrics.ev_check(feats, args.total_var),
            inertia=inert,
            inertia_frac=inert / tss if tss > 0 else None,
            n_clusters_found=int(np.unique(labels).size),
            pipeline_end=t_done,
            **out.extras,
        )
    except BaseException as exc:  # noqa: BLE001 - MemoryError and friends are results here
        result.update(
            status="error",
            error_type=type(exc).__name__,
            error=str(exc)[:2000],
            traceback=traceback.format_exc()[-4000:],
            stage_reached=log.current,
        )
    try:
        from threadpoolctl import threadpool_info

        result["threadpools"] = threadpool_info()
    except ImportError:
        result["threadpools"] = []
    result["versions"] = module_versions()
    write_json(args.out / "result.json", result)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
