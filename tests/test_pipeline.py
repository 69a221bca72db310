"""End-to-end tests of the pipeline through the Python API, on small generated images."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

import stream_cluster.storage.store as store_mod
from stream_cluster import RunConfig, iter_run, run
from stream_cluster.errors import (
    BudgetError,
    CheckpointMismatchError,
    ConfigError,
    DiskFullError,
    InputError,
)

from .conftest import make_shapes_corpus


def _config(images: Path, out: Path, **kw: object) -> RunConfig:
    # the seed's path (pixels, k-means on PCA features): these tests pin its plan and labels
    base = dict(mem_budget=2 * 2**30, width=16, height=20, n_components=8, k=3,
                k_range=(2, 6), batch_size=16, checkpoint_seconds=0.0, workers=1, space="pca")
    base.update(kw)
    return RunConfig(images, out, **base)  # type: ignore[arg-type]


def _labels(out: Path) -> list[tuple[str, str]]:
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        return [(r["path"], r["cluster"]) for r in csv.DictReader(fh)]


def test_run_clusters_shapes_and_writes_outputs(tmp_path: Path) -> None:
    """Check that a run finds the three generated kinds and writes every promised file."""
    kinds = make_shapes_corpus(tmp_path / "img", n=60)
    out = tmp_path / "run"
    res = run(_config(tmp_path / "img", out, k=3, elbow=True))
    assert res.n_images == 60 and res.n_skipped == 0
    rows = _labels(out)
    truth = [int(Path(p).parent.name[-1]) for p, _ in rows]
    assert sorted(truth) == sorted(kinds)
    assert adjusted_rand_score(truth, [int(c) for _, c in rows]) > 0.9
    for name in ("run.json", "labels.csv", "skipped.csv", "elbow.png", "variance.png",
                 "index.html", "pca.h5", "montages/cluster-000.png"):
        assert (out / name).exists(), name
    doc = json.loads((out / "run.json").read_text())
    assert doc["results"]["n_images"] == 60
    assert set(doc["stages"]) >= {"ingest", "pca", "embed", "cluster", "report"}
    pca_stage = "ingest+pca" if doc["plan"]["overlap"] else "pca"
    assert doc["peak_rss_bytes"] > 0 and doc["stages"][pca_stage]["peak_rss_bytes"] > 0
    assert 0 < doc["results"]["explained_variance"] <= 1


def test_run_yields_progress_events(shapes_dir: Path, tmp_path: Path) -> None:
    """Check that iter_run reports every stage with memory figures and no printing."""
    events = list(iter_run(_config(shapes_dir, tmp_path / "run")))
    stages = {e.stage for e in events}
    assert {"scan", "ingest", "pca", "embed", "cluster", "report"} <= stages
    assert all(e.rss_bytes > 0 and e.budget == 2 * 2**30 for e in events)
    assert all(0 <= e.done <= e.total for e in events)


def test_rerun_of_finished_run_is_identical_and_quick(shapes_dir: Path, tmp_path: Path) -> None:
    """Check that running a finished run folder again changes nothing."""
    out = tmp_path / "run"
    run(_config(shapes_dir, out))
    first = _labels(out)
    run(_config(shapes_dir, out))
    assert _labels(out) == first


def test_variance_target_keeps_fewest_components(shapes_dir: Path, tmp_path: Path) -> None:
    """Check that --variance keeps the fewest components reaching the target."""
    res = run(_config(shapes_dir, tmp_path / "run", n_components=12, variance=0.5))
    doc = json.loads((tmp_path / "run" / "run.json").read_text())
    evr = np.asarray(doc["results"]["explained_variance_ratio"])
    keep = res.n_components
    assert np.sum(evr[:keep]) >= 0.5 and (keep == 1 or np.sum(evr[: keep - 1]) < 0.5)


def test_changed_k_reruns_only_clustering(shapes_dir: Path, tmp_path: Path) -> None:
    """Check that a new k reuses the store and PCA and only reruns k-means and the report."""
    out = tmp_path / "run"
    run(_config(shapes_dir, out, k=3))
    pca_mtime = (out / "pca.h5").stat().st_mtime_ns
    res = run(_config(shapes_dir, out, k=4))
    assert res.k == 4 and len(set(c for _, c in _labels(out))) <= 4
    assert (out / "pca.h5").stat().st_mtime_ns == pca_mtime


def test_changed_pca_settings_refused(shapes_dir: Path, tmp_path: Path) -> None:
    """Check that other PCA settings on an existing run folder are refused, not mixed."""
    out = tmp_path / "run"
    run(_config(shapes_dir, out))
    with pytest.raises(CheckpointMismatchError, match="n_components: 8 -> 9.*--fresh"):
        run(_config(shapes_dir, out, n_components=9))
    res = run(_config(shapes_dir, out, n_components=9), fresh=True)
    assert res.n_components == 9


def test_changed_seed_reruns_only_kmeans(shapes_dir: Path, tmp_path: Path) -> None:
    """Check that --seed on a finished run reruns k-means and the report, not the PCA."""
    out = tmp_path / "run"
    run(_config(shapes_dir, out))
    state = json.loads((out / "state.json").read_text())
    res = run(_config(shapes_dir, out, seed=1))
    again = json.loads((out / "state.json").read_text())
    assert again["stages"]["pca"] == state["stages"]["pca"]
    assert again["stages"]["embed"] == state["stages"]["embed"]
    assert again["stages"]["cluster"]["key"]["seed"] == 1 and res.k == 3


def test_changed_input_folder_detected(tmp_path: Path) -> None:
    """Check that files added to the input folder after a run are detected and reported."""
    make_shapes_corpus(tmp_path / "img", n=30)
    out = tmp_path / "run"
    run(_config(tmp_path / "img", out))
    make_shapes_corpus(tmp_path / "img" / "more", n=3, seed=5)
    with pytest.raises(CheckpointMismatchError, match="3 added"):
        run(_config(tmp_path / "img", out))


def test_fewer_images_than_components_fails_early(tmp_path: Path) -> None:
    """Check that too few images for the components fails before any heavy work."""
    make_shapes_corpus(tmp_path / "img", n=5)
    with pytest.raises(InputError, match="5 images but --components is 8"):
        run(_config(tmp_path / "img", tmp_path / "run"))
    assert not (tmp_path / "run" / "pixels").exists()


def test_empty_folder_fails_clearly(tmp_path: Path) -> None:
    """Check that a folder without images says what was searched for."""
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match="No images found"):
        run(_config(tmp_path / "img", tmp_path / "run"))


def test_budget_too_small_fails_with_minimum(shapes_dir: Path, tmp_path: Path) -> None:
    """Check that an impossible budget fails at once and names a budget that would work."""
    with pytest.raises(BudgetError, match=r"--mem-budget \d"):
        run(_config(shapes_dir, tmp_path / "run", mem_budget=100 * 2**20))


def test_disk_full_then_resume(shapes_dir: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that ENOSPC mid-ingest gives DiskFullError naming the folder, and a rerun resumes.

    The error is injected where HDF5 creates a file (the real full disk is
    tests/test_faults_disk.py, on a tmpfs); this one runs anywhere, in-process.
    """
    out = tmp_path / "run"
    ref_out = tmp_path / "ref"
    run(_config(shapes_dir, ref_out, batch_size=16))
    real_create = store_mod.h5py.h5f.create
    calls = {"n": 0}

    def failing_create(name: bytes, *a: object, **kw: object) -> object:
        if b"/pixels/" in name:
            calls["n"] += 1
            if calls["n"] >= 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_create(name, *a, **kw)

    monkeypatch.setattr(store_mod.h5py.h5f, "create", failing_create)
    with pytest.raises(DiskFullError, match=str(out / "pixels")):
        run(_config(shapes_dir, out, batch_size=16, workers=0))
    monkeypatch.setattr(store_mod.h5py.h5f, "create", real_create)
    assert not list((out / "pixels").glob("*.partial"))
    run(_config(shapes_dir, out, batch_size=16))
    assert _labels(out) == _labels(ref_out)


