"""Growing a run with --update: only new files are ingested, the PCA continues, labels follow."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stream_cluster import RunConfig, run
from stream_cluster.errors import CheckpointMismatchError
from stream_cluster.model.fitted import FittedModel
from stream_cluster.storage.store import RowStore

from .conftest import make_shapes_corpus


def _config(images: Path, out: Path, **kw: object) -> RunConfig:
    base = dict(mem_budget=2 * 2**30, width=16, height=20, n_components=8, k=3,
                batch_size=16, checkpoint_seconds=0.0, workers=1)
    base.update(kw)
    return RunConfig(images, out, **base)  # type: ignore[arg-type]


def _labels(out: Path) -> dict[str, int]:
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        return {r["path"]: int(r["cluster"]) for r in csv.DictReader(fh)}


def _grow(root: Path) -> None:
    make_shapes_corpus(root / "more", n=21, seed=9)


def test_update_ingests_only_new_files_and_continues_the_pca(tmp_path: Path) -> None:
    """Check that an update appends the new rows, keeps the old segments, labels every image."""
    images, out = tmp_path / "img", tmp_path / "run"
    make_shapes_corpus(images, n=40)
    run(_config(images, out))
    first_segment = out / "pixels" / "seg-000000.h5"
    stamp = first_segment.stat().st_mtime_ns
    _grow(images)
    with pytest.raises(CheckpointMismatchError, match="21 added.*--update"):
        run(_config(images, out))
    res = run(_config(images, out), update=True)
    assert res.n_images == 61 and len(_labels(out)) == 61
    assert first_segment.stat().st_mtime_ns == stamp  # the old images were not decoded again
    assert len(RowStore(out / "pixels", 320, np.uint8)) == 61
    model = FittedModel.load(out / "model.h5")
    assert model.pca.n_samples_seen_ == 61 and model.n_images == 61 and model.k == 3
    update = json.loads((out / "run.json").read_text())["update"]
    assert update["added"] == 21 and update["earlier_images"] == 40
    assert 0 <= update["changed_cluster"] <= 40 and update["ari_vs_before"] > 0.5
    # Nothing left to do: the same command again changes nothing.
    before = (out / "labels.csv").read_bytes()
    run(_config(images, out), update=True)
    assert (out / "labels.csv").read_bytes() == before


def test_update_equals_a_pca_fed_the_same_batches(tmp_path: Path) -> None:
    """Check that the updated PCA is the one a single run over old-then-new rows would fit."""
    images, out = tmp_path / "img", tmp_path / "run"
    make_shapes_corpus(images, n=40)
    run(_config(images, out))
    _grow(images)
    run(_config(images, out), update=True)
    from stream_cluster.pca.streaming import StreamingPCA

    model = FittedModel.load(out / "model.h5")
    # What the PCA was fitted on: the default's HOG rows (descriptors/), else the pixels.
    if (out / "descriptors").exists():
        rows = RowStore(out / "descriptors", model.pca.components_.shape[1], np.float32)
        scale = np.float32(1)
    else:
        rows, scale = RowStore(out / "pixels", 320, np.uint8), np.float32(1 / 255)
    ref = StreamingPCA(8, copy=False)
    for lo in [0, 16, 32, 40, 56]:  # the first run's batches, then the update's from row 40
        hi = {0: 16, 16: 32, 32: 40, 40: 56, 56: 61}[lo]
        ref.partial_fit(rows.read(lo, hi).astype(np.float32) * scale)
    np.testing.assert_allclose(model.pca.components_, ref.components_, atol=1e-5)


def test_update_with_removed_and_changed_files(tmp_path: Path) -> None:
    """Check removed files leave the labels, and a rewritten file is re-ingested (new row)."""
    images, out = tmp_path / "img", tmp_path / "run"
    make_shapes_corpus(images, n=40)
    run(_config(images, out))
    files = sorted(images.rglob("*.png"))
    for p in files[:5]:
        p.unlink()
    shutil.copy(files[-1], files[-2])  # same name, new content
    os.utime(files[-2], ns=(time.time_ns(), time.time_ns() + 10**9))
    res = run(_config(images, out), update=True)
    labels = _labels(out)
    assert res.n_images == 35 and len(labels) == 35
    assert str(files[0].relative_to(images)) not in labels
    assert len(RowStore(out / "pixels", 320, np.uint8)) == 41  # 40 + the changed file's new row
    update = json.loads((out / "state.json").read_text())["stages"]["update"]
    assert (update["removed"], update["changed"], update["earlier_images"]) == (5, 1, 34)


def _cmd(images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stream_cluster", str(images), "--out", str(out), "--size",
            "16x20", "--components", "8", "--batch-size", "16", "--k", "3", "--workers", "2",
            "--no-progress", "--checkpoint-every", "0", "--mem-budget", "2G", *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return env


def test_kill9_during_update_resumes_to_the_same_labels(tmp_path: Path) -> None:
    """Check that kill -9 at moments through an update, then the same command, changes nothing."""
    images = tmp_path / "img"
    make_shapes_corpus(images, n=120, seed=2)
    base = tmp_path / "base"
    subprocess.run(_cmd(images, base), check=True, env=_env(), timeout=300)
    make_shapes_corpus(images / "more", n=90, seed=4)
    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    subprocess.run(_cmd(images, ref, "--update"), check=True, env=_env(), timeout=300)
    rng = random.Random(7)
    out = tmp_path / "killed"
    shutil.copytree(base, out)
    kills = 0
    for _ in range(4):
        proc = subprocess.Popen(_cmd(images, out, "--update"), env=_env(),
                                start_new_session=True, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.8, 3.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    subprocess.run(_cmd(images, out, "--update"), check=True, env=_env(), timeout=300)
    assert kills >= 1
    assert (out / "labels.csv").read_bytes() == (ref / "labels.csv").read_bytes()
    got = json.loads((out / "run.json").read_text())["update"]
    want = json.loads((ref / "run.json").read_text())["update"]
    assert got["changed_cluster"] == want["changed_cluster"] and got["added"] == 90


@pytest.mark.slow
def test_kills_during_update_and_assign(tmp_path: Path) -> None:
    """Check 15 kill -9s spread over --update rounds and 5 over assign change no result.

    Each update round copies the finished base run, kills the update at random moments until
    ``kills_per_round`` kills landed, then lets the same command finish: labels and the update
    statistics must equal an uninterrupted update's. A killed assign writes no CSV; the rerun's
    CSV equals an uninterrupted one.
    """
    images = tmp_path / "img"
    make_shapes_corpus(images, n=120, seed=2)
    base = tmp_path / "base"
    subprocess.run(_cmd(images, base), check=True, env=_env(), timeout=300)
    make_shapes_corpus(images / "more", n=90, seed=4)
    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    subprocess.run(_cmd(images, ref, "--update"), check=True, env=_env(), timeout=300)
    want = (ref / "labels.csv").read_bytes()
    rng = random.Random(1129)
    kills = 0
    for rnd in range(5):
        out = tmp_path / f"killed{rnd}"
        shutil.copytree(base, out)
        landed = 0
        while landed < 3:
            proc = subprocess.Popen(_cmd(images, out, "--update"), env=_env(),
                                    start_new_session=True, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 4.0))
            if proc.poll() is not None:
                break
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            landed += 1
        kills += landed
        subprocess.run(_cmd(images, out, "--update"), check=True, env=_env(), timeout=300)
        assert (out / "labels.csv").read_bytes() == want, f"round {rnd}"
    assert kills >= 12
    assign_cmd = [sys.executable, "-m", "stream_cluster", "assign", str(ref), str(images),
                  "--no-progress", "--workers", "2", "--out"]
    subprocess.run([*assign_cmd, str(tmp_path / "a.csv")], check=True, env=_env(), timeout=300)
    for i in range(5):
        target = tmp_path / f"b{i}.csv"
        proc = subprocess.Popen([*assign_cmd, str(target)], env=_env(), start_new_session=True,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 2.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            assert not target.exists() or target.read_bytes() == (tmp_path / "a.csv").read_bytes()
        subprocess.run([*assign_cmd, str(target)], check=True, env=_env(), timeout=300)
        assert target.read_bytes() == (tmp_path / "a.csv").read_bytes()
