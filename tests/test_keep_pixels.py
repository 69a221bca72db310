"""``--keep-pixels never``: no pixel store, the same labels, resumable after a real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stream_cluster import ConfigError, RunConfig, run
from stream_cluster.errors import BudgetError, SourceChangedError, StoreError
from stream_cluster.memory.budget import plan_memory
from stream_cluster.memory.planner import disk_need
from stream_cluster.memory.stage_bytes import PIPE_SEGMENT_ROWS
from stream_cluster.runner.pipeline import iter_run
from stream_cluster.stages.keep_pixels_never import PixelPipe, SourcePixels

from .conftest import make_shapes_corpus

# Results equal bitwise or to README's precision: CI reruns these under other BLAS kernels.
pytestmark = pytest.mark.reproducibility

# --keep-pixels never has pixel features (auto), so the stored run it is compared with too
ARGS = ["--size", "24x24", "--components", "12", "--batch-size", "24", "--k", "3",
        "--workers", "2", "--no-progress", "--checkpoint-every", "0", "--mem-budget", "2G",
        "--features", "pixels"]


def _cmd(images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stream_cluster", str(images), "--out", str(out), *ARGS, *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keep") / "images"
    make_shapes_corpus(root, n=600, size=(24, 24), seed=5)
    (root / "kind0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


@pytest.fixture(scope="module")
def stored(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stored") / "run"
    subprocess.run(_cmd(corpus, out), check=True, env=_env(), timeout=300,
                   capture_output=True)  # fmt: skip
    return out


def _config(images: Path, out: Path, **kw: object) -> RunConfig:
    base: dict[str, object] = dict(width=24, height=24, n_components=12, batch_size=24, k=3,
                                   workers=2, checkpoint_seconds=0.0, mem_budget=2 * 2**30,
                                   features="pixels")
    base.update(kw)
    return RunConfig(images, out, **base)  # type: ignore[arg-type]


def test_never_gives_the_stored_runs_labels_and_writes_no_pixels(
    corpus: Path, stored: Path, tmp_path: Path
) -> None:
    """Same labels, distances, skips and montages as a stored run; no pixel store on disk."""
    out = tmp_path / "never"
    result = run(_config(corpus, out, keep_pixels="never"))
    assert not (out / "pixels").exists()
    assert (out / "names").is_dir()
    assert (out / "labels.csv").read_bytes() == (stored / "labels.csv").read_bytes()
    assert (out / "skipped.csv").read_bytes() == (stored / "skipped.csv").read_bytes()
    assert result.n_images == 600 and result.n_skipped == 1
    for montage in sorted((stored / "montages").glob("*.png")):
        assert (out / "montages" / montage.name).read_bytes() == montage.read_bytes()
    thumbs = sorted(p.relative_to(stored) for p in (stored / "thumbs").rglob("*.jpg"))
    assert thumbs == sorted(p.relative_to(out) for p in (out / "thumbs").rglob("*.jpg"))
    plan = json.loads((out / "run.json").read_text())["plan"]
    assert plan["keep_pixels"] == "never" and plan["overlap"]


def test_kill9_during_the_pca_resumes_to_the_same_labels(
    corpus: Path, stored: Path, tmp_path: Path
) -> None:
    """Real SIGKILLs of the process group while the PCA runs (its rows only in memory): the
    rerun decodes the lost rows again and ends with the stored run's labels."""
    out = tmp_path / "run"
    landed = []
    for threshold in (48, 200, 400):
        proc = subprocess.Popen(_cmd(corpus, out, "--keep-pixels", "never"), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        cursor = 0
        while proc.poll() is None:
            try:
                pca = json.loads((out / "state.json").read_text())["stages"].get("pca", {})
                cursor = int(pca.get("cursor", 0))
            except (OSError, ValueError, KeyError):
                pca = {}
            if cursor >= threshold or pca.get("done"):
                break
            time.sleep(0.002)
        if proc.poll() is None and not pca.get("done"):
            os.killpg(proc.pid, signal.SIGKILL)
            landed.append(cursor)
        proc.wait()
    assert landed, "no kill landed inside the PCA"
    final = subprocess.run(_cmd(corpus, out, "--keep-pixels", "never"), env=_env(),
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert (out / "labels.csv").read_bytes() == (stored / "labels.csv").read_bytes()
    assert not (out / "pixels").exists()


def test_an_image_gone_before_the_embed_is_named(corpus: Path, tmp_path: Path) -> None:
    """An image that decoded for the PCA but is gone when the embed reads it again stops the
    run with its path; restoring it, the rerun finishes."""
    images = tmp_path / "images"
    make_shapes_corpus(images, n=60, size=(24, 24), seed=1)
    out = tmp_path / "run"
    gen = iter_run(_config(images, out, keep_pixels="never", workers=0))
    victim = images / "kind1" / "img-004.png"
    saved, st = victim.read_bytes(), victim.stat()
    with pytest.raises(SourceChangedError, match="img-004.png.*--keep-pixels always"):
        for ev in gen:
            if ev.stage == "embed" and victim.exists():
                victim.unlink()
    victim.write_bytes(saved)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # the same file as at the start
    assert run(_config(images, out, keep_pixels="never", workers=0)).n_images == 60


def test_never_is_refused_with_update_and_dask(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_shapes_corpus(images, n=30, size=(24, 24))
    with pytest.raises(ConfigError, match="--keep-pixels never cannot be used with --dask"):
        _config(images, tmp_path / "d", keep_pixels="never", dask="local:2")
    with pytest.raises(ConfigError, match="--update grows a run from its pixel store"):
        run(_config(images, tmp_path / "u", keep_pixels="never"), update=True)
    with pytest.raises(ConfigError, match="--keep-pixels must be one of always, never"):
        _config(images, tmp_path / "x", keep_pixels="sometimes")


def test_changing_keep_pixels_on_a_run_folder_is_refused(corpus: Path, stored: Path) -> None:
    """A folder made with a pixel store is not silently continued without one (and back)."""
    proc = subprocess.run(_cmd(corpus, stored, "--keep-pixels", "never"), env=_env(),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0
    assert "keep_pixels: 'always' -> 'never'" in proc.stderr


def test_plan_without_a_store() -> None:
    """The plan overlaps decoding with the PCA, keeps the stored plan's PCA batch (the labels
    depend on it), counts the decoders in the embed stage, and says when it cannot fit."""
    kw: dict[str, object] = dict(n_images=100_000, width=300, height=430, n_components=800,
                                 max_k=10, kmeans_from_store=True, decode_cap=17_394_913)
    stored = plan_memory(2 * 2**30, **kw)  # type: ignore[arg-type]
    never = plan_memory(2 * 2**30, keep_pixels="never", **kw)  # type: ignore[arg-type]
    assert never.overlap and never.segment_rows == PIPE_SEGMENT_ROWS
    assert never.pca_batch == stored.pca_batch
    assert never.stage_bytes["embed"] > stored.stage_bytes["embed"]
    assert never.peak_bytes <= 0.9 * 2 * 2**30
    with pytest.raises(BudgetError, match="--keep-pixels always"):
        plan_memory(int(1.5 * 2**30), keep_pixels="never", **kw)  # type: ignore[arg-type]


def test_disk_need_counts_no_pixels_without_a_store(tmp_path: Path) -> None:
    cfg = RunConfig(tmp_path, tmp_path / "out", n_components=800)
    never = RunConfig(tmp_path, tmp_path / "out", n_components=800, keep_pixels="never")
    n = 100_000
    assert disk_need(tmp_path / "out", cfg, n, False) - disk_need(
        tmp_path / "out", never, n, False
    ) >= n * (cfg.n_features - 1024)


def _rows(first: int, n: int, d: int = 4) -> np.ndarray:
    return (np.arange(first, first + n)[:, None] + np.zeros((1, d), int)).astype(np.uint8)


def test_pipe_hands_rows_over_in_order_once(tmp_path: Path) -> None:
    pipe = PixelPipe(tmp_path / "names", 4, capacity=8)
    pipe.append(_rows(0, 5), [b"a%d" % i for i in range(5)])
    pipe.append(_rows(5, 3), [b"b%d" % i for i in range(3)])
    assert len(pipe) == 8 and pipe.n_segments == 2
    assert pipe.read(0, 3)[:, 0].tolist() == [0, 1, 2]
    assert pipe.read(4, 8)[:, 0].tolist() == [4, 5, 6, 7]  # row 3 dropped
    with pytest.raises(StoreError, match="already handed over"):
        pipe.read(2, 4)
    again = PixelPipe(tmp_path / "names", 4, capacity=8)  # the names are durable
    assert again.names() == [b"a0", b"a1", b"a2", b"a3", b"a4", b"b0", b"b1", b"b2"]
    again.truncate_segments(1)
    assert len(again) == 5 and sorted(p.name for p in (tmp_path / "names").iterdir()) == [
        "seg-000000.json"
    ]


def test_pipe_append_waits_for_the_reader_and_close_releases_it(tmp_path: Path) -> None:
    """At most ``capacity`` rows wait; a writer blocked on a reader that left is released."""
    pipe = PixelPipe(tmp_path / "names", 4, capacity=4)
    pipe.append(_rows(0, 4), [b"x"] * 4)
    done = threading.Event()

    def writer() -> None:
        pipe.append(_rows(4, 4), [b"y"] * 4)
        done.set()

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    assert not done.wait(0.3)  # the queue is full
    pipe.read(0, 2)
    assert not done.wait(0.3)  # still two rows queued: 2 + 4 > 4
    pipe.read(2, 4)
    assert done.wait(2.0)
    t.join()
    errors: list[BaseException] = []

    def blocked() -> None:
        try:
            pipe.append(_rows(8, 4), [b"z"] * 4)
        except StoreError as exc:
            errors.append(exc)

    t = threading.Thread(target=blocked, daemon=True)
    t.start()
    time.sleep(0.1)
    pipe.close()
    t.join(2.0)
    assert not t.is_alive() and errors


def test_pipe_start_at_drops_rows_a_resumed_pca_has(tmp_path: Path) -> None:
    pipe = PixelPipe(tmp_path / "names", 4, capacity=2)
    pipe.start_at(6)
    pipe.append(_rows(0, 5), [b"a"] * 5)  # all before the resume point: nothing queued
    pipe.append(_rows(5, 3), [b"b"] * 3)
    assert pipe.read(6, 8)[:, 0].tolist() == [6, 7]


def test_pipe_resumed_inside_a_segment_never_waits_on_rows_it_drops(tmp_path: Path) -> None:
    """A resumed PCA continues inside the segment the ingest decodes again, whose new segments
    may be shorter than the old: the rows before the PCA's cursor are dropped as they arrive,
    so a full queue never holds rows the reader will not take."""
    pipe = PixelPipe(tmp_path / "names", 4, capacity=4)
    pipe.append(_rows(0, 4), [b"a"] * 4)
    assert pipe.read(0, 4)[:, 0].tolist() == [0, 1, 2, 3]
    pipe.append(_rows(4, 4), [b"b"] * 4)
    pipe.truncate_segments(1)  # a kill: rows 4..7 were in memory only
    pipe.start_at(7)  # the PCA had fitted rows up to 7
    pipe.truncate_segments(1)  # the ingest's own truncation on start
    pipe.append(_rows(4, 2), [b"c"] * 2)  # shorter segments this time: all dropped
    t = threading.Thread(target=pipe.append, args=(_rows(6, 4), [b"d"] * 4), daemon=True)
    t.start()
    t.join(2.0)
    assert not t.is_alive()
    assert pipe.read(7, 10)[:, 0].tolist() == [7, 8, 9]


def test_source_pixels_read_like_a_store(tmp_path: Path) -> None:
    images = tmp_path / "images"
    make_shapes_corpus(images, n=30, size=(24, 24))
    names = sorted(os.fsencode(str(p.relative_to(images))) for p in images.rglob("*.png"))
    from stream_cluster.images.decode import decode_image

    want = np.stack([decode_image(images / os.fsdecode(n), 24, 24).reshape(-1) for n in names])
    with SourcePixels(images, names, 24, 24, workers=2) as src:
        assert len(src) == 30 and src.names() == names
        got = np.concatenate([b for _, b in src.iter_batches(7)])
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(src.read_rows([5, 1, 29]), want[[5, 1, 29]])
        np.testing.assert_array_equal(src.read(10, 13), want[10:13])


def test_similar_montage_without_a_store(tmp_path: Path) -> None:
    """``similar --montage`` on a run without a pixel store decodes its images from the input
    folder: the montage equals the one drawn from a stored run."""
    from stream_cluster._cli.main import main

    images = tmp_path / "images"
    make_shapes_corpus(images, n=60, size=(24, 24), seed=4)
    target = sorted(images.rglob("*.png"))[3]
    pngs = []
    for mode in ("always", "never"):
        out = tmp_path / mode
        run(_config(images, out, keep_pixels=mode, workers=0))
        png = tmp_path / f"{mode}.png"
        assert main(["similar", str(out), str(target), "-n", "5", "--montage", str(png)]) == 0
        pngs.append(png.read_bytes())
    assert pngs[0] == pngs[1]
