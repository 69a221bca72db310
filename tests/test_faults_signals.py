"""SIGTERM, SIGHUP and Ctrl-C stop a run promptly and cleanly; no process outlives the run.

Every test runs the real command (``python -m stream_cluster``) on small images with two
decode workers, and records the run's whole process tree (workers and the resource trackers of
loky and multiprocessing) with psutil while it decodes. However the main process ends, every
one of those processes must be gone within three seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from stream_cluster._cli.main import main
from stream_cluster._cli.signals import GRACE_SECONDS

from .conftest import make_shapes_corpus
from .faults import (
    ROOT,
    TreeWatch,
    cli,
    cli_env,
    current_stage,
    lock_is_free,
    partial_files,
    read_state,
    start,
    wait_for,
)  # fmt: skip

ARGS = ["--size", "24x24", "--components", "12", "--batch-size", "24", "--k", "auto",
        "--k-range", "2:6", "--workers", "2", "--no-progress", "--checkpoint-every", "0",
        "--mem-budget", "2G"]  # fmt: skip
#: A stop must end the main process within this many seconds of the signal.
STOP_SECONDS = 2.0
#: ... and every other process of the run within this many.
ORPHAN_SECONDS = 3.0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("signals") / "images"
    make_shapes_corpus(root, n=240, size=(24, 24), seed=3)
    return root


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("signals-ref") / "run"
    assert main([str(corpus), "--out", str(out), *ARGS]) == 0
    return (out / "labels.csv").read_bytes()


def _start_and_watch(corpus: Path, out: Path, **popen: object) -> tuple[subprocess.Popen[str],
                                                                      TreeWatch]:
    """Start a run and poll its process tree until it has stored two segments with workers up."""
    proc = start(cli(corpus, out, ARGS), **popen)
    tree = TreeWatch(proc.pid)

    def decoding() -> bool:
        return (read_state(out).get("ingest", {}).get("segments", 0) >= 2
                and tree.kinds().count("worker") >= 2)  # fmt: skip

    assert wait_for(proc, decoding, every=tree.poll), proc.communicate()
    tree.poll()
    return proc, tree


def _stop_and_time(proc: subprocess.Popen[str], send: int, group: bool = False) -> float:
    t0 = time.monotonic()
    if group:
        os.killpg(proc.pid, send)
    else:
        os.kill(proc.pid, send)
    proc.wait(timeout=60)
    return time.monotonic() - t0


def _check_stopped(out: Path, tree: TreeWatch, proc: subprocess.Popen[str], sig: int,
                   seconds: float) -> str:  # fmt: skip
    """Exit code and time, message, no orphans, nothing torn, lock released; returns stderr."""
    err = proc.stderr.read() if proc.stderr is not None else ""
    assert proc.returncode == 128 + sig, err
    assert seconds < STOP_SECONDS, f"{signal.Signals(sig).name} took {seconds:.2f} s to stop"
    assert "rerun the same command to resume" in err and str(out) in err, err
    assert "Traceback" not in err, err
    assert tree.survivors(ORPHAN_SECONDS) == []
    assert partial_files(out) == []
    assert read_state(out)
    assert lock_is_free(out)
    return err


@pytest.mark.parametrize(
    "sig",
    [signal.SIGTERM,
     pytest.param(signal.SIGHUP, marks=pytest.mark.slow),
     pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["SIGTERM", "SIGHUP", "SIGINT"],
)  # fmt: skip
def test_stop_signal_ends_run_cleanly_and_resumes(sig: int, corpus: Path, reference: bytes,
                                                  tmp_path: Path) -> None:
    """Check that a stop signal to the main process acts like Ctrl-C, and the rerun ends the same.

    Exit code 128 + signal (143, 129, 130) within two seconds, the resume hint, the stored
    segments kept, no process of the run left, then identical labels from the same command.
    """
    out = tmp_path / "run"
    proc, tree = _start_and_watch(corpus, out)
    kinds = tree.kinds()
    assert kinds.count("worker") >= 2 and "loky-tracker" in kinds, kinds
    seconds = _stop_and_time(proc, sig)
    err = _check_stopped(out, tree, proc, sig, seconds)
    name = "interrupted" if sig == signal.SIGINT else f"stopped by {signal.Signals(sig).name}"
    assert f"stream-cluster: {name}." in err
    assert read_state(out)["ingest"]["segments"] >= 2  # finished work kept

    final = subprocess.run(cli(corpus, out, ARGS), env=cli_env(), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert (out / "labels.csv").read_bytes() == reference


def test_kill9_of_main_process_alone_leaves_no_orphans(corpus: Path, tmp_path: Path) -> None:
    """Check that when only the main process is killed (the OOM killer's way), all others exit."""
    out = tmp_path / "run"
    proc, tree = _start_and_watch(corpus, out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert tree.survivors(ORPHAN_SECONDS) == []
    assert lock_is_free(out)


@pytest.mark.slow
def test_sigterm_to_process_group_like_timeout(corpus: Path, reference: bytes,
                                               tmp_path: Path) -> None:
    """Check that SIGTERM to all the run's processes (``timeout``, systemd, Slurm) stops it cleanly.

    Decode workers ignore it and leave the stopping to the main process: no file may be recorded
    as having crashed its decoder, and the rerun must end with the same labels.
    """
    out = tmp_path / "run"
    proc, tree = _start_and_watch(corpus, out)
    seconds = _stop_and_time(proc, signal.SIGTERM, group=True)
    _check_stopped(out, tree, proc, signal.SIGTERM, seconds)
    assert read_state(out)["ingest"]["skipped"] == []
    final = subprocess.run(cli(corpus, out, ARGS), env=cli_env(), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert (out / "labels.csv").read_bytes() == reference


@pytest.mark.slow
def test_sigterm_during_elbow_sweep(corpus: Path, reference: bytes, tmp_path: Path) -> None:
    """Check that SIGTERM in the k-means sweep (scikit-learn, OpenMP) also stops within 2 s."""
    out = tmp_path / "run"
    proc = start(cli(corpus, out, ARGS))
    tree = TreeWatch(proc.pid)
    in_sweep = lambda: bool(read_state(out).get("elbow", {}).get("inertias"))  # noqa: E731
    assert wait_for(proc, in_sweep, every=tree.poll), proc.communicate()
    seconds = _stop_and_time(proc, signal.SIGTERM)
    assert current_stage(out) == "elbow", "the sweep ended before the signal"
    _check_stopped(out, tree, proc, signal.SIGTERM, seconds)
    final = subprocess.run(cli(corpus, out, ARGS), env=cli_env(), capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert final.returncode == 0, final.stderr
    assert (out / "labels.csv").read_bytes() == reference


def test_sighup_ignored_under_nohup(corpus: Path, tmp_path: Path) -> None:
    """Check that a run started with SIGHUP ignored (``nohup``) keeps running through a hangup."""
    out = tmp_path / "run"
    proc, tree = _start_and_watch(
        corpus, out, preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(1.0)
    assert proc.poll() is None, proc.communicate()
    seconds = _stop_and_time(proc, signal.SIGTERM)
    _check_stopped(out, tree, proc, signal.SIGTERM, seconds)


def test_stop_deadline_quits_when_the_run_cannot_unwind(tmp_path: Path) -> None:
    """Check that a stop ends the process on time even while it is stuck in a long C call.

    Python runs signal handlers only between bytecodes; a large BLAS call can last seconds. A
    C call that releases the GIL and does not return on signals (``system("sleep 5")``) stands
    for it: the process must still exit with 143 and the message within the grace period.
    """
    script = tmp_path / "stuck.py"
    script.write_text(textwrap.dedent(f"""
        import ctypes, sys
        sys.path.insert(0, {str(ROOT)!r})
        from stream_cluster._cli.signals import StopOnSignals
        with StopOnSignals() as stop:
            stop.where = "RUN-FOLDER"
            print("ready", flush=True)
            ctypes.CDLL(None).system(b"sleep 5")
        print("unwound", flush=True)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        seconds = _stop_and_time(proc, signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the "sleep 5" child, if still there
        except ProcessLookupError:
            pass
    assert proc.returncode == 143
    assert GRACE_SECONDS <= seconds < GRACE_SECONDS + 1.0
    assert "unwound" not in out
    assert "stopped by SIGTERM. Finished work is saved in RUN-FOLDER" in err


def test_stop_raised_inside_garbage_collection_is_raised_again(tmp_path: Path) -> None:
    """Check that a stop whose exception Python drops (in a ``__del__``) still stops the run.

    A signal handler that runs inside a finalizer has its exception printed as "Exception
    ignored" and dropped; the stop must be raised again where the program can act on it.
    """
    script = tmp_path / "dropped.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from stream_cluster._cli.signals import StopOnSignals

        class SignalsInFinalizer:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10000):  # bytecodes: the handler runs here, in __del__
                    pass

        try:
            with StopOnSignals():
                SignalsInFinalizer()
                for _ in range(100):
                    time.sleep(0.01)
            print("not stopped", flush=True)
        except KeyboardInterrupt as exc:
            print("stopped", exc.signum, flush=True)
    """))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["stopped", str(int(signal.SIGTERM))], r.stdout + r.stderr
    assert r.returncode == 0 and "Exception ignored" not in r.stderr, r.stderr


def test_partial_files_left_by_a_kill_are_removed_at_the_next_start(
    shapes_dir: Path, tmp_path: Path
) -> None:
    """Check that ``*.partial`` files a kill -9 left behind are deleted once the lock is held."""
    from stream_cluster import RunConfig
    from stream_cluster.runner.pipeline import iter_run

    out = tmp_path / "run"
    torn = [out / "state.json.partial", out / "pca-checkpoint.h5.partial",
            out / "pixels" / "seg-000000.h5.partial", out / "montages" / "cluster-000.png.partial"]
    for path in torn:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"torn")
    config = RunConfig(input_dir=shapes_dir, out_dir=out, width=16, height=20, n_components=8,
                       k=3, workers=0)  # fmt: skip
    gen = iter_run(config)
    next(gen)  # the scan: the run has started
    assert [p for p in torn if p.exists()] == []
    gen.close()
    assert lock_is_free(out)
