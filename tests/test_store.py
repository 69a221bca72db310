"""Tests for the segmented HDF5 row store, including torn writes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from stream_cluster.errors import StoreError
from stream_cluster.storage.atomic import write_h5_atomically
from stream_cluster.storage.store import (
    AUTO_UINT8,
    COMPRESSIONS,
    RowStore,
    chunk_rows,
    read_in_batches,
    resolve_compression,
    row_width,
    store_io_bytes,
)

from .store_contract import RowStoreContract

CODECS = [*COMPRESSIONS, "auto"]


class TestH5RowStore(RowStoreContract):
    """Run the shared contract on the HDF5 store, once per compression setting."""

    @pytest.fixture(autouse=True, params=CODECS, ids=CODECS)
    def _codec(self, request: pytest.FixtureRequest) -> None:
        self.compression = request.param

    def make(self, directory: Path, row_size: int, dtype: type) -> RowStore:
        return RowStore(directory / "store", row_size, dtype, compression=self.compression)


def _clipart_rows(n: int, row_size: int, seed: int = 0) -> np.ndarray:
    """White rows with a few dark runs: compressible like the prepared clip-art."""
    rng = np.random.default_rng(seed)
    rows = np.full((n, row_size), 255, np.uint8)
    for r in rows:
        lo = int(rng.integers(0, row_size // 2))
        r[lo : lo + row_size // 4] = rng.integers(0, 60, row_size // 4, dtype=np.uint8)
    return rows


def _segment(store: Path, k: int = 0) -> Path:
    return store / f"seg-{k:06d}.h5"


@pytest.mark.parametrize("codec", COMPRESSIONS)
def test_rowstore_segment_records_codec_and_checksum(tmp_path: Path, codec: str) -> None:
    """Check that a segment is chunked in whole rows, checksummed and names its codec."""
    s = RowStore(tmp_path, 1000, np.uint8, compression=codec)
    rows = _clipart_rows(40, 1000)
    s.append(rows, [b"x"] * 40)
    with h5py.File(_segment(tmp_path), "r") as f:
        assert f.attrs["compression"] == codec
        d = f["rows"]
        assert d.fletcher32 and d.chunks == (min(40, chunk_rows(1000, np.uint8)), 1000)
        stored = d.id.get_storage_size()
    assert (stored < rows.nbytes / 2) == (codec != "none")
    np.testing.assert_array_equal(s.read(0, 40), rows)


def test_rowstore_auto_compression_depends_on_dtype() -> None:
    """Check that "auto" compresses uint8 pixels and leaves float32 features raw."""
    assert resolve_compression("auto", np.uint8) == AUTO_UINT8
    assert resolve_compression("auto", np.float32) == "none"
    assert resolve_compression("lz4", np.float32) == "lz4"


def test_rowstore_rejects_unknown_compression(tmp_path: Path) -> None:
    """Check that a misspelt codec is refused with the names that would work."""
    with pytest.raises(StoreError, match="compression must be 'auto' or one of none"):
        RowStore(tmp_path, 4, np.uint8, compression="zstandard")


def test_rowstore_reads_segments_of_any_codec(tmp_path: Path) -> None:
    """Check that segments are self-describing: one store mixes codecs, any setting reads all."""
    rows = _clipart_rows(len(COMPRESSIONS) * 5, 300)
    for k, codec in enumerate(COMPRESSIONS):
        RowStore(tmp_path, 300, np.uint8, compression=codec).append(
            rows[5 * k : 5 * k + 5], [f"{codec}{i}".encode() for i in range(5)]
        )
    for codec in CODECS:
        again = RowStore(tmp_path, 300, np.uint8, compression=codec)
        np.testing.assert_array_equal(again.read(0, len(rows)), rows)
        np.testing.assert_array_equal(again.read(3, 12), rows[3:12])


def test_rowstore_reads_format1_segments(tmp_path: Path) -> None:
    """Check that a segment of the first format (raw, contiguous, no codec attr) still reads."""
    rows = _clipart_rows(3, 50)

    def fill(f: h5py.File) -> None:
        f.attrs["format"] = "stream-cluster-rows/1"
        f.create_dataset("rows", data=rows)
        f.create_dataset("names", data=np.array([b"a", b"b", b"c"], dtype=h5py.vlen_dtype(bytes)))

    write_h5_atomically(_segment(tmp_path), fill)
    s = RowStore(tmp_path, 50, np.uint8)
    s.append(rows, [b"d", b"e", b"f"])
    np.testing.assert_array_equal(
        RowStore(tmp_path, 50, np.uint8).read(0, 6), np.vstack([rows] * 2)
    )


def test_rowstore_refuses_unknown_codec_attr(tmp_path: Path) -> None:
    """Check that a segment naming a codec this version does not know is an error at open."""
    RowStore(tmp_path, 4, np.uint8).append(np.ones((2, 4), np.uint8), [b"a", b"b"])
    with h5py.File(_segment(tmp_path), "r+") as f:
        f.attrs["compression"] = "brotli"
    with pytest.raises(StoreError, match="'brotli'.*seg-000000.h5|seg-000000.h5.*'brotli'"):
        RowStore(tmp_path, 4, np.uint8)


def test_rowstore_empty_append(tmp_path: Path) -> None:
    """Check that appending zero rows (which HDF5 cannot chunk) makes a readable empty segment."""
    s = RowStore(tmp_path, 4, np.uint8)
    s.append(np.zeros((0, 4), np.uint8), [])
    s.append(np.ones((1, 4), np.uint8), [b"a"])
    again = RowStore(tmp_path, 4, np.uint8)
    assert len(again) == 1 and again.n_segments == 2
    np.testing.assert_array_equal(again.read(0, 1), np.ones((1, 4), np.uint8))


@pytest.mark.parametrize("codec", COMPRESSIONS)
def test_rowstore_detects_flipped_bytes(tmp_path: Path, codec: str) -> None:
    """Check that bit rot in a stored chunk raises StoreError naming the segment file."""
    d = 300 * 430  # 8 rows a chunk: each segment below has 4 chunks
    s = RowStore(tmp_path, d, np.uint8, compression=codec)
    rows = _clipart_rows(64, d)
    s.append(rows[:32], [b"a"] * 32)
    s.append(rows[32:], [b"b"] * 32)
    bad = _segment(tmp_path, 1)
    with h5py.File(bad, "r") as f:
        info = f["rows"].id.get_chunk_info(2)  # the third chunk: rows 16..23 of segment 1
    with open(bad, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x10]))
    again = RowStore(tmp_path, d, np.uint8)  # opening reads only metadata: still fine
    np.testing.assert_array_equal(again.read(0, 48), rows[:48])  # chunks before the bad one
    with pytest.raises(StoreError, match=r"seg-000001\.h5 is corrupt") as err:
        again.read(40, 64)
    assert isinstance(err.value.__cause__, OSError)


def test_rowstore_reopen_keeps_rows(tmp_path: Path) -> None:
    """Check that a reopened store sees every committed segment."""
    s = RowStore(tmp_path, 4, np.uint8)
    s.append(np.ones((2, 4), np.uint8), [b"a", b"b"])
    s.append(np.zeros((1, 4), np.uint8), [b"c"])
    again = RowStore(tmp_path, 4, np.uint8)
    assert len(again) == 3 and again.names() == [b"a", b"b", b"c"]


def test_rowstore_discards_torn_partial_segment(tmp_path: Path) -> None:
    """Check that a half-written segment (a kill before rename) is deleted, never trusted."""
    s = RowStore(tmp_path, 4, np.uint8)
    s.append(np.ones((2, 4), np.uint8), [b"a", b"b"])
    torn = tmp_path / "seg-000001.h5.partial"
    torn.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 100)
    again = RowStore(tmp_path, 4, np.uint8)
    assert len(again) == 2 and not torn.exists()


def test_rowstore_rejects_corrupt_segment(tmp_path: Path) -> None:
    """Check that a complete-looking but corrupt segment raises StoreError with advice."""
    s = RowStore(tmp_path, 4, np.uint8)
    s.append(np.ones((2, 4), np.uint8), [b"a", b"b"])
    (tmp_path / "seg-000000.h5").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="--fresh"):
        RowStore(tmp_path, 4, np.uint8)


def test_rowstore_rejects_other_shape(tmp_path: Path) -> None:
    """Check that opening a store with another row size fails rather than misreading data."""
    RowStore(tmp_path, 4, np.uint8).append(np.ones((1, 4), np.uint8), [b"a"])
    with pytest.raises(StoreError):
        RowStore(tmp_path, 5, np.uint8)


@pytest.mark.parametrize("on_disk", [True, False], ids=["rowstore", "array"])
def test_read_in_batches_covers_rows_in_order(tmp_path: Path, on_disk: bool) -> None:
    """Check that a store and an array give the same batches, offsets and width, up to stop."""
    rows = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    source: RowStore | np.ndarray = rows
    if on_disk:
        source = RowStore(tmp_path / "s", 3, np.float32)
        source.append(rows[:10], [b"a"] * 10)  # two segments: a batch spans both
        source.append(rows[10:], [b"b"] * 13)
    assert row_width(source) == 3
    got = list(read_in_batches(source, 4))
    assert [lo for lo, _ in got] == list(range(0, 23, 4))
    assert np.array_equal(np.concatenate([r for _, r in got]), rows)
    head = list(read_in_batches(source, 4, stop=10))
    assert [len(r) for _, r in head] == [4, 4, 2]
    assert np.array_equal(np.concatenate([r for _, r in head]), rows[:10])


def test_rowstore_truncate_segments(tmp_path: Path) -> None:
    """Check that truncation drops whole trailing segments (the resume rewind)."""
    s = RowStore(tmp_path, 2, np.uint8)
    for i in range(3):
        s.append(np.full((2, 2), i, np.uint8), [b"x", b"y"])
    s.truncate_segments(1)
    assert len(RowStore(tmp_path, 2, np.uint8)) == 2


_PEAK_PROBE = """
import json, sys
from pathlib import Path
import numpy as np
from stream_cluster.storage.store import RowStore

