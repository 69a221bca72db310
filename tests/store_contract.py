"""Shared contract for row stores: any store class must pass these checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stream_cluster.errors import StoreError


class RowStoreContract:
    """Subclass and set ``make(tmp_path, row_size, dtype)`` to run the contract on a store."""

    def make(self, directory: Path, row_size: int, dtype: type):  # pragma: no cover - abstract
        raise NotImplementedError

    def test_append_read_roundtrip(self, tmp_path: Path) -> None:
        """Check that rows and names come back in append order across segments."""
        s = self.make(tmp_path, 7, np.uint8)
        rng = np.random.default_rng(0)
        a = rng.integers(0, 255, (5, 7), dtype=np.uint8)
        b = rng.integers(0, 255, (3, 7), dtype=np.uint8)
        s.append(a, [f"a{i}".encode() for i in range(5)])
        s.append(b, [b"\xff\xfe", b"x", "日本.png".encode()])
        assert len(s) == 8
        np.testing.assert_array_equal(s.read(0, 8), np.vstack([a, b]))
        np.testing.assert_array_equal(s.read(3, 6), np.vstack([a, b])[3:6])
        np.testing.assert_array_equal(s.read_rows([7, 0, 5]), np.vstack([a, b])[[7, 0, 5]])
        assert s.names()[5] == b"\xff\xfe"

    def test_iter_batches_cover_all_rows(self, tmp_path: Path) -> None:
        """Check that batches tile the store exactly once."""
        s = self.make(tmp_path, 3, np.float32)
        for i in range(4):
            s.append(np.full((i + 1, 3), i, np.float32), [b"n"] * (i + 1))
        seen = np.vstack([x for _, x in s.iter_batches(4)])
        np.testing.assert_array_equal(seen, s.read(0, len(s)))

    def test_append_rejects_wrong_shape(self, tmp_path: Path) -> None:
        """Check that a row of the wrong width or dtype is refused, not silently cast."""
        s = self.make(tmp_path, 3, np.uint8)
        with pytest.raises(StoreError, match="append expects"):
            s.append(np.zeros((2, 4), np.uint8), [b"a", b"b"])
        with pytest.raises(StoreError, match="names"):
            s.append(np.zeros((2, 3), np.uint8), [b"a"])
