"""The report as a person opens it: a real headless Chromium on file://, offline, no server.

Debian's ``chromium`` is driven by Playwright (``executable_path``: no browser download); CI
installs both (.ci/run). Nothing here is skipped when the browser is missing: it fails.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from stream_cluster import RunConfig, run
from stream_cluster.report.mapview import cluster_colours
from stream_cluster.report.pages import ClusterRow, MapData, write_index_html
from stream_cluster.report.plots import plot_cluster_sizes, plot_elbow, plot_variance
from stream_cluster.report.thumbs import ThumbSize

from .conftest import make_shapes_corpus

EVIL = "<img src=x onerror=alert(1)>.png"
EVIL_SKIPPED = "<svg onload=alert(2)>.png"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# Scroll each image into view (lazy ones start loading), wait for it, list the ones that fail.
_BROKEN_IMAGES = """async () => {
  const bad = [];
  for (const im of Array.from(document.images)) {
    im.scrollIntoView();
    const wait = new Promise((resolve) => setTimeout(resolve, 5000));
    try { await Promise.race([im.decode(), wait]); } catch (e) { /* checked below */ }
    if (!(im.complete && im.naturalWidth > 0)) { bad.push(im.getAttribute("src")); }
  }
  window.scrollTo(0, 0);
  return bad;
}"""


class Watch:
    """Everything a page says went wrong: console errors, uncaught errors, failed loads, dialogs."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.loaded: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("requestfailed", self._failed)
        page.on("requestfinished", lambda req: self.loaded.append(req.url))
        page.on("dialog", self._dialog)

    def _console(self, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.errors.append(f"console: {msg.text}")

    def _failed(self, req: Request) -> None:
        self.errors.append(f"requestfailed: {req.url} {req.failure}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small finished run: three kinds of shapes, a hostile name, a hostile skipped file."""
    root = tmp_path_factory.mktemp("browser")
    images = root / "images"
    make_shapes_corpus(images, n=45)
    shutil.copy(images / "kind0" / "img-000.png", images / "kind0" / EVIL)
    (images / EVIL_SKIPPED).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = root / "run"
    run(RunConfig(images, out, mem_budget=2 * 2**30, width=32, height=24, n_components=8,
                  k=3, elbow=True, k_range=(2, 8), profile_memory=True))
    return out


def _labels(out: Path) -> list[tuple[str, int]]:
    with open(out / "labels.csv", newline="", encoding="utf-8") as fh:
        return [(r["path"], int(r["cluster"])) for r in csv.DictReader(fh)]


def _open(page: Page, path: Path) -> Watch:
    watch = Watch(page)
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return watch


def test_browser_index_loads_every_image_without_errors(page: Page, report: Path) -> None:
    """Check that index.html from file:// logs no error and every image on it loads."""
    watch = _open(page, report / "index.html")
    assert page.evaluate(_BROKEN_IMAGES) == []
    assert page.locator("img").count() >= 4 + 3 * (1 + 6)  # plots, means, thumbnails
    assert watch.errors == [] and watch.dialogs == []


def test_browser_map_holds_one_point_per_image(page: Page, report: Path, tmp_path: Path) -> None:
    """Check that the map draws one point per labelled image, hovers and zooms to thumbnails."""
    n = len(_labels(report))
    sizes = Counter(c for _, c in _labels(report))
    watch = _open(page, report / "index.html")
    assert page.locator("#map").get_attribute("data-points") == str(n)
    assert page.evaluate("window.streamClusterMap.count") == n
    legend = page.locator("ul.legend li").all_inner_texts()
    assert legend == [f"cluster {c} ({sizes[c]})" for c in range(3)]
    page.locator("#map").scroll_into_view_if_needed()
    x, y = page.evaluate("window.streamClusterMap.screenPosition(0)")
    page.mouse.move(x, y)
    tip = page.locator("#map-tip")
    tip.wait_for(state="visible")
    # point 0 or a point within 8 px of it (an identical image): the tip names the one picked
    hit = page.evaluate("window.streamClusterMap.hovered()")
    hx, hy = page.evaluate(f"window.streamClusterMap.screenPosition({hit})")
    assert (hx - x) ** 2 + (hy - y) ** 2 <= 64
    start = page.evaluate("window.streamClusterMap.start")
    cluster = max(c for c in range(3) if start[c] <= hit)
    assert tip.inner_text().startswith(
        f"cluster {cluster} — #{hit - start[cluster] + 1} of {sizes[cluster]}")
    page.wait_for_function("document.querySelector('#map-tip img').naturalWidth > 0")
    for _ in range(12):  # zoom in on that point until its neighbours are drawn as thumbnails
        page.mouse.wheel(0, -400)
    page.wait_for_timeout(500)
    assert any("/thumbs/" in url for url in watch.loaded)
    shot = tmp_path / "report-map.png"
    page.screenshot(path=str(shot), full_page=True)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[1] == 1280 and img.std() > 10
    assert watch.errors == [] and watch.dialogs == []


def test_browser_cluster_link_opens_page_with_all_members(page: Page, report: Path) -> None:
    """Check that each cluster's link opens its page, whose thumbnails number its size."""
    sizes = Counter(c for _, c in _labels(report))
    for c in range(3):
        watch = _open(page, report / "index.html")
        # load every image first: leaving while lazy ones load aborts them (ERR_ABORTED)
        assert page.evaluate(_BROKEN_IMAGES) == []
        page.locator("ul.legend a", has_text=f"cluster {c}").click()
        page.wait_for_load_state("load")
        assert page.url.endswith(f"/clusters/{c}.html")
        assert page.locator("#members img").count() == sizes[c]
        assert page.locator("h1").inner_text() == f"Cluster {c} — {sizes[c]} images"
        assert page.evaluate(_BROKEN_IMAGES) == []
        assert watch.errors == [] and watch.dialogs == []


def test_browser_click_on_a_point_opens_its_cluster(page: Page, report: Path) -> None:
    """Check that clicking a point opens the page of that image's cluster, at that image."""
    watch = _open(page, report / "index.html")
    assert page.evaluate(_BROKEN_IMAGES) == []  # nothing left loading to abort on leaving
    page.locator("#map").scroll_into_view_if_needed()
    start = page.evaluate("window.streamClusterMap.start")
    j = start[2]  # the image nearest the centre of cluster 2
    x, y = page.evaluate(f"window.streamClusterMap.screenPosition({j})")
    page.mouse.move(x, y)
    page.wait_for_function("document.querySelector('#map-tip img').naturalWidth > 0")
    hit = page.evaluate("window.streamClusterMap.hovered()")
    want = page.evaluate(f"window.streamClusterMap.pageUrl({hit})")
    # the point clicked is j, or one within 8 px of it (an identical image)
    hx, hy = page.evaluate(f"window.streamClusterMap.screenPosition({hit})")
    assert hit == j or (hx - x) ** 2 + (hy - y) ** 2 <= 64
    page.mouse.click(x, y)
    page.wait_for_url("**/clusters/*.html#m*")
    assert page.url.endswith("/" + want)
    cluster, rank = want.split("/")[1].split(".html#m")
    assert cluster == "2" and page.locator(f"#members li#m{rank} img").count() == 1
    assert watch.errors == [] and watch.dialogs == []


def test_browser_hostile_names_show_as_text_and_run_nothing(page: Page, report: Path) -> None:
    """Check that a file named like an img tag with onerror is shown as text and never runs."""
    cluster = dict(_labels(report))[f"kind0/{EVIL}"]
    watch = _open(page, report / "clusters" / f"{cluster}.html")
    assert page.evaluate(_BROKEN_IMAGES) == []
    item = page.locator("#members li", has_text=EVIL)
    assert item.count() == 1 and item.locator("img").get_attribute("alt") == f"kind0/{EVIL}"
    assert page.locator('img[src="x"]').count() == 0
    watch_index = _open(page, report / "index.html")
    assert page.get_by_role("cell", name=EVIL_SKIPPED, exact=True).count() == 1
    assert page.locator('img[src="x"], svg').count() == 0
    page.wait_for_timeout(300)
    assert watch.dialogs == [] and watch_index.dialogs == []
    assert watch.errors == [] and watch_index.errors == []


def _synthetic_run(out: Path, n: int, k: int) -> None:
    """The index of a run of ``n`` images and ``k`` clusters, with every file it loads."""
    rng = np.random.default_rng(0)
    sizes = np.bincount(rng.integers(0, k, n), minlength=k)
    thumb = ThumbSize(89, 128)
    # a clipart-like thumbnail: a flat shape on white, JPEG as the report writes them
    img = np.full((128, 89), 255, np.uint8)
    cv2.circle(img, (44, 64), 30, 90, -1)
    jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
    png = cv2.imencode(".png", img)[1].tobytes()
    rows = []
    for c in range(k):
        (out / "thumbs" / str(c)).mkdir(parents=True)
        for r in [*range(6), *range(sizes[c] - 3, sizes[c])]:
            (out / "thumbs" / str(c) / f"{r}.jpg").write_bytes(jpg)
        (out / "means").mkdir(exist_ok=True)
        (out / "means" / f"{c}-small.png").write_bytes(png)
        names = [f"collection/folder-{c:03d}/a-rather-long-file-name-{i:06d}.png"
                 for i in range(48)]
        rows.append(ClusterRow(c, int(sizes[c]), f"clusters/{c}.html", f"means/{c}-small.png",
                               [(f"thumbs/{c}/{r}.jpg", names[r]) for r in range(6)],
                               [(f"thumbs/{c}/{r}.jpg", "far.png")
                                for r in range(sizes[c] - 1, sizes[c] - 4, -1)],
                               names, f"montages/cluster-{c:03d}.png"))
    ks = list(range(2, 21))
    plot_elbow(ks, [1e6 / x for x in ks], out / "elbow.png", chosen_k=k,
               scores={x: 0.1 + 0.01 * np.sin(x) for x in ks})
    plot_cluster_sizes(sizes.tolist(), out / "sizes.png", colours=cluster_colours(k))
    evr = np.linspace(0.05, 0.0001, 800)
    plot_variance(evr / evr.sum() * 0.9, out / "variance.png", n_kept=800)
    xy = rng.integers(0, 65536, (n, 2)).astype(np.uint16)
    skipped = [(f"bad-{i}.png", "cannot decode") for i in range(2000)]
    write_index_html(out / "index.html", title="synthetic", summary={"images": str(n)},
                     clusters=rows, skipped=skipped,
                     images={"elbow": "elbow.png", "sizes": "sizes.png",
                             "variance": "variance.png"},
                     map_data=MapData(xy, sizes.tolist(), cluster_colours(k), thumb))


def test_browser_first_page_of_100000_images_under_5mb(page: Page, tmp_path: Path) -> None:
    """Check that index.html of a 100,000-image, 20-cluster run loads under 5 MB in all.

    Everything the browser fetches is counted by its size on disk, after scrolling the whole
    page so lazy images load too; the map must still draw all 100,000 points.
    """
    out = tmp_path / "big"
    out.mkdir()
    _synthetic_run(out, 100_000, 20)
    watch = _open(page, out / "index.html")
    assert page.locator("#map").get_attribute("data-points") == "100000"
    assert page.evaluate(_BROKEN_IMAGES) == []
    files = {out / "index.html"} | {Path(url.removeprefix("file://")) for url in watch.loaded}
    weight = sum(os.path.getsize(p) for p in files)
    assert len(files) > 200 and weight < 5 * 2**20, (len(files), weight)
    assert watch.errors == []
