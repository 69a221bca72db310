"""The learned cluster space (``--space tsne``, the default) and HDBSCAN (``--cluster hdbscan``):
placement, the run, assign through the space, resume after kill -9 inside the stage."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from stream_cluster import RunConfig
from stream_cluster._cli.main import main
from stream_cluster.errors import ConfigError
from stream_cluster.model.density import fit_hdbscan
from stream_cluster.model.fitted import load_model
from stream_cluster.model.space import ClusterSpace, fit_space, place_by_neighbours, read_space

from .conftest import make_shapes_corpus
from .faults import cli, cli_env, current_stage

pytestmark = pytest.mark.reproducibility

COMMON = ["--size", "24x24", "--components", "12", "--mem-budget", "2G", "--no-progress"]


def _labels(path: Path) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8") as fh:
        return {r["path"]: int(r["cluster"]) for r in csv.DictReader(fh)}


def _blobs(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (3, d))
    return (centres[np.arange(n) % 3] + rng.normal(0, 1, (n, d))).astype(np.float32)


def test_a_sampled_row_keeps_its_position_and_its_novelty_ignores_itself() -> None:
    x = _blobs(90, 8, 0)
    space, idx = fit_space(x, seed=1, sample=30, iterations=60)
    near = np.empty(len(x))
    pos = space.place(x, nearest=near)
    assert np.array_equal(pos[idx], space.sample_positions)
    assert np.all(near[idx] > 0)  # the distance to the nearest *other* sampled row
    assert np.all(np.isfinite(pos))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 60), st.integers(0, 2**16))
def test_placement_does_not_depend_on_the_batch(batch: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    sx = rng.normal(size=(40, 6)).astype(np.float32)
    sy = rng.normal(size=(40, 2))
    x = rng.normal(size=(70, 6)).astype(np.float32)
    whole = place_by_neighbours(x, sx, sy)
    parts = place_by_neighbours(x, sx, sy, batch=batch)
    # each row's neighbours and weights are its own; the batch's GEMM may round differently
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6 * np.abs(sy).max())


def test_the_space_is_the_same_for_the_same_seed() -> None:
    x = _blobs(120, 10, 2)
    a, _ = fit_space(x, seed=5, sample=60, iterations=90)
    b, _ = fit_space(x, seed=5, sample=60, iterations=90)
    assert np.array_equal(a.sample_positions, b.sample_positions)


def test_tiny_input_uses_the_first_two_features() -> None:
    x = _blobs(6, 4, 3)
    space, idx = fit_space(x, seed=0)
    assert len(idx) == 0 and len(space.sample_features) == 0
    assert np.array_equal(space.place(x), x[:, :2].astype(np.float64))


def test_read_space_reads_both_layouts_alike(tmp_path: Path) -> None:
    """Check that a space under a group prefix in HDF5 and one at the root of a dict read alike."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(7, 4)).astype(np.float32)
    positions = rng.normal(size=(7, 2))
    info = {"dims": 4, "neighbours": 3, "novelty_distance": 1.5}
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["space/sample_features"] = features
        f["space/sample_positions"] = positions
    with h5py.File(tmp_path / "m.h5", "r") as f:
        from_h5 = read_space(f, info, prefix="space/")
    from_dict = read_space({"sample_features": features, "sample_positions": positions}, info)
    for space in (from_h5, from_dict):
        assert np.array_equal(space.sample_features, features)
        assert space.sample_features.dtype == np.float32
        assert np.array_equal(space.sample_positions, positions)
        assert (space.dims, space.neighbours, space.novelty_distance) == (4, 3, 1.5)


