"""Bit rot: a corrupted store segment is detected by its checksum and rebuilt from the images."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stream_cluster import RunConfig, run
from stream_cluster.errors import CorruptSegmentError
from stream_cluster.storage.checkpoint import RunState

from .conftest import make_shapes_corpus


def _config(images: Path, out: Path) -> RunConfig:
    return RunConfig(images, out, mem_budget=2 * 2**30, width=40, height=50, n_components=8,
                     k=3, batch_size=16, checkpoint_seconds=0.0, workers=0)


def _interrupt_after_ingest(out: Path) -> None:
    """Make the finished run look interrupted after ingest: every later stage runs again."""
    state = RunState(out / "state.json")
    state.reset(["pca", "embed", "elbow", "cluster", "report"])
    for name in ("pca.h5", "pca-checkpoint.h5", "kmeans.h5", "labels.csv"):
        (out / name).unlink(missing_ok=True)


def _rot(segment: Path) -> None:
    """Overwrite 4 KB in the middle of the file with random bytes."""
    size = segment.stat().st_size
    with open(segment, "r+b") as fh:
        fh.seek(size // 2 - 2048)
        fh.write(os.urandom(4096))


def test_corrupt_pixel_segment_is_reingested(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """Check that a rotted segment is rebuilt from its images and the labels do not change."""
    images, out = tmp_path / "img", tmp_path / "run"
    make_shapes_corpus(images, n=60, size=(40, 50))
    run(_config(images, out))
    want = (out / "labels.csv").read_bytes()
    _interrupt_after_ingest(out)
    segment = out / "pixels" / "seg-000001.h5"
    _rot(segment)
    with caplog.at_level("WARNING", logger="stream_cluster"):
        run(_config(images, out))
    assert (out / "labels.csv").read_bytes() == want
    assert any("seg-000001.h5 was corrupt; re-ingested" in r.message for r in caplog.records)


def test_corrupt_segment_without_its_source_stops_naming_it(tmp_path: Path) -> None:
    """Check that when a rotted segment's images are gone the run stops and names the segment."""
    images, out = tmp_path / "img", tmp_path / "run"
    make_shapes_corpus(images, n=60, size=(40, 50))
    run(_config(images, out))
    _interrupt_after_ingest(out)
    _rot(out / "pixels" / "seg-000000.h5")
    import numpy as np

    from stream_cluster.storage.store import RowStore

    first = images / os.fsdecode(RowStore(out / "pixels", 2000, np.uint8).segment_names(0)[0])
    st = first.stat()  # the source no longer decodes, though its size and time look the same
    first.write_bytes(b"\0" * st.st_size)
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(CorruptSegmentError, match=r"seg-000000\.h5 is corrupt and cannot be "):
        run(_config(images, out))
