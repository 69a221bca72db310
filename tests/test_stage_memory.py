"""Each stage's measured peak (RSS of the process tree) against the plan's model of it.

The large sizes are measured by ``benchmarks/scale_runs.py`` (8,121 to 100,000 images,
``benchmarks/RESULTS_scale.md``); this runs the real pipeline at a small size, with and
without a pixel store and with HOG wider than the pixels (the PCA and embed then read float32
descriptors), and fails if any stage's model is below what the stage used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import make_shapes_corpus

#: Which modelled stage bounds each stage the runner records.
MODELLED = {"scan": "scan", "ingest": "ingest", "pca": "pca", "ingest+pca": "ingest+pca",
            "embed": "embed", "space": "space", "elbow": "kmeans", "cluster": "kmeans",
            "report": "report"}


RUNS = {
    # --features auto is HOG here (64x64, a pixel store): decoding, then the PCA
    "always": ["--size", "64x64", "--components", "24", "--workers", "2"],
    # the pixels with a pixel store: decoding overlaps the PCA
    "pixels": ["--size", "64x64", "--components", "24", "--workers", "2", "--space", "pca"],
    "never": ["--size", "64x64", "--components", "24", "--workers", "2",
              "--keep-pixels", "never"],
    # HOG wider than the pixels (34,596 float32 values against 16,384 bytes), decoded in this
    # process so the PCA and the embed over descriptors/ are measured on their own
    "hog-wide": ["--size", "128x128", "--components", "64", "--workers", "0",
                 "--features", "hog:4"],
}  # fmt: skip


@pytest.mark.parametrize("run", list(RUNS))
def test_every_stage_stays_under_its_model(tmp_path: Path, run: str) -> None:
    size = int(RUNS[run][1].split("x")[0])
    images = tmp_path / "images"
    make_shapes_corpus(images, n=400, size=(size, size), seed=2)
    out = tmp_path / "run"
    # A fresh process, as the CLI runs: the model starts from an interpreter with the libraries
    # loaded, not from whatever a long-lived process (here pytest) already holds.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-m", "stream_cluster", str(images), "--out", str(out),
                    *RUNS[run], "--k", "auto", "--k-range", "2:6", "--mem-budget", "2G",
                    "--profile-memory", "--no-progress"], check=True, env=env, timeout=300,
                   capture_output=True)  # fmt: skip
    plan = json.loads((out / "run.json").read_text())["plan"]["stage_bytes"]
    stages = json.loads((out / "state.json").read_text())["stages"]
    checked = []
    for stage, rec in stages.items():
        peak = int(rec.get("peak_rss", 0))
        if stage in MODELLED and peak:
            model = plan[MODELLED[stage]]
            assert peak <= model, f"{stage}: {peak / 2**20:.0f} MiB, model {model / 2**20:.0f}"
            checked.append(stage)
    assert {"scan", "embed", "elbow", "cluster", "report"} <= set(checked), checked
    if run != "pixels":
        assert "space" in checked, checked
    if run in ("hog-wide", "always"):
        assert {"ingest", "pca"} <= set(checked), checked
    if run in ("never", "pixels"):
        assert "ingest+pca" in checked, checked
