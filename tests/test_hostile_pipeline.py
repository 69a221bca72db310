"""The whole pipeline on a folder of hostile and odd files: every file ends ingested or skipped."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from stream_cluster import RunConfig, run

from .conftest import make_shapes_corpus
from .hostile import IGNORED, OK, make_hostile_folder


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))


def test_hostile_folder_every_file_accounted_for(tmp_path: Path) -> None:
    """Check that each hostile file is ingested or listed in skipped.csv with its specific reason.

    Also that the report escapes the HTML-hostile file name and peak RSS stays in the budget.
    """
    root = tmp_path / "hostile"
    expected = make_hostile_folder(root)
    make_shapes_corpus(root / "shapes", n=12)  # enough plain images for a few components
    out = tmp_path / "run"
    budget = 2 * 2**30
    res = run(RunConfig(root, out, mem_budget=budget, width=20, height=16, n_components=4, k=3,
                        batch_size=8, workers=2))
    labelled = {r["path"] for r in _read_csv(out / "labels.csv")}
    skipped = {r["path"]: r["reason"] for r in _read_csv(out / "skipped.csv")}
    for rel, outcome in expected.items():
        if outcome == IGNORED:
            assert rel not in labelled and rel not in skipped, rel
        elif outcome == OK:
            if (root / rel).is_dir():
                continue
            assert rel in labelled, f"{rel!r} should be ingested"
        else:
            assert rel in skipped, f"{rel!r} should be skipped with {outcome!r}"
            assert outcome in skipped[rel], (rel, skipped[rel])
    assert res.n_skipped == len(skipped)
    html = (out / "index.html").read_text(encoding="utf-8")
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    doc = json.loads((out / "run.json").read_text())
    assert doc["peak_rss_bytes"] <= budget
    assert np.isfinite(res.inertia)
