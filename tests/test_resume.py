"""Crash safety: kill -9 at random moments, Ctrl-C, and concurrent runs on one folder."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import make_shapes_corpus

# Results equal bitwise or to README's precision: CI reruns these under other BLAS kernels.
pytestmark = pytest.mark.reproducibility

ARGS = ["--size", "24x24", "--components", "12", "--batch-size", "24", "--k", "auto",
        "--k-range", "2:6", "--workers", "2", "--no-progress", "--checkpoint-every", "0",
        "--mem-budget", "2G"]


def _cmd(images: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "stream_cluster", str(images), "--out", str(out), *ARGS]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get(
        "PYTHONPATH", "")
    return env


STAGE_ORDER = ("none", "ingest", "pca", "embed", "elbow", "cluster", "report")


def _state_stage(out: Path) -> str:
    """The furthest stage the run folder's state.json records."""
    import json

    try:
        stages = json.loads((out / "state.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return "none"
    for s in reversed(STAGE_ORDER[1:]):
        if s in stages:
            return s
    return "none"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kill") / "images"
    make_shapes_corpus(root, n=240, size=(24, 24), seed=3)
    return root


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, float]:
    out = tmp_path_factory.mktemp("ref") / "run"
    t0 = time.perf_counter()
    subprocess.run(_cmd(corpus, out), check=True, env=_env(), timeout=300)
    return (out / "labels.csv").read_bytes(), time.perf_counter() - t0


def test_kill9_loop_resumes_to_identical_labels(corpus: Path, reference: tuple[bytes, float],
                                                tmp_path: Path) -> None:
    """Check that 20 kill -9s spread over every stage, each followed by a rerun, change nothing.

    Each round starts a fresh run folder and kills the process group (parent and decode
    workers, like a power cut) a random moment after the run reaches each of several stages,
    so kills land in ingest, PCA, embed, elbow, k-means and report, including mid-write of
    segments and checkpoints. After the last kill of a round a rerun must finish with exactly
    the labels of an uninterrupted run.
    """
    ref_labels, _ = reference
    rng = random.Random(1234)
    kills, rounds, stages_hit = 0, 0, set()
    while kills < 20:
        out = tmp_path / f"run{rounds}"
        rounds += 1
        targets = sorted(rng.sample(STAGE_ORDER[1:], 5), key=STAGE_ORDER.index)
        for target in targets:
            proc = subprocess.Popen(_cmd(corpus, out), env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            while proc.poll() is None and (
                STAGE_ORDER.index(_state_stage(out)) < STAGE_ORDER.index(target)
            ):
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            if proc.poll() is not None:
                break  # finished before the kill: nothing left to interrupt in this round
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            stages_hit.add(_state_stage(out))
        final = subprocess.run(_cmd(corpus, out), env=_env(), capture_output=True, text=True,
                               timeout=300)
        assert final.returncode == 0, final.stderr
        assert (out / "labels.csv").read_bytes() == ref_labels, f"round {rounds}"
        assert rounds <= 8, f"only {kills} kills landed in {rounds} rounds"
    assert len(stages_hit) >= 5, stages_hit


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough images that a run interrupted in its PCA has seconds of work left."""
    root = tmp_path_factory.mktemp("long") / "images"
    make_shapes_corpus(root, n=1200, size=(24, 24), seed=4)
    return root


def _pca_cursor(out: Path) -> int:
    import json

    try:
        return int(json.loads((out / "state.json").read_text())["stages"]["pca"]["cursor"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def test_ctrl_c_stops_quickly_and_says_how_to_resume(long_corpus: Path, tmp_path: Path) -> None:
    """Check that SIGINT stops a running run within two seconds with a resume hint, and that
    the rerun ends with the labels of an uninterrupted run."""
    ref = tmp_path / "ref"
    subprocess.run(_cmd(long_corpus, ref), env=_env(), check=True, capture_output=True,
                   timeout=300)  # fmt: skip
    out = tmp_path / "run"
    # As in a terminal: a test suite started in the background (`cmd &` in a script) passes on
    # an ignored SIGINT, which the run rightly keeps ignoring (README); reset it for the child.
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(_cmd(long_corpus, out), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)  # fmt: skip
    # Interrupt the run inside its PCA (not the interpreter importing its libraries, nor a run
    # about to end): its cursor is recorded after every batch here.
    deadline = time.perf_counter() + 120
    while proc.poll() is None and _pca_cursor(out) < 96 and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    # The run's own process: its decode workers may hold the output pipes a moment longer
    # (they leave on their own once it is gone; test_faults_signals checks none is left).
    proc.wait(timeout=30)
    stopped = time.perf_counter() - t0
    _, err = proc.communicate(timeout=30)
    assert stopped < 2.5, (stopped, err)
    assert proc.returncode == 130, err
    assert "rerun the same command to resume" in err
    assert "Traceback" not in err
    final = subprocess.run(_cmd(long_corpus, out), env=_env(), capture_output=True, timeout=300)
    assert final.returncode == 0
    assert (out / "labels.csv").read_bytes() == (ref / "labels.csv").read_bytes()


def test_second_run_on_same_folder_refused(corpus: Path, tmp_path: Path) -> None:
    """Check that a concurrent second run on the same run folder refuses with a clear message."""
    out = tmp_path / "run"
    first = subprocess.Popen(_cmd(corpus, out), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while not (out / ".lock").exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        second = subprocess.run(_cmd(corpus, out), env=_env(), capture_output=True, text=True,
                                timeout=60)
        if first.poll() is None:
            assert second.returncode == 2
            assert "Another stream-cluster process" in second.stderr
    finally:
        first.kill()
        first.wait()
