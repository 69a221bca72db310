"""Smoke tests of the benchmark harness on 50 tiny generated images (the real suite is not CI)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from benchmarks import metrics, monitor, report  # noqa: E402
from benchmarks import pipe_stream_cluster as sc  # noqa: E402
from benchmarks.corpus import list_images, make_subset_dir, resolve_sizes  # noqa: E402
from benchmarks.envs import VENV_DIR  # noqa: E402
from benchmarks.run import main  # noqa: E402

N_IMAGES = 50


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 grey 32x24 PNGs in 3 folders; folder c has mean brightness 30 + 80 c, so k=3 is easy."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        c = i % 3
        d = root / f"cat{c}"
        d.mkdir(exist_ok=True)
        img = (rng.random((24, 32)) * 60 + c * 80).astype(np.uint8)
        cv2.imwrite(str(d / f"img{i:03d}.png"), img)
    return root


def _rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines() if x]


def test_run_sklearn_and_ipca_rows_agree_and_resume(corpus: Path, tmp_path: Path) -> None:
    """Check that the in-memory and IPCA rows run, agree, report, and are skipped on rerun."""
    out = tmp_path / "out"
    argv = ["--corpus", str(corpus), "--sizes", "all", "--pipelines", "sklearn-inmem,ipca-loop",
            "--components", "5", "--k", "3", "--out", str(out), "--no-setup"]
    assert main(argv) == 0
    rows = _rows(out)
    assert [r["pipeline"] for r in rows] == ["sklearn-inmem", "ipca-loop"]
    for r in rows:
        assert r["status"] == "ok", r.get("log_tail")
        assert r["n"] == N_IMAGES
        assert r["peak_rss_tree"] > 10 * 2**20
        assert 0.5 < r["explained_variance"] <= 1.0
        assert r["ev_check"] == pytest.approx(r["explained_variance"], rel=1e-3)
        assert 0.0 < r["inertia_frac"] < 0.05
        assert {s["name"] for s in r["stages"]} >= {"kmeans"}
    text = (out / "RESULTS.md").read_text()
    assert f"## {N_IMAGES} images" in text
    ipca_line = next(ln for ln in text.splitlines() if ln.startswith("| ipca-loop"))
    assert "| 1.000 |" in ipca_line  # ARI vs the in-memory reference and EV ratio
    assert (out / "peak_rss.png").stat().st_size > 1000
    assert main(argv) == 0
    assert len(_rows(out)) == 2


def test_run_memory_cap_kills_row_and_skips_larger_sizes(corpus: Path, tmp_path: Path) -> None:
    """Check that passing the memory cap kills the tree, is recorded, and skips larger sizes."""
    out = tmp_path / "out"
    assert main(["--corpus", str(corpus), "--sizes", "20,all", "--pipelines", "sklearn-inmem",
                 "--components", "5", "--k", "3", "--out", str(out), "--mem-cap", "30M"]) == 0
    first, second = _rows(out)
    assert first["status"] == "memory cap"
    assert first["peak_rss_tree"] > 30 * 2**20
    assert second["status"] == "skipped"
    assert second["reason"] == "memory cap at 20 images"
    assert "memory cap" in (out / "RESULTS.md").read_text()


def _dask_python() -> str | None:
    for python in (str(VENV_DIR / "bin" / "python"), sys.executable):
        if Path(python).exists() and subprocess.run(
            [python, "-c", "import dask_ml, dask.array"], capture_output=True
        ).returncode == 0:
            return python
    return None


@pytest.mark.slow
def test_run_dask_chunked_row(corpus: Path, tmp_path: Path) -> None:
    """Check that the chunked Dask row runs and matches the reference where dask-ml imports."""
    python = _dask_python()
    if python is None:
        pytest.skip("no interpreter here imports dask_ml (benchmarks/.venv not set up)")
    out = tmp_path / "out"
    assert main(["--corpus", str(corpus), "--sizes", "all", "--components", "5", "--k", "3",
                 "--pipelines", "sklearn-inmem,dask-chunked", "--dask-block", "20",
                 "--dask-python", python, "--out", str(out)]) == 0
    dask_row = _rows(out)[1]
    assert dask_row["status"] == "ok", dask_row.get("log_tail")
    assert dask_row["ev_check"] > 0.9


def test_run_stream_cluster_absent_is_recorded(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that without a stream-cluster CLI its rows say 'not available' and others run."""
    monkeypatch.setattr(sc, "find_cli", lambda *a, **k: None)
    out = tmp_path / "out"
    assert main(["--corpus", str(corpus), "--sizes", "all", "--pipelines", "stream-cluster",
                 "--budgets", "2G", "--out", str(out)]) == 0
    (row,) = _rows(out)
    assert (row["pipeline"], row["status"]) == ("stream-cluster-2G", "not available")
    assert "not available" in (out / "RESULTS.md").read_text()


