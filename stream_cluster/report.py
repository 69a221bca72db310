"""The report stage: labels in, what a person looks at out (plots, montages, index.html).

:func:`write_report` draws the variance and elbow plots (:mod:`stream_cluster.plots`), one
montage per cluster of the images nearest its centre (:mod:`stream_cluster.montage`) and the
``index.html`` page that shows them with the run's figures and every skipped file.
"""

from __future__ import annotations

import html
import logging
import os
import urllib.parse
from collections.abc import Callable, Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import open_arrays
from .clustering import Elbow
from .config import RunConfig, format_bytes
from .kmeans import KMeansResult
from .model import Preprocessing, cluster_statistics, write_model
from .montage import MontageLayout, display_name, montage_layout, write_montage
from .plots import MEMORY_CSV_HEADER, plot_elbow, plot_memory_timeline, plot_variance
from .results import write_labels, write_skipped
from .stage import Progress
from .store import RowStore, atomic_write_bytes

__all__ = [
    "MEMORY_CSV_HEADER",
    "ClusterSummary",
    "MontageLayout",
    "ReportInputs",
    "report_stage",
    "report_summary",
    "display_name",
    "montage_layout",
    "plot_elbow",
    "plot_memory_timeline",
    "plot_variance",
    "write_index_html",
    "write_montage",
    "write_report",
]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# index.html
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSummary:
    """What the report shows about one cluster.

    Attributes
    ----------
    cluster : int
        Cluster label.
    size : int
        Number of images assigned to it.
    montage : str
        Relative path of the montage PNG inside the run folder.
    examples : sequence of str
        Paths (relative to the input root) of the images shown, nearest the centre first.
    """

    cluster: int
    size: int
    montage: str
    examples: Sequence[str]


