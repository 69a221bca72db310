"""The run on Dask: a real LocalCluster with 2 worker processes, on small generated images."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import dask
import numpy as np
import pytest
from distributed import Client, LocalCluster
from sklearn.metrics import adjusted_rand_score

import stream_cluster
from stream_cluster import RunConfig
from stream_cluster._cli.main import main
from stream_cluster.errors import CheckpointMismatchError, ConfigError
from stream_cluster.parallel.dask_executor import (
    LOST_WORKER_SECONDS,
    DaskExecutor,
    SharedStorageError,
    connect,
)
from stream_cluster.parallel.executor import WorkerDied
from stream_cluster.pca import StreamingPCA, merge_tree
from stream_cluster.runner.dask_steps import iter_run_dask
from stream_cluster.stages.fit_pca import load_pca, read_scaled
from stream_cluster.storage.checkpoint import load_arrays
from stream_cluster.storage.store import RowStore

from . import dask_faults
from .conftest import make_shapes_corpus
from .executor_tasks import die_on_13, square

BUDGET = 2 * 2**30


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Two worker processes, one thread each; a task is given up after its second dead worker."""
    settings = {"distributed.scheduler.allowed-failures": 1,
                "distributed.deploy.lost-worker-timeout": LOST_WORKER_SECONDS}  # fmt: skip
    with dask.config.set(settings):
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                          dashboard_address=None, memory_limit=BUDGET) as c:  # fmt: skip
            yield c


@pytest.fixture(scope="module")
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int]]:
    root = tmp_path_factory.mktemp("shapes")
    return root, make_shapes_corpus(root, n=90)


def test_local_cluster_leaves_the_environment_as_it_was() -> None:
    """Check that ``--dask local:N`` does not leave the nanny's thread settings behind.

    Distributed's nanny writes OMP/OPENBLAS/MKL_NUM_THREADS=1 into ``os.environ`` to start its
    workers; left there, every process started afterwards runs single-threaded BLAS, which on
    AVX2 kernels rounds differently (found as a resume test failing after the Dask tests).
    """
    before = dict(os.environ)
    with connect("local:1", BUDGET) as client:
        assert client.submit(os.getenv, "OPENBLAS_NUM_THREADS").result() == "1"
    assert dict(os.environ) == before


def _config(images: Path, out: Path, address: str, **kw: Any) -> RunConfig:
    """The tests' settings; the pixels unless ``features`` says otherwise (auto means hog)."""
    base: dict[str, Any] = dict(mem_budget=BUDGET, width=16, height=20, n_components=8, k=3,
                                k_range=(2, 6), batch_size=16, checkpoint_seconds=0.0,
                                features="pixels")  # fmt: skip
    base.update(kw)
    return RunConfig(images, out, dask=address, **base)


def _run(config: RunConfig, stop_after: tuple[str, int] | None = None, **kw: Any) -> Any:
    """Consume the run; with ``stop_after=(stage, done)``, stop the client at that event."""
    gen = iter_run_dask(config, **{"shard_images": 32, **kw})
    try:
        while True:
            ev = next(gen)
            if stop_after and ev.stage == stop_after[0] and ev.done >= stop_after[1]:
                gen.close()
                return None
    except StopIteration as stop:
        return stop.value


