"""Tests for stream_cluster.images.scan: discovery order, hostile folders, symlinks, digest."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from stream_cluster.errors import InputError
from stream_cluster.images.scan import IMAGE_SUFFIXES, ScanResult, files_digest, scan

from .hostile import (
    IGNORED,
    OK,
    SCAN_REASONS,
    call_unprivileged,
    make_hostile_folder,
    running_as_root,
)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], ScanResult]:
    root = tmp_path_factory.mktemp("hostile") / "images"
    expected = make_hostile_folder(root)
    return root, expected, scan(root)


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((4, 5), value, np.uint8))


def _is_scan_reason(outcome: str) -> bool:
    return any(reason in outcome for reason in SCAN_REASONS)


def test_scan_hostile_folder_every_case(hostile: tuple[Path, dict[str, str], ScanResult]) -> None:
    """Check that each hostile entry is listed, skipped with its reason, or ignored as expected."""
    _, expected, result = hostile
    skipped = dict(result.skipped)
    for rel, outcome in expected.items():
        if outcome == IGNORED:
            assert rel not in result.files and rel not in skipped, rel
        elif _is_scan_reason(outcome):
            assert rel in skipped, rel
            assert outcome in skipped[rel], (rel, skipped[rel])
            assert rel not in result.files
        else:  # "ok" or a decode-time reason: scan must list it
            assert rel in result.files, rel
            assert rel not in skipped
    assert set(result.files) <= set(expected), set(result.files) - set(expected)
    assert set(skipped) <= set(expected), set(skipped) - set(expected)


def test_scan_hostile_names_survive(hostile: tuple[Path, dict[str, str], ScanResult]) -> None:
    """Check that non-UTF-8, Japanese, HTML and shell-metacharacter names are listed intact."""
    root, _, result = hostile
    names = {
        os.fsdecode(b"caf\xe9.png"),
        "日本語の画像.png",
        "<img src=x onerror=alert(1)>.png",
        "$(touch pwned);'\".png",
    }
    assert names <= set(result.files)
    for name in names:
        assert os.path.isfile(os.path.join(root, name))
    assert not (root / "pwned").exists()


def test_scan_files_sorted_by_bytes_and_stable(
    hostile: tuple[Path, dict[str, str], ScanResult],
) -> None:
    """Check that files and skips come sorted by their bytes and identical on a second scan."""
    root, _, result = hostile
    assert result.files == sorted(result.files, key=os.fsencode)
    assert [r for r, _ in result.skipped] == sorted((r for r, _ in result.skipped), key=os.fsencode)
    again = scan(root)
    assert again.files == result.files and again.skipped == result.skipped
    assert all("\\" not in f and not f.startswith("/") for f in result.files)
    assert result.root == root.absolute()


def test_scan_symlink_loop_terminates_without_duplicates(
    hostile: tuple[Path, dict[str, str], ScanResult],
) -> None:
    """Check that the loop folder's image is listed once, not once per trip round the loop."""
    _, _, result = hostile
    inner = [f for f in result.files if f.endswith("inner.png")]
    assert inner == ["loop/inner.png"]


def test_scan_follow_external_symlinks(hostile: tuple[Path, dict[str, str], ScanResult]) -> None:
    """Check that follow_external_symlinks lists the outside target instead of skipping it."""
    root, _, result = hostile
    assert "external_link.png" not in result.files
    followed = scan(root, follow_external_symlinks=True)
    assert "external_link.png" in followed.files
    assert "external_link.png" not in dict(followed.skipped)


def test_scan_external_folder_symlink(tmp_path: Path) -> None:
    """Check that a folder symlink leaving root is skipped by default and followed on request."""
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    _png(root / "a.png")
    _png(outside / "b.png")
    os.symlink(outside, root / "ext")
    result = scan(root)
    assert result.files == ["a.png"]
    assert "outside root" in dict(result.skipped)["ext"]
    assert scan(root, follow_external_symlinks=True).files == ["a.png", "ext/b.png"]


def test_scan_external_loop_terminates(tmp_path: Path) -> None:
    """Check that following external symlinks still ends on a loop that passes outside root."""
    root, outside = tmp_path / "root", tmp_path / "elsewhere"
    _png(root / "a.png")
    _png(outside / "b.png")
    os.symlink(outside, root / "out")
    os.symlink(root, outside / "back")
    result = scan(root, follow_external_symlinks=True)
    assert result.files == ["a.png", "out/b.png"]
    assert "symlink loop" in dict(result.skipped)["out/back"]


def test_scan_folder_reached_twice_listed_once(tmp_path: Path) -> None:
    """Check that two symlinks to one folder list its images once, under the real name first."""
    _png(tmp_path / "real" / "x.png")
    os.symlink("real", tmp_path / "a_link")
    os.symlink("real", tmp_path / "b_link")
    result = scan(tmp_path)
    assert result.files == ["real/x.png"]
    reasons = dict(result.skipped)
    assert "already scanned as 'real'" in reasons["a_link"]
    assert "already scanned as 'real'" in reasons["b_link"]


def test_scan_symlink_fanout_stays_linear(tmp_path: Path) -> None:
    """Check that a symlink graph with 2^20 paths is walked once per real folder."""
    # Real folders are hidden, so every one of them is reached only through symlinks.
    for i in range(20):
        _png(tmp_path / f".d{i}" / "img.png")
        if i:
            os.symlink(f"../.d{i}", tmp_path / f".d{i - 1}" / "left")
            os.symlink(f"../.d{i}", tmp_path / f".d{i - 1}" / "right")
    os.symlink(".d0", tmp_path / "start")
    result = scan(tmp_path)
    assert result.files == ["/".join(["start"] + ["left"] * i + ["img.png"]) for i in range(20)]
    assert len(result.skipped) == 19
    assert all("already scanned" in reason for _, reason in result.skipped)


