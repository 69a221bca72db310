"""Tests for the report's pieces: the 2-D map, thumbnails and mean images, the cluster pages."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_cluster.report.cluster_pages import write_cluster_pages
from stream_cluster.report.mapview import (
    cluster_colours,
    embed_2d,
    leading_columns,
    place_by_neighbours,
    quantize,
)
from stream_cluster.report.pages import cluster_page_name
from stream_cluster.report.thumbs import (
    ThumbSize,
    cluster_order,
    thumb_size,
    write_mean_images,
    write_thumbnails,
)
from stream_cluster.storage.store import RowStore

EVIL = "<img src=x onerror=alert(1)>.png"


def _blobs(n: int, d: int = 12, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    centres = rng.normal(0, 10, (k, d))
    return (centres[labels] + rng.normal(0, 1, (n, d))).astype(np.float32), labels


# ---------------------------------------------------------------- map


def test_embed_2d_same_seed_same_map_and_every_row_placed() -> None:
    """Check that the map is deterministic for a seed and gives every row a finite point."""
    x, _ = _blobs(300)
    a = embed_2d(x, seed=3, sample=120, iterations=90)
    b = embed_2d(x, seed=3, sample=120, iterations=90)
    c = embed_2d(x, seed=4, sample=120, iterations=90)
    assert a.shape == (300, 2) and np.all(np.isfinite(a))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_embed_2d_keeps_blobs_apart() -> None:
    """Check that separated blobs stay separated: each point's 2-D neighbours share its blob."""
    x, labels = _blobs(240)
    y = embed_2d(x, seed=0, sample=100, iterations=150)
    d = ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert np.mean(labels[d.argmin(axis=1)] == labels) > 0.95


def test_embed_2d_tiny_input_uses_first_components() -> None:
    """Check that with fewer than 10 images the map shows the first two components."""
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert np.array_equal(embed_2d(x, seed=0), x[:, :2])
    assert embed_2d(np.zeros((0, 5), np.float32), seed=0).shape == (0, 2)


def test_place_by_neighbours_keeps_sample_positions() -> None:
    """Check that sample rows land on their own position and others between their neighbours."""
    sx = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
    sy = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    x = np.vstack([sx, [[5.0, 0.0]]])
    out = place_by_neighbours(x, sx, sy, neighbours=2, batch=2)
    assert np.array_equal(out[:3], sy)
    assert out[3] == pytest.approx([0.5, 0.0])


def test_leading_columns_streams_the_store(tmp_path: Path) -> None:
    """Check that the first columns are read batch by batch from a feature store."""
    store = RowStore(tmp_path / "f", 7, np.float32)
    rows = np.arange(70, dtype=np.float32).reshape(10, 7)
    store.append(rows[:6], [b"a"] * 6)
    store.append(rows[6:], [b"b"] * 4)
    assert np.array_equal(leading_columns(store, dims=3, batch=4), rows[:, :3])
    assert np.array_equal(leading_columns(rows, dims=50), rows)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), min_size=1,
                max_size=30))
def test_quantize_fills_the_longer_axis(points: list[tuple[float, float]]) -> None:
    """Check that quantized points keep their order on each axis within 0..65535."""
    p = np.asarray(points)
    q = quantize(p).astype(np.int64)
    assert q.shape == p.shape and q.min() >= 0 and q.max() <= 65535
    for axis in (0, 1):
        order = np.argsort(p[:, axis], kind="stable")
        assert np.all(np.diff(q[order, axis]) >= 0)
    if np.ptp(p, axis=0).max() > 0:
        assert q[:, int(np.argmax(np.ptp(p, axis=0)))].max() == 65535


def test_cluster_colours_distinct_hex() -> None:
    """Check that colours are distinct #rrggbb strings for many clusters."""
    colours = cluster_colours(250)
    assert len(set(colours)) == 250
    assert all(len(c) == 7 and c[0] == "#" and int(c[1:], 16) >= 0 for c in colours)


# ---------------------------------------------------------------- thumbnails, mean images


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.floats(0, 10)), min_size=1, max_size=40))
def test_cluster_order_sorts_each_cluster_by_distance(rows: list[tuple[int, float]]) -> None:
    """Check that members are grouped by cluster, nearest first, and rank inverts the order."""
    labels = np.array([r[0] for r in rows])
    sq = np.array([r[1] for r in rows])
    co = cluster_order(labels, sq, 5)
    assert sorted(co.order.tolist()) == list(range(len(rows)))
    for c in range(5):
        m = co.members(c)
        assert co.size(c) == int(np.sum(labels == c)) and np.all(labels[m] == c)
        assert np.all(np.diff(sq[m]) >= 0)
        assert co.rank[m].tolist() == list(range(len(m)))


