"""A really full disk: the run folder on a small tmpfs that fills before, during and after.

Each test mounts its own tmpfs (root; a test that cannot mount fails with the reason). A run
cannot be sized to fill such a disk by itself: before any heavy work it checks that the disk
holds what the rest of the run needs (plus 16 MiB), and stops at once otherwise (the first
test). So the mid-run tests fill the disk while the run is in the stage under test: the run's
process group is stopped (SIGSTOP) when ``state.json`` shows it there, a ballast file takes
all but a few KiB of the free space, and the run continues into the full disk. Then the
filesystem is grown or the ballast deleted, as a user would, and the same command must finish
with the labels of an uninterrupted run.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from stream_cluster._cli.main import main
from stream_cluster.storage.checkpoint import load_arrays

from .conftest import make_shapes_corpus
from .faults import (
    cli,
    cli_env,
    current_stage,
    fill,
    free_bytes,
    lock_is_free,
    parse_size,
    partial_files,
    read_state,
    remount,
    start,
    tmpfs,
    wait_for,
)  # fmt: skip

# Results equal bitwise or to README's precision: CI reruns these under other BLAS kernels.
pytestmark = pytest.mark.reproducibility

N_IMAGES = 600
BATCH = 24
# --workers 0 decodes before the PCA (no overlap), so each stage runs alone on the disk.
ARGS = ["--size", "64x64", "--components", "12", "--batch-size", str(BATCH), "--k", "3",
        "--workers", "0", "--no-progress", "--checkpoint-every", "0", "--mem-budget", "2G",
        "--features", "pixels"]  # the tmpfs sizes below are for pixel rows
#: Big enough for the run's own free-space check (16 MiB + what the run still needs).
DISK = 24 * 2**20
HINT = re.compile(r"finishing this run needs about ([\d.]+ \w+) there \(free ([\d.]+ \w+) more\)")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("disk") / "images"
    make_shapes_corpus(root, n=N_IMAGES, size=(64, 64), seed=5)
    return root


@pytest.fixture(scope="module")
def reference(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("disk-ref") / "run"
    assert main([str(corpus), "--out", str(out), *ARGS]) == 0
    return (out / "labels.csv").read_bytes()


def _finish(corpus: Path, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(corpus, out, ARGS), env=cli_env(), capture_output=True, text=True,
                          timeout=300)  # fmt: skip


def _assert_clean_stop(out: Path, err: str) -> None:
    """Nothing torn is left behind: no partial file, a readable state, a released lock."""
    assert "Traceback" not in err, err
    assert partial_files(out) == [], partial_files(out)
    assert read_state(out), "state.json is missing or unreadable"
    assert lock_is_free(out)


@pytest.mark.slow
def test_disk_too_small_refused_before_any_work(corpus: Path, reference: bytes,
                                               tmp_path: Path) -> None:
    """Check that a run that cannot fit stops at once, saying the space needed, then resumes.

    The 4 MiB disk cannot hold the run; the message names the folder, what is free and what the
    run needs; after the filesystem is grown by the difference, the same command finishes with
    the uninterrupted run's labels.
    """
    with tmpfs(tmp_path / "disk", 4 * 2**20) as disk:
        out = disk / "run"
        r = _finish(corpus, out)
        assert r.returncode == 2, r.stderr
        m = re.search(r"The output folder (\S+) has ([\d.]+ \w+) free but this run needs about "
                      r"([\d.]+ \w+)\.", r.stderr)  # fmt: skip
        assert m is not None, r.stderr
        assert m.group(1) == str(out)
        assert "Traceback" not in r.stderr
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing started
        need, free = parse_size(m.group(3)), parse_size(m.group(2))
        remount(disk, 4 * 2**20 + need - free + 2**20)
        r = _finish(corpus, out)
        assert r.returncode == 0, r.stderr
        assert (out / "labels.csv").read_bytes() == reference


@dataclass(frozen=True)
class Case:
    """Where the disk fills: the stage, when to fill, what may stay free, how space returns."""

    stage: str
    ready: Callable[[dict[str, Any], Path], bool]
    leave: int
    recover: str  # "grow": remount the tmpfs bigger; "delete": remove the ballast file


def _in_ingest(st: dict[str, Any], out: Path) -> bool:
    rec = st.get("ingest", {})
    # two segments stored and at least six more to write
    return rec.get("segments", 0) >= 2 and rec.get("next_file", N_IMAGES) <= N_IMAGES - 6 * BATCH


def _in_pca(st: dict[str, Any], out: Path) -> bool:
    rec = st.get("pca", {})
    # two checkpoints written and at least six batches (each checkpointed) to go
    return 2 * BATCH <= rec.get("cursor", 0) <= N_IMAGES - 6 * BATCH and not rec.get("done")


def _in_report(st: dict[str, Any], out: Path) -> bool:
    # k-means done; the report (labels.csv first) not started
    return bool(st.get("cluster", {}).get("done")) and not (out / "labels.csv").exists()


CASES = [
    # a store segment (96 KiB of pixels: more than HDF5's 64 KiB sieve buffer, see the last
    # test) cannot be written; state.json (a few KiB) still can
    pytest.param(Case("ingest", _in_ingest, 32 * 2**10, "grow"), marks=pytest.mark.slow),
    # a PCA checkpoint (~260 KiB) cannot be written over the previous one
    Case("pca", _in_pca, 32 * 2**10, "delete"),
    # labels.csv (~24 KiB), the report's first file, cannot be written
    pytest.param(Case("report", _in_report, 8 * 2**10, "grow"), marks=pytest.mark.slow),
]


@pytest.mark.parametrize("case", CASES, ids=["ingest", "pca", "report"])
def test_disk_fills_mid_stage_then_resumes(case: Case, corpus: Path, reference: bytes,
                                           tmp_path: Path) -> None:
    """Check that a disk filling in a stage stops the run cleanly and a rerun ends the same.

    The run must exit 2 with the folder and the space needed, leave no partial file, keep its
    state readable and its finished work (the PCA resumes from its previous checkpoint), and
    release the lock; after the space comes back the same command gives the reference labels.
    """
    with tmpfs(tmp_path / "disk", DISK) as disk:
        out = disk / "run"
        proc = start(cli(corpus, out, ARGS))
        assert wait_for(proc, lambda: case.ready(read_state(out), out)), proc.communicate()
        os.killpg(proc.pid, signal.SIGSTOP)
        try:
            # the stop landed in the stage, with the writes under test still ahead
            assert current_stage(out) == case.stage and case.ready(read_state(out), out)
            ballast = fill(disk, case.leave)
        finally:
            os.killpg(proc.pid, signal.SIGCONT)
        _, err = proc.communicate(timeout=120)

        assert proc.returncode == 2, err
        assert f"No space left on the device while writing to {out}" in err, err
        hint = HINT.search(err)
        assert hint is not None, err
        assert current_stage(out) == case.stage  # stopped in the stage, which is not done
        _assert_clean_stop(out, err)
        if case.stage == "pca":  # the checkpoint before the failed one is intact
            _, meta = load_arrays(out / "pca-checkpoint.h5")
            assert meta["cursor"] == read_state(out)["pca"]["cursor"] >= 2 * BATCH

        if case.recover == "grow":
            remount(disk, DISK + parse_size(hint.group(2)) + 2**20)
        else:
            ballast.unlink()
        assert free_bytes(disk) >= parse_size(hint.group(1))
        r = _finish(corpus, out)
        assert r.returncode == 0, r.stderr
        assert (out / "labels.csv").read_bytes() == reference


def test_read_only_filesystem_refused_at_once(corpus: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Check that a run folder on a read-only filesystem fails at once with one clear line.

    Root can write through any permission bits, but not to a read-only mount (EROFS).
    """
    with tmpfs(tmp_path / "ro", 2**20) as ro:
        remount(ro, 2**20)
        r = subprocess.run(["mount", "-o", "remount,ro", str(ro)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        code = main([str(corpus), "--out", str(ro / "run"), *ARGS])
    err = capsys.readouterr().err
    assert code == 2
    assert f"Cannot use the output folder {ro / 'run'}: Read-only file system." in err, err
    assert len(err.strip().splitlines()) == 1


# One small HDF5 write into a full disk, in a child process: a failed write can leave HDF5's
# library state broken, which shows as a crash when that process exits.
_SMALL_WRITE = """
import os, sys
import numpy as np
from pathlib import Path
from stream_cluster.storage.checkpoint import load_arrays, save_arrays
from stream_cluster.errors import DiskFullError
from stream_cluster.storage.store import RowStore

disk, what, leave = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rows = (np.arange(12 * 4096) % 251).astype(np.uint8).reshape(12, 4096)  # 48 KiB segment
arrays = {"centers": np.arange(24.0).reshape(3, 8), "labels": np.arange(300) % 3}
store = RowStore(disk / "pixels", 4096, np.uint8) if what == "segment" else None
free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
fd = os.open(disk / "ballast", os.O_WRONLY | os.O_CREAT)
os.posix_fallocate(fd, 0, free - leave)
os.close(fd)
try:
    if store is not None:
        store.append(rows, [b"x"] * 12)
    else:
        save_arrays(disk / "kmeans.h5", arrays, {})
    outcome = "written"
except DiskFullError:
    outcome = "DiskFullError"
except BaseException as exc:
    outcome = type(exc).__name__
if store is not None:
    kept = RowStore(disk / "pixels", 4096, np.uint8)
    state = "none" if not len(kept) else ("intact" if (kept.read(0, 12) == rows).all() else "TORN")
else:
    try:
        got, _ = load_arrays(disk / "kmeans.h5")
        state = "intact" if all((got[k] == v).all() for k, v in arrays.items()) else "TORN"
    except Exception:
        state = "none"
print(outcome, state, flush=True)
"""


@pytest.mark.parametrize(("what", "leave"), [("segment", 4096), ("segment", 16384),
                                            ("segment", 40960), ("checkpoint", 4096),
                                            ("checkpoint", 8192)])  # fmt: skip
def test_small_h5_write_into_full_disk_fails_cleanly(what: str, leave: int,
                                                    tmp_path: Path) -> None:
    """Check that a small store segment or checkpoint meeting a full disk is never torn.

    The write either succeeds whole or raises DiskFullError and leaves nothing, and the process
    exits normally. Levels of free space are chosen to hit every outcome seen on this machine.
    """
    with tmpfs(tmp_path / "disk", 2**20) as disk:
        r = subprocess.run([sys.executable, "-c", _SMALL_WRITE, str(disk), what, str(leave)],
                           env=cli_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, f"exit {r.returncode}: {r.stdout} {r.stderr[-300:]}"
    assert r.stdout.split() in (["written", "intact"], ["DiskFullError", "none"]), r.stdout


def test_compressed_store_checks_the_disk_again_after_its_first_segment(tmp_path: Path) -> None:
    """A compressed store's size is unknown until it holds a segment: the run starts with only
    the first segment counted, then measures the codec's ratio and stops, naming what it needs,
    if the rest cannot fit (incompressible images here). The segment written is kept and the
    run, given the space, finishes."""
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for i in range(1200):  # noise: the codec cannot shrink it
        path = images / f"{i % 4}" / f"n{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (256, 256), dtype=np.uint8))
    args = ["--size", "256x256", "--components", "8", "--batch-size", "48", "--k", "2",
            "--workers", "0", "--no-progress", "--mem-budget", "2G", "--features", "pixels"]
    size = 56 * 2**20  # 16 MiB, PCA files and a 512-image segment fit; 1,200 raw images do not
    with tmpfs(tmp_path / "disk", size) as disk:
        out = disk / "run"
        r = subprocess.run(cli(images, out, args), env=cli_env(), capture_output=True, text=True,
                           timeout=300)  # fmt: skip
        assert r.returncode == 2, r.stderr
        m = re.search(r"has ([\d.]+ \w+) free but this run needs about ([\d.]+ \w+)", r.stderr)
        assert m is not None and "Traceback" not in r.stderr, r.stderr
        ingest = read_state(out)["ingest"]
        assert ingest["segments"] >= 1 and not ingest.get("done")  # kept, not decoded again
        need, free = parse_size(m.group(2)), parse_size(m.group(1))
        remount(disk, size + need - free + 2**20)
        r = subprocess.run(cli(images, out, args), env=cli_env(), capture_output=True, text=True,
                           timeout=300)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert len((out / "labels.csv").read_text().splitlines()) == 1201
