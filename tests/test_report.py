"""Tests for stream_cluster.stages.report: plots, the HTML report page and the re-exports."""

from __future__ import annotations

import logging
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_cluster.errors import ConfigError, StoreError
from stream_cluster.report import montage
from stream_cluster.report.pages import content_security_policy, map_script
from stream_cluster.report.thumbs import ThumbSize
from stream_cluster.stages import report
from stream_cluster.stages.report import (
    ClusterRow,
    MapData,
    display_name,
    plot_cluster_sizes,
    plot_elbow,
    plot_memory_timeline,
    plot_variance,
    write_index_html,
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


# ---------------------------------------------------------------- re-exports


def test_report_reexports_montage_api() -> None:
    """Check that the montage API the pipeline calls through report is montage's own."""
    for name in montage.__all__:
        assert getattr(report, name) is getattr(montage, name)
        assert name in report.__all__


def test_report_montage_call_as_pipeline_makes_it(tmp_path: Path) -> None:
    """Check that report.write_montage works as the pipeline calls it (positional + keywords)."""
    images = [np.full((43, 30), 100, dtype=np.uint8)] * 3
    out = tmp_path / "montages" / "cluster-000.png"
    report.write_montage(images, out, title="cluster 0 - 3 images (showing 3 nearest the centre)",
                         captions=[EVIL, JAPANESE, SURROGATE])
    assert _read_png(out).shape[0] == report.montage_layout(3, (43, 30), captions=True).height
    assert _no_partials(tmp_path)


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


@pytest.mark.parametrize("chosen_k", [4, None, 25], ids=["chosen", "no-knee", "outside-sweep"])
def test_plot_elbow_with_silhouette_adds_a_panel(tmp_path: Path, chosen_k: int | None) -> None:
    """Check that a second criterion per k makes an 800 x 800 PNG with a second panel."""
    ks = list(range(2, 11))
    inertias = [1000.0 / k + k for k in ks]
    scores = {k: 0.3 - abs(k - 5) * 0.02 for k in ks}
    scores[7] = float("nan")  # a k whose sample had one cluster: left out, not an error
    plot_elbow(ks, inertias, tmp_path / "e.png", chosen_k=chosen_k, method="kneedle",
               scores=scores, score_label="silhouette (sample of 2,000)")
    plot_elbow(ks, inertias, tmp_path / "plain.png", chosen_k=chosen_k, method="kneedle")
    two, one = _read_png(tmp_path / "e.png"), _read_png(tmp_path / "plain.png")
    assert two.shape == (800, 800) and one.shape == (500, 800)
    assert _no_partials(tmp_path)


def test_plot_cluster_sizes_writes_png(tmp_path: Path) -> None:
    """Check that the size chart is an 800 x 400 PNG, with colours and for many clusters."""
    plot_cluster_sizes([812, 0, 31], tmp_path / "s.png", colours=["#1f77b4", "#ff7f0e", "red"])
    plot_cluster_sizes(list(range(1, 120)), tmp_path / "many.png")
    assert _read_png(tmp_path / "s.png").shape == (400, 800)
    assert _read_png(tmp_path / "many.png").shape == (400, 800)


@pytest.mark.parametrize("sizes", [[], [3, -1]], ids=["empty", "negative"])
def test_plot_cluster_sizes_rejects_bad_input(tmp_path: Path, sizes: list[int]) -> None:
    """Check that an empty or negative size list raises ConfigError quoting it."""
    with pytest.raises(ConfigError, match=r"sizes must be.*Got"):
        plot_cluster_sizes(sizes, tmp_path / "s.png")


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
    with caplog.at_level(logging.WARNING, logger="stream_cluster.stages.report"):
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
    """Collect every start tag with its attributes, the page's text and its scripts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in_script: dict[str, str | None] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = None

    def handle_data(self, data: str) -> None:
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        else:
            self.text.append(data)


_ALLOWED_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "table", "tr",
                 "th", "td", "figure", "img", "figcaption", "nav", "ul", "li", "a", "section",
                 "p", "ol", "div", "span", "details", "summary", "canvas", "button", "script"}
_THUMB = ThumbSize(30, 43)


def _map(n: int = 3) -> MapData:
    return MapData(np.zeros((n, 2), dtype=np.uint16), [n - 1, 1], ["#1f77b4", "#ff7f0e"], _THUMB)


def _write_page(out: Path, names: list[str], **kwargs: object) -> str:
    write_index_html(
        out,
        title=f"run of {names[0]}",
        summary={"input folder": f"/data/{names[0]}", "k": "5"},
        clusters=[
            ClusterRow(cluster=0, size=812, page="clusters/0.html", mean="means/0-small.png",
                       nearest=[(f"thumbs/0/{i}.jpg", n) for i, n in enumerate(names)],
                       farthest=[("thumbs/0/811.jpg", names[-1])], names=names,
                       montage="montages/cluster-000.png"),
            ClusterRow(cluster=1, size=0, page=names[0], mean=names[0], nearest=[],
                       farthest=[], names=[], montage=names[0]),
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
    # at most the data block and the project's own script, which the CSP pins by hash
    for attrs, text in parser.scripts:
        if attrs.get("type") == "application/json":
            assert attrs.get("id") == "map-data" and "<" not in text
        else:
            assert attrs == {} and text == map_script()
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
    # two plots, then per cluster: mean image, nearest and farthest thumbnails
    assert len(imgs) == 2 + 2 + len(HOSTILE) + 1
    assert {"src": "%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.png"}.items() <= imgs[1].items()
    assert imgs[2]["alt"] == "mean image of cluster 0" and imgs[3]["alt"] == EVIL
    text = "".join(parser.text)
    for name in HOSTILE:
        assert display_name(name) in text
    assert _no_partials(tmp_path)


def test_write_index_html_links_surrogate_name_by_its_bytes(tmp_path: Path) -> None:
    """Check that an undecodable file name links to the original bytes (caf%E9.png)."""
    out = tmp_path / "index.html"
    write_index_html(out, title="t", summary={}, clusters=[
        ClusterRow(cluster=3, size=1, page="clusters/3.html", mean="means/3-small.png",
                   nearest=[(f"thumbs/{SURROGATE}", SURROGATE)], farthest=[],
                   names=[SURROGATE], montage=f"montages/{SURROGATE}")
    ], skipped=[], images={})
    page = out.read_text(encoding="utf-8")
    assert 'src="thumbs/caf%E9.png"' in page and 'href="montages/caf%E9.png"' in page
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


def test_write_index_html_csp_admits_only_the_map_script(tmp_path: Path) -> None:
    """Check that the CSP pins the inline script and style by hash and allows nothing else.

    No 'self', 'unsafe-inline' or remote source for scripts; without a map, no script at all.
    """
    import base64
    import hashlib

    out = tmp_path / "index.html"
    page = _write_page(out, HOSTILE, map_data=_map())
    parser = _check_page(page)
    csp = next(a["content"] for t, a in parser.tags
               if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp == content_security_policy(map_script())
    digest = base64.b64encode(hashlib.sha256(map_script().encode()).digest()).decode()
    directives = dict(d.strip().split(" ", 1) for d in str(csp).split(";"))
    assert directives["script-src"] == f"'sha256-{digest}'"
    assert directives["default-src"] == "'none'" and directives["img-src"] == "'self'"
    assert "unsafe" not in csp and "http" not in csp
    assert [a for a, _ in parser.scripts] == [{"type": "application/json", "id": "map-data"}, {}]
    plain = _check_page(_write_page(tmp_path / "plain.html", HOSTILE))
    assert not plain.scripts
    assert ("meta", {"http-equiv": "Content-Security-Policy",
                     "content": content_security_policy(None)}) in plain.tags
    assert "script-src 'none'" in content_security_policy(None)


def test_map_data_payload_is_numbers_only() -> None:
    """Check that the map's JSON holds the positions as little-endian uint16 and no names."""
    import base64

    xy = np.array([[1, 2], [65535, 0], [300, 40000]], dtype=np.uint16)
    payload = MapData(xy, [2, 1], ["#000000", "#ffffff"], _THUMB, 7).payload()
    raw = np.frombuffer(base64.b64decode(str(payload["xy"])), dtype="<u2").reshape(-1, 2)
    assert np.array_equal(raw, xy)
    assert payload["n"] == 3 and payload["sizes"] == [2, 1] and payload["perPage"] == 7
    assert payload["thumb"] == [30, 43]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet=_ANY_CHAR, min_size=1),
                min_size=1, max_size=5))
def test_write_index_html_any_name_stays_text(tmp_path_factory: pytest.TempPathFactory,
                                              names: list[str]) -> None:
    """Check that for arbitrary names the page is valid UTF-8 with only the expected tags."""
    out = tmp_path_factory.mktemp("page") / "index.html"
    page = _write_page(out, names, map_data=_map())
    parser = _check_page(page)
    text = "".join(parser.text)
    for name in names:
        assert display_name(name).replace("\r", "\n") in text.replace("\r", "\n")
