"""Real faults for the fault tests: a tmpfs that fills, another user, signals, process trees.

Nothing here simulates a fault. A full disk is a small ``tmpfs`` mounted for the test and
filled with a ballast file; another user is ``nobody`` via ``setpriv``; a stop is a real signal
to a real ``python -m stream_cluster`` process. Tests run as root (mount, setpriv); a helper
that cannot set its fault up calls ``pytest.fail`` with the reason, never skips.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Stages in the order a run finishes them (``state.json`` records each one's ``done``).
STAGES = ("ingest", "pca", "embed", "space", "elbow", "cluster", "report")


# -- running the command --------------------------------------------------------------------
def cli(images: Path, out: Path, args: Sequence[str]) -> list[str]:
    """The ``python -m stream_cluster`` command line for this worktree's package."""
    return [sys.executable, "-m", "stream_cluster", str(images), "--out", str(out), *args]


def cli_env() -> dict[str, str]:
    """Environment that imports this worktree's package (not another editable install)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen[str]:
    """Start the command in its own session (so its process group can be signalled whole)."""
    return subprocess.Popen(
        list(cmd), env=kwargs.pop("env", cli_env()), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs,
    )  # fmt: skip


def read_state(out: Path) -> dict[str, Any]:
    """The stage records of ``state.json`` (empty if absent or being replaced)."""
    try:
        stages = json.loads((out / "state.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return {}
    return stages if isinstance(stages, dict) else {}


def current_stage(out: Path) -> str:
    """The first stage ``state.json`` does not record as done ("done" when all are).

    A stage with no record is passed over when a later stage has one (the elbow sweep does
    not run with a fixed ``--k``).
    """
    stages = read_state(out)
    for i, name in enumerate(STAGES):
        rec = stages.get(name)
        if rec is None and any(later in stages for later in STAGES[i + 1 :]):
            continue
        if not (rec or {}).get("done"):
            return name
    return "done"


def wait_for(
    proc: subprocess.Popen[str], ready: Callable[[], bool], timeout: float = 120.0,
    every: Callable[[], None] | None = None, poll: float = 0.002,
) -> bool:
    """Poll ``ready()`` until true (True) or the process ends (False); ``every()`` each turn."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if every is not None:
            every()
        if ready():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for the run")


def partial_files(out: Path) -> list[Path]:
    """Every ``*.partial`` file left anywhere in the run folder."""
    return sorted(out.rglob("*.partial"))


def lock_is_free(out: Path) -> bool:
    """Whether the run folder's lock can be taken now (nobody holds it)."""
    fd = os.open(out / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True


# -- process trees ------------------------------------------------------------------------------
class TreeWatch:
    """Every process seen below a pid while the watch is polled (workers, resource trackers)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[int, tuple[psutil.Process, str]] = {}

    def poll(self) -> None:
        """Add the current descendants."""
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        for child in children:
            known = self.seen.get(child.pid)
            if known is None or _kind(known[1]) == "other":  # may not have exec'd yet
                try:
                    self.seen[child.pid] = (known[0] if known else child,
                                            " ".join(child.cmdline()))  # fmt: skip
                except psutil.Error:
                    pass

    def kinds(self) -> list[str]:
        """Short names of what was seen: worker, loky-tracker, mp-tracker, other."""
        return [_kind(cmdline) for _, cmdline in self.seen.values()]

    def survivors(self, timeout: float) -> list[str]:
        """Command lines of seen processes still alive ``timeout`` seconds from now (killed)."""
        deadline = time.monotonic() + timeout
        alive = list(self.seen.values())
        while True:
            alive = [(p, c) for p, c in alive if _alive(p)]
            if not alive or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for p, _ in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        return [c for _, c in alive]


def _kind(cmdline: str) -> str:
    if "LokyProcess" in cmdline or "popen_loky" in cmdline:
        return "worker"
    if "loky.backend.resource_tracker" in cmdline:
        return "loky-tracker"
    if "multiprocessing.resource_tracker" in cmdline:
        return "mp-tracker"
    return "other"


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# -- a small filesystem that really fills ---------------------------------------------------
def _root_or_fail(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root (tests and CI run as root here); running as uid "
                    f"{os.geteuid()}")  # fmt: skip


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """Mount a ``size``-byte tmpfs at ``path`` for the block; unmounted afterwards, always."""
    _root_or_fail("mounting a tmpfs")
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                        str(path)], capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        pytest.fail(f"cannot mount a tmpfs at {path}: {r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, size: int) -> None:
    """Resize the tmpfs at ``path`` (grow it: what a user freeing space amounts to)."""
    r = subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], capture_output=True,
                       text=True)  # fmt: skip
    if r.returncode:
        pytest.fail(f"cannot resize the tmpfs at {path}: {r.stderr.strip()}")


def free_bytes(path: Path) -> int:
    """Bytes free on the filesystem of ``path``."""
    return shutil.disk_usage(path).free


def fill(path: Path, leave: int, name: str = "ballast") -> Path:
    """Allocate a ballast file on ``path``'s filesystem so only about ``leave`` bytes stay free."""
    ballast = path / name
    size = free_bytes(path) - leave
    if size > 0:
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    return ballast


def parse_size(text: str) -> int:
    """Bytes of a size as :func:`stream_cluster.config.format_bytes` prints it (``1.5 MiB``)."""
    number, unit = text.split()
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]
    return int(float(number) * scale)


# -- another user ------------------------------------------------------------------------------
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def _reachable_by_others(path: Path) -> bool:
    """Whether a user other than the owner can reach ``path`` (x on every folder on the way)."""
    for folder in [*reversed(path.parents)]:
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return False
    return bool(os.stat(path).st_mode & stat.S_IXOTH)


