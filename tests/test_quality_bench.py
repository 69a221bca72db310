"""Smoke tests of the quality benchmark: its metrics by hand, and one tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks import labelled_sets
from benchmarks.quality import discover, knee_index, main, pca_scores, purity, scores


def test_purity_hand_computed() -> None:
    # Check that purity counts, per cluster, the images carrying its majority label.
    truth = ["a", "a", "a", "b", "b", "c"]
    pred = [0, 0, 1, 1, 1, 2]
    # cluster 0: a a -> 2; cluster 1: a b b -> 2; cluster 2: c -> 1; 5 of 6.
    assert purity(truth, pred) == pytest.approx(5 / 6)


def test_purity_noise_is_one_group() -> None:
    # Check that a noise label (-1) is one cluster like any other, not dropped.
    truth = [1, 1, 2, 2, 3, 3]
    pred = [-1, 0, -1, 1, -1, 2]
    # noise holds 1, 2, 3 -> 1; clusters 0, 1, 2 hold one image each -> 3; 4 of 6.
    assert purity(truth, pred) == pytest.approx(4 / 6)


def test_purity_rejects_mismatched_lengths() -> None:
    # Check that vectors of different length are refused with the shapes named.
    with pytest.raises(ValueError, match="equal in length"):
        purity([1, 2], [1])


def test_scores_relabelled_partition_is_perfect() -> None:
    # Check that a partition equal up to the names of its clusters scores 1 on every metric.
    truth = np.array([0, 0, 1, 1, 2, 2, 2])
    got = scores(truth, np.array([7, 7, 3, 3, 5, 5, 5]))
    assert got["ari"] == pytest.approx(1.0)
    assert got["ami"] == pytest.approx(1.0)
    assert got["nmi"] == pytest.approx(1.0)
    assert got["purity"] == 1.0
    assert got["clusters"] == 3


def test_scores_single_cluster() -> None:
    # Check the values for everything in one cluster: ARI 0, NMI 0, purity = largest class share.
    truth = np.array([0, 0, 0, 1, 2])
    got = scores(truth, np.zeros(5, dtype=int))
    assert got["ari"] == pytest.approx(0.0, abs=1e-12)
    assert got["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert got["purity"] == pytest.approx(3 / 5)


def test_knee_index_hand_computed() -> None:
    # Check the chord rule: scaled points (0,1) (1/3,.2) (2/3,.1) (1,0); distances to the chord
    # x + y = 1 are proportional to 0, .467, .233, 0, so the knee is index 1.
    assert knee_index([1.0, 0.2, 0.1, 0.0]) == 1
    assert knee_index([5.0, 5.0]) == 0


@pytest.mark.parametrize("shape", [(12, 30), (40, 6)], ids=["gram", "covariance"])
def test_pca_scores_match_sklearn(shape: tuple[int, int]) -> None:
    # Check that both eigendecomposition routes give scikit-learn's PCA scores up to sign.
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = rng.normal(size=shape).astype(np.float32) * np.linspace(3, 0.5, shape[1], dtype=np.float32)
    ref = PCA(n_components=4, svd_solver="full").fit(x.astype(np.float64))
    want = ref.transform(x.astype(np.float64))
    got, evr = pca_scores(x.copy(), 4)
    signs = np.sign((got * want).sum(axis=0))
    np.testing.assert_allclose(got * signs, want, atol=1e-3, rtol=1e-3)
    assert evr == pytest.approx(float(ref.explained_variance_ratio_.sum()), rel=1e-4)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """36 grey 16x12 PNGs in 3 labels: a bar at the top, in the middle, or at the bottom."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(1)
    for i in range(36):
        lab = i % 3
        img = np.full((12, 16), 230, dtype=np.uint8)
        img[lab * 4 : lab * 4 + 4] = 20
        img = np.clip(img.astype(int) + rng.integers(-15, 16, img.shape), 0, 255)
        (root / f"c{lab}").mkdir(exist_ok=True)
        cv2.imwrite(str(root / f"c{lab}" / f"{i:02d}.png"), img.astype(np.uint8))
    return root


def test_discover_labels_from_top_folder(tiny_set: Path) -> None:
    # Check that every image gets its top folder as label, in sorted path order.
    rel, labels = discover(tiny_set)
    assert len(rel) == 36 and rel == sorted(rel)
    assert labels == [r.split("/")[0] for r in rel]


def test_quality_end_to_end_cheap_rows(tiny_set: Path, tmp_path: Path) -> None:
    # Check that a run of the cheap rows writes one scored JSONL record per row and a table,
    # and that the separable tiny set is recovered exactly by k-means on the PCA features.
    out = tmp_path / "out"
    rc = main(
        [
            str(tiny_set),
            "--name",
            "tiny",
            "--size",
            "16x12",
            "--components",
            "5",
            "--pipelines",
            "stream-cluster,pca-kmeans",
            "--out",
            str(out),
            "--work",
            str(tmp_path / "work"),
            "--mem-budget",
            "1G",
        ]
    )
    assert rc == 0
    rows = [json.loads(line) for line in (out / "tiny.jsonl").read_text().splitlines()]
    by = {r["pipeline"]: r for r in rows}
    assert set(by) == {"features[pixels]", "stream-cluster", "pca-kmeans"}
    assert all(r["returncode"] == 0 and r["n"] == 36 and r["k"] == 3 for r in rows)
    assert by["pca-kmeans"]["ari"] == pytest.approx(1.0)
    assert by["pca-kmeans"]["purity"] == 1.0
    assert 0.0 < by["stream-cluster"]["ari"] <= 1.0
    assert by["stream-cluster"]["clusters"] == 3
    assert all(r["peak_rss_mib"] > 0 and r["wall_s"] > 0 for r in rows)
    table = (out / "tiny.md").read_text()
    assert "| pca-kmeans | 1.000 |" in table


def test_build_digits_writes_letterboxed_pngs(tmp_path: Path) -> None:
    # Check that the digits set has 1,797 images in 10 folders, dark ink on a white letterbox.
    n = labelled_sets.build_digits(tmp_path, 12, 16)
    counts = labelled_sets.label_counts(tmp_path)
    assert n == 1797 and sum(counts.values()) == 1797 and sorted(counts) == list("0123456789")
    img = cv2.imread(str(tmp_path / "0" / "0000.png"), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (16, 12)
    assert (img[:2] == 255).all() and (img[-2:] == 255).all()  # the 2-px letterbox bands
    assert img.min() < 64  # ink is dark
