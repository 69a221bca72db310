"""The report's page per cluster: its members nearest the centre first, with thumbnails,
:data:`~stream_cluster.report.pages.PER_PAGE` to a page (the same escaping and no script: see
:mod:`~stream_cluster.report.pages`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stream_cluster.report.pages import (
    PER_PAGE,
    cluster_page_name,
    escape_html,
    page_head,
    thumb_img,
)
from stream_cluster.report.thumbs import ClusterOrder, ThumbSize
from stream_cluster.storage.atomic import atomic_write_bytes

__all__ = ["write_cluster_pages"]


def _member(rank: int, cluster: int, name: str, dist: float, thumb: ThumbSize,
            anchor: bool) -> str:
    ident = f' id="m{rank}"' if anchor else ""
    return (
        f"<li{ident}>{thumb_img(f'../thumbs/{cluster}/{rank}.jpg', name, thumb)}"
        f"{escape_html(name)}<span class=\"dist\">#{rank + 1} · distance {dist:.4g}</span></li>"
    )


def write_cluster_pages(
    out_dir: Path,
    *,
    title: str,
    names: Sequence[str],
    order: ClusterOrder,
    distances: np.ndarray,
    thumb: ThumbSize,
    mean_size: tuple[int, int],
    per_page: int = PER_PAGE,
    n_outliers: int = 12,
    noise: int | None = None,
) -> int:
    """Write ``out_dir/clusters/<c>.html`` (and ``<c>-2.html``... past ``per_page`` members).

    A page shows the cluster's size, its mean image, its ``n_outliers`` farthest members and
    every member as a lazily loaded thumbnail with its name, nearest the centre first. Returns
    the number of pages written.

    Memory: one page's HTML (about 250 bytes per member: 500 KB for 2,000).
    """
    root = Path(out_dir) / "clusters"
    root.mkdir(parents=True, exist_ok=True)
    k = len(order.starts) - 1
    written = 0
    for c in range(k):
        members = order.members(c)
        size = len(members)
        n_pages = max(1, -(-size // per_page))
        far = [(r, int(members[r])) for r in range(size - 1, max(-1, size - 1 - n_outliers), -1)]
        for page in range(n_pages):
            lo, hi = page * per_page, min(size, (page + 1) * per_page)
            heading = f"Cluster {c} — {size:,} images" if c != noise else \
                f"Cluster {c} — noise: {size:,} images HDBSCAN put in no cluster"
            parts = [*page_head(f"{heading} · {title}", None), "<body>",
                     '<nav class="top"><a href="../index.html">← report</a>'
                     '<a href="../index.html#map-section">map</a>']
            if c > 0:
                parts.append(f'<a href="{cluster_page_name(c - 1)}">← cluster {c - 1}</a>')
            if c + 1 < k:
                parts.append(f'<a href="{cluster_page_name(c + 1)}">cluster {c + 1} →</a>')
            parts += ["</nav>", f"<h1>{heading}</h1>"]
            if page == 0:
                d = distances[members] if size else np.zeros(1)
                parts += [
                    '<div class="head"><figure>'
                    f'<img class="mean" src="../means/{c}.png" alt="mean image of cluster {c}" '
                    f'width="{mean_size[0]}" height="{mean_size[1]}">'
                    "<figcaption>Mean image of the cluster's members"
                    "</figcaption></figure>",
                    f"<section><h2>Farthest from the centre ({len(far)})</h2>",
                    f"<p>Distance to the centre: median {np.median(d):.4g}, "
                    f"90th percentile {np.percentile(d, 90):.4g}, largest {d.max():.4g}.</p>",
                    '<ol class="grid outliers">',
                    *[_member(r, c, names[i], float(distances[i]), thumb, False)
                      for r, i in far],
                    "</ol></section></div>",
                ]
            pager = ""
            if n_pages > 1:
                links = [f"<b>{p + 1}</b>" if p == page else
                         f'<a href="{cluster_page_name(c, p)}">{p + 1}</a>'
                         for p in range(n_pages)]
                pager = f'<p class="pages">Pages: {" ".join(links)}</p>'
            parts += [
                f"<h2>All {size:,} images, nearest the centre first"
                + (f" (#{lo + 1}–#{hi} on this page)" if n_pages > 1 else "") + "</h2>",
                pager,
                f'<ol class="grid" id="members" start="{lo + 1}">',
                *[_member(r, c, names[int(members[r])], float(distances[int(members[r])]),
                          thumb, True) for r in range(lo, hi)],
                "</ol>", pager, "</body>", "</html>", "",
            ]
            atomic_write_bytes(root / cluster_page_name(c, page),
                               "\n".join(parts).encode("utf-8"))
            written += 1
    return written
