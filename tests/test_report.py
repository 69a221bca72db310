"""Tests for stream_cluster.report: plots, montages and the HTML report page."""

from __future__ import annotations

import logging
import math
import warnings
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_cluster.errors import ConfigError, StoreError
from stream_cluster.report import (
    ClusterSummary,
    _fit_text,
    display_name,
    montage_layout,
    plot_elbow,
    plot_memory_timeline,
    plot_variance,
    write_index_html,
    write_montage,
)

EVIL = "<img src=x onerror=alert(1)>.png"
QUOTES = "it's a \"quoted\" & <b>bold</b> name.png"
JAPANESE = "猫の絵_ねこ.png"
SURROGATE = b"caf\xe9.png".decode("utf-8", "surrogateescape")
HOSTILE = [EVIL, QUOTES, JAPANESE, SURROGATE, "tab\there\nnewline.png", "$x^2$ $.png"]

# Any code point, with surrogates (what os.fsdecode makes of undecodable bytes) made common.
_ANY_CHAR = st.one_of(
    st.characters(codec=None, exclude_categories=()),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF, exclude_categories=()),
    st.sampled_from("<>&\"'=/:;%$\\ \n\t"),
)


def _read_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, f"{path} does not decode as an image"
    return img


def _no_partials(folder: Path) -> bool:
    return not list(folder.rglob("*.partial"))


# ---------------------------------------------------------------- display_name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("plain_01.png", "plain_01.png"),
        (JAPANESE, JAPANESE),
        (SURROGATE, "caf\\xe9.png"),
        ("a\nb\x00c", "a\\x0ab\\x00c"),
        ("\udcc3\udca9t\xe9.png", "été.png"),
    ],
    ids=["plain", "japanese", "surrogate-escaped", "control-chars", "escaped-valid-utf8"],
)
def test_display_name_examples(name: str, expected: str) -> None:
    """Check that names are made printable and undecodable bytes shown as \\xNN."""
    assert display_name(name) == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=_ANY_CHAR))
def test_display_name_always_utf8_and_one_line(name: str) -> None:
    """Check that any str, lone surrogates included, becomes one line of valid UTF-8."""
    shown = display_name(name)
    shown.encode("utf-8")  # strict: raises on any surrogate left behind
    assert "\n" not in shown and "\r" not in shown and "\x00" not in shown


# ---------------------------------------------------------------- montage


@pytest.mark.parametrize(
    ("n", "columns", "rows", "cols"),
    [(1, 8, 1, 1), (7, 8, 1, 7), (8, 8, 1, 8), (9, 8, 2, 8), (48, 8, 6, 8), (49, 8, 7, 8),
     (10, 3, 4, 3), (5, 1, 5, 1)],
)
def test_montage_layout_rows_and_columns(n: int, columns: int, rows: int, cols: int) -> None:
    """Check that columns = min(columns, n) and rows = ceil(n / columns)."""
    lay = montage_layout(n, (430, 300), thumb_width=120, columns=columns)
    assert (lay.rows, lay.columns) == (rows, cols)
    assert lay.rows == math.ceil(n / lay.columns)
    assert (lay.thumb_width, lay.thumb_height) == (120, 172)


def test_montage_layout_keeps_aspect() -> None:
    """Check that the thumbnail height follows the image aspect ratio."""
    assert montage_layout(4, (100, 200), thumb_width=50).thumb_height == 25
    assert montage_layout(4, (300, 100), thumb_width=40).thumb_height == 120


