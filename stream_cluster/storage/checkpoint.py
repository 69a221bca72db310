"""Atomic checkpoints without pickle: arrays in HDF5, progress in JSON, and a run-folder lock.

Every write goes to ``*.partial``, is fsynced, then renamed over the old file, so a kill at any
moment leaves the previous checkpoint intact. Loading accepts only plain numeric (or
fixed-length byte-string) arrays with
the expected names; anything else (a tampered or foreign file) raises StoreError.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from stream_cluster.errors import RunLockedError, StoreError
from stream_cluster.storage.atomic import atomic_write_bytes, write_h5_atomically

__all__ = ["RunLock", "RunState", "load_arrays", "open_arrays", "save_arrays"]

logger = logging.getLogger(__name__)

_FORMAT = "stream-cluster-arrays/1"


def open_h5(path: Path, unreadable: Callable[[Exception], str]) -> h5py.File:
    """Open an HDF5 file to read, or raise :class:`StoreError` with ``unreadable(error)``."""
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise StoreError(unreadable(exc)) from exc


def save_arrays(path: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Save numeric arrays and JSON metadata to ``path`` atomically.

    Memory: no copies beyond what h5py needs to write each array.
    """
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    for name, arr in arrays.items():
        if arr.dtype.kind not in "biufS":
            raise StoreError(f"checkpoint array {name!r} has dtype {arr.dtype}; numeric only")

    def fill(f: h5py.File) -> None:
        f.attrs["format"] = _FORMAT
        f.attrs["meta"] = json.dumps(dict(meta), sort_keys=True)
        for name, arr in arrays.items():
            f.create_dataset(name, data=arr)

    write_h5_atomically(Path(path), fill)


@contextmanager
def open_arrays(
    path: Path, required: Iterable[str] = ()
) -> Iterator[tuple[dict[str, h5py.Dataset], dict[str, Any]]]:
    """Open what :func:`save_arrays` wrote without reading it: validated datasets + metadata.

    Only plain numeric (or fixed-length byte-string) datasets are accepted, as in
    :func:`load_arrays`; the datasets are valid inside the ``with`` block. Reading a large array
    from them costs one copy instead of ``load_arrays``'s read plus the caller's copy.
    """
    path = Path(path)
    f = open_h5(path, lambda exc: (f"Checkpoint {path} is unreadable ({exc}). Delete it to redo "
                                   f"that stage, or rerun with --fresh."))  # fmt: skip
    with f:
        try:
            if f.attrs.get("format") != _FORMAT or f.attrs.get("complete") != 1:
                raise StoreError(f"{path} is not a complete stream-cluster checkpoint")
            meta = json.loads(f.attrs["meta"])
            arrays: dict[str, h5py.Dataset] = {}
            for name, ds in f.items():
                if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "biufS":
                    raise StoreError(
                        f"{path}: entry {name!r} is not a numeric array "
                        f"({getattr(ds, 'dtype', ds)}); "
                        f"the checkpoint was tampered with or comes from another program"
                    )
                arrays[name] = ds
        except (OSError, KeyError, ValueError, TypeError) as exc:
            raise StoreError(
                f"Checkpoint {path} is unreadable ({exc}). Delete it to redo that stage, "
                f"or rerun with --fresh."
            ) from exc
        missing = [k for k in required if k not in arrays]
        if missing:
            raise StoreError(
                f"Checkpoint {path} lacks {', '.join(missing)}; delete it or use --fresh"
            )
        if not isinstance(meta, dict):
            raise StoreError(f"Checkpoint {path} metadata is not a JSON object")
        yield arrays, meta


def load_arrays(
    path: Path, required: Iterable[str] = ()
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load what :func:`save_arrays` wrote; reject anything that is not plain numeric data."""
    with open_arrays(path, required) as (datasets, meta):
        try:
            return {name: ds[()] for name, ds in datasets.items()}, meta
        except (OSError, ValueError, TypeError) as exc:
            raise StoreError(
                f"Checkpoint {path} is unreadable ({exc}). Delete it to redo that stage, "
                f"or rerun with --fresh."
            ) from exc


class RunState:
    """Progress of every stage in ``state.json``: a settings key, done flag and free-form data."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # ingest may run in a thread beside the PCA
        self.data: dict[str, Any] = {"format": "stream-cluster-state/1", "stages": {}}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StoreError(
                    f"{self.path} is unreadable ({exc}); rerun with --fresh to start over"
                ) from exc
            if not isinstance(data, dict) or data.get("format") != self.data["format"]:
                raise StoreError(f"{self.path} is not a stream-cluster state file")
            self.data = data

    def stage(self, name: str) -> dict[str, Any]:
        """The record of stage ``name`` (empty dict if it never ran)."""
        rec = self.data["stages"].get(name, {})
        return rec if isinstance(rec, dict) else {}

    def update(self, name: str, **fields: Any) -> None:
        """Merge ``fields`` into the stage record and save atomically."""
        with self._lock:
            self.data["stages"].setdefault(name, {}).update(fields)
            self._save()

    def reset(self, names: Iterable[str]) -> None:
        """Forget the given stages (they will run again)."""
        with self._lock:
            for n in names:
                self.data["stages"].pop(n, None)
            self._save()

    def save(self) -> None:
        """Write state.json atomically."""
        with self._lock:
            self._save()

    def _save(self) -> None:
        raw = json.dumps(self.data, indent=1, sort_keys=True).encode()
        atomic_write_bytes(self.path, raw)


class RunLock:
    """Exclusive, advisory lock on a run folder, released automatically when the process dies."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                other = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise RunLockedError(
                f"Another stream-cluster process (pid {other}) is using the run folder "
                f"{self.path.parent}. Wait for it to finish, or use another --out folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
