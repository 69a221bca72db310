"""stream-cluster: cluster large folders of images on a laptop, under a memory budget.

Images stream in batches into an on-disk HDF5 store, an exact incremental PCA and k-means;
peak RSS of the whole process tree stays under the budget; interrupted runs resume.

>>> from stream_cluster import RunConfig, run                    # doctest: +SKIP
>>> result = run(RunConfig("photos/", "runs/photos", mem_budget=2 * 2**30, k=10))  # doctest: +SKIP
"""

from __future__ import annotations

from stream_cluster._version import __version__  # noqa: E402
from stream_cluster.config import RunConfig, parse_mem, parse_size  # noqa: E402
from stream_cluster.errors import (  # noqa: E402
    BudgetError,
    CheckpointMismatchError,
    ConfigError,
    DecodeError,
    DiskFullError,
    InputError,
    RunLockedError,
    StoreError,
    StreamClusterError,
)

_LAZY = {"ProgressEvent", "RunResult", "iter_run", "plan", "run"}
_LAZY_USE = {"FittedModel", "load_model", "similar"}


def __getattr__(name: str) -> object:
    # The pipeline pulls in scikit-learn, h5py, OpenCV and pyvips; import it on first use so
    # that `import stream_cluster.config` (and the CLI's --help) stays light.
    if name in _LAZY:
        from stream_cluster.runner import pipeline

        return getattr(pipeline, name)
    if name == "assign":
        from stream_cluster.stages.assign import assign

        return assign
    if name in _LAZY_USE:
        from stream_cluster.model import fitted

        return getattr(fitted, name)
    raise AttributeError(f"module 'stream_cluster' has no attribute {name!r}")


__all__ = [
    "BudgetError",
    "CheckpointMismatchError",
    "ConfigError",
    "DecodeError",
    "DiskFullError",
    "FittedModel",
    "InputError",
    "ProgressEvent",
    "RunConfig",
    "RunLockedError",
    "RunResult",
    "StoreError",
    "StreamClusterError",
    "__version__",
    "assign",
    "iter_run",
    "load_model",
    "parse_mem",
    "parse_size",
    "plan",
    "run",
    "similar",
]