def _labels(out: Path) -> list[tuple[str, str]]:
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        return [(r["path"], r["cluster"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def reference(
    cluster: LocalCluster, shapes: tuple[Path, list[int]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An uninterrupted run on the shapes: the labels every fault test must reproduce."""
    out = tmp_path_factory.mktemp("reference") / "run"
    _run(_config(shapes[0], out, cluster.scheduler_address))
    return out


def test_dask_run_labels_every_image(reference: Path, shapes: tuple[Path, list[int]]) -> None:
    """Check that every image gets a label, the kinds are found and run.json has the Dask part."""
    rows = _labels(reference)
    assert len(rows) == 90 and len({p for p, _ in rows}) == 90
    truth = [int(Path(p).parent.name[-1]) for p, _ in rows]
    assert adjusted_rand_score(truth, [int(c) for _, c in rows]) > 0.9
    doc = json.loads((reference / "run.json").read_text())
    dask_doc = doc["dask"]
    assert dask_doc["layout"]["shard_bounds"] == [0, 2, 4, 6]  # 6 segments of 16, 3 shards
    assert set(dask_doc["fits"]) == {"0", "1", "2"}
    assert set(dask_doc["merges"]) == {"0-1", "0-2"}
    assert all(m["read_bytes"] > 0 and m["seconds"] > 0 for m in dask_doc["merges"].values())
    assert len(dask_doc["worker_peak_rss_bytes"]) >= 2
    assert all(0 < p < BUDGET for p in dask_doc["worker_peak_rss_bytes"].values())
    assert doc["results"]["n_images"] == 90
    for name in ("index.html", "model.h5", "skipped.csv", "montages/cluster-000.png"):
        assert (reference / name).exists(), name


def test_dask_run_is_deterministic(reference: Path, cluster: LocalCluster, tmp_path: Path,
                                   shapes: tuple[Path, list[int]]) -> None:  # fmt: skip
    """Check that the same shards and seed give the same labels and PCA in a new run folder."""
    out = tmp_path / "again"
    _run(_config(shapes[0], out, cluster.scheduler_address))
    assert _labels(out) == _labels(reference)
    a, _ = load_arrays(out / "pca.h5")
    b, _ = load_arrays(reference / "pca.h5")
    np.testing.assert_array_equal(a["components_"], b["components_"])


def test_dask_tree_is_merge_tree_of_the_shard_fits(reference: Path) -> None:
    """Check that the PCA the tasks merged is merge_tree of the shards' fits, in shard order,
    and that no intermediate state is left on disk."""
    pixels = RowStore(reference / "pixels", 320, np.uint8)
    shards = []
    for lo, hi in ((0, 32), (32, 64), (64, 90)):  # segments [0, 2), [2, 4), [4, 6) of 16 rows
        model = StreamingPCA(8)
        for b in range(lo, hi, 16):
            model.partial_fit(read_scaled(pixels, b, min(b + 16, hi)))
        shards.append(model)
    expected = merge_tree(shards)
    assert not (reference / "dask" / "pca").exists()
    got = load_pca(reference / "pca.h5")
    assert got.n_samples_seen_ == 90
    np.testing.assert_allclose(got.explained_variance_, expected.explained_variance_, rtol=1e-5)
    np.testing.assert_allclose(np.abs(np.sum(got.components_ * expected.components_, axis=1)),
                               1.0, atol=1e-4)  # fmt: skip


def _lowrank_corpus(root: Path, n: int, rank: int, seed: int = 0) -> None:
    """Grey 16x20 PNGs that are integer mixtures of ``rank`` binary patterns: exact rank."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((rank, 20, 16)) < 0.3
    root.mkdir(parents=True)
    for i in range(n):
        img = (patterns * rng.integers(0, 60, rank)[:, None, None]).sum(axis=0)
        cv2.imwrite(str(root / f"img-{i:03d}.png"), img.astype(np.uint8))


def test_dask_merged_pca_equals_a_sequential_fit(cluster: LocalCluster, tmp_path: Path) -> None:
    """Check that with every shard and merge holding the full rank, the merged PCA equals one
    StreamingPCA fitted on all rows in order (explained variance, components, mean)."""
    _lowrank_corpus(tmp_path / "img", 120, rank=5)
    out = tmp_path / "run"
    _run(_config(tmp_path / "img", out, cluster.scheduler_address, k=2))
    pixels = RowStore(out / "pixels", 320, np.uint8)
    seq = StreamingPCA(8)
    for lo in range(0, len(pixels), 16):
        seq.partial_fit(read_scaled(pixels, lo, min(lo + 16, len(pixels))))
    got = load_pca(out / "pca.h5")
    assert got.n_samples_seen_ == seq.n_samples_seen_ == 120
    np.testing.assert_allclose(got.mean_, seq.mean_, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.var_, seq.var_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(got.explained_variance_[:5], seq.explained_variance_[:5], rtol=1e-5)
    assert np.all(got.explained_variance_[5:] < 1e-6 * got.explained_variance_[0])
    np.testing.assert_allclose(got.components_[:5] @ seq.components_[:5].T, np.eye(5), atol=1e-4)


@pytest.mark.parametrize("target", ["ingest", "fit", "merge"])
def test_dask_worker_killed_mid_task_gives_the_same_labels(
    target: str, reference: Path, cluster: LocalCluster, client: Client, tmp_path: Path,
    shapes: tuple[Path, list[int]],
) -> None:  # fmt: skip
    """Check that a worker SIGKILLed inside a task is restarted, the task rerun, and the labels
    are those of the run without the fault."""
    marker = tmp_path / "killed"
    client.run(dask_faults.arm, target, os.fspath(marker))
    try:
        out = tmp_path / "run"
        _run(_config(shapes[0], out, cluster.scheduler_address))
    finally:
        client.run(dask_faults.disarm, target)
    assert marker.exists(), "no worker was killed"
    client.wait_for_workers(2, timeout=60)
    assert _labels(out) == _labels(reference)


def test_dask_client_stopped_then_rerun_keeps_finished_work(
    reference: Path, cluster: LocalCluster, tmp_path: Path, shapes: tuple[Path, list[int]]
) -> None:
    """Check that after the client stops mid-PCA, the same command keeps the segments and the
    finished shard states and ends with the labels of an uninterrupted run."""
    out = tmp_path / "run"
    config = _config(shapes[0], out, cluster.scheduler_address)
    assert _run(config, stop_after=("pca", 2)) is None
    fits = json.loads((out / "state.json").read_text())["stages"]["dask"]["fits"]
    assert len(fits) >= 2, "fewer than 2 shards were fitted before the stop"
    segments = {p: p.stat().st_mtime_ns for p in (out / "pixels").glob("seg-*.h5")}
    _run(config)
    after = json.loads((out / "state.json").read_text())["stages"]["dask"]["fits"]
    assert {j: after[j] for j in fits} == fits  # not fitted again: same worker, pid, seconds
    assert {p: p.stat().st_mtime_ns for p in segments} == segments
    assert _labels(out) == _labels(reference)


@pytest.mark.slow
def test_dask_file_that_kills_its_worker_is_skipped(cluster: LocalCluster, tmp_path: Path) -> None:
    """Check that a file whose decoder kills every worker is skipped as a crash, the rest kept."""
    from .crashy import decode_or_die

    images = tmp_path / "img"
    make_shapes_corpus(images, n=40)
    shutil.copy(images / "kind0" / "img-000.png", images / "kind0" / "crash.png")
    out = tmp_path / "run"
    res = _run(_config(images, out, cluster.scheduler_address), decode_chunk=decode_or_die)
    assert res.n_images == 40 and res.n_skipped == 1
    assert "crash.png" in (out / "skipped.csv").read_text()


def test_dask_probe_says_when_workers_do_not_share_the_run_folder(tmp_path: Path) -> None:
    """Check the message when a worker's run folder is another directory than the client's: a
    worker in its own mount namespace sees an empty tmpfs mounted over the run folder."""
    images = tmp_path / "img"
    make_shapes_corpus(images, n=12)
    out = tmp_path / "run"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.fspath(Path(stream_cluster.__file__).parents[1])}
    with LocalCluster(n_workers=0, dashboard_address=":0") as sched:
        cmd = (f'mount -t tmpfs tmpfs "{out}" && exec "{sys.executable}" -m '
               f"distributed.cli.dask_worker {sched.scheduler_address} --nworkers 1 --nthreads 1 "
               f"--no-dashboard --dashboard-address :0 --memory-limit {BUDGET}")  # fmt: skip
        worker = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                                   cmd], env=env)  # fmt: skip
        try:
            with pytest.raises(SharedStorageError, match="not on storage shared") as err:
                _run(_config(images, out, sched.scheduler_address, n_components=4))
        finally:
            worker.kill()
            worker.wait(timeout=30)
    text = str(err.value)
    assert str(out) in text and "which this client cannot read" in text
    assert "--dask local:N" in text


def test_dask_executor_yields_every_result_and_reports_dead_shards(client: Client) -> None:
    """Check the Executor contract on Dask: every result once, a window, a killing shard."""
    ex = DaskExecutor(client, max_in_flight=3)
    got = {r.index: r.value for r in ex.map_unordered(square, range(20), window=2)}
    assert got == {i: i * i for i in range(20)}
    results = {r.index: r for r in ex.map_unordered(die_on_13, range(16))}
    assert isinstance(results[13].died, WorkerDied)
    assert all(results[i].value == i for i in range(16) if i != 13)
    client.wait_for_workers(2, timeout=60)


def test_cli_dask_without_the_extra_says_how_to_install(
    shapes: tuple[Path, list[int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Check that --dask without Dask installed stops with the pip command, exit code 2."""
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    code = main([os.fspath(shapes[0]), "--dask", "local:2", "--out", os.fspath(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'stream-cluster[dask]'" in err
    assert not (tmp_path / "r").exists()


def test_cli_dask_checks_the_address_and_plans_per_worker(
    shapes: tuple[Path, list[int]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Check that a bad --dask is refused by name and the plan says the budget is per worker."""
    assert main([os.fspath(shapes[0]), "--dask", "local:0"]) == 2
    assert "--dask must be local:N" in capsys.readouterr().err
    argv = ["plan", os.fspath(shapes[0]), "--dask", "local:2", "--mem-budget", "2G",
            "--size", "16x20", "--components", "8"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "applies to each of the 2 local worker processes" in text
    assert "and to this client process" in text


@pytest.mark.slow
def test_cli_dask_local_cluster_runs(
    shapes: tuple[Path, list[int]], tmp_path: Path
) -> None:
    """Check `stream-cluster IMAGES --dask local:2` end to end in a subprocess."""
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "stream_cluster", os.fspath(shapes[0]), "--dask", "local:2",
            "--out", os.fspath(out), "--size", "16x20", "--components", "8", "--k", "3",
            "--batch-size", "16", "--no-progress"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.fspath(Path(stream_cluster.__file__).parents[1])}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(_labels(out)) == 90


def test_dask_refuses_update_and_a_single_process_run_folder(
    shapes: tuple[Path, list[int]], cluster: LocalCluster, tmp_path: Path
) -> None:
    """Check that --update is refused with --dask, and so is a folder a run without it made."""
    out = tmp_path / "run"
    config = _config(shapes[0], out, cluster.scheduler_address)
    with pytest.raises(ConfigError, match="--update is not available with --dask"):
        _run(config, update=True)
    stream_cluster.run(dataclasses.replace(config, dask=None, workers=0))
    with pytest.raises(CheckpointMismatchError, match="made without --dask"):
        _run(config)


@pytest.fixture(scope="module")
def hog_runs(
    cluster: LocalCluster, shapes: tuple[Path, list[int]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The shapes with the default features (auto: hog at 16x20) on Dask with one PCA shard,
    and the same settings in this process."""
    root = tmp_path_factory.mktemp("hog")
    config = _config(shapes[0], root / "dask", cluster.scheduler_address, features="auto")
    assert config.features == "hog"
    _run(config, shard_images=1000)
    stream_cluster.run(dataclasses.replace(config, dask=None, out_dir=root / "local", workers=0))
    return root / "dask", root / "local"


def _features(out: Path) -> np.ndarray:
    """The run's PCA features, rows in path order (a local run and a Dask one store them in
    different orders)."""
    n_keep = json.loads((out / "state.json").read_text())["stages"]["pca"]["n_keep"]
    store = RowStore(out / "features", int(n_keep), np.float32)
    rows, names = store.read(0, len(store)), store.names()
    return rows[np.argsort(np.array(names, dtype=object))]


def test_dask_hog_equals_the_local_hog_run(hog_runs: tuple[Path, Path]) -> None:
    """Check that --features hog on Dask fits the HOG rows of a local run (bitwise), gives PCA
    features within 1e-5 of the local run's and the same labels, and records hog in run.json."""
    on_dask, local = hog_runs
    for out in hog_runs:
        assert json.loads((out / "run.json").read_text())["settings"]["features"] == "hog"
    # 16x20 px, 4 px cells: 3 x 4 blocks of 2 x 2 cells of 9 orientations
    a, b = (RowStore(out / "descriptors", 432, np.float32) for out in hog_runs)
    assert a.names() == b.names() and len(a) == 90
    np.testing.assert_array_equal(a.read(0, 90), b.read(0, 90))
    fa, fb = _features(on_dask), _features(local)
    scale = float(np.abs(fb).max())
    np.testing.assert_allclose(fa, fb, rtol=1e-5, atol=1e-5 * scale)
    assert _labels(on_dask) == _labels(local)


def test_dask_hog_resumes_and_repairs_a_rotted_descriptor_segment(
    hog_runs: tuple[Path, Path], cluster: LocalCluster, tmp_path: Path,
    shapes: tuple[Path, list[int]], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Check that a hog run on Dask stopped mid-ingest keeps its finished pixel and HOG segments
    and ends with the uninterrupted run's labels; then that a rotted HOG segment is computed
    again from the pixels (the repair) and the labels do not change."""
    from stream_cluster.storage.checkpoint import RunState

    out = tmp_path / "run"
    config = _config(shapes[0], out, cluster.scheduler_address, features="hog")
    assert _run(config, stop_after=("ingest", 32), shard_images=1000) is None
    finished = sorted((out / "dask" / "ingest").glob("seg-*.json"))
    assert 0 < len(finished) < 6, "the stop was not mid-ingest"
    kept = {p: p.stat().st_mtime_ns for f in finished
            for p in (out / "pixels" / f"{f.stem}.h5", out / "descriptors" / f"{f.stem}.h5")}
    _run(config, shard_images=1000)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    want = _labels(hog_runs[0])
    assert _labels(out) == want

    RunState(out / "state.json").reset(["pca", "embed", "space", "elbow", "cluster", "report"])
    for name in ("pca.h5", "labels.csv"):
        (out / name).unlink()
    segment = out / "descriptors" / "seg-000001.h5"
    size = segment.stat().st_size
    with open(segment, "r+b") as fh:
        fh.seek(size // 2 - 2048)
        fh.write(os.urandom(4096))
    with caplog.at_level("WARNING", logger="stream_cluster"):
        _run(config, shard_images=1000)
    assert any("seg-000001.h5 was corrupt; computed its features again" in r.message
               for r in caplog.records)  # fmt: skip
    assert _labels(out) == want


def test_dask_onnx_equals_the_local_onnx_run_and_refuses_other_model_bytes(
    cluster: LocalCluster, tmp_path: Path, shapes: tuple[Path, list[int]]
) -> None:
    """Check that --features onnx:FILE on Dask computes the local run's feature rows (to 1e-5:
    onnxruntime runs one thread per worker) and labels, and that a worker whose model file has
    other bytes than the client planned for refuses it."""
    from stream_cluster.stages.shard_tasks import SegmentJob, ingest_segment

    from .test_features import _conv_model

    model = _conv_model(tmp_path / "tiny.onnx")
    config = _config(shapes[0], tmp_path / "dask", cluster.scheduler_address,
                     features=f"onnx:{model}", n_components=4)  # fmt: skip
    _run(config, shard_images=1000)
    stream_cluster.run(dataclasses.replace(config, dask=None, out_dir=tmp_path / "local"))
    a, b = (RowStore(tmp_path / out / "descriptors", 8, np.float32) for out in ("dask", "local"))
    assert a.names() == b.names() and len(a) == 90
    np.testing.assert_allclose(a.read(0, 90), b.read(0, 90), rtol=1e-5, atol=1e-6)
    assert _labels(tmp_path / "dask") == _labels(tmp_path / "local")

    px = os.fspath(tmp_path / "px")
    os.mkdir(px)
    job = SegmentJob(0, ("kind0/img-000.png",), os.fspath(shapes[0]), px, px, 16, 20,
                     features=f"onnx:{model}", descriptors_dir=px, features_sha256="0" * 64)
    with pytest.raises(ConfigError, match="a Dask worker reads a model file other than"):
        ingest_segment(job)