def test_default_run_clusters_in_the_space_and_assign_gives_its_labels(tmp_path: Path) -> None:
    images = tmp_path / "images"
    kinds = make_shapes_corpus(images, n=90, size=(24, 24), seed=4)
    out = tmp_path / "run"
    assert main([str(images), "--out", str(out), "--k", "3", *COMMON]) == 0
    labels = _labels(out / "labels.csv")
    names = sorted(labels)
    assert adjusted_rand_score([kinds[int(n[-7:-4])] for n in names],
                               [labels[n] for n in names]) > 0.9  # fmt: skip
    state = json.loads((out / "state.json").read_text())["stages"]
    assert state["space"]["done"] and state["cluster"]["key"]["space"] == "tsne"
    with h5py.File(out / "model.h5") as f:
        assert f["kmeans/centers"].shape == (3, 2)
        assert f["space/sample_features"].shape == (90, 12)
    model = load_model(out)
    assert isinstance(model.space, ClusterSpace)
    predicted = model.predict([images / n for n in names])
    assert predicted.tolist() == [labels[n] for n in names]
    assert main(["assign", str(out), str(images), "--no-progress"]) == 0
    with open(out / "assigned.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sum(r["novel"] == "true" for r in rows) <= 3  # 1 % of training images, rounded up


def test_space_pca_is_the_seed_path(tmp_path: Path) -> None:
    """--space pca clusters the PCA features themselves: 12-wide centres, no space stage."""
    images = tmp_path / "images"
    make_shapes_corpus(images, n=60, size=(24, 24), seed=5)
    out = tmp_path / "run"
    assert main([str(images), "--out", str(out), "--k", "3", "--space", "pca", *COMMON]) == 0
    state = json.loads((out / "state.json").read_text())["stages"]
    assert "space" not in state
    assert load_model(out).space is None
    with h5py.File(out / "model.h5") as f:
        assert f["kmeans/centers"].shape == (3, 12) and "space" not in f


def test_changing_the_space_reclusters_without_refitting(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_shapes_corpus(images, n=60, size=(24, 24), seed=6)
    out = tmp_path / "run"
    pixels = ["--features", "pixels"]  # auto means hog in the learned space
    assert main([str(images), "--out", str(out), "--k", "3", "--space", "pca", *COMMON]) == 0
    pca_seconds = json.loads((out / "state.json").read_text())["stages"]["pca"]["seconds"]
    assert main([str(images), "--out", str(out), "--k", "3", *pixels, *COMMON]) == 0
    state = json.loads((out / "state.json").read_text())["stages"]
    assert state["pca"]["seconds"] == pca_seconds and state["space"]["done"]
    assert load_model(out).space is not None


def test_hdbscan_keeps_noise_as_the_last_group() -> None:
    rng = np.random.default_rng(0)
    blobs = np.concatenate([rng.normal(c, 0.3, (200, 2)) for c in ((0, 0), (10, 0), (0, 10))])
    far = np.array([[50.0, 50.0], [-40.0, 30.0]])
    km, noise = fit_hdbscan(np.concatenate([blobs, far]), min_size=20)
    assert noise == 3 and len(km.centers) == 4
    assert km.labels[-2:].tolist() == [3, 3]
    assert sorted(np.bincount(km.labels[:-2])[:3].tolist()) == [200, 200, 200]


def test_hdbscan_run_and_assign(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_shapes_corpus(images, n=90, size=(24, 24), seed=7)
    out = tmp_path / "run"
    assert main([str(images), "--out", str(out), "--cluster", "hdbscan", *COMMON]) == 0
    labels = _labels(out / "labels.csv")
    rec = json.loads((out / "state.json").read_text())["stages"]["cluster"]
    k = rec["k"]
    assert set(labels.values()) <= set(range(k))
    model = load_model(out)
    assert model.density is not None and model.meta["clusterer"] == "hdbscan"
    names = sorted(labels)
    assert model.predict([images / n for n in names]).tolist() == [labels[n] for n in names]
    if rec["noise"] is not None:
        page = (out / "clusters" / f"{rec['noise']}.html").read_text()
        assert "noise" in page


@pytest.mark.parametrize("bad, says", [
    ({"clusterer": "hdbscan", "space": "pca"}, "--cluster hdbscan needs --space tsne"),
    ({"clusterer": "hdbscan", "k": 5}, "finds the number of clusters itself"),
    ({"space": "umap"}, "--space must be one of tsne, pca"),
])  # fmt: skip
def test_settings_that_cannot_work_fail_first(tmp_path: Path, bad: dict[str, object],
                                              says: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match=says):
        RunConfig(input_dir=tmp_path, out_dir=tmp_path / "run", **bad)  # type: ignore[arg-type]


def test_kill_inside_the_space_stage_resumes_to_identical_labels(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_shapes_corpus(images, n=600, size=(24, 24), seed=8)
    args = [*COMMON, "--k", "3", "--checkpoint-every", "0"]
    ref = tmp_path / "ref"
    assert main([str(images), "--out", str(ref), *args]) == 0
    for attempt in range(5):
        out = tmp_path / f"killed-{attempt}"
        proc = subprocess.Popen(cli(images, out, args), env=cli_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and current_stage(out) in ("ingest", "pca", "embed"):
            time.sleep(0.005)
        landed = current_stage(out)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if landed != "space":
            continue
        assert not (out / "labels.csv").exists()
        r = subprocess.run(cli(images, out, args), env=cli_env(), capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert (out / "labels.csv").read_bytes() == (ref / "labels.csv").read_bytes()
        return
    pytest.fail("no kill landed inside the space stage in 5 attempts")


def test_k_auto_on_the_digits_picks_about_ten(tmp_path: Path) -> None:
    """Check --k auto on scikit-learn's 1,797 digits (10 classes): k in 8..12, clusters that
    match the digits (the learned space's best silhouette; the knee there undershoots)."""
    from stream_cluster._cli.demo import demo_score, write_digits

    write_digits(tmp_path / "digits")
    out = tmp_path / "run"
    assert main([str(tmp_path / "digits"), "--out", str(out), "--size", "8x8", "--components",
                 "40", "--mem-budget", "2G", "--no-progress"]) == 0  # fmt: skip
    k = json.loads((out / "run.json").read_text())["results"]["k"]
    assert 8 <= k <= 12, k
    assert demo_score(out) > 0.8