@pytest.mark.slow
def test_run_stream_cluster_row(corpus: Path, tmp_path: Path) -> None:
    """Check the real CLI end to end: its run folder is read, scored and drawn."""
    if sc.find_cli(Path(__file__).resolve().parents[1]) is None:
        pytest.skip("stream-cluster CLI not available")
    out = tmp_path / "out"
    assert main(["--corpus", str(corpus), "--sizes", "all", "--components", "5", "--k", "3",
                 "--pipelines", "stream-cluster-2G", "--out", str(out)]) == 0
    (row,) = _rows(out)
    assert row["status"] == "ok", row.get("log_tail")
    assert row["ari_own_features"] > 0.9
    assert row["peak_rss_tree"] < 2 * 2**30
    assert (out / "memory_timeline.png").is_file()


def _fake_run_folder(run: Path, rel_paths: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
    """A run folder laid out as stream-cluster writes it, with features scaled by 1/255."""
    rng = np.random.default_rng(1)
    truth = np.arange(len(rel_paths)) % k
    feats = (rng.normal(size=(len(rel_paths), 4)) + 10 * truth[:, None]).astype(np.float32)
    (run / "features").mkdir(parents=True)
    with h5py.File(run / "features" / "seg-000000.h5", "w") as f:
        f["rows"] = feats / 255
        f["names"] = np.array([p.encode() for p in rel_paths])
    centers = np.stack([feats[truth == c].mean(axis=0) / 255 for c in range(k)])
    with h5py.File(run / "kmeans.h5", "w") as f:
        f["centers"] = centers
    dist = np.linalg.norm(feats / 255 - centers[truth], axis=1)
    with open(run / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "cluster", "distance"])
        w.writerows([p, int(c), f"{d:.6g}"] for p, c, d in zip(rel_paths, truth, dist))
    run_json = {"stages": {"ingest": {"seconds": 1.5, "peak_rss_bytes": 10},
                           "pca": {"seconds": 2.0, "peak_rss_bytes": 20}},
                "peak_rss_bytes": 20, "results": {"explained_variance": 0.9}}
    (run / "run.json").write_text(json.dumps(run_json))
    with open(run / "memory.csv", "w") as fh:
        fh.write("t_s,rss_bytes,stage\n0.0,100,ingest\n0.1,200,ingest\n0.2,150,pca\n")
    return truth, feats


def test_stream_cluster_collect_reads_run_folder(corpus: Path, tmp_path: Path) -> None:
    """Check that the adapter aligns labels, finds features, scores them and plots memory."""
    rel = list_images(corpus)
    subset = make_subset_dir(corpus, rel[:30], tmp_path / "subset")
    assert list_images(subset) == rel[:30]
    order = list(reversed(rel[:30]))  # the run folder lists images in another order
    truth, feats = _fake_run_folder(tmp_path / "run", order, k=3)
    total_var = float(feats.astype(np.float64).var(axis=0, ddof=1).sum()) / 0.8
    got = sc.collect(tmp_path / "run", rel[:30], subset, total_var=total_var, k=3, seed=0,
                     labels_out=tmp_path / "labels.npy")
    aligned = np.load(tmp_path / "labels.npy")
    assert np.array_equal(aligned, truth[::-1])
    assert got["explained_variance"] == 0.9
    assert got["stages_reported"]["pca"] == {"seconds": 2.0, "peak_rss": 20}
    assert got["ari_own_features"] == pytest.approx(1.0)
    assert got["inertia"] == pytest.approx(got["inertia_labels_csv"], rel=1e-4)
    assert got["feature_scale"] == "1/255"
    assert got["ev_check"] == pytest.approx(0.8, rel=1e-4)
    png = tmp_path / "timeline.png"
    report.plot_memory_timeline(tmp_path / "run" / "memory.csv", png, 180, "t")
    assert png.stat().st_size > 1000


