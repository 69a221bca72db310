"""The report's ``index.html`` (summary, map, plots, clusters) and what every page shares.

Every string that came from outside (file names, paths, reasons, the title) goes through
:func:`display_name` and ``html.escape(quote=True)``; ``src``/``href`` values are also
percent-encoded. The only script is the project's own map script, inlined in ``index.html`` and
admitted by its SHA-256 in the page's Content-Security-Policy (no ``'self'``, no
``'unsafe-inline'``): it runs from ``file://`` with no server, and nothing else can run. The
map's data is a JSON data block (never executed) holding only numbers: no file name reaches
the script. Cluster pages have no script at all (``script-src 'none'``).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from stream_cluster.report.montage import display_name
from stream_cluster.report.thumbs import ThumbSize
from stream_cluster.storage.atomic import atomic_write_bytes

__all__ = [
    "PER_PAGE",
    "ClusterRow",
    "MapData",
    "cluster_page_name",
    "content_security_policy",
    "escape_html",
    "map_script",
    "page_head",
    "thumb_img",
    "write_index_html",
]

#: Members listed per cluster page; a bigger cluster continues on ``<c>-2.html`` and so on.
PER_PAGE = 2000


def escape_html(text: object) -> str:
    """Escape any value for HTML text or a quoted attribute, after making it printable."""
    return html.escape(display_name(str(text)), quote=True)


def _url(path: str) -> str:
    """Percent-encode a relative path for src/href, then escape it for the attribute.

    ``quote`` leaves only ``/`` and unreserved characters, so ``:`` (a scheme such as
    ``javascript:``), quotes, ``<``, ``&``, ``#`` and ``?`` cannot change what the URL means.
    Undecodable bytes (surrogate-escaped) are encoded as the original bytes, so the link
    still finds the file on disk.
    """
    try:
        quoted = urllib.parse.quote(str(path), safe="/", errors="surrogateescape")
    except UnicodeEncodeError:
        quoted = urllib.parse.quote(str(path), safe="/", errors="backslashreplace")
    return html.escape(quoted, quote=True)


@lru_cache(maxsize=4)
def _asset(name: str) -> str:
    """Text of a file shipped in ``stream_cluster/report/assets``."""
    return (resources.files("stream_cluster.report") / "assets" / name).read_text("utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def map_script() -> str:
    """The map script exactly as inlined in ``index.html`` (its hash is in the CSP)."""
    js = _asset("map.js")
    if "</script" in js.lower():  # would end the element early
        raise ValueError("report/assets/map.js must not contain '</script'")
    return js


def content_security_policy(script: str | None) -> str:
    """The page's policy: its inline style and (if given) this exact script; images from files.

    Nothing else loads: no other script (inline, file or remote), no fetch, frame, form or
    plugin. ``img-src 'self'`` is needed for the thumbnails; from ``file://`` Chromium lets
    it match any local file, which a page that only links its own run folder never uses.
    """
    scripts = _sha256(script) if script is not None else "'none'"
    return (f"default-src 'none'; script-src {scripts}; style-src {_sha256(_asset('report.css'))}; "
            "img-src 'self'; base-uri 'none'; form-action 'none'")


def page_head(title: str, script: str | None) -> list[str]:
    """The lines of a report page from the doctype to ``</head>``: CSP, title and inline CSS."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        f'content="{html.escape(content_security_policy(script))}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape_html(title)}</title>",
        f"<style>{_asset('report.css')}</style>",
        "</head>",
    ]


