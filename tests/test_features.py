"""--features: HOG and ONNX runs end to end, their checks before ingest, and pixels unchanged."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from stream_cluster import RunConfig
from stream_cluster.errors import BudgetError, ConfigError, InputError
from stream_cluster.images.features import HogFeatures, parse_features
from stream_cluster.images.onnx_features import OnnxFeatures
from stream_cluster.runner.pipeline import run
from stream_cluster.stages.assign import assign

from .conftest import make_shapes_corpus

SIZE = (48, 48)
COMMON = dict(width=48, height=48, n_components=8, k=3, workers=1, mem_budget=2 * 2**30,
              checkpoint_seconds=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("features") / "images"
    make_shapes_corpus(root, n=45, size=SIZE)
    return root


def _labels(out: Path) -> dict[str, int]:
    with open(out / "labels.csv", newline="") as fh:
        return {r["path"]: int(r["cluster"]) for r in csv.DictReader(fh)}


def _meta(out: Path) -> dict[str, object]:
    with h5py.File(out / "model.h5", "r") as f:
        return dict(json.loads(str(f.attrs["meta"])))


def _conv_model(path: Path, *, channels: int = 1, shape: list[object] | None = None,
                seed: int = 0) -> Path:  # fmt: skip
    """Write a tiny ONNX image model: Conv (8 filters 3x3) + Relu + GlobalAveragePool + Flatten.

    ``shape`` is the input's (N, C, H, W), names for free dimensions; default free N, H, W.
    """
    shape = shape if shape is not None else ["N", channels, "H", "W"]
    c_in = shape[1] if len(shape) > 1 and isinstance(shape[1], int) else channels
    w = np.random.default_rng(seed).normal(size=(8, c_in, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
    ]
    init = [numpy_helper.from_array(w, "w")]
    if len(shape) != 4:  # not an image model: the pixels flattened
        nodes, init = [helper.make_node("Flatten", ["x"], ["y"])], []
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=init,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_hog_run_end_to_end_and_assign_gives_own_labels(images: Path, tmp_path: Path) -> None:
    """Check that a hog run writes labels, records hog in model.h5, fits the PCA on HOG rows,
    and that assigning the run's own images gives their labels, the same with HOG computed in
    the decode workers, and that assign's plan models the HOG-wide model."""
    out = tmp_path / "run"
    run(RunConfig(images, out, features="hog", **COMMON))  # type: ignore[arg-type]
    labels = _labels(out)
    assert len(labels) == 45
    assert _meta(out)["features"] == "hog"
    dim = HogFeatures().dim(*SIZE)
    with h5py.File(out / "model.h5", "r") as f:
        assert f["pca/components_"].shape[1] == dim  # the PCA saw HOG, not 48*48 pixels
    assert dim != SIZE[0] * SIZE[1]
    # the three shapes are three clusters
    kinds = {p: p.split("/")[0] for p in labels}
    assert len({(kinds[p], c) for p, c in labels.items()}) == 3
    res = assign(out, [images], out_csv=tmp_path / "a.csv", workers=0)
    with open(res.csv_path, newline="") as fh:
        got = {r["path"]: int(r["cluster"]) for r in csv.DictReader(fh)}
    assert got == labels
    # HOG computed in two decode worker processes: the same file, byte for byte
    two = assign(out, [images], out_csv=tmp_path / "b.csv", workers=2)
    assert two.workers == 2
    assert two.csv_path.read_bytes() == res.csv_path.read_bytes()
    # assign's memory plan holds the model at HOG's width, not the pixels'
    with pytest.raises(BudgetError, match=rf"\(8 x {dim} components\)"):
        assign(out, [images], out_csv=tmp_path / "c.csv", mem_budget=64 * 2**20)