def rss(key):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

op, codec, folder, d, n, lo, hi = sys.argv[1:8]
d, n, lo, hi = int(d), int(n), int(lo), int(hi)
store = RowStore(Path(folder), d, np.uint8, compression=codec)
if op == "write":
    # Random bytes do not compress: the codec's worst case. One allocation, no temporaries.
    rows = np.frombuffer(np.random.default_rng(int(lo)).bytes(n * d), np.uint8).reshape(n, d)
else:
    out = np.ones((hi - lo, d), np.uint8)
base = rss("VmRSS")
Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
if op == "write":
    store.append(rows, [b"x"] * n)
else:
    store.read(lo, hi, out=out)
print(json.dumps(rss("VmHWM") - base))
"""


def _peak(*args: object) -> int:
    """Peak extra RSS of one store operation, in a fresh process importing this checkout."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-c", _PEAK_PROBE, *map(str, args)]
    return int(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout)


@pytest.mark.parametrize("codec", COMPRESSIONS)
def test_store_io_bytes_bounds_measured_peak(tmp_path: Path, codec: str) -> None:
    """Check that store_io_bytes covers the peak extra RSS of a real append and real reads."""
    d, seg = 300 * 430, 200
    for k in range(3):  # three segments of incompressible rows, each in a fresh process
        assert _peak("write", codec, tmp_path, d, seg, k, 0) <= store_io_bytes(d, codec, rows=seg)
    for lo, hi in ((37, 37 + 64), (150, 450)):  # a PCA slice; a batch across three segments
        assert _peak("read", codec, tmp_path, d, seg, lo, hi) <= store_io_bytes(
            d, codec, rows=hi - lo
        )
    assert len(RowStore(tmp_path, d, np.uint8)) == 3 * seg
