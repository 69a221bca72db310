"""An unprivileged user: permissions really bite when the command runs as ``nobody``.

The tests run as root, for whom chmod 000 stops nothing, so the command itself runs as
``nobody`` (``setpriv``), from a world-readable scratch folder holding a copy of the package
(see :class:`tests.faults.Nobody`). Decode workers are started too, as ``nobody``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import make_shapes_corpus
from .faults import Nobody

ARGS = ["--size", "16x20", "--components", "8", "--batch-size", "16", "--k", "3",
        "--workers", "2", "--no-progress", "--mem-budget", "2G"]  # fmt: skip


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))[1:]


@pytest.fixture(scope="module")
def nobody() -> Iterator[Nobody]:
    with Nobody() as nb:
        images = nb.base / "images"
        make_shapes_corpus(images, n=60, size=(16, 20), seed=2)
        yield nb


def test_unprivileged_run_skips_unreadable_files_and_folders(nobody: Nobody) -> None:
    """Check that files and folders nobody may read are skipped with reasons, the rest clustered.

    An unreadable file, an unlistable folder and a folder that can be listed but not entered
    (r without x) each end in skipped.csv with the reason; every other image is labelled.
    """
    images = nobody.base / "images"
    readable = sorted(str(p.relative_to(images)) for p in images.rglob("*.png"))
    good = images / readable[0]
    (images / "secret.png").write_bytes(good.read_bytes())
    os.chmod(images / "secret.png", 0)
    for name, mode in (("locked", 0), ("listable", 0o644)):
        (images / name).mkdir()
        (images / name / "inside.png").write_bytes(good.read_bytes())
        os.chmod(images / name, mode)
    out = nobody.writable("out-skips") / "run"

    r = nobody.run([str(images), "--out", str(out), *ARGS])

    assert r.returncode == 0, r.stderr
    assert sorted(map(tuple, _csv(out / "skipped.csv"))) == [
        ("listable/inside.png", "permission denied: cannot read file"),
        ("locked", "permission denied: cannot list folder"),
        ("secret.png", "permission denied: cannot read file"),
    ]
    assert sorted(row[0] for row in _csv(out / "labels.csv")) == readable
    assert "3 skipped" in r.stdout


@pytest.mark.parametrize("where", ["root-owned folder", "missing folder inside it",
                                   pytest.param("root's finished run folder",
                                                marks=pytest.mark.slow)])  # fmt: skip
def test_unprivileged_read_only_out_fails_at_once(nobody: Nobody, where: str) -> None:
    """Check that an --out nobody cannot write to stops at once with one clear line.

    The folder is checked before the input is even scanned: the only output is the message,
    which names the folder and says what to do, and nothing is written there.
    """
    images = nobody.base / "images"
    locked = nobody.base / f"ro-{where.replace(' ', '-')}"
    locked.mkdir(mode=0o755)
    out = {"root-owned folder": locked, "missing folder inside it": locked / "run",
           "root's finished run folder": locked}[where]  # fmt: skip
    if where == "root's finished run folder":
        (locked / "state.json").write_text('{"format": "stream-cluster-state/1", "stages": {}}')
    before = sorted(os.listdir(locked))

    r = nobody.run([str(images), "--out", str(out), *ARGS])

    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"stream-cluster: error: Cannot write to the output folder {out} "
                                f"(permission denied). Choose a writable folder with --out.")
    assert sorted(os.listdir(locked)) == before


def test_unprivileged_unreadable_input_folder(nobody: Nobody) -> None:
    """Check that an input folder nobody cannot list is a one-line error, not a crash."""
    closed = nobody.base / "closed"
    make_shapes_corpus(closed, n=6, size=(16, 20))
    os.chmod(closed, 0)
    out = nobody.writable("out-closed") / "run"
    r = nobody.run([str(closed), "--out", str(out), *ARGS])
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == (f"stream-cluster: error: Input folder '{closed}' cannot be "
                                f"listed: Permission denied. Check its permissions.")