def test_onnx_run_end_to_end_and_changed_file_refused(images: Path, tmp_path: Path) -> None:
    """Check that an ONNX run (model built here) records its file's hash, that assign of the
    run's images gives their labels, and that assign refuses the file once it changed."""
    model = _conv_model(tmp_path / "tiny.onnx", channels=3)
    out = tmp_path / "run"
    run(RunConfig(images, out, features=f"onnx:{model}", **COMMON))  # type: ignore[arg-type]
    meta = _meta(out)
    assert meta["features"] == f"onnx:{model}"
    assert meta["features_path"] == str(model)
    assert len(str(meta["features_sha256"])) == 64
    with h5py.File(out / "model.h5", "r") as f:
        assert f["pca/components_"].shape[1] == 8  # the model's 8 outputs
    labels = _labels(out)
    res = assign(out, [images], out_csv=tmp_path / "a.csv", workers=0)
    with open(res.csv_path, newline="") as fh:
        assert {r["path"]: int(r["cluster"]) for r in csv.DictReader(fh)} == labels
    _conv_model(model, channels=3, seed=1)  # same name, other weights
    with pytest.raises(InputError, match=r"tiny\.onnx changed since the run: its SHA-256 is"):
        assign(out, [images], out_csv=tmp_path / "b.csv", workers=0)


def test_onnx_fixed_single_image_input(images: Path, tmp_path: Path) -> None:
    """Check that a model with a fixed 1x1xHxW input runs (one image a call)."""
    model = _conv_model(tmp_path / "fixed.onnx", shape=[1, 1, 48, 48])
    ext = OnnxFeatures(model)
    rows = np.random.default_rng(0).integers(0, 256, (5, 48 * 48), dtype=np.uint8)
    feats = ext.transform(rows, 48, 48)
    assert feats.shape == (5, 8)
    one = ext.transform(rows[3:4], 48, 48)
    np.testing.assert_allclose(feats[3], one[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ([1, 1, 32, 32], r"takes images of 32x32 .* not --size 48x48"),
        (["N", 2, "H", "W"], r"with C 1 or 3"),
        (["N", 48, 48], r"\(N, C, H, W\)"),
    ],
    ids=["wrong-size", "two-channels", "rank-3"],
)
def test_onnx_bad_input_shape_refused_before_ingest(
    images: Path, tmp_path: Path, shape: list[object], match: str
) -> None:
    """Check that an ONNX input that cannot take the images fails before the run folder fills."""
    model = _conv_model(tmp_path / "bad.onnx", shape=shape)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=match):
        run(RunConfig(images, out, features=f"onnx:{model}", **COMMON))  # type: ignore[arg-type]
    assert not (out / "pixels").exists()


def test_onnx_missing_or_not_a_model(images: Path, tmp_path: Path) -> None:
    """Check that a missing ONNX file and a file that is no model get clear errors."""
    with pytest.raises(ConfigError, match=r"missing\.onnx does not exist"):
        run(RunConfig(images, tmp_path / "a", features=f"onnx:{tmp_path / 'missing.onnx'}",
                      **COMMON))  # type: ignore[arg-type]  # fmt: skip
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    with pytest.raises(ConfigError, match=r"junk\.onnx is not a model onnxruntime can load"):
        run(RunConfig(images, tmp_path / "b", features=f"onnx:{junk}", **COMMON))  # type: ignore[arg-type]
    assert not (tmp_path / "b" / "pixels").exists()


def test_hog_cell_too_big_refused_before_ingest(images: Path, tmp_path: Path) -> None:
    """Check that HOG cells that do not fit --size fail before ingest, saying what would."""
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"cells of 30 px do not fit --size 48x48.*hog:24"):
        run(RunConfig(images, out, features="hog:30", **COMMON))  # type: ignore[arg-type]
    assert not (out / "pixels").exists()


@pytest.mark.parametrize("spec", ["hogs", "hog:x", "onnx:", "pca"], ids=str)
def test_features_spec_malformed(spec: str, tmp_path: Path) -> None:
    """Check that a malformed --features value is refused by the config."""
    with pytest.raises(ConfigError, match="--features must be"):
        RunConfig(tmp_path, tmp_path / "o", features=spec)
    with pytest.raises(ConfigError, match="cell size in pixels >= 1"):
        parse_features("hog:0")