def test_write_montage_size_and_placement(tmp_path: Path) -> None:
    """Check that the PNG has the layout's size and thumbnail i sits in cell i, row-major."""
    n = 11
    values = [20 * i + 5 for i in range(n)]  # one flat grey level per image
    images = [np.full((430, 300), v, dtype=np.uint8) for v in values]
    out = tmp_path / "m.png"
    write_montage(images, out, title="c 1", columns=4)
    lay = montage_layout(n, (430, 300), columns=4)
    img = _read_png(out)
    assert img.shape == (lay.height, lay.width)
    assert (lay.rows, lay.columns) == (3, 4)
    for i, v in enumerate(values):
        x, y = lay.cell_origin(i)
        cell = img[y + 2 : y + lay.thumb_height - 2, x + 2 : x + lay.thumb_width - 2]
        assert abs(float(cell.mean()) - v) <= 2, f"cell {i}"
    assert _no_partials(tmp_path)


def test_write_montage_hostile_captions_render(tmp_path: Path) -> None:
    """Check that HTML, quotes, Japanese, surrogates, control chars and '$' never crash."""
    images = [np.full((43, 30), 200, dtype=np.uint8) for _ in HOSTILE]
    out = tmp_path / "m.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing-glyph warning would mean an empty box
        write_montage(images, out, title=f"cluster 0 — {EVIL} {JAPANESE} {SURROGATE}",
                      captions=HOSTILE, thumb_width=60, columns=3)
    lay = montage_layout(len(HOSTILE), (43, 30), thumb_width=60, columns=3, captions=True)
    img = _read_png(out)
    assert img.shape[0] == lay.height
    assert img.shape[1] >= lay.width


@settings(max_examples=20, deadline=None)
@given(captions=st.lists(st.text(alphabet=_ANY_CHAR, max_size=60), min_size=1, max_size=3))
def test_write_montage_any_caption_renders(
    tmp_path_factory: pytest.TempPathFactory, captions: list[str]
) -> None:
    """Check that any caption text renders without error or missing-glyph warning."""
    out = tmp_path_factory.mktemp("montage") / "m.png"
    images = [np.zeros((20, 16), dtype=np.uint8)] * len(captions)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_montage(images, out, title=captions[0], captions=captions, thumb_width=32)
    assert _read_png(out).shape[0] == montage_layout(
        len(captions), (20, 16), thumb_width=32, captions=True
    ).height


def test_write_montage_long_caption_is_shortened(tmp_path: Path) -> None:
    """Check that a 300-character caption does not widen the montage."""
    images = [np.zeros((43, 30), dtype=np.uint8)] * 2
    out = tmp_path / "m.png"
    write_montage(images, out, title="t", captions=["x" * 300 + ".png", "short.png"])
    lay = montage_layout(2, (43, 30), captions=True)
    assert _read_png(out).shape == (lay.height, lay.width)


@pytest.mark.parametrize("max_px", [1, 5, 12, 39, 40, 100])
def test_fit_text_fits_and_keeps_tail(max_px: int) -> None:
    """Check that middle truncation fits the width, keeps the end, and is as long as it can be."""
    text = "a_very_long_file_name_from_a_camera_roll_01.png"  # 47 characters
    fitted = _fit_text(text, max_px, lambda s: float(len(s)))
    if max_px >= len(text):
        assert fitted == text
        return
    assert len(fitted) == max_px  # as long as fits, no shorter
    assert "…" in fitted
    head, tail = fitted.split("…")
    assert text.startswith(head) and text.endswith(tail)


def test_write_montage_long_title_widens(tmp_path: Path) -> None:
    """Check that a title longer than the grid makes the PNG wider rather than clipping it."""
    images = [np.zeros((43, 30), dtype=np.uint8)]
    out = tmp_path / "m.png"
    write_montage(images, out, title="cluster 12 — 1 images (showing 1 nearest the centre)")
    lay = montage_layout(1, (43, 30))
    img = _read_png(out)
    assert img.shape[0] == lay.height
    assert img.shape[1] > lay.width


def test_write_montage_empty_writes_placeholder(tmp_path: Path) -> None:
    """Check that a cluster with no images still gets a small readable PNG."""
    out = tmp_path / "sub" / "empty.png"
    write_montage([], out, title="cluster 4 — 0 images")
    img = _read_png(out)
    assert img.shape[0] > 50 and img.shape[1] >= 320


