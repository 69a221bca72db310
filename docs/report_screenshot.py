"""Screenshot a run's report: ``python docs/report_screenshot.py RUN OUT.png [CLUSTER]``.

Opens ``RUN/index.html`` from disk in Debian's Chromium (Playwright, no server), hovers over
the image nearest the centre of cluster ``CLUSTER`` (default 0) so the map shows its
thumbnail, and saves the map and what follows it. README's docs/report.png is
``python docs/report_screenshot.py /work/runs/report-seed docs/report.png 2``.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright


def main(run: Path, out: Path, cluster: int = 0) -> None:
    """Write a 1280 x 1100 PNG of ``run``'s index.html with the map's tooltip showing."""
    with sync_playwright() as p:
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.goto((run / "index.html").resolve().as_uri())
        page.locator("#map-section").scroll_into_view_if_needed()
        page.evaluate("window.scrollTo(0, document.querySelector('#map-section').offsetTop - 8)")
        j = page.evaluate(f"streamClusterMap.start[{int(cluster)}]")
        x, y = page.evaluate(f"streamClusterMap.screenPosition({int(j)})")
        page.mouse.move(x, y)
        page.wait_for_function("document.querySelector('#map-tip img')?.naturalWidth > 0")
        page.screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 0)
