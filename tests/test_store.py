"""Tests for the segmented HDF5 row store, including torn writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_cluster.errors import StoreError
from stream_cluster.store import RowStore

from .store_contract import RowStoreContract


class TestH5RowStore(RowStoreContract):
    """Run the shared contract on the HDF5 store."""

    def make(self, directory: Path, row_size: int, dtype: type) -> RowStore:
        return RowStore(directory / "store", row_size, dtype)


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


def test_rowstore_truncate_segments(tmp_path: Path) -> None:
    """Check that truncation drops whole trailing segments (the resume rewind)."""
    s = RowStore(tmp_path, 2, np.uint8)
    for i in range(3):
        s.append(np.full((2, 2), i, np.uint8), [b"x", b"y"])
    s.truncate_segments(1)
    assert len(RowStore(tmp_path, 2, np.uint8)) == 2
