"""Tests for the executor seam: local worker processes and the in-process executor."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from stream_cluster.parallel.executor import InlineExecutor, LocalExecutor, WorkerDied

from .executor_tasks import die_on_13, pid_after, square


def test_local_executor_yields_every_result() -> None:
    """Check that every shard's result comes back once, whatever the order."""
    with LocalExecutor(2) as ex:
        got = {r.index: r.value for r in ex.map_unordered(square, range(20))}
    assert got == {i: i * i for i in range(20)}
    assert [r.value for r in InlineExecutor().map_unordered(square, range(4))] == [0, 1, 4, 9]


def test_local_executor_window_bounds_how_far_ahead() -> None:
    """Check that with a window, no shard starts window places after an unfinished one."""
    with LocalExecutor(2) as ex:
        # shard 0 sleeps; with window 3, shards >= 3 cannot have started before it finished
        started = {r.index: r.value for r in ex.map_unordered(pid_after, range(8), window=3)}
    assert started[0][0] < min(started[i][0] for i in range(3, 8))


def test_local_executor_reports_the_shard_that_kills_its_worker() -> None:
    """Check that only the killing shard is reported dead and the others finish."""
    with LocalExecutor(2) as ex:
        results = {r.index: r for r in ex.map_unordered(die_on_13, range(20))}
    assert isinstance(results[13].died, WorkerDied)
    assert all(results[i].value == i for i in range(20) if i != 13)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_workers_exit_when_their_parent_dies(tmp_path: Path, sig: signal.Signals) -> None:
    """Check that no worker outlives a parent killed from outside (kill -9 is the OOM killer)."""
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from stream_cluster.parallel.executor import LocalExecutor
        from tests.executor_tasks import square
        ex = LocalExecutor(2)
        list(ex.map_unordered(square, range(4)))
        print("ready", flush=True)
        time.sleep(60)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    children = psutil.Process(proc.pid).children(recursive=True)
    assert children, "the executor started no worker"
    os.kill(proc.pid, sig)
    proc.wait(timeout=10)
    deadline = time.monotonic() + 3.0
    alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [c for c in alive if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    for c in alive:
        c.kill()
    assert not alive, f"processes outlived their parent: {[c.cmdline() for c in alive]}"
