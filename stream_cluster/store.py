"""Append-only, crash-safe HDF5 row store: decoded pixels and PCA features live here, on disk.

A store is a folder of immutable segment files ``seg-000000.h5``. A segment is written to
``*.partial``, flushed, fsynced, closed and only then renamed into place, so a kill at any
moment leaves either a whole segment or a ``.partial`` file that is deleted on the next open:
a torn HDF5 write is never trusted. Rows keep the order in which they were appended.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from .errors import DiskFullError, StoreError

__all__ = [
    "RowStore",
    "atomic_write_bytes",
    "fsync_dir",
    "raise_if_disk_full",
    "write_h5_atomically",
]

logger = logging.getLogger(__name__)

_SEG_FMT = "seg-{:06d}.h5"
_FORMAT = "stream-cluster-rows/1"


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (POSIX needs the directory fsynced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def raise_if_disk_full(exc: BaseException, where: Path, needed: int | None = None) -> None:
    """Turn an out-of-space OSError (h5py wraps them) into a DiskFullError that says what to do."""
    text = str(exc)
    if isinstance(exc, OSError) and (
        exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text or "quota" in text
    ):
        need = f" About {needed / 2**20:.0f} MiB more is needed." if needed else ""
        raise DiskFullError(
            f"No space left on the device while writing to {where}.{need} Free some space and "
            f"rerun the same command: finished work is kept and the run resumes."
        ) from exc


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file + fsync + rename, so readers see old or new."""
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(exc, path.parent, len(data))
        raise
    fsync_dir(path.parent)


def write_h5_atomically(
    path: Path, fill: Callable[[h5py.File], None], needed: int | None = None
) -> None:
    """Write an HDF5 file via ``*.partial``, flush, fsync and rename, marking it complete.

    ``fill(f)`` writes the content; a reader trusts only files with ``attrs["complete"] == 1``.
    On any error the partial file is deleted and out-of-space becomes a DiskFullError.
    """
    tmp = path.with_name(path.name + ".partial")
    try:
        with h5py.File(tmp, "w") as f:
            fill(f)
            f.attrs["complete"] = 1
            f.flush()
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise_if_disk_full(exc, path.parent, needed)
        raise
    fsync_dir(path.parent)


@dataclass(frozen=True)
class _Segment:
    path: Path
    start: int
    stop: int


class RowStore:
    """Rows of a fixed shape and dtype, each with a name (the image's relative path as bytes).

    Parameters
    ----------
    directory : Path
        Folder of the store; created if missing.
    row_size : int
        Values per row (pixels per image, or PCA components).
    dtype : numpy dtype
        ``uint8`` for pixels, ``float32`` for features.

    Memory: constant; reading rows ``[a, b)`` allocates exactly ``(b - a) * row_size`` items.
    """

    def __init__(self, directory: Path, row_size: int, dtype: np.dtype | type) -> None:
        self.directory = Path(directory)
        self.row_size = int(row_size)
        self.dtype = np.dtype(dtype)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segments: list[_Segment] = []
        # One writer thread may append while another reads committed rows.
        self._lock = threading.Lock()
        self._open()

    # -- reading -----------------------------------------------------------------------------
    def _open(self) -> None:
        for stale in self.directory.glob("*.partial"):
            logger.info("discarding torn segment %s", stale)
            stale.unlink()
        start = 0
        names = sorted(p.name for p in self.directory.glob("seg-*.h5"))
        for i, name in enumerate(names):
            if name != _SEG_FMT.format(i):
                raise StoreError(
                    f"Store {self.directory} has a gap: expected {_SEG_FMT.format(i)}, "
                    f"found {name}. "
                    f"Delete the run folder (or rerun with --fresh) to rebuild it."
                )
            path = self.directory / name
            try:
                with h5py.File(path, "r") as f:
                    ok = f.attrs.get("format") == _FORMAT and f.attrs.get("complete") == 1
                    rows = f["rows"]
                    n = rows.shape[0]
                    if (
                        not ok
                        or rows.dtype != self.dtype
                        or rows.shape[1:] != (self.row_size,)
                        or f["names"].shape[0] != n
                    ):
                        raise StoreError(f"{path} does not match this store (shape/dtype/format)")
            except (OSError, KeyError) as exc:
                raise StoreError(
                    f"Segment {path} is unreadable ({exc}). It was complete when written, so the "
                    f"disk or someone else changed it; rerun with --fresh to rebuild."
                ) from exc
            self._segments.append(_Segment(path, start, start + n))
            start += n

    def __len__(self) -> int:
        segments = self._segments
        return segments[-1].stop if segments else 0

    @property
    def n_segments(self) -> int:
        """Number of complete segment files."""
        return len(self._segments)

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``[start, stop)`` as one array (into ``out`` if given, to reuse a buffer)."""
        stop = min(stop, len(self))
        if not 0 <= start <= stop:
            raise IndexError(f"rows [{start}, {stop}) out of range for a store of {len(self)}")
        if out is None:
            out = np.empty((stop - start, self.row_size), dtype=self.dtype)
        pos = 0
        with self._lock:
            segments = list(self._segments)
        for seg in segments:
            lo, hi = max(start, seg.start), min(stop, seg.stop)
            if lo >= hi:
                continue
            with h5py.File(seg.path, "r") as f:
                f["rows"].read_direct(
                    out, np.s_[lo - seg.start : hi - seg.start], np.s_[pos : pos + hi - lo]
                )
            pos += hi - lo
        return out[:pos]

    def read_rows(self, indices: Sequence[int]) -> np.ndarray:
        """Rows at arbitrary positions (for montages), in the order given."""
        out = np.empty((len(indices), self.row_size), dtype=self.dtype)
        for j, i in enumerate(indices):
            out[j] = self.read(int(i), int(i) + 1)[0]
        return out

    def names(self) -> list[bytes]:
        """Name of every row, in order (relative image paths as bytes)."""
        result: list[bytes] = []
        with self._lock:
            segments = list(self._segments)
        for seg in segments:
            with h5py.File(seg.path, "r") as f:
                result.extend(bytes(x) for x in f["names"][:])
        return result

    def iter_batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(offset, rows)`` for consecutive batches from row ``start``."""
        for lo in range(start, len(self), batch_size):
            yield lo, self.read(lo, lo + batch_size)

    # -- writing -----------------------------------------------------------------------------
    def append(self, rows: np.ndarray, names: Sequence[bytes]) -> None:
        """Write ``rows`` as one new segment, atomically (partial file, fsync, rename)."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.row_size or rows.dtype != self.dtype:
            raise StoreError(
                f"append expects ({self.row_size},)-wide {self.dtype} rows, got {rows.shape} "
                f"{rows.dtype}"
            )
        if len(names) != rows.shape[0]:
            raise StoreError(f"append got {rows.shape[0]} rows but {len(names)} names")
        final = self.directory / _SEG_FMT.format(len(self._segments))

        def fill(f: h5py.File) -> None:
            f.attrs["format"] = _FORMAT
            f.create_dataset("rows", data=rows)
            f.create_dataset("names", data=np.array(list(names), dtype=h5py.vlen_dtype(bytes)))

        write_h5_atomically(final, fill, rows.nbytes)
        with self._lock:
            start = len(self)
            self._segments = [*self._segments, _Segment(final, start, start + rows.shape[0])]

    def truncate_segments(self, n_segments: int) -> None:
        """Drop segments past the first ``n_segments`` (used when a stage restarts)."""
        with self._lock:
            for seg in self._segments[n_segments:]:
                seg.path.unlink(missing_ok=True)
            self._segments = self._segments[:n_segments]