def test_features_change_on_existing_run_refused(images: Path, tmp_path: Path) -> None:
    """Check that rerunning a run folder with other --features is refused (ingest key)."""
    out = tmp_path / "run"
    run(RunConfig(images, out, features="pixels", **COMMON))  # type: ignore[arg-type]
    with pytest.raises(Exception, match=r"other ingest settings.*features"):
        run(RunConfig(images, out, features="hog", **COMMON))  # type: ignore[arg-type]


def test_pixels_default_unchanged(images: Path, tmp_path: Path) -> None:
    """Check that --features pixels is the seed's path: same settings key, no descriptors
    store, labels and features bitwise equal to --space pca alone (where auto means pixels)."""
    a, b = tmp_path / "a", tmp_path / "b"
    run(RunConfig(images, a, space="pca", **COMMON))  # type: ignore[arg-type]
    run(RunConfig(images, b, features="pixels", space="pca", **COMMON))  # type: ignore[arg-type]
    assert (a / "labels.csv").read_bytes() == (b / "labels.csv").read_bytes()
    assert not (b / "descriptors").exists()
    assert "features" not in _meta(b)
    state = json.loads((b / "state.json").read_text())
    assert "features" not in state["stages"]["ingest"]["key"]
    from stream_cluster.storage.store import RowStore

    fa = RowStore(a / "features", 8, np.float32)
    fb = RowStore(b / "features", 8, np.float32)
    assert fa.read(0, len(fa)).tobytes() == fb.read(0, len(fb)).tobytes()


def test_import_does_not_load_feature_packages() -> None:
    """Check that importing stream_cluster, its runner and assign loads neither scikit-image
    nor onnxruntime: the core install stays lean."""
    code = (
        "import sys, stream_cluster, stream_cluster.runner.pipeline, stream_cluster.stages.assign\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('skimage', 'onnxruntime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that hog without scikit-image, or onnx without onnxruntime, says what to install."""
    monkeypatch.setitem(sys.modules, "skimage", None)
    monkeypatch.setitem(sys.modules, "skimage.feature", None)
    with pytest.raises(ConfigError, match=r"needs the skimage package.*pip install scikit-image"):
        parse_features("hog")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ConfigError, match=r"pip install 'stream-cluster\[features\]'"):
        parse_features("onnx:/nonexistent.onnx").dim(32, 32)


def _ingest_segments(out: Path) -> tuple[int, bool]:
    """The ingest record's durable segments and whether it is done (0, False before it)."""
    try:
        rec = json.loads((out / "state.json").read_text())["stages"]["ingest"]
    except (OSError, ValueError, KeyError):
        return 0, False
    return int(rec.get("segments", 0)), bool(rec.get("done"))