@pytest.mark.parametrize(
    ("images", "kwargs", "match"),
    [
        ([np.zeros((4, 3), np.uint8), np.zeros((3, 4), np.uint8)], {},
         r"same shape\. Got \(3, 4\) for image 1"),
        ([np.zeros((4, 3), np.float32)], {}, r"uint8.*Got dtype float32"),
        ([np.zeros((4, 3, 3), np.uint8)], {}, r"2-D.*shape \(4, 3, 3\)"),
        ([np.zeros((4, 3), np.uint8)], {"captions": ["a", "b"]}, r"Got 2 captions for 1"),
        ([np.zeros((4, 3), np.uint8)], {"columns": 0}, r"columns.*Got 0"),
        ([np.zeros((4, 3), np.uint8)], {"thumb_width": 4}, r"thumb_width.*Got 4"),
    ],
    ids=["mixed-shapes", "float", "colour", "caption-count", "zero-columns", "tiny-thumb"],
)
def test_write_montage_rejects_bad_input(
    tmp_path: Path, images: list[np.ndarray], kwargs: dict[str, object], match: str
) -> None:
    """Check that bad montage input raises ConfigError naming what was received."""
    with pytest.raises(ConfigError, match=match):
        write_montage(images, tmp_path / "m.png", title="t", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "m.png").exists()


# ---------------------------------------------------------------- plots


def test_plot_variance_writes_png(tmp_path: Path) -> None:
    """Check that the variance plot is an 800 x 500 PNG, with and without a target."""
    evr = np.linspace(0.2, 0.001, 50)
    evr = evr / evr.sum() * 0.95
    plot_variance(evr, tmp_path / "v.png", n_kept=20, target=0.9)
    plot_variance(evr, tmp_path / "v2.png", n_kept=50)
    assert _read_png(tmp_path / "v.png").shape == (500, 800)
    assert _read_png(tmp_path / "v2.png").shape == (500, 800)
    assert _no_partials(tmp_path)


@pytest.mark.parametrize(
    ("evr", "kwargs", "match"),
    [
        (np.array([0.5, 0.2]), {"n_kept": 3}, r"n_kept must be in \[1, 2\].*Got 3"),
        (np.array([0.5, 0.2]), {"n_kept": 0}, r"Got 0"),
        (np.array([]), {"n_kept": 1}, r"non-empty 1-D.*shape \(0,\)"),
        (np.array([0.5, np.nan]), {"n_kept": 1}, r"finite.*1 non-finite"),
        (np.array([0.5, 0.2]), {"n_kept": 1, "target": 1.5}, r"target.*Got 1\.5"),
    ],
    ids=["n-kept-high", "n-kept-zero", "empty", "nan", "target-above-1"],
)
def test_plot_variance_rejects_bad_input(
    tmp_path: Path, evr: np.ndarray, kwargs: dict[str, object], match: str
) -> None:
    """Check that plot_variance raises ConfigError naming the bad value."""
    with pytest.raises(ConfigError, match=match):
        plot_variance(evr, tmp_path / "v.png", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("chosen_k", "method"),
    [(4, "kneedle"), (None, "none"), (15, "fixed"), (2, EVIL + "$")],
    ids=["chosen", "no-knee", "outside-sweep", "hostile-method"],
)
def test_plot_elbow_writes_png(tmp_path: Path, chosen_k: int | None, method: str) -> None:
    """Check that the elbow plot is an 800 x 500 PNG for a chosen, missing or outside k."""
    ks = list(range(2, 11))
    inertias = [1000.0 / k + k for k in ks]
    plot_elbow(ks, inertias, tmp_path / "e.png", chosen_k=chosen_k, method=method)
    assert _read_png(tmp_path / "e.png").shape == (500, 800)


