"""Tests for the scale-corpus generator: shapes, determinism per index, resume, folders."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.scale_corpus import HEIGHT, WIDTH, augment, main, output_path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three generated source images: two prepared-size grey, one small colour."""
    root = tmp_path_factory.mktemp("src")
    (root / "a").mkdir()
    for k in range(2):
        img = np.full((HEIGHT, WIDTH), 255, np.uint8)
        cv2.circle(img, (100 + 80 * k, 200), 60 + 20 * k, 40 * k, -1)
        cv2.rectangle(img, (20, 20 + 100 * k), (120, 90 + 100 * k), 128, -1)
        cv2.imwrite(str(root / "a" / f"s{k}.png"), img)
    colour = np.zeros((120, 160, 3), np.uint8)
    colour[:, :80] = (0, 0, 255)
    cv2.imwrite(str(root / "c.png"), colour)
    return root


def _images(out: Path, n: int, per_folder: int = 1000) -> list[np.ndarray]:
    return [
        cv2.imread(str(output_path(out, i, per_folder)), cv2.IMREAD_UNCHANGED) for i in range(n)
    ]


def test_scale_corpus_shapes_and_folders(sources: Path, tmp_path: Path) -> None:
    """Check that 20 images come out grey 300x430, in sub-folders of at most --per-folder."""
    out = tmp_path / "out"
    assert main([str(sources), str(out), "--n", "20", "--seed", "3", "--per-folder", "8"]) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert folders == ["000", "001", "002"]
    assert [len(list((out / f).glob("*.png"))) for f in folders] == [8, 8, 4]
    imgs = _images(out, 20, 8)
    assert all(im.shape == (HEIGHT, WIDTH) and im.dtype == np.uint8 for im in imgs)
    assert not list(out.rglob("*.partial"))
    # Augmented, not copies: the 20 images are not all alike.
    assert len({im.tobytes() for im in imgs}) == 20


def test_scale_corpus_deterministic_per_index(sources: Path, tmp_path: Path) -> None:
    """Check that image i depends only on seed and i: a shorter run is a prefix, seeds differ."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    main([str(sources), str(a), "--n", "20", "--seed", "3", "--workers", "2"])
    main([str(sources), str(b), "--n", "7", "--seed", "3", "--workers", "1"])
    main([str(sources), str(c), "--n", "7", "--seed", "4", "--workers", "1"])
    for i in range(7):
        assert output_path(a, i).read_bytes() == output_path(b, i).read_bytes()
    assert any(output_path(a, i).read_bytes() != output_path(c, i).read_bytes() for i in range(7))


def test_scale_corpus_resumes(sources: Path, tmp_path: Path) -> None:
    """Check that a rerun keeps existing files and rewrites only missing ones, identically."""
    out = tmp_path / "out"
    main([str(sources), str(out), "--n", "10", "--workers", "1"])
    kept, lost = output_path(out, 2), output_path(out, 5)
    want = lost.read_bytes()
    kept.write_bytes(b"sentinel")
    lost.unlink()
    main([str(sources), str(out), "--n", "10", "--workers", "1"])
    assert kept.read_bytes() == b"sentinel"
    assert lost.read_bytes() == want


def test_augment_fills_white_and_keeps_shape() -> None:
    """Check that the augmentation keeps the size and fills uncovered pixels with white."""
    img = np.zeros((HEIGHT, WIDTH), np.uint8)
    outs = [augment(img, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == (HEIGHT, WIDTH) for o in outs)
    # A black image moved, turned or shrunk exposes white fill somewhere in most draws.
    assert sum(int((o == 255).any()) for o in outs) >= 6
