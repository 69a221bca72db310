"""Tests for atomic checkpoints, the state file and the run lock."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from stream_cluster.errors import RunLockedError, StoreError
from stream_cluster.storage.checkpoint import RunLock, RunState, load_arrays, save_arrays


def test_save_load_arrays_roundtrip(tmp_path: Path) -> None:
    """Check that arrays and metadata come back bit-identical."""
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.asarray(7)}
    save_arrays(tmp_path / "c.h5", arrays, {"cursor": 3})
    got, meta = load_arrays(tmp_path / "c.h5", required=["a", "n"])
    np.testing.assert_array_equal(got["a"], arrays["a"])
    assert int(got["n"]) == 7 and meta == {"cursor": 3}
    assert not (tmp_path / "c.h5.partial").exists()


def test_load_arrays_rejects_pickled_payload(tmp_path: Path) -> None:
    """Check that a tampered checkpoint holding a pickle is rejected, never unpickled."""
    path = tmp_path / "c.h5"
    save_arrays(path, {"a": np.ones(3)}, {})
    marker = tmp_path / "executed"
    payload = pickle.dumps(("os.system", f"touch {marker}"))
    with h5py.File(path, "a") as f:
        f.create_dataset("evil", data=np.void(payload))
    with pytest.raises(StoreError, match="not a numeric array"):
        load_arrays(path)
    assert not marker.exists()


def test_load_arrays_rejects_garbage_and_missing(tmp_path: Path) -> None:
    """Check that a non-HDF5 file and a checkpoint missing arrays both raise StoreError."""
    (tmp_path / "g.h5").write_bytes(b"not hdf5")
    with pytest.raises(StoreError, match="unreadable"):
        load_arrays(tmp_path / "g.h5")
    save_arrays(tmp_path / "c.h5", {"a": np.ones(2)}, {})
    with pytest.raises(StoreError, match="lacks b"):
        load_arrays(tmp_path / "c.h5", required=["a", "b"])


def test_save_arrays_refuses_object_arrays(tmp_path: Path) -> None:
    """Check that only numeric data can be written, so nothing needs unpickling later."""
    with pytest.raises(StoreError, match="numeric only"):
        save_arrays(tmp_path / "c.h5", {"o": np.array([object()], dtype=object)}, {})
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "c.h5.partial").exists()


def test_runstate_persists_and_resets(tmp_path: Path) -> None:
    """Check that stage records survive a reload and reset forgets them."""
    s = RunState(tmp_path / "state.json")
    s.update("pca", cursor=10)
    s.update("elbow", done=True)
    again = RunState(tmp_path / "state.json")
    assert again.stage("pca") == {"cursor": 10}
    again.reset(["elbow"])
    assert RunState(tmp_path / "state.json").stage("elbow") == {}


def test_runstate_rejects_foreign_file(tmp_path: Path) -> None:
    """Check that a state.json from something else is refused with advice."""
    (tmp_path / "state.json").write_text("[1, 2]")
    with pytest.raises(StoreError, match="not a stream-cluster state"):
        RunState(tmp_path / "state.json")


def test_runlock_refuses_second_holder(tmp_path: Path) -> None:
    """Check that a second lock on the same run folder fails with a clear message."""
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match="Another stream-cluster process"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):  # released: can be taken again
        pass