def test_plot_elbow_rejects_mismatched_lengths(tmp_path: Path) -> None:
    """Check that plot_elbow raises ConfigError when ks and inertias differ in length."""
    with pytest.raises(ConfigError, match=r"Got 3 ks and 2 inertias"):
        plot_elbow([1, 2, 3], [3.0, 2.0], tmp_path / "e.png", chosen_k=None)


def _write_samples(path: Path, torn_tail: bool = False) -> None:
    lines = ["t_s,rss_bytes,stage"]
    t = 0.0
    for stage, seconds, gib in [("scan", 1.0, 0.2), ("ingest", 4.0, 0.9), ("pca", 6.0, 1.5),
                                ("kmeans", 3.0, 0.7), ("report", 1.0, 0.4)]:
        for _ in range(int(seconds * 10)):
            lines.append(f"{t:.1f},{int(gib * 2**30)},{stage}")
            t += 0.1
    text = "\n".join(lines) + "\n"
    if torn_tail:
        text += "15.1,8123"  # a kill while the sampler was writing
    path.write_text(text, encoding="utf-8")


def test_plot_memory_timeline_writes_png(tmp_path: Path) -> None:
    """Check that a generated samples CSV becomes an 800 x 500 PNG with or without budget."""
    csv_path = tmp_path / "memory.csv"
    _write_samples(csv_path)
    plot_memory_timeline(csv_path, tmp_path / "m.png", budget_bytes=2 * 2**30)
    plot_memory_timeline(csv_path, tmp_path / "m2.png")
    a, b = _read_png(tmp_path / "m.png"), _read_png(tmp_path / "m2.png")
    assert a.shape == b.shape == (500, 800)
    assert not np.array_equal(a, b)  # the budget line and title differ


def test_plot_memory_timeline_skips_torn_last_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that a half-written last sample is skipped with a warning, not an error."""
    csv_path = tmp_path / "memory.csv"
    _write_samples(csv_path, torn_tail=True)
    with caplog.at_level(logging.WARNING, logger="stream_cluster.report"):
        plot_memory_timeline(csv_path, tmp_path / "m.png", budget_bytes=2**31)
    assert "skipped 1 malformed" in caplog.text
    assert _read_png(tmp_path / "m.png").shape == (500, 800)


def test_plot_memory_timeline_header_only(tmp_path: Path) -> None:
    """Check that a CSV with no samples yet still gives a PNG saying so."""
    csv_path = tmp_path / "memory.csv"
    csv_path.write_text("t_s,rss_bytes,stage\n", encoding="utf-8")
    plot_memory_timeline(csv_path, tmp_path / "m.png", budget_bytes=2**30)
    assert _read_png(tmp_path / "m.png").shape == (500, 800)


def test_plot_memory_timeline_rejects_wrong_header(tmp_path: Path) -> None:
    """Check that a CSV with another header raises StoreError quoting the header found."""
    csv_path = tmp_path / "memory.csv"
    csv_path.write_text("time,rss\n1,2\n", encoding="utf-8")
    with pytest.raises(StoreError, match=r"Got \['time', 'rss'\]"):
        plot_memory_timeline(csv_path, tmp_path / "m.png")


# ---------------------------------------------------------------- index.html


class _Tags(HTMLParser):
    """Collect every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


_ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "table",
                 "tr", "th", "td", "figure", "img", "figcaption", "nav", "ul", "li", "a",
                 "section", "p", "ol"}


def _write_page(out: Path, names: list[str], **kwargs: object) -> str:
    write_index_html(
        out,
        title=f"run of {names[0]}",
        summary={"input folder": f"/data/{names[0]}", "k": "5"},
        clusters=[
            ClusterSummary(cluster=0, size=812, montage="montages/cluster-000.png",
                           examples=names),
            ClusterSummary(cluster=1, size=0, montage=names[0], examples=[]),
        ],
        skipped=[(n, f"cannot decode {n}") for n in names],
        images={f"plot {names[0]}": "elbow.png", "evil": names[0]},
        **kwargs,  # type: ignore[arg-type]
    )
    return out.read_bytes().decode("utf-8")  # strict: the page must be valid UTF-8