def _h(text: object) -> str:
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


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f3f3f3; }
td { overflow-wrap: anywhere; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.95em; }
section.cluster { border-top: 1px solid #ddd; padding-top: 0.5em; margin-top: 1.5em; }
ol.examples { columns: 2; font-size: 0.9em; font-family: ui-monospace, monospace; }
nav ul { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: 0.4em 1em; }
""".strip()

# No script may run in the report, whatever ends up in it.
_CSP = "script-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'"


def write_index_html(
    out: Path,
    *,
    title: str,
    summary: Mapping[str, str],
    clusters: Sequence[ClusterSummary],
    skipped: Sequence[tuple[str, str]],
    images: Mapping[str, str],
    max_skipped_rows: int = 1000,
) -> None:
    """Write the run's report page: summary, plots, one section per cluster, skipped files.

    Every interpolated string is passed through :func:`display_name` and
    ``html.escape(quote=True)``; ``src`` values are also percent-encoded, so no file name
    can open a tag or leave an attribute. The page has no script, and a
    Content-Security-Policy ``script-src 'none'`` forbids any. Undecodable bytes in names
    are shown as ``\\xNN`` (the page is strict UTF-8), while image links encode the original
    bytes.

    Parameters
    ----------
    out : pathlib.Path
        HTML file to write (normally ``<run>/index.html``); written atomically in UTF-8.
    title : str
        Page title and heading.
    summary : mapping of str to str
        Settings and figures, shown as a key/value table in the given order.
    clusters : sequence of ClusterSummary
        One section each, in the given order.
    skipped : sequence of (str, str)
        (path, reason) of every image that was skipped.
    images : mapping of str to str
        Plot caption -> PNG path relative to ``out``'s folder.
    max_skipped_rows : int, default=1000
        At most this many skipped rows are listed; the rest are counted (skipped.csv in the
        run folder has them all).

    Notes
    -----
    The page is built in memory: about 200 bytes per skipped row or example name.
    """
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_h(title)}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        f"<h1>{_h(title)}</h1>",
        '<h2 id="summary">Summary</h2>',
        '<table class="summary">',
    ]
    for key, value in summary.items():
        parts.append(f'<tr><th scope="row">{_h(key)}</th><td>{_h(value)}</td></tr>')
    parts.append("</table>")

    if images:
        parts.append('<h2 id="plots">Plots</h2>')
        for caption, src in images.items():
            parts.append(
                f'<figure><img src="{_url(src)}" alt="{_h(caption)}">'
                f"<figcaption>{_h(caption)}</figcaption></figure>"
            )

    parts.append(f'<h2 id="clusters">Clusters ({len(clusters)})</h2>')
    if clusters:
        parts.append("<nav><ul>")
        for c in clusters:
            parts.append(
                f'<li><a href="#cluster-{int(c.cluster)}">cluster {int(c.cluster)}</a> '
                f"({int(c.size):,} images)</li>"
            )
        parts.append("</ul></nav>")
    for c in clusters:
        label = int(c.cluster)
        n_examples = len(c.examples)
        parts.append(f'<section class="cluster" id="cluster-{label}">')
        parts.append(f"<h3>Cluster {label} — {int(c.size):,} images</h3>")
        parts.append(
            f'<img src="{_url(c.montage)}" alt="montage of cluster {label}" loading="lazy">'
        )
        if n_examples:
            parts.append(
                f"<p>Shown, nearest the centre first ({n_examples}):</p>"
                '<ol class="examples">'
            )
            parts.extend(f"<li>{_h(name)}</li>" for name in c.examples)
            parts.append("</ol>")
        else:
            parts.append("<p>No images shown.</p>")
        parts.append("</section>")

    parts.append(f'<h2 id="skipped">Skipped files ({len(skipped):,})</h2>')
    if skipped:
        parts.append('<table class="skipped"><tr><th>path</th><th>reason</th></tr>')
        for path, reason in skipped[: max(0, max_skipped_rows)]:
            parts.append(f"<tr><td>{_h(path)}</td><td>{_h(reason)}</td></tr>")
        parts.append("</table>")
        hidden = len(skipped) - max(0, max_skipped_rows)
        if hidden > 0:
            parts.append(f"<p>… and {hidden:,} more; skipped.csv lists them all.</p>")
    else:
        parts.append("<p>None: every image was used.</p>")
    parts.extend(["</body>", "</html>", ""])

    data = "\n".join(parts).encode("utf-8")  # strict: display_name removed all surrogates
    atomic_write_bytes(Path(out), data)


@dataclass(frozen=True)
class ReportInputs:
    """What the report shows besides the stores and labels (settings and run figures)."""

    title: str
    summary: Mapping[str, str]
    width: int
    height: int
    explained_variance_ratio: Sequence[float]
    n_keep: int
    variance_target: float | None
    elbow: Mapping[int, float]
    elbow_k: int | None
    knee_method: str
    montage_images: int
    memory_csv: Path | None = None
    budget: int = 0


def write_report(
    out_dir: Path,
    pixels: RowStore,
    names: Sequence[str],
    km: KMeansResult,
    skipped: Sequence[tuple[str, str]],
    info: ReportInputs,
    rows: np.ndarray | None = None,
) -> Generator[Progress, None, None]:
    """The report stage: plots, a montage per cluster and ``index.html`` in ``out_dir``.

    Memory: one montage's images (``montage_images`` rows) at a time.
    """
    plot_variance(
        np.asarray(info.explained_variance_ratio),
        out_dir / "variance.png",
        n_kept=info.n_keep,
        target=info.variance_target,
    )
    images = {"Cumulative explained variance": "variance.png"}
    if info.elbow and len(info.elbow) >= 3:
        ks = sorted(info.elbow)
        plot_elbow(
            ks,
            [info.elbow[x] for x in ks],
            out_dir / "elbow.png",
            chosen_k=info.elbow_k,
            method=info.knee_method,
        )
        images["Elbow: inertia vs k"] = "elbow.png"
    (out_dir / "montages").mkdir(exist_ok=True)
    k = len(km.centers)
    clusters = []
    sizes = np.bincount(km.labels, minlength=k)
    for c in range(k):
        members = np.nonzero(km.labels == c)[0]
        order = members[np.argsort(km.sq_distances[members], kind="stable")]
        shown = order[: info.montage_images]
        rel = f"montages/cluster-{c:03d}.png"
        if len(shown):
            at = shown if rows is None else rows[shown]  # feature row -> pixel-store row
            write_montage(
                [r.reshape(info.height, info.width) for r in pixels.read_rows(at.tolist())],
                out_dir / rel,
                title=f"cluster {c} - {sizes[c]} images (showing {len(shown)} nearest the centre)",
                captions=[os.path.basename(names[i]) for i in shown],
            )
        clusters.append(
            ClusterSummary(
                cluster=c, size=int(sizes[c]), montage=rel, examples=[names[i] for i in shown]
            )
        )
        yield Progress("report", c + 1, k, "clusters")
    if info.memory_csv is not None and info.memory_csv.exists():
        plot_memory_timeline(info.memory_csv, out_dir / "memory.png", budget_bytes=info.budget)
        images["Memory timeline (RSS of the process tree)"] = "memory.png"
    write_index_html(
        out_dir / "index.html",
        title=info.title,
        summary=info.summary,
        clusters=clusters,
        skipped=skipped,
        images=images,
    )


def report_summary(
    config: RunConfig,
    *,
    n_images: int,
    n_skipped: int,
    n_keep: int,
    ev: float,
    k: int,
    at_knee: bool,
    inertia: float,
    peak: int,
) -> dict[str, str]:
    """The key/value table at the top of the report."""
    return {
        "input folder": os.fsdecode(config.input_dir),
        "images clustered": str(n_images),
        "images skipped": str(n_skipped),
        "size": f"{config.width}x{config.height}",
        "PCA components": f"{n_keep} (explained variance {ev:.4f})",
        "k": f"{k}" + (" (chosen at the elbow)" if at_knee else ""),
        "inertia (sum of squared distances)": f"{inertia:.6g}",
        "memory budget": format_bytes(config.mem_budget),
        "peak RSS (process tree)": format_bytes(peak),
    }


def report_stage(
    out_dir: Path,
    config: RunConfig,
    pixels: RowStore,
    names: Sequence[str],
    km: KMeansResult,
    skipped: Sequence[tuple[str, str]],
    *,
    n_keep: int,
    k: int,
    pca: Mapping[str, Any],
    elbow: Elbow,
    peak: int,
    sample: Callable[[], int] | None = None,
    rows: np.ndarray | None = None,
) -> Generator[Progress, None, np.ndarray]:
    """The report stage: labels.csv, skipped.csv, model.h5, plots, montages and index.html.

    ``pca`` is the PCA stage's record (explained variance); ``sample`` takes a last memory
    sample before the timeline is drawn. Returns the cluster sizes.

    Memory: one montage at a time; model.h5 is copied from pca.h5 in 16 MB blocks.
    """
    write_labels(out_dir, names, km)
    write_skipped(out_dir, skipped)
    sizes, pct = cluster_statistics(km, k)
    with open_arrays(out_dir / "pca.h5") as (pca_state, _):
        write_model(
            out_dir / "model.h5", pca_state, n_components=n_keep, centers=km.centers,
            cluster_sizes=sizes, distance_percentiles=pct,
            preprocessing=Preprocessing(config.width, config.height), n_images=len(names),
            extra={"inertia": km.inertia, "seed": config.seed},
        )  # fmt: skip
    ev = float(pca["explained_variance"])
    summary = report_summary(
        config, n_images=len(names), n_skipped=len(skipped), n_keep=n_keep, ev=ev, k=k,
        at_knee=config.k is None and elbow.knee is not None, inertia=km.inertia, peak=peak,
    )  # fmt: skip
    info = ReportInputs(
        "stream-cluster report", summary, config.width, config.height,
        pca["explained_variance_ratio"], n_keep, config.variance, elbow.inertias,
        k if config.k is not None else elbow.knee, elbow.method, config.montage_images,
        out_dir / "memory.csv" if config.profile_memory else None, config.mem_budget,
    )  # fmt: skip
    if config.profile_memory and sample is not None:
        sample()
    yield from write_report(out_dir, pixels, names, km, skipped, info, rows)
    return sizes