def test_scan_deep_nesting_is_not_recursive(tmp_path: Path) -> None:
    """Check that 1,050 nested folders (beyond Python's recursion limit) are walked."""
    folder = str(tmp_path)
    for _ in range(1050):  # os.makedirs and Path.mkdir(parents=True) are recursive themselves
        folder = os.path.join(folder, "d")
        os.mkdir(folder)
    cv2.imwrite(os.path.join(folder, "deep.png"), np.zeros((2, 2), np.uint8))
    try:
        assert scan(tmp_path).files == ["d/" * 1050 + "deep.png"]
    finally:  # shutil.rmtree (used by pytest's cleanup) is recursive too
        os.unlink(os.path.join(folder, "deep.png"))
        while folder != str(tmp_path):
            os.rmdir(folder)
            folder = os.path.dirname(folder)


def test_scan_suffixes_case_insensitive_and_others_ignored(tmp_path: Path) -> None:
    """Check that every image suffix in any case is listed and other files are not reported."""
    names = []
    for i, suffix in enumerate(sorted(IMAGE_SUFFIXES)):
        name = f"f{i}{suffix.upper() if i % 2 else suffix}"
        (tmp_path / name).write_bytes(b"x")
        names.append(name)
    for other in ("readme.txt", "data.csv", "noext", "img.png.bak", "Thumbs.db"):
        (tmp_path / other).write_bytes(b"x")
    result = scan(tmp_path)
    assert result.files == sorted(names, key=os.fsencode)
    assert result.skipped == []


def test_scan_hidden_root_is_scanned(tmp_path: Path) -> None:
    """Check that only names below root count as hidden: a root called '.cache' is scanned."""
    _png(tmp_path / ".cache" / "img.png")
    _png(tmp_path / ".cache" / ".thumbs" / "t.png")
    assert scan(tmp_path / ".cache").files == ["img.png"]


def test_scan_root_missing_or_file(tmp_path: Path) -> None:
    """Check that a missing root or a file root raises InputError naming the path."""
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match=r"nope.*does not exist"):
        scan(missing)
    afile = tmp_path / "a.png"
    _png(afile)
    with pytest.raises(InputError, match=r"a\.png.*not a folder"):
        scan(afile)


def test_scan_empty_folder(tmp_path: Path) -> None:
    """Check that an empty folder gives an empty result, not an error (the caller decides)."""
    result = scan(tmp_path)
    assert result.files == [] and result.skipped == []


def _scan_lists(root: str) -> list[object]:
    result = scan(root)
    return [result.files, result.skipped]


def test_scan_permission_denied() -> None:
    """Check that an unreadable file and an unlistable folder are skipped with the reason.

    As root, permissions do not apply, so the scan runs in a child that dropped to 'nobody'.
    """
    base = Path(tempfile.mkdtemp(prefix="scan-perm-"))
    try:
        os.chmod(base, 0o755)
        _png(base / "ok.png")
        _png(base / "secret.png")
        _png(base / "locked" / "in.png")
        os.chmod(base / "secret.png", 0)
        os.chmod(base / "locked", 0)
        if running_as_root():
            files, skipped = call_unprivileged(_scan_lists, str(base))  # type: ignore[misc]
        else:
            files, skipped = _scan_lists(str(base))  # type: ignore[misc]
    finally:
        os.chmod(base / "locked", 0o755)
        shutil.rmtree(base)
    assert files == ["ok.png"]
    reasons = {rel: reason for rel, reason in skipped}
    assert reasons["secret.png"] == "permission denied: cannot read file"
    assert reasons["locked"] == "permission denied: cannot list folder"


def test_files_digest_tracks_changes(tmp_path: Path) -> None:
    """Check that the digest is stable, and changes on touch, rewrite, rename and deletion."""
    _png(tmp_path / "a.png", 0)
    _png(tmp_path / "b.png", 9)
    files = scan(tmp_path).files
    first = files_digest(files, tmp_path)
    assert len(first) == 64 and first == files_digest(files, tmp_path)
    st = os.stat(tmp_path / "a.png")
    os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = files_digest(files, tmp_path)
    assert touched != first
    (tmp_path / "b.png").write_bytes(b"other content")
    os.utime(tmp_path / "b.png", ns=(st.st_atime_ns, st.st_mtime_ns))
    rewritten = files_digest(files, tmp_path)
    assert rewritten != touched
    (tmp_path / "b.png").rename(tmp_path / "c.png")
    assert files_digest(files, tmp_path) != rewritten  # b.png now missing, no exception
    assert files_digest(scan(tmp_path).files, tmp_path) != rewritten


def test_files_digest_order_and_names_matter(tmp_path: Path) -> None:
    """Check that the digest depends on file order and works with non-UTF-8 names."""
    _png(tmp_path / "a.png")
    odd = os.fsdecode(b"\xff\xfe.png")
    with open(os.path.join(os.fsencode(tmp_path), b"\xff\xfe.png"), "wb") as fh:
        fh.write(b"x")
    files = scan(tmp_path).files
    assert odd in files
    assert files_digest(files, tmp_path) != files_digest(files[::-1], tmp_path)


def test_scan_hostile_ok_count(hostile: tuple[Path, dict[str, str], ScanResult]) -> None:
    """Check that the duplicate images are both listed (dedup is not scan's job)."""
    _, expected, result = hostile
    assert {"dup_a.png", "dup_b.png"} <= set(result.files)
    n_listed = sum(1 for o in expected.values() if o != IGNORED and not _is_scan_reason(o))
    assert len(result.files) == n_listed
    assert sum(1 for o in expected.values() if o == OK) >= 20