def _check_page(page: str) -> _Tags:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    for tag, attrs in parser.tags:
        assert tag in _ALLOWED_TAGS, f"unexpected tag <{tag}>"
        assert not any(a.startswith("on") for a in attrs), f"event handler on <{tag}>"
        for key in ("src", "href"):
            value = attrs.get(key)
            if value is not None:
                assert ":" not in value and '"' not in value and "<" not in value
    assert "<script" not in page.lower()
    return parser


def test_write_index_html_escapes_hostile_names(tmp_path: Path) -> None:
    """Check that hostile file names appear as text only, never as markup or URL schemes."""
    out = tmp_path / "index.html"
    page = _write_page(out, HOSTILE)
    assert "<img src=x" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;.png" in page
    assert "it&#x27;s a &quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt; name.png" in page
    assert JAPANESE in page
    assert "caf\\xe9.png" in page  # undecodable byte shown, page stays UTF-8
    parser = _check_page(page)
    imgs = [attrs for tag, attrs in parser.tags if tag == "img"]
    # two plots + two cluster montages; the evil name is a percent-encoded relative path
    assert len(imgs) == 4
    assert {"src": "%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.png"}.items() <= imgs[1].items()
    text = "".join(parser.text)
    for name in HOSTILE:
        assert display_name(name) in text
    assert _no_partials(tmp_path)


def test_write_index_html_links_surrogate_name_by_its_bytes(tmp_path: Path) -> None:
    """Check that an undecodable file name links to the original bytes (caf%E9.png)."""
    out = tmp_path / "index.html"
    write_index_html(out, title="t", summary={}, clusters=[
        ClusterSummary(cluster=3, size=1, montage=f"montages/{SURROGATE}", examples=[SURROGATE])
    ], skipped=[], images={})
    page = out.read_text(encoding="utf-8")
    assert 'src="montages/caf%E9.png"' in page
    assert "None: every image was used." in page


def test_write_index_html_neutralises_url_schemes(tmp_path: Path) -> None:
    """Check that a path like 'javascript:alert(1)' becomes a harmless relative URL."""
    out = tmp_path / "index.html"
    write_index_html(out, title="t", summary={}, clusters=[], skipped=[],
                     images={"x": "javascript:alert(1)", "y": "data:text/html,<b>"})
    page = out.read_text(encoding="utf-8")
    assert 'src="javascript%3Aalert%281%29"' in page
    assert 'src="data%3Atext/html%2C%3Cb%3E"' in page
    _check_page(page)


def test_write_index_html_caps_skipped_rows(tmp_path: Path) -> None:
    """Check that only max_skipped_rows skipped files are listed and the rest are counted."""
    out = tmp_path / "index.html"
    skipped = [(f"bad{i}.png", "truncated") for i in range(25)]
    write_index_html(out, title="t", summary={}, clusters=[], skipped=skipped, images={},
                     max_skipped_rows=10)
    page = out.read_text(encoding="utf-8")
    assert page.count("<td>truncated</td>") == 10
    assert "Skipped files (25)" in page
    assert "and 15 more" in page


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=_ANY_CHAR, min_size=1),
                min_size=1, max_size=5))
def test_write_index_html_any_name_stays_text(tmp_path_factory: pytest.TempPathFactory,
                                              names: list[str]) -> None:
    """Check that for arbitrary names the page is valid UTF-8 with only the expected tags."""
    out = tmp_path_factory.mktemp("page") / "index.html"
    page = _write_page(out, names)
    parser = _check_page(page)
    text = "".join(parser.text)
    for name in names:
        assert display_name(name).replace("\r", "\n") in text.replace("\r", "\n")