@pytest.mark.reproducibility
def test_hog_kill9_resumes_to_identical_labels(tmp_path: Path) -> None:
    """Check that kill -9 of a hog run in its ingest (between feature and pixel segments), and
    again later, then a rerun, gives the labels of an uninterrupted run."""
    import os
    import random
    import signal
    import time

    root = tmp_path / "images"
    make_shapes_corpus(root, n=600, size=(24, 24), seed=5)
    args = ["--size", "24x24", "--features", "hog:4", "--components", "12", "--batch-size",
            "24", "--k", "3", "--workers", "2", "--no-progress", "--checkpoint-every", "0",
            "--mem-budget", "2G"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))

    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "stream_cluster", str(root), "--out", str(out), *args]

    subprocess.run(cmd(tmp_path / "ref"), check=True, env=env, timeout=300)
    rng = random.Random(7)
    out, mid_ingest = tmp_path / "run", 0
    for want in (1, 6, 12, 10**9):  # durable ingest segments to wait for; then a later stage
        proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        while proc.poll() is None and _ingest_segments(out)[0] < want and not _ingest_segments(
            out
        )[1]:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:
            break
        segments, done = _ingest_segments(out)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        mid_ingest += int(not done and segments > 0)
    final = subprocess.run(cmd(out), env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    assert mid_ingest >= 1
    assert (out / "labels.csv").read_bytes() == (tmp_path / "ref" / "labels.csv").read_bytes()


def test_corrupt_descriptor_segment_is_computed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that a rotted HOG segment is detected, computed again from the pixel store, and
    that the labels do not change."""
    import os

    from stream_cluster.storage.checkpoint import RunState

    images, out = tmp_path / "img", tmp_path / "run"
    make_shapes_corpus(images, n=60, size=(40, 50))
    cfg = RunConfig(images, out, mem_budget=2 * 2**30, width=40, height=50, n_components=8, k=3,
                    batch_size=16, checkpoint_seconds=0.0, workers=0, features="hog")  # fmt: skip
    run(cfg)
    want = (out / "labels.csv").read_bytes()
    RunState(out / "state.json").reset(["pca", "embed", "elbow", "cluster", "report"])
    for name in ("pca.h5", "pca-checkpoint.h5", "kmeans.h5", "labels.csv"):
        (out / name).unlink(missing_ok=True)
    segment = out / "descriptors" / "seg-000001.h5"
    size = segment.stat().st_size
    with open(segment, "r+b") as fh:
        fh.seek(size // 2 - 2048)
        fh.write(os.urandom(4096))
    with caplog.at_level("WARNING", logger="stream_cluster"):
        run(cfg)
    assert (out / "labels.csv").read_bytes() == want
    assert any("seg-000001.h5 was corrupt; computed its features again" in r.message
               for r in caplog.records)  # fmt: skip


def test_features_not_without_pixel_store(tmp_path: Path) -> None:
    """Check that hog/onnx with --keep-pixels never is refused, saying why, and that --dask
    takes them (and makes auto hog as a local run does)."""
    with pytest.raises(ConfigError, match="cannot be used with --keep-pixels never"):
        RunConfig(tmp_path, tmp_path / "o", features="hog", keep_pixels="never")
    assert RunConfig(tmp_path, tmp_path / "o", features="hog", dask="local:2").features == "hog"
    on_dask = RunConfig(tmp_path, tmp_path / "o", width=32, height=32, dask="local:2")
    assert on_dask.features == RunConfig(tmp_path, tmp_path / "o", width=32, height=32).features
    assert on_dask.features == "hog"
    assert RunConfig(tmp_path, tmp_path / "o", space="pca", dask="local:2").features == "pixels"


def test_components_capped_at_feature_dimension(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that --components above what the extractor gives is capped, with a warning, and
    that the plan reserves the extractor's bytes from the budget."""
    from stream_cluster.memory.planner import plan, with_features

    cfg = RunConfig(tmp_path, tmp_path / "o", width=48, height=48, n_components=40,
                    features="hog:24", workers=2)  # fmt: skip
    with caplog.at_level("WARNING", logger="stream_cluster"):
        got, ext = with_features(cfg)
    assert ext is not None and ext.dim(48, 48) == 36  # 2x2 cells: one block of 4 x 9 bins
    assert got.n_components == 36
    assert any("--components 40 is more than" in r.message for r in caplog.records)
    reserve = int(got.extra["features_bytes"])
    assert reserve >= 2 * ext.memory_bytes(48, 48)  # one workspace per decode worker
    assert with_features(RunConfig(tmp_path, tmp_path / "p", features="pixels"))[1] is None
    small = RunConfig(tmp_path, tmp_path / "o", width=48, height=48, n_components=8,
                      mem_budget=reserve, extra={"features_bytes": reserve})  # fmt: skip
    with pytest.raises(Exception, match="needs .* more than --mem-budget"):
        plan(small, 10)