def _json_block(element_id: str, value: object) -> str:
    """A JSON data block: never executed; ``<``, ``>``, ``&`` escaped so it cannot close."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return f'<script type="application/json" id="{element_id}">{text}</script>'


def cluster_page_name(cluster: int, page: int = 0) -> str:
    """File name of page ``page`` (from 0) of a cluster's list, e.g. ``3.html``, ``3-2.html``.

    Examples
    --------
    >>> cluster_page_name(3), cluster_page_name(3, 1)
    ('3.html', '3-2.html')
    """
    return f"{int(cluster)}.html" if page == 0 else f"{int(cluster)}-{int(page) + 1}.html"


# --------------------------------------------------------------------------------------------
# index.html
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MapData:
    """What the map draws: one uint16 (x, y) per image, clusters in order, nearest first.

    Attributes
    ----------
    xy : numpy.ndarray
        ``(n, 2)`` uint16, the rows of cluster 0 (nearest the centre first), then cluster 1...
    sizes : sequence of int
        Images per cluster (sums to ``n``).
    colours : sequence of str
        ``#rrggbb`` per cluster.
    thumb : ThumbSize
        Thumbnail size (the tooltip's image).
    per_page : int
        Members per cluster page (to link a point to the page that lists it).
    """

    xy: np.ndarray
    sizes: Sequence[int]
    colours: Sequence[str]
    thumb: ThumbSize
    per_page: int = PER_PAGE

    def payload(self) -> dict[str, object]:
        """The JSON the map script reads: numbers and base64 only (4 bytes -> 5.3 per image)."""
        xy = np.ascontiguousarray(self.xy, dtype="<u2")
        return {
            "n": int(len(xy)),
            "sizes": [int(s) for s in self.sizes],
            "colours": [str(c) for c in self.colours],
            "xy": base64.b64encode(xy.tobytes()).decode("ascii"),
            "thumb": [int(self.thumb.width), int(self.thumb.height)],
            "perPage": int(self.per_page),
        }


@dataclass(frozen=True)
class ClusterRow:
    """What the index shows about one cluster.

    Attributes
    ----------
    cluster, size : int
        Label and number of images.
    page : str
        Relative link to its page, e.g. ``clusters/3.html``.
    mean : str
        Relative path of the small mean image.
    nearest, farthest : sequence of (str, str)
        (thumbnail path, image name) of a few members nearest and farthest from the centre.
    names : sequence of str
        Names of the montage's images (the nearest ``montage_images``), listed as text.
    montage : str
        Relative path of the montage PNG.
    """

    cluster: int
    size: int
    page: str
    mean: str
    nearest: Sequence[tuple[str, str]]
    farthest: Sequence[tuple[str, str]]
    names: Sequence[str]
    montage: str
    noise: bool = False  #: HDBSCAN's images in no cluster


def thumb_img(src: str, name: str, thumb: ThumbSize | None, lazy: bool = True) -> str:
    """An ``<img>`` tag for a thumbnail: URL-encoded src, escaped alt/title, optional size."""
    size = f' width="{thumb.width}" height="{thumb.height}"' if thumb else ""
    load = ' loading="lazy"' if lazy else ""
    alt = escape_html(name)
    return f'<img src="{_url(src)}" alt="{alt}" title="{alt}"{size}{load}>'


def _name(c: ClusterRow) -> str:
    return f"cluster {int(c.cluster)} (noise: in no cluster)" if c.noise else \
        f"cluster {int(c.cluster)}"


def _cluster_rows(clusters: Sequence[ClusterRow], thumb: ThumbSize | None) -> list[str]:
    parts = ['<table class="clusters"><tr><th>cluster</th><th>images</th><th>mean image</th>'
             "<th>nearest the centre</th><th>farthest</th></tr>"]
    for c in clusters:
        label = int(c.cluster)
        nearest = "".join(thumb_img(s, n, thumb) for s, n in c.nearest)
        farthest = "".join(thumb_img(s, n, thumb) for s, n in c.farthest)
        names = "".join(f"<li>{escape_html(n)}</li>" for n in c.names)
        parts.append(
            f'<tr id="cluster-{label}"><td><a href="{_url(c.page)}">'
            f'<span class="swatch" data-cluster="{label}"></span>{_name(c)}</a></td>'
            f"<td>{int(c.size):,}</td>"
            f'<td>{thumb_img(c.mean, f"mean image of cluster {label}", thumb)}</td>'
            f'<td><div class="strip">{nearest}</div>'
            f"<details><summary>names of the {len(c.names)} nearest (as in the "
            f'<a href="{_url(c.montage)}">montage</a>)</summary>'
            f'<ol class="names">{names}</ol></details></td>'
            f'<td><div class="strip">{farthest}</div></td></tr>'
        )
    parts.append("</table>")
    return parts


def write_index_html(
    out: Path,
    *,
    title: str,
    summary: Mapping[str, str],
    clusters: Sequence[ClusterRow],
    skipped: Sequence[tuple[str, str]],
    images: Mapping[str, str],
    map_data: MapData | None = None,
    max_skipped_rows: int = 1000,
) -> None:
    """Write the run's report page: summary, map, plots, a row per cluster, skipped files.

    Parameters
    ----------
    out : pathlib.Path
        HTML file to write (normally ``<run>/index.html``); written atomically in UTF-8.
    title : str
        Page title and heading.
    summary : mapping of str to str
        Settings and figures, shown as a key/value table in the given order.
    clusters : sequence of ClusterRow
        One table row each, in the given order.
    skipped : sequence of (str, str)
        (path, reason) of every image that was skipped.
    images : mapping of str to str
        Plot caption -> PNG path relative to ``out``'s folder.
    map_data : MapData, optional
        The map; without it the page has no map and no script.
    max_skipped_rows : int, default=1000
        At most this many skipped rows are listed; the rest are counted (skipped.csv in the
        run folder has them all).

    Notes
    -----
    The page is built in memory: about 200 bytes per skipped row or listed name, and 5.3
    bytes per image for the map (530 KB for 100,000 images).
    """
    script = map_script() if map_data is not None else None
    thumb = map_data.thumb if map_data is not None else None
    parts = [*page_head(title, script), "<body>", f"<h1>{escape_html(title)}</h1>",
             '<nav class="top"><a href="#summary">summary</a><a href="#map-section">map</a>'
             '<a href="#choosing-k">choosing k</a><a href="#clusters">clusters</a>'
             '<a href="#skipped">skipped files</a></nav>',
             '<h2 id="summary">Summary</h2>', '<table class="summary">']
    for key, value in summary.items():
        parts.append(
            f'<tr><th scope="row">{escape_html(key)}</th><td>{escape_html(value)}</td></tr>'
        )
    parts.append("</table>")

    if map_data is not None:
        parts += [
            '<section id="map-section"><h2>Map of the collection</h2>',
            f"<p>Each of the {len(map_data.xy):,} images is a point, coloured by cluster; "
            "images that look alike are close (t-SNE of the PCA features). Hover over a point "
            "to see it, click to open its cluster, scroll to zoom (thumbnails appear when "
            'zoomed in), drag to pan. <button type="button" id="map-reset">reset view</button>'
            "</p>",
            '<div class="map-wrap"><canvas id="map" role="img" '
            'aria-label="map of every image, coloured by cluster"></canvas>'
            '<div id="map-tip" hidden></div></div>',
            '<ul class="legend">',
        ]
        parts += [
            f'<li><a href="{_url(c.page)}"><span class="swatch" data-cluster="{int(c.cluster)}">'
            f"</span>{_name(c)}</a> ({int(c.size):,})</li>"
            for c in clusters
        ]
        parts += ["</ul>", _json_block("map-data", map_data.payload()), "</section>"]

    parts.append('<h2 id="choosing-k">Choosing k, sizes and memory</h2>')
    if images:
        parts.append('<div class="plots">')
        for caption, src in images.items():
            parts.append(
                f'<figure><img src="{_url(src)}" alt="{escape_html(caption)}">'
                f"<figcaption>{escape_html(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append(f'<h2 id="clusters">Clusters ({len(clusters)})</h2>')
    parts.append("<p>Open a cluster to see all of its images, nearest the centre first.</p>")
    if clusters:
        parts += _cluster_rows(clusters, thumb)

    parts.append(f'<h2 id="skipped">Skipped files ({len(skipped):,})</h2>')
    if skipped:
        parts.append('<table class="skipped"><tr><th>path</th><th>reason</th></tr>')
        for path, reason in skipped[: max(0, max_skipped_rows)]:
            parts.append(f"<tr><td>{escape_html(path)}</td><td>{escape_html(reason)}</td></tr>")
        parts.append("</table>")
        hidden = len(skipped) - max(0, max_skipped_rows)
        if hidden > 0:
            parts.append(f"<p>… and {hidden:,} more; skipped.csv lists them all.</p>")
    else:
        parts.append("<p>None: every image was used.</p>")
    if script is not None:
        parts.append(f"<script>{script}</script>")
    parts.extend(["</body>", "</html>", ""])
    atomic_write_bytes(Path(out), "\n".join(parts).encode("utf-8"))