def test_stream_cluster_command_is_the_documented_cli() -> None:
    """Check that the CLI is invoked with the flags the benchmark documents."""
    cmd = sc.command(["stream-cluster"], Path("imgs"), "2G", 800, 10, Path("run"), 0)
    assert cmd == ["stream-cluster", "imgs", "--mem-budget", "2G", "--components", "800",
                   "--k", "10", "--out", "run", "--seed", "0", "--profile-memory",
                   "--no-progress"]
    assert sc.parse_mem("2G") == 2 * 2**30
    assert sc.parse_mem("512MiB") == 512 * 2**20


@pytest.mark.parametrize(
    ("text", "total", "want"),
    [("10,all", 50, [10, 50]), ("all,all", 7, [7]), ("3, 1", 9, [1, 3])],
    ids=["all", "dedup", "sorted"],
)
def test_resolve_sizes_parses(text: str, total: int, want: list[int]) -> None:
    """Check that --sizes accepts integers and 'all', sorted and without duplicates."""
    assert resolve_sizes(text, total) == want


def test_resolve_sizes_rejects_too_many() -> None:
    """Check that a size above the corpus is refused with the numbers in the message."""
    with pytest.raises(ValueError, match="exceeds the corpus \\(5 images\\)"):
        resolve_sizes("6", 5)


def test_inertia_is_sum_of_squared_distances() -> None:
    """Check the harness inertia against a hand computation."""
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0]])
    labels = np.array([0, 0, 1])
    centers = np.array([[1.0, 0.0], [10.0, 11.0]])
    assert metrics.inertia(x, labels, centers) == pytest.approx(1 + 1 + 1)


def test_parse_time_v_reads_gnu_time_report() -> None:
    """Check that GNU time's verbose report is parsed, including a signal line."""
    text = ('\tCommand being timed: "python -c x"\n\tMaximum resident set size (kbytes): 2048\n'
            "\tExit status: 0\nCommand terminated by signal 9\n")
    got = monitor.parse_time_v(text)
    assert got["Maximum resident set size (kbytes)"] == "2048"
    assert got["Command terminated by signal"] == "9"


def test_pca_update_benchmark_runs_on_a_run_folder(corpus: Path, tmp_path: Path) -> None:
    """Check that benchmarks.pca_update times both solvers on a finished run's pixel store."""
    from stream_cluster import RunConfig, run

    out = tmp_path / "run"
    run(RunConfig(corpus, out, mem_budget=2**31, width=32, height=24, n_components=5, k=3,
                  batch_size=10, checkpoint_seconds=0.0, workers=0))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.pca_update", str(out), "--batch", "10",
         "--components", "5"],
        capture_output=True, text=True, check=True, timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    got = json.loads(proc.stdout)
    assert got["features"] == 32 * 24 and len(got["streaming_pca_s"]) == 3
    assert got["sklearn_s"] > 0 and got["gemm_bound_s"] > 0
    assert got["gram_update_flops"] == 768 * (10 * 10 + 4 * 5 * 10 + 2 * 5 * 5)


def test_scale_runs_records_each_size(tmp_path: Path) -> None:
    """benchmarks.scale_runs: prefixes as hard links, one CLI run per size, records from the
    runs' own files, and a table made from them."""
    import json

    from benchmarks.scale_runs import main as scale_main
    from benchmarks.scale_runs import prefix_folder

    from .conftest import make_shapes_corpus

    src = tmp_path / "src"
    make_shapes_corpus(src, n=40, size=(24, 24))
    out = tmp_path / "out"
    assert scale_main([str(src), str(out), "--sizes", "30,40", "--", "--size", "24x24",
                       "--components", "8", "--k", "3", "--workers", "0"]) == 0  # fmt: skip
    recs = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["n"] for r in recs] == [30, 40] and all(r["rc"] == 0 for r in recs)
    assert [r["n_images"] for r in recs] == [30, 40]
    assert all(r["peak_rss"] > 0 and "embed" in r["stages"] and r["disk"]["pixels"] > 0
               for r in recs)  # fmt: skip
    first = sorted((out / "corpus-30").rglob("*.png"))[0]
    assert first.stat().st_nlink >= 2  # a hard link, not a copy
    assert prefix_folder(src, out, 30) == out / "corpus-30"
