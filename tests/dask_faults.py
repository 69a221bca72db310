"""Faults for the Dask tests, installed in the worker processes with ``Client.run``.

:func:`arm` wraps one function of the worker-side code so that the first call, on whichever
worker makes it, kills that worker process with SIGKILL in the middle of its task (a marker file
makes it happen once across all workers and restarts). :func:`disarm` restores it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

import stream_cluster.stages.shard_tasks as tasks
from stream_cluster.pca.streaming import StreamingPCA

#: What can be made to kill its worker: a name and (owner, attribute) to wrap.
TARGETS: dict[str, tuple[Any, str]] = {
    "ingest": (tasks, "decode_many"),
    "fit": (StreamingPCA, "partial_fit"),
    "merge": (StreamingPCA, "merge"),
}
_ORIGINAL: dict[str, Callable[..., Any]] = {}


def _die_once(marker: str) -> None:
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def arm(target: str, marker: str) -> bool:
    """Make the next call of ``target`` in any worker kill that worker (once, via ``marker``)."""
    owner, attr = TARGETS[target]
    original = _ORIGINAL.setdefault(target, getattr(owner, attr))

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _die_once(marker)
        return original(*args, **kwargs)

    setattr(owner, attr, wrapper)
    return True


def disarm(target: str) -> bool:
    """Put back what :func:`arm` wrapped (in this worker process)."""
    if target in _ORIGINAL:
        owner, attr = TARGETS[target]
        setattr(owner, attr, _ORIGINAL.pop(target))
    return True
