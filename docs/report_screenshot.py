"""Screenshot a run's report for the README: ``python docs/report_screenshot.py RUN OUT.png``.

Opens ``RUN/index.html`` from disk in Debian's Chromium (Playwright, no server), hovers over
the image nearest the centre of cluster 0 so the map shows its thumbnail, and saves the top of
the page (summary and map).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright


def main(run: Path, out: Path) -> None:
    """Write a 1280 x 1100 PNG of ``run``'s index.html with the map's tooltip showing."""
    with sync_playwright() as p:
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto((run / "index.html").resolve().as_uri())
        page.locator("#map-section").scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, document.querySelector('#map-section').offsetTop - 8)")
        x, y = page.evaluate("streamClusterMap.screenPosition(streamClusterMap.start[0])")
        page.mouse.move(x, y)
        page.wait_for_function("document.querySelector('#map-tip img')?.naturalWidth > 0")
        page.screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
