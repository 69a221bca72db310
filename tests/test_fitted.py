"""Using a fitted run: assign new images, find similar ones, the Python model API, the CLI."""

from __future__ import annotations

import csv
import io
from contextlib import redirect_stdout
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_cluster import RunConfig, assign, load_model, run, similar
from stream_cluster._cli.main import main
from stream_cluster.errors import InputError, StoreError
from stream_cluster.model.format import FORMAT_VERSION
from stream_cluster.storage.store import RowStore

from .conftest import make_shapes_corpus
from .precision import distances_close, radii

# Results equal bitwise or to README's precision: CI reruns these under other BLAS kernels.
pytestmark = pytest.mark.reproducibility


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("fitted")
    images = base / "images"
    make_shapes_corpus(images, n=60)
    out = base / "run"
    # The seed's path: distances are compared at README's precision for PCA features (the
    # learned space's assign is tested in test_space.py: labels, not distances)
    run(RunConfig(images, out, mem_budget=2 * 2**30, width=16, height=20, n_components=8, k=3,
                  batch_size=16, workers=1, space="pca"))
    return images, out


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_assign_training_images_gives_their_labels(fitted_run: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    """Check that assigning a run's own images returns their labels and distances.

    Labels are equal; distances to README's precision (assign projects the rows in other
    batches than the run, which on AVX2 BLAS kernels rounds differently in the 7th digit).
    """
    images, out = fitted_run
    res = assign(out, [images], out_csv=tmp_path / "a.csv", workers=2)
    got = {r["path"]: (r["cluster"], float(r["distance"])) for r in _csv(tmp_path / "a.csv")}
    want = {r["path"]: (r["cluster"], float(r["distance"])) for r in _csv(out / "labels.csv")}
    assert res.n_assigned == 60 and res.n_skipped == 0 and sorted(got) == sorted(want)
    assert {p: c for p, (c, _) in got.items()} == {p: c for p, (c, _) in want.items()}
    radius = radii(out, 16 * 20)
    far = [p for p in got if not distances_close(got[p][1], want[p][1], radius[p])]
    assert far == [], [(p, got[p][1], want[p][1]) for p in far]


def test_assign_flags_an_out_of_distribution_image(fitted_run: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    """Check that a checkerboard, unlike any training shape, is novel; files keep given paths."""
    _, out = fitted_run
    board = (np.indices((40, 30)).sum(axis=0) % 2 * 255).astype(np.uint8)
    odd = tmp_path / "board.png"
    cv2.imwrite(str(odd), board)
    wide = tmp_path / "wide.png"  # another size and colour: letterboxed like any other
    cv2.imwrite(str(wide), np.full((10, 90, 3), 200, np.uint8))
    res = assign(out, [odd, wide], out_csv=tmp_path / "b.csv", workers=0)
    rows = {r["path"]: r for r in _csv(tmp_path / "b.csv")}
    assert rows[str(odd)]["novel"] == "true" and res.n_assigned == 2


def test_assign_skips_corrupt_files_and_refuses_bad_runs(fitted_run: tuple[Path, Path],
                                                         tmp_path: Path) -> None:
    """Check corrupt images are skipped with reasons, and bad run folders are refused whole."""
    images, out = fitted_run
    folder = tmp_path / "new"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    cv2.imwrite(str(folder / "ok.png"), np.full((20, 16), 30, np.uint8))
    res = assign(out, [folder], out_csv=tmp_path / "c.csv", workers=0)
    assert res.n_assigned == 1 and res.n_skipped == 1
    skipped = _csv(tmp_path / "c-skipped.csv")
    assert skipped[0]["path"] == "broken.png" and skipped[0]["reason"]
    with pytest.raises(InputError, match="not a stream-cluster run folder"):
        assign(tmp_path, [folder], out_csv=tmp_path / "d.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="No images found"):
        assign(out, [empty], out_csv=tmp_path / "e.csv")
    assert not (tmp_path / "d.csv").exists() and not (tmp_path / "e.csv").exists()


def test_load_model_refuses_unfinished_and_newer(fitted_run: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    """Check the messages for an interrupted run folder and a model from a newer format."""
    _, out = fitted_run
    half = tmp_path / "half"
    half.mkdir()
    (half / "state.json").write_text("{}")
    with pytest.raises(InputError, match="still running or was interrupted"):
        load_model(half)
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "run.json").write_bytes((out / "run.json").read_bytes())
    (newer / "model.h5").write_bytes((out / "model.h5").read_bytes())
    with h5py.File(newer / "model.h5", "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(StoreError, match="newer"):
        load_model(newer)


def test_similar_puts_the_image_itself_first(fitted_run: tuple[Path, Path]) -> None:
    """Check that a run image finds itself at distance 0, then others by distance."""
    images, out = fitted_run
    target = sorted(images.rglob("*.png"))[7]
    matches = similar(out, target, n=5)
    assert matches[0].path == str(target.relative_to(images)) and matches[0].distance == 0.0
    assert [m.rank for m in matches] == [1, 2, 3, 4, 5]
    assert all(a.distance <= b.distance for a, b in zip(matches, matches[1:]))
    # The same picture from outside the run is projected and finds the same neighbours.
    arr = cv2.imread(str(target), cv2.IMREAD_GRAYSCALE)
    again = similar(out, arr, n=5)
    assert again[0].path == matches[0].path and again[0].distance < 1e-3


def test_model_python_api(fitted_run: tuple[Path, Path]) -> None:
    """Check load_model: predict equals the labels, transform has n_components, similar works."""
    images, out = fitted_run
    model = load_model(out)
    rows = _csv(out / "labels.csv")[:10]
    paths = [images / r["path"] for r in rows]
    assert model.predict(paths).tolist() == [int(r["cluster"]) for r in rows]
    assert model.transform(paths[:3]).shape == (3, model.n_components)
    assert model.similar(paths[0], n=3)[0].distance == 0.0


def test_cli_assign_and_similar(fitted_run: tuple[Path, Path], tmp_path: Path) -> None:
    """Check the two subcommands end to end: exit codes, CSVs, montage, a clear error."""
    images, out = fitted_run
    assert main(["assign", str(out), str(images), "--out", str(tmp_path / "x.csv"),
                 "--no-progress", "--workers", "0"]) == 0
    assert len(_csv(tmp_path / "x.csv")) == 60
    target = sorted(images.rglob("*.png"))[0]
    buf = io.StringIO()
    with redirect_stdout(buf):
        code = main(["similar", str(out), str(target), "-n", "4", "--montage",
                     str(tmp_path / "m.png")])
    assert code == 0
    lines = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert len(lines) == 4 and lines[0]["distance"] == "0"
    assert cv2.imread(str(tmp_path / "m.png")) is not None
    assert main(["assign", str(tmp_path), str(images)]) == 2


@settings(max_examples=25, deadline=None)
@given(n_rows=st.integers(1, 300), n=st.integers(1, 20), seed=st.integers(0, 10_000),
       dup=st.booleans())
def test_search_is_exact(tmp_path_factory: pytest.TempPathFactory, n_rows: int, n: int,
                         seed: int, dup: bool) -> None:
    """Check the blocked float32-then-float64 search against brute force in float64."""
    from stream_cluster.model import search

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_rows, 7)).astype(np.float32) * rng.uniform(0.01, 100)
    if dup:
        x[n_rows // 2 :] = x[: n_rows - n_rows // 2]  # exact ties
    q = x[rng.integers(n_rows)].astype(np.float64) + rng.normal(size=7) * 1e-3
    store = RowStore(tmp_path_factory.mktemp("s") / "f", 7, np.float32)
    for lo in range(0, n_rows, 37):
        store.append(x[lo : lo + 37], [b"r%d" % i for i in range(lo, min(lo + 37, n_rows))])
    old = search.SEARCH_BLOCK
    search.SEARCH_BLOCK = 50
    try:
        d, i = search.nearest(store, q, n)
    finally:
        search.SEARCH_BLOCK = old
    x64 = x.astype(np.float64)
    brute = np.maximum((x64 * x64).sum(1) - 2 * x64 @ q + q @ q, 0)
    order = np.lexsort((np.arange(n_rows), brute))[:n]
    np.testing.assert_allclose(d, brute[order], rtol=1e-9, atol=1e-9)
    assert set(i.tolist()) == set(order.tolist()) or np.allclose(brute[i], brute[order])