def test_write_thumbnails_one_file_per_row(tmp_path: Path) -> None:
    """Check that every row gets thumbs/<cluster>/<rank>.jpg at the thumbnail size."""
    h, w = 40, 30
    rng = np.random.default_rng(0)
    pixels = RowStore(tmp_path / "px", h * w, np.uint8)
    data = rng.integers(0, 256, (9, h * w), dtype=np.uint8)
    pixels.append(data, [b"x"] * 9)
    labels = np.array([0, 1, 0, 2, 1, 0, 2, 2, 0])
    co = cluster_order(labels, np.arange(9.0)[::-1], 3)
    (tmp_path / "thumbs" / "7").mkdir(parents=True)  # a cluster from an earlier k
    gen = write_thumbnails(tmp_path, pixels, labels, co.rank, width=w, height=h, batch=4)
    done = []
    with pytest.raises(StopIteration) as stop:
        while True:
            done.append(next(gen))
    assert done == [4, 8, 9] and stop.value.value == ThumbSize(30, 40)
    files = sorted(p.relative_to(tmp_path / "thumbs").as_posix()
                   for p in (tmp_path / "thumbs").rglob("*.jpg"))
    assert files == sorted(f"{labels[i]}/{co.rank[i]}.jpg" for i in range(9))
    assert not (tmp_path / "thumbs" / "7").exists()
    img = cv2.imread(str(tmp_path / "thumbs" / "0" / "0.jpg"), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (40, 30)
    row = data[int(co.members(0)[0])].reshape(h, w).astype(int)
    assert np.abs(img.astype(int) - row).mean() < 40  # the right image, JPEG-compressed


def test_thumb_size_fits_box() -> None:
    """Check that big images shrink into the box, aspect kept, and small ones stay."""
    assert thumb_size(300, 430) == ThumbSize(89, 128)
    assert thumb_size(1000, 100) == ThumbSize(96, 10)
    assert thumb_size(20, 16) == ThumbSize(20, 16)


@pytest.mark.parametrize("block_bytes", [16 * 2**20, 8 * 30], ids=["one-pass", "per-cluster"])
def test_write_mean_images_inverts_the_pca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           block_bytes: int) -> None:
    """Check that the mean image is mean_ + centre @ components_, rescaled and clipped.

    Also when the memory block holds one cluster's image at a time.
    """
    monkeypatch.setattr("stream_cluster.report.thumbs.BLOCK_BYTES", block_bytes)
    h, w, n_keep = 6, 5, 3
    rng = np.random.default_rng(1)
    comps = rng.normal(0, 0.1, (4, h * w)).astype(np.float32)
    mean = rng.uniform(0.2, 0.8, h * w)
    centres = rng.normal(0, 1, (2, n_keep))
    centres[1] = 50.0  # far out: must clip to 255, not wrap
    size = write_mean_images(tmp_path, {"mean_": mean, "components_": comps}, centres,
                             width=w, height=h, scale=1 / 255)
    assert size == ThumbSize(5, 6)
    got = cv2.imread(str(tmp_path / "means" / "0.png"), cv2.IMREAD_GRAYSCALE)
    want = np.clip(np.rint((mean + centres[0] @ comps[:n_keep]) * 255), 0, 255)
    assert np.array_equal(got, want.reshape(h, w))
    far = cv2.imread(str(tmp_path / "means" / "1.png"), cv2.IMREAD_GRAYSCALE)
    assert far.min() >= 0 and (far == 255).any()
    assert (tmp_path / "means" / "1-small.png").exists()


# ---------------------------------------------------------------- cluster pages


class _Members(HTMLParser):
    """Collect each <ol>'s images and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lists: dict[str, list[dict[str, str | None]]] = {}
        self.current = ""
        self.text: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.add(tag)
        assert not any(k.startswith("on") for k in a)
        if tag == "ol":
            self.current = str(a.get("id") or a.get("class"))
            self.lists[self.current] = []
        if tag == "img":
            self.lists.setdefault(self.current, []).append(a)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _pages(tmp_path: Path, labels: list[int], names: list[str], per_page: int) -> int:
    lab = np.asarray(labels)
    co = cluster_order(lab, np.linspace(0, 1, len(lab)), int(lab.max()) + 1)
    return write_cluster_pages(tmp_path, title="t", names=names, order=co,
                               distances=np.linspace(0, 1, len(lab)), thumb=ThumbSize(8, 9),
                               mean_size=(30, 40), per_page=per_page, n_outliers=2)


def test_cluster_pages_list_every_member_once_nearest_first(tmp_path: Path) -> None:
    """Check that a cluster's pages show each member once, nearest first, split past per_page."""
    names = [f"img-{i}.png" for i in range(7)]
    names[4] = EVIL
    written = _pages(tmp_path, [0, 1, 0, 0, 0, 1, 0], names, per_page=3)
    assert written == 3  # cluster 0: 5 members on 2 pages; cluster 1: 1 page
    srcs, texts = [], []
    for page in range(2):
        html = (tmp_path / "clusters" / cluster_page_name(0, page)).read_text("utf-8")
        parser = _Members()
        parser.feed(html)
        assert "script" not in parser.tags and "<img src=x" not in html
        srcs += [str(a["src"]) for a in parser.lists["members"]]
        texts.append("".join(parser.text))
        if page == 0:
            assert [a["src"] for a in parser.lists["grid outliers"]] == [
                "../thumbs/0/4.jpg", "../thumbs/0/3.jpg"]
            assert all(a.get("loading") == "lazy" for a in parser.lists["members"])
    assert srcs == [f"../thumbs/0/{r}.jpg" for r in range(5)]
    assert EVIL in texts[1] and "Pages: 1 2" in texts[0]
    one = (tmp_path / "clusters" / "1.html").read_text("utf-8")
    assert one.count('loading="lazy"') == 2 + 2  # two members, shown again as outliers
