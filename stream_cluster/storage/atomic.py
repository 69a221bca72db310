"""Writes that resume depends on: temp file, flush, fsync, rename (readers see the old file or
the new one, never a torn one), and out-of-space errors that say what to do."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import h5py

from stream_cluster.errors import DiskFullError

__all__ = ["atomic_write_bytes", "fsync_dir", "raise_if_disk_full", "write_h5_atomically"]


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
    path: Path,
    fill: Callable[[h5py.File], None],
    needed: int | None = None,
    rdcc_nbytes: int | None = None,
) -> None:
    """Write an HDF5 file via ``*.partial``, flush, fsync and rename, marking it complete.

    ``fill(f)`` writes the content; a reader trusts only files with ``attrs["complete"] == 1``.
    On any error the partial file is deleted and out-of-space becomes a DiskFullError.
    ``rdcc_nbytes`` is accepted for compatibility; the chunk cache is always off when writing.
    """
    tmp = path.with_name(path.name + ".partial")
    # HDF5 buffers small raw writes (sieve buffer, chunk cache) until the dataset is closed,
    # and h5py drops errors raised then: on a full disk a small file was committed torn
    # without an error (tests/test_faults_disk.py). With both buffers off, every write fails
    # where it happens.
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_sieve_buf_size(0)
    fapl.set_cache(0, 0, 0, 0.75)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    try:
        fid = h5py.h5f.create(os.fsencode(tmp), h5py.h5f.ACC_TRUNC, fapl=fapl)
        with h5py.File(fid) as f:
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
