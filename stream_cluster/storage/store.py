"""Append-only, crash-safe HDF5 row store: decoded pixels and PCA features live here, on disk.

A store is a folder of immutable segment files ``seg-000000.h5``. A segment is written to
``*.partial``, flushed, fsynced, closed and only then renamed into place, so a kill at any
moment leaves either a whole segment or a ``.partial`` file that is deleted on the next open:
a torn HDF5 write is never trusted. Rows keep the order in which they were appended.

Segments are self-describing: each ``rows`` dataset is chunked (whole rows, about
``CHUNK_BYTES`` a chunk), carries the codec it was written with (``attrs["compression"]``, one
of ``COMPRESSIONS``) and a Fletcher-32 checksum per chunk, so a store written with one codec
is read by any store object, and a flipped bit on disk is an error naming the file instead of
wrong pixels. The codec choice and its costs are measured in ``benchmarks/codecs.py``
(``benchmarks/RESULTS_codecs.md``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from stream_cluster.errors import CorruptSegmentError, StoreError
from stream_cluster.storage.atomic import write_h5_atomically

__all__ = [
    "AUTO_UINT8",
    "CHUNK_BYTES",
    "COMPRESSIONS",
    "RowStore",
    "chunk_rows",
    "read_in_batches",
    "resolve_compression",
    "row_width",
    "store_io_bytes",
]

logger = logging.getLogger(__name__)

_SEG_FMT = "seg-{:06d}.h5"
#: Format 2 adds chunking, ``attrs["compression"]`` and Fletcher-32; format 1 segments (raw,
#: contiguous) are still read.
_FORMAT = "stream-cluster-rows/2"
_FORMATS_READ = ("stream-cluster-rows/1", _FORMAT)

#: Codecs a segment can be written with: "none" (raw), "lz4" and "zstd" (level 1) from
#: hdf5plugin. "auto" picks per dtype, see ``resolve_compression``.
COMPRESSIONS = ("none", "lz4", "zstd")
#: The codec "auto" gives uint8 (pixel) rows: the best ratio at a read speed far above the
#: PCA's use of it (benchmarks/RESULTS_codecs.md). Other dtypes (float32 features) get "none":
#: PCA features do not compress.
AUTO_UINT8 = "zstd"
#: Target size of one HDF5 chunk of whole rows; 8 rows of 300x430 uint8 pixels (1,032,000 B).
CHUNK_BYTES = 2**20
#: Codecs whose HDF5 filter lives in hdf5plugin (imported only when one is used).
_PLUGIN_CODECS = frozenset({"lz4", "zstd"})
#: Raw-data chunk cache per open segment. Every read opens the file and reads each chunk once,
#: so a cache only costs memory (HDF5 2.0's default is 8 MiB per open dataset).
_RDCC_NBYTES = 0


def resolve_compression(compression: str, dtype: np.dtype | type) -> str:
    """The codec name a store of ``dtype`` writes for ``compression`` ("auto" or a codec)."""
    if compression == "auto":
        return AUTO_UINT8 if np.dtype(dtype) == np.uint8 else "none"
    if compression not in COMPRESSIONS:
        raise StoreError(
            f"compression must be 'auto' or one of {', '.join(COMPRESSIONS)}. "
            f"Got {compression!r} instead."
        )
    return compression


def chunk_rows(row_size: int, dtype: np.dtype | type) -> int:
    """Rows per HDF5 chunk: as many whole rows as fit in ``CHUNK_BYTES``, at least one."""
    return max(1, CHUNK_BYTES // max(1, int(row_size) * np.dtype(dtype).itemsize))


def store_io_bytes(
    row_size: int,
    compression: str = "auto",
    dtype: np.dtype | type = np.uint8,
    rows: int = 4096,
) -> int:
    """Extra memory of one read or append of up to ``rows`` rows, beyond the rows themselves.

    The store opens one segment at a time, with no chunk cache, and HDF5 moves whole chunks
    through the filter pipeline: the stored chunk, the decoded one and, when writing, the
    codec's output (Fletcher-32 alone needs the same buffers), plus the codec's state and
    HDF5's bookkeeping per chunk touched. Model: ``3 * chunk + 3 MiB + 4 KiB * chunks``.
    It bounds the peak extra RSS measured in fresh processes (HDF5 2.0.0, hdf5plugin 7.1.0;
    ``tests/test_store.py`` checks it): 129,000-byte rows, reads of 64 and 1,131 rows and
    appends of 512 rows (the first append of a process costs ~1.2 MiB more), clip-art and
    random (incompressible, the worst) rows, codecs none, lz4 and zstd. With 1, 8 and 64 rows
    a chunk the largest peaks measured were 4.6, 5.1 and 25.7 MiB (zstd, random rows, first
    append); the model gives 5.4, 6.2 and 26.7 MiB. The store's chunks are about
    ``CHUNK_BYTES`` (1 MiB), so this is about 6 MiB for any codec: ``compression`` is only
    validated. Not included: importing hdf5plugin, once per process that opens an lz4 or
    zstd store (about 6 MiB of RSS, measured; the first ``RowStore`` of such a codec does it).
    """
    resolve_compression(compression, dtype)
    per_chunk = chunk_rows(row_size, dtype)
    chunk = per_chunk * int(row_size) * np.dtype(dtype).itemsize
    touched = -(-max(1, int(rows)) // per_chunk) + 1  # a read may start inside a chunk
    return 3 * chunk + 3 * 2**20 + 4096 * touched


def _require_codec(name: str, where: Path) -> None:
    """Register the HDF5 filter that ``name`` needs, in this process, before any read or write."""
    if name not in COMPRESSIONS:
        raise StoreError(
            f"Segment {where} was written with compression {name!r}, which this version of "
            f"stream-cluster cannot read (it knows {', '.join(COMPRESSIONS)}). Upgrade, or "
            f"rerun with --fresh to rebuild the store."
        )
    if name in _PLUGIN_CODECS:
        try:
            import hdf5plugin  # noqa: F401  (registers the LZ4/Zstd filters with HDF5)
        except ImportError as exc:
            raise StoreError(
                f"Segment {where} uses compression {name!r}, which needs the hdf5plugin "
                f"package: pip install hdf5plugin"
            ) from exc


def _filter_kwargs(name: str) -> dict[str, object]:
    """``create_dataset`` keyword arguments of codec ``name`` (after ``_require_codec``)."""
    if name == "none":
        return {}
    import hdf5plugin

    plugin = hdf5plugin.LZ4() if name == "lz4" else hdf5plugin.Zstd(clevel=1)
    return dict(plugin)


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
    compression : str, default="auto"
        Codec of the segments this object writes: one of ``COMPRESSIONS``, or "auto"
        (``AUTO_UINT8`` for uint8 rows, "none" otherwise). Reading does not depend on it: each
        segment says how it was written.

    Memory: reading rows ``[a, b)`` allocates ``(b - a) * row_size`` items for the result plus
    the codec's buffers, ``store_io_bytes(row_size, compression, dtype)``, while a segment is
    open (one at a time).
    """

    def __init__(
        self,
        directory: Path,
        row_size: int,
        dtype: np.dtype | type,
        compression: str = "auto",
    ) -> None:
        self.directory = Path(directory)
        self.row_size = int(row_size)
        self.dtype = np.dtype(dtype)
        self.compression = resolve_compression(compression, self.dtype)
        self.directory.mkdir(parents=True, exist_ok=True)
        # Import the codec's filters now, so the one-off cost (hdf5plugin: ~6 MiB of RSS,
        # measured) lands here and not inside an append that the memory plan sized.
        _require_codec(self.compression, self.directory)
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
                    ok = f.attrs.get("format") in _FORMATS_READ and f.attrs.get("complete") == 1
                    codec = str(f.attrs.get("compression", "none"))
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
            _require_codec(codec, path)
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
        for index, seg in enumerate(segments):
            lo, hi = max(start, seg.start), min(stop, seg.stop)
            if lo >= hi:
                continue
            try:
                with h5py.File(seg.path, "r", rdcc_nbytes=_RDCC_NBYTES) as f:
                    f["rows"].read_direct(
                        out, np.s_[lo - seg.start : hi - seg.start], np.s_[pos : pos + hi - lo]
                    )
            except OSError as exc:
                # A chunk whose Fletcher-32 checksum fails, or that its codec cannot decode.
                raise CorruptSegmentError(
                    f"Segment {seg.path} is corrupt: rows {lo - seg.start}..{hi - seg.start - 1} "
                    f"cannot be read ({exc}). It was complete when written, so the disk or "
                    f"someone else changed it; rerun with --fresh to rebuild.",
                    seg.path,
                    index,
                ) from exc
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
            try:
                with h5py.File(seg.path, "r") as f:
                    result.extend(bytes(x) for x in f["names"][:])
            except OSError as exc:
                raise StoreError(
                    f"Segment {seg.path} is corrupt: its names cannot be read ({exc}); "
                    f"rerun with --fresh to rebuild."
                ) from exc
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
        n = rows.shape[0]
        # HDF5 cannot chunk an empty dataset (nor checksum an unchunked one).
        layout: dict[str, object] = (
            {
                "chunks": (min(n, chunk_rows(self.row_size, self.dtype)), self.row_size),
                "fletcher32": True,
                **_filter_kwargs(self.compression),
            }
            if n
            else {}
        )

        def fill(f: h5py.File) -> None:
            f.attrs["format"] = _FORMAT
            f.attrs["compression"] = self.compression
            f.create_dataset("rows", data=rows, **layout)
            f.create_dataset("names", data=np.array(list(names), dtype=h5py.vlen_dtype(bytes)))

        # The chunk cache must be set on the file: create_dataset(rdcc_nbytes=0) does not stop
        # HDF5 2.0 from caching written chunks (8 MiB more, measured).
        write_h5_atomically(final, fill, rows.nbytes, rdcc_nbytes=_RDCC_NBYTES)
        with self._lock:
            start = len(self)
            self._segments = [*self._segments, _Segment(final, start, start + rows.shape[0])]

    def segment_rows(self, index: int) -> tuple[int, int]:
        """The first row and one past the last row of segment ``index``."""
        seg = self._segments[index]
        return seg.start, seg.stop

    def segment_names(self, index: int) -> list[bytes]:
        """Names of the rows of segment ``index`` (to rebuild it from its source files)."""
        path = self._segments[index].path
        try:
            with h5py.File(path, "r") as f:
                return [bytes(x) for x in f["names"][:]]
        except OSError as exc:
            raise CorruptSegmentError(
                f"Segment {path} is corrupt: its names cannot be read ({exc}); rerun with "
                f"--fresh to rebuild.",
                path,
                index,
            ) from exc

    def replace_segment(self, index: int, rows: np.ndarray, names: Sequence[bytes]) -> None:
        """Rewrite segment ``index`` atomically with the same number of rows (a repair)."""
        seg = self._segments[index]
        if len(names) != seg.stop - seg.start:
            raise StoreError(f"{seg.path} holds {seg.stop - seg.start} rows, not {len(names)}")
        with self._lock:
            kept, self._segments = self._segments, self._segments[:index]
        try:  # append writes seg-<index>.h5.partial and renames it over the corrupt file
            self.append(rows, names)
        finally:
            with self._lock:
                self._segments = kept

    def truncate_segments(self, n_segments: int) -> None:
        """Drop segments past the first ``n_segments`` (used when a stage restarts)."""
        with self._lock:
            for seg in self._segments[n_segments:]:
                seg.path.unlink(missing_ok=True)
            self._segments = self._segments[:n_segments]


def row_width(rows: RowStore | np.ndarray) -> int:
    """Values per row of a RowStore or of a 2-D in-memory array."""
    return int(rows.row_size if isinstance(rows, RowStore) else rows.shape[1])


def read_in_batches(
    rows: RowStore | np.ndarray, batch: int, stop: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(offset, rows)`` for consecutive batches of rows ``[0, stop)`` (default: all).

    The same loop for the features on disk and in memory, so a reader holds one batch at a time.
    Memory: one batch, ``batch * row_size`` items (none for an array: slices are views).
    """
    n = len(rows) if stop is None else int(stop)
    for lo in range(0, n, batch):
        hi = min(lo + batch, n)
        yield lo, rows.read(lo, hi) if isinstance(rows, RowStore) else rows[lo:hi]
