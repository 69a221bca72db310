"""Smoke tests of the codec benchmark on a few generated rows (the real run is not CI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.codecs import (
    Case,
    _Reader,
    _table,
    read_pattern,
    run_cases,
    run_store,
    write_segments,
)
from benchmarks.photo_like import photo_like

D = 430 * 300


def _clip_like(n: int) -> np.ndarray:
    rows = np.full((n, D), 255, np.uint8)
    for i, r in enumerate(rows):
        r[1000 * i : 1000 * i + 20000] = (np.arange(20000) * (i + 3)) % 97
    return rows


def test_photo_like_is_seeded_and_seed_shaped() -> None:
    """Check that photo-like image i depends only on (seed, i) and is 430x300 uint8."""
    a, b, c = photo_like(3, 0), photo_like(3, 0), photo_like(3, 1)
    assert a.shape == (430, 300) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.std() > 10  # not flat: shading, texture and noise


def test_segments_read_back_in_both_patterns(tmp_path: Path) -> None:
    """Check that the benchmark's reader returns the rows written, across segment boundaries."""
    rows = _clip_like(21)
    paths = write_segments(rows, tmp_path, Case("zstd-1", chunk_rows=4, fletcher32=True), 8)
    assert len(paths) == 3
    reader = _Reader(paths, 8, 0)
    out = np.empty((21, D), np.uint8)
    reader.read(5, 19, out)
    np.testing.assert_array_equal(out[:14], rows[5:19])
    read_pattern(reader, 21, "pca", out)
    read_pattern(reader, 21, "embed", out)
    np.testing.assert_array_equal(out[:21], rows)


def test_run_cases_reports_ratio_and_speed(tmp_path: Path) -> None:
    """Check that a case table has a ratio near 1 for raw, > 2 for lz4, and every speed."""
    rows = _clip_like(16)
    cases = [Case("none", chunk_rows=0), Case("lz4", fletcher32=True)]
    res = run_cases(rows, cases, tmp_path, repeats=1, segment_rows=8, memory=False)
    raw, lz4 = res
    assert abs(raw["ratio"] - 1) < 0.01 and lz4["ratio"] > 2
    assert all(r[k] > 0 for r in res for k in ("write_mbs", "pca_mbs", "embed_mbs", "cold_mbs"))
    assert "| lz4 (chunk 8, fletcher32) |" in _table(res)


@pytest.mark.slow
def test_run_cases_measures_memory_in_children(tmp_path: Path) -> None:
    """Check that the peak-memory children run and report a plausible extra RSS per operation."""
    res = run_cases(_clip_like(16), [Case("lz4")], tmp_path, 1, segment_rows=8, memory=True)
    for op in ("pca", "embed", "write"):
        assert 0 < res[0][f"mem_{op}"] < 64 * 2**20  # 1 MiB chunks need a few MiB, not 64


def test_run_store_uses_rowstore(tmp_path: Path) -> None:
    """Check that the RowStore section compresses clip-like rows with zstd and not with none."""
    res = run_store(_clip_like(10), ["none", "zstd"], tmp_path, repeats=1, segment_rows=4)
    assert [r["case"] for r in res] == ["RowStore none", "RowStore zstd"]
    assert res[0]["ratio"] < 1.01 and res[1]["ratio"] > 2


@pytest.mark.slow
def test_store_timing_forces_codec_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that store_timing runs the CLI with the pixel codec forced and sums store calls."""
    import json

    import cv2
    import h5py

    import stream_cluster.storage.store as st
    from benchmarks.store_timing import main

    # main() patches the store module for its process; undo that after this test.
    monkeypatch.setattr(st, "AUTO_UINT8", st.AUTO_UINT8)
    monkeypatch.setattr(st.RowStore, "read", st.RowStore.read)
    monkeypatch.setattr(st.RowStore, "append", st.RowStore.append)

    images = tmp_path / "img"
    images.mkdir()
    for i in range(30):
        img = np.full((24, 24), 255, np.uint8)
        img[i % 12 :, (3 * i) % 12 :] = 20 * (i % 9)
        cv2.imwrite(str(images / f"{i:03d}.png"), img)
    out = tmp_path / "run"
    args = [str(images), "--size", "24x24", "--components", "4", "--k", "3", "--no-progress"]
    assert main(["lz4", str(out), *args]) == 0
    with h5py.File(out / "pixels" / "seg-000000.h5", "r") as f:
        assert f.attrs["compression"] == "lz4"
    totals = json.loads(Path(str(out) + ".io.json").read_text())
    assert totals["pixels.read"][0] > 0 and totals["pixels.append"][0] > 0
