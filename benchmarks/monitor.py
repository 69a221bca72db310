"""Run one command as a watched process tree: RSS sampled every 0.1 s, memory and time caps.

The tree is the command and every descendant (Dask workers, stream-cluster's decoders), summed
RSS as psutil reports it (shared pages counted once per process, so it errs high). When the sum
passes the memory cap, or the wall time passes the time cap, every process under the root is
sent SIGKILL and the reason is kept: a killed row is a result, not an error of the harness.
``/usr/bin/time -v`` wraps the command when present, for a second opinion on the parent.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

__all__ = ["GNU_TIME", "RunOutcome", "parse_time_v", "run_watched", "tree_rss"]

GNU_TIME = "/usr/bin/time"


def tree_rss(root: psutil.Process) -> int:
    """Summed RSS in bytes of ``root`` and all its descendants (0 once they are gone)."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        procs = [root]
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


@dataclass
class RunOutcome:
    """What happened to one watched command."""

    returncode: int | None
    wall_s: float
    peak_rss: int
    killed_by: str | None  # "memory cap" / "time cap" / None
    start_epoch: float
    samples: list[tuple[float, int]] = field(default_factory=list)  # (epoch s, tree RSS)
    time_v: dict[str, str] = field(default_factory=dict)


def _kill_tree(root: psutil.Process) -> None:
    # Kill the descendants first so /usr/bin/time (the root) survives to write its report.
    try:
        kids = root.children(recursive=True)
    except psutil.Error:
        kids = []
    for p in kids:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    try:
        root.wait(timeout=10)
    except psutil.TimeoutExpired:
        root.send_signal(signal.SIGKILL)
    except psutil.Error:
        pass


def parse_time_v(text: str) -> dict[str, str]:
    """The ``key: value`` lines of GNU time's ``-v`` report (keys as printed, stripped)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"\s*(.+?):\s+(.*)$", line)
        if m and not line.startswith("Command being timed"):
            out[m.group(1).strip()] = m.group(2).strip()
        elif line.strip().startswith("Command terminated by signal"):
            out["Command terminated by signal"] = line.strip().rsplit(" ", 1)[-1]
    return out


def run_watched(
    cmd: list[str],
    *,
    log_path: Path,
    mem_cap: int,
    time_cap: float,
    interval: float = 0.1,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    time_v_path: Path | None = None,
) -> RunOutcome:
    """Run ``cmd`` (stdout+stderr to ``log_path``), sampling its tree and enforcing the caps.

    Parameters
    ----------
    cmd : list of str
        The command; it is prefixed with ``/usr/bin/time -v -o time_v_path`` when
        ``time_v_path`` is given and GNU time exists.
    mem_cap : int
        Kill the tree when its summed RSS passes this many bytes.
    time_cap : float
        Kill the tree after this many seconds of wall time.
    """
    use_time = time_v_path is not None and Path(GNU_TIME).exists()
    full = [GNU_TIME, "-v", "-o", str(time_v_path), *cmd] if use_time else list(cmd)
    samples: list[tuple[float, int]] = []
    killed_by: str | None = None
    peak = 0
    with open(log_path, "wb") as log:
        t0 = time.time()
        proc = subprocess.Popen(
            full, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            now = time.time()
            rss = tree_rss(root)
            samples.append((now, rss))
            peak = max(peak, rss)
            if killed_by is None and rss > mem_cap:
                killed_by = "memory cap"
                _kill_tree(root)
            elif killed_by is None and now - t0 > time_cap:
                killed_by = "time cap"
                _kill_tree(root)
            time.sleep(interval)
        wall = time.time() - t0
    # Anything left in the session (a daemonised worker) goes too, by its group id.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    time_v: dict[str, str] = {}
    if use_time and time_v_path is not None and time_v_path.is_file():
        time_v = parse_time_v(time_v_path.read_text(encoding="utf-8", errors="replace"))
    return RunOutcome(
        returncode=proc.returncode, wall_s=wall, peak_rss=peak, killed_by=killed_by,
        start_epoch=t0, samples=samples, time_v=time_v,
    )