class Nobody:
    """A world-readable scratch folder and a way to run the command in it as ``nobody``.

    Pytest's ``tmp_path`` (0700) and this worktree may be unreachable for ``nobody``, so the
    package is copied into the scratch folder. When the interpreter itself is unreachable (a
    pyenv Python under ``/root``, which is 0700), its installation folder is bind-mounted
    read-only inside the scratch folder. From a virtualenv, ``nobody`` gets a virtualenv of its
    own in the scratch folder: a ``pyvenv.cfg`` naming that interpreter and this virtualenv's
    site-packages (bind-mounted read-only when unreachable), so it imports exactly what the
    tests import. Everything is undone on exit.
    """

    def __init__(self) -> None:
        _root_or_fail("switching to the user nobody")
        if shutil.which("setpriv") is None:
            pytest.fail("setpriv (util-linux) is not installed: cannot run as nobody")
        self.base = Path(tempfile.mkdtemp(prefix="sc-nobody-", dir="/tmp"))
        self._mounted: list[Path] = []
        self.python = Path(sys.executable)
        self.env: dict[str, str] = {}

    def __enter__(self) -> Nobody:
        try:
            self._setup()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _mount(self, source: Path, target: Path) -> None:
        """Bind-mount ``source`` read-only at ``target`` (a bind mount keeps its mode bits)."""
        if source.stat().st_mode & 0o005 != 0o005:
            pytest.fail(f"{source} is not readable by others: nobody cannot use it")
        target.mkdir(parents=True)
        for cmd in (["mount", "--bind", str(source), str(target)],
                    ["mount", "-o", "remount,bind,ro", str(target)]):  # fmt: skip
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                pytest.fail(f"cannot bind-mount {source} for nobody: {r.stderr}")
            if target not in self._mounted:
                self._mounted.append(target)

    def _setup(self) -> None:
        os.chmod(self.base, 0o755)
        shutil.copytree(ROOT / "stream_cluster", self.base / "stream_cluster",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        package = str(self.base / "stream_cluster")
        subprocess.run([sys.executable, "-m", "compileall", "-q", package], check=True)
        home = self.writable("home")
        self.env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "MPLCONFIGDIR": str(home),
                    "PYTHONPATH": str(self.base), "LANG": "C.UTF-8"}  # fmt: skip
        real = Path(sys.executable).resolve()  # a virtualenv's python links to its base's
        self.python = real
        if not _reachable_by_others(real):
            prefix = Path(sys.base_prefix).resolve()
            mnt = self.base / "python"
            self._mount(prefix, mnt)
            self.python = mnt / real.relative_to(prefix)
            # its RUNPATH names the unreachable original location of libpython
            self.env["LD_LIBRARY_PATH"] = str(mnt / "lib")
        if sys.prefix != sys.base_prefix:
            self.python = self._virtualenv(self.python)
        probe = subprocess.run([*NOBODY, "env", "-i", *self._env_args(), str(self.python), "-c",
                                "import h5py, cv2, sklearn, stream_cluster; "
                                "print(stream_cluster.__file__)"],
                               capture_output=True, text=True, cwd=self.base)  # fmt: skip
        if probe.returncode:
            pytest.fail(f"nobody cannot import the package: {probe.stderr.strip()[-500:]}")
        if not probe.stdout.strip().startswith(package):
            pytest.fail(f"nobody imports another copy of the package: {probe.stdout.strip()}")

    def _virtualenv(self, python: Path) -> Path:
        """A virtualenv for nobody over ``python`` with this virtualenv's site-packages."""
        venv = self.base / "venv"
        (venv / "bin").mkdir(parents=True)
        (venv / "bin" / "python").symlink_to(python)
        cfg = (Path(sys.prefix) / "pyvenv.cfg").read_text(encoding="utf-8")
        system = re.search(r"^include-system-site-packages\s*=\s*(\w+)", cfg, re.M)
        (venv / "pyvenv.cfg").write_text(
            f"home = {python.parent}\n"
            f"include-system-site-packages = {system.group(1) if system else 'false'}\n",
            encoding="utf-8",
        )
        paths = sysconfig.get_paths()
        for site in sorted({Path(paths["purelib"]), Path(paths["platlib"])}):
            target = venv / site.relative_to(sys.prefix)
            if target.exists() or not site.is_dir():
                continue
            if _reachable_by_others(site):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(site)
            else:
                self._mount(site, target)
        return venv / "bin" / "python"

    def _env_args(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.env.items()]

    def writable(self, name: str) -> Path:
        """A folder inside the scratch folder that nobody owns."""
        path = self.base / name
        path.mkdir()
        os.chown(path, 65534, 65534)
        return path

    def command(self, args: Sequence[str]) -> list[str]:
        """``python -m stream_cluster ARGS`` as nobody, with a clean environment."""
        return [*NOBODY, "env", "-i", *self._env_args(), str(self.python), "-m", "stream_cluster",
                *args]  # fmt: skip

    def run(self, args: Sequence[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run the command as nobody, from the scratch folder."""
        return subprocess.run(self.command(args), capture_output=True, text=True, cwd=self.base,
                               timeout=timeout)  # fmt: skip

    def __exit__(self, *exc: object) -> None:
        for mnt in reversed(self._mounted):
            if subprocess.run(["umount", str(mnt)], capture_output=True).returncode:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
            mnt.rmdir()
        self._mounted = []
        for folder, dirs, _ in os.walk(self.base):  # chmod-000 folders must be opened to go
            for d in dirs:
                p = os.path.join(folder, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        shutil.rmtree(self.base, ignore_errors=True)
