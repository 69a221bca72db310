"""Tests for the parallel decode stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from stream_cluster.ingest import _Decoder, decode_many, ingest
from stream_cluster.store import RowStore

from .conftest import make_shapes_corpus
from .crashy import decode_or_die


def test_decoder_isolates_a_file_that_kills_its_worker(tmp_path: Path) -> None:
    """Check that a worker death skips only the guilty file and every other file decodes."""
    make_shapes_corpus(tmp_path, n=30)
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    shutil.copy(tmp_path / files[0], tmp_path / "kind0" / "crash.png")
    files = sorted([*files, "kind0/crash.png"])
    chunks = [files[i : i + 8] for i in range(0, len(files), 8)]
    dec = _Decoder(str(tmp_path), 12, 10, workers=2, decode_chunk=decode_or_die)
    results = list(dec.map(chunks))
    reasons = [r for _, rs in results for r in rs]
    got = dict(zip([f for c in chunks for f in c], reasons))
    assert got["kind0/crash.png"] == "decoder crashed: the worker process died on this file"
    assert all(v is None for k, v in got.items() if k != "kind0/crash.png")
    rows = np.vstack([r for r, _ in results])
    expect, _ = decode_many(str(tmp_path), files, 12, 10)
    ok = [i for i, f in enumerate(files) if f != "kind0/crash.png"]
    np.testing.assert_array_equal(rows[ok], expect[ok])


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