def test_overlapped_and_sequential_paths_agree(tmp_path: Path) -> None:
    """Check that decoding beside the PCA gives the same model and labels as decoding first."""
    make_shapes_corpus(tmp_path / "img", n=60)
    overlapped = run(_config(tmp_path / "img", tmp_path / "a", workers=2))
    sequential = run(_config(tmp_path / "img", tmp_path / "b", workers=0))
    plan_a = json.loads((tmp_path / "a" / "run.json").read_text())["plan"]
    plan_b = json.loads((tmp_path / "b" / "run.json").read_text())["plan"]
    assert plan_a["overlap"] and not plan_b["overlap"]
    assert _labels(tmp_path / "a") == _labels(tmp_path / "b")
    assert overlapped.explained_variance == sequential.explained_variance


def test_plan_folder_sizes_decode_workers_to_the_headers(tmp_path: Path) -> None:
    """Check that small images let decoding overlap the PCA where the worst case would not.

    At a budget where a worker sized for any image (256 MiB decode cap) does not fit beside the
    PCA, the header bound of these small PNGs does; the run then decodes every image with that
    lower cap and gives the same labels as the sequential plan.
    """
    from stream_cluster.images.decode import DECODE_MEMORY_CAP, decode_cost_bound
    from stream_cluster.images.scan import scan
    from stream_cluster.runner.pipeline import plan, plan_folder

    make_shapes_corpus(tmp_path / "img", n=40, size=(120, 90))
    found = scan(tmp_path / "img")
    bound = max(decode_cost_bound(found.root / rel, 120, 90) for rel in found.files)

    def cfg(budget: int, out: str) -> RunConfig:
        return _config(tmp_path / "img", tmp_path / out, mem_budget=budget, width=120,
                       height=90, workers=None)

    def overlaps(budget: int, cap: int = DECODE_MEMORY_CAP) -> bool:
        try:
            return plan(cfg(budget, "x"), 40, decode_cap=cap).overlap
        except BudgetError:
            return False

    budget = next(
        b for b in range(256 * 2**20, 2**31, 8 * 2**20) if overlaps(b, bound) and not overlaps(b)
    )
    chosen = plan_folder(cfg(budget, "x"), found.root, found.files)
    assert chosen.overlap and chosen.decode_cap == bound < DECODE_MEMORY_CAP
    run(cfg(budget, "a"))
    recorded = json.loads((tmp_path / "a" / "run.json").read_text())["plan"]
    assert recorded["overlap"] and recorded["decode_cap"] == bound
    assert (tmp_path / "a" / "skipped.csv").read_text().count("\n") == 1  # header only
    run(dataclasses.replace(cfg(budget, "b"), workers=0))
    assert _labels(tmp_path / "a") == _labels(tmp_path / "b")


def test_store_compression_changes_disk_not_labels(shapes_dir: Path, tmp_path: Path) -> None:
    """Check that --store-compression none and zstd give the same labels, zstd a smaller store."""
    import h5py

    a = run(_config(shapes_dir, tmp_path / "a", store_compression="none"))
    b = run(_config(shapes_dir, tmp_path / "b", store_compression="zstd"))
    assert _labels(tmp_path / "a") == _labels(tmp_path / "b") and a.k == b.k
    with h5py.File(tmp_path / "b" / "pixels" / "seg-000000.h5") as f:
        assert f.attrs["compression"] == "zstd"
    size = {x: sum(p.stat().st_size for p in (tmp_path / x / "pixels").glob("*.h5"))
            for x in "ab"}
    assert size["b"] < size["a"]
    with pytest.raises(ConfigError, match="--store-compression must be one of"):
        _config(shapes_dir, tmp_path / "c", store_compression="lzma")
