"""Tests for the parallel decode stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from stream_cluster.parallel.executor import InlineExecutor, LocalExecutor
from stream_cluster.stages.ingest import CRASHED, DecodeTask, decode_in_order, decode_many, ingest
from stream_cluster.storage.store import RowStore

from .conftest import make_shapes_corpus
from .crashy import decode_or_die


def test_ingest_isolates_a_file_that_kills_its_worker(tmp_path: Path) -> None:
    """Check that a worker death skips only the guilty file and every other file decodes."""
    make_shapes_corpus(tmp_path, n=30)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    shutil.copy(tmp_path / files[0], tmp_path / "kind0" / "crash.png")
    files = sorted([*files, "kind0/crash.png"])
    store = RowStore(tmp_path / "store", 120, np.uint8)
    progress = list(ingest(tmp_path, files, store, width=12, height=10, workers=2,
                           segment_rows=16, decode_chunk=decode_or_die))
    assert progress[-1].skipped == [("kind0/crash.png", CRASHED)]
    kept = [f for f in files if f != "kind0/crash.png"]
    assert [n.decode() for n in store.names()] == kept
    expect, _ = decode_many(str(tmp_path), kept, 12, 10)
    np.testing.assert_array_equal(store.read(0, len(kept)), expect)


def test_decode_in_order_on_an_executor(tmp_path: Path) -> None:
    """Check that results come back in chunk order from a 2-worker executor and inline."""
    make_shapes_corpus(tmp_path, n=40)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    chunks = [files[i : i + 3] for i in range(0, len(files), 3)]
    task = DecodeTask(decode_many, str(tmp_path), 12, 10)
    with LocalExecutor(2) as ex:
        rows = np.vstack([r for r, _ in decode_in_order(ex, task, chunks)])
    inline = np.vstack([r for r, _ in decode_in_order(InlineExecutor(), task, chunks)])
    np.testing.assert_array_equal(rows, inline)
    np.testing.assert_array_equal(rows, decode_many(str(tmp_path), files, 12, 10)[0])


def test_ingest_order_and_resume_point(tmp_path: Path) -> None:
    """Check that rows follow the given file order and ingest resumes from a file index."""
    make_shapes_corpus(tmp_path / "img", n=40)
    root = tmp_path / "img"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))[::-1]
    full = RowStore(tmp_path / "full", 120, np.uint8)
    list(ingest(root, files, full, width=12, height=10, workers=0, segment_rows=16))
    part = RowStore(tmp_path / "part", 120, np.uint8)
    progress = list(ingest(root, files[:16], part, width=12, height=10, workers=0,
                           segment_rows=16))
    assert progress[-1].next_file == 16
    list(ingest(root, files, part, width=12, height=10, workers=1, segment_rows=16,
                start_file=16))
    assert [n.decode() for n in full.names()] == files
    assert part.names() == full.names()
    np.testing.assert_array_equal(part.read(0, 40), full.read(0, 40))
