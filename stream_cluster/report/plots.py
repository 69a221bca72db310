"""Plots a person looks at: cumulative explained variance, the elbow, the cluster sizes.

matplotlib's object API with the Agg canvas (no pyplot state, no display needed); every PNG is
written atomically.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import font_manager
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from stream_cluster.errors import ConfigError
from stream_cluster.report.montage import display_name

__all__ = [
    "GIB",
    "drawable",
    "plot_cluster_sizes",
    "plot_elbow",
    "plot_figure",
    "plot_variance",
    "save_figure",
]

logger = logging.getLogger(__name__)

_DPI = 100  # every figure is drawn at 100 dpi, so figsize * 100 is the PNG size in pixels
_PLOT_SIZE = (8.0, 5.0)  # inches: 800 x 500 px plots
GIB = float(1 << 30)  # bytes in a GiB, for memory axes


# --------------------------------------------------------------------------------------------
# Text for matplotlib
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def _charmap(size: float) -> frozenset[int]:
    """Code points the default matplotlib font can draw (read, never change, rcParams)."""
    path = font_manager.findfont(font_manager.FontProperties(size=size))
    return frozenset(font_manager.get_font(path).get_charmap())


def drawable(text: str, size: float) -> str:
    """Return ``display_name(text)`` with characters the font lacks replaced by '?'.

    matplotlib would draw an empty box and warn for each missing glyph (e.g. Japanese with
    the bundled DejaVu Sans); the HTML report keeps the real name.
    """
    shown = display_name(text)
    cmap = _charmap(size)
    return "".join(ch if ord(ch) in cmap or ch == " " else "?" for ch in shown)


def _write_atomic(out: Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on ``out.partial``, then rename it to ``out``; never leave a partial."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        write(partial)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def save_figure(fig: Figure, out: Path) -> None:
    """Render ``fig`` to PNG at ``out`` through a ``.partial`` file and an atomic rename."""
    FigureCanvasAgg(fig)  # attach an Agg canvas explicitly; pyplot is never involved
    _write_atomic(
        out, lambda p: fig.savefig(p, format="png", dpi=_DPI, metadata={"Software": None})
    )


def plot_figure() -> Figure:
    """A new 800 x 500 px constrained-layout Figure, the size every report plot shares."""
    return Figure(figsize=_PLOT_SIZE, dpi=_DPI, layout="constrained")


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------


def plot_variance(
    explained_variance_ratio: np.ndarray,
    out: Path,
    *,
    n_kept: int,
    target: float | None = None,
) -> None:
    """Plot cumulative explained variance against the number of PCA components.

    The kept number of components is marked, the target (if any) is drawn as a horizontal
    line, and the title states the cumulative value at ``n_kept``.

    Parameters
    ----------
    explained_variance_ratio : numpy.ndarray
        1-D, finite, non-negative ratios of the fitted components, largest first.
    out : pathlib.Path
        PNG to write (800 x 500 px); written atomically, parent folders created.
    n_kept : int
        Number of components kept, 1 <= n_kept <= len(explained_variance_ratio).
    target : float, optional
        Cumulative variance the user asked for, in (0, 1].

    Raises
    ------
    ConfigError
        If the ratios are empty, not 1-D, not finite or negative, or ``n_kept`` or
        ``target`` is out of range.
    """
    evr = np.asarray(explained_variance_ratio, dtype=np.float64)
    if evr.ndim != 1 or evr.size == 0:
        raise ConfigError(
            f"explained_variance_ratio must be a non-empty 1-D array. Got shape {evr.shape} "
            "instead."
        )
    if not np.all(np.isfinite(evr)) or np.any(evr < 0):
        raise ConfigError(
            "explained_variance_ratio must be finite and >= 0. Got min "
            f"{np.nanmin(evr) if not np.all(np.isnan(evr)) else float('nan')!r} "
            f"({int(np.count_nonzero(~np.isfinite(evr)))} non-finite values) instead."
        )
    if isinstance(n_kept, bool) or not isinstance(n_kept, int | np.integer):
        raise ConfigError(f"n_kept must be an integer. Got {n_kept!r} instead.")
    if not 1 <= n_kept <= evr.size:
        raise ConfigError(
            f"n_kept must be in [1, {evr.size}] (the number of fitted components). "
            f"Got {n_kept} instead."
        )
    if target is not None and not (math.isfinite(target) and 0.0 < target <= 1.0):
        raise ConfigError(f"target must be in (0, 1]. Got {target!r} instead.")

    cumulative = np.cumsum(evr)
    x = np.arange(1, evr.size + 1)
    at_kept = float(cumulative[n_kept - 1])

    fig = plot_figure()
    ax = fig.add_subplot()
    ax.plot(x, cumulative * 100.0, color="tab:blue", linewidth=1.8, label="cumulative")
    ax.axvline(n_kept, color="tab:red", linestyle="--", linewidth=1.2,
               label=f"kept: {n_kept} components")
    ax.plot([n_kept], [at_kept * 100.0], "o", color="tab:red", markersize=6)
    if target is not None:
        ax.axhline(target * 100.0, color="tab:green", linestyle=":", linewidth=1.4,
                   label=f"target: {target * 100:.1f} %")
    ax.set_xlabel("number of principal components")
    ax.set_ylabel("cumulative explained variance (%)")
    ax.set_xlim(0.5, evr.size + 0.5)
    top = max(float(cumulative[-1]), target or 0.0) * 100.0
    ax.set_ylim(0.0, min(100.0, top * 1.08) if top > 0 else 1.0)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(
        f"Explained variance: {at_kept * 100:.1f} % with {n_kept} of {evr.size} components"
    )
    save_figure(fig, out)


def _mark_k(ax: Any, ks: list[int], ys: np.ndarray, chosen_k: int, how: str,
            annotate: bool) -> None:
    """Mark ``chosen_k`` on one panel: a dashed line, a circle on its point, a label."""
    ax.axvline(chosen_k, color="tab:red", linestyle="--", linewidth=1.0, alpha=0.7)
    if chosen_k in ks:
        y_k = float(ys[ks.index(chosen_k)])
        ax.plot([chosen_k], [y_k], "o", markersize=13, markerfacecolor="none",
                markeredgecolor="tab:red", markeredgewidth=2.0)
    else:  # a fixed k outside the sweep: mark it on the axis, nothing to circle
        y_k = float(ys.min())
        ax.set_xlim(min(ks[0], chosen_k) - 0.5, max(ks[-1], chosen_k) + 0.5)
    if not annotate:
        return
    # put the label on the side with more room so it never leaves the axes
    right = chosen_k <= (min(ks) + max(ks)) / 2
    ax.annotate(
        f"k = {chosen_k}{how}", xy=(chosen_k, y_k),
        xytext=(30 if right else -30, 30), textcoords="offset points",
        ha="left" if right else "right", fontsize=11, color="tab:red",
        arrowprops={"arrowstyle": "->", "color": "tab:red"},
        bbox={"boxstyle": "round", "fc": "white", "ec": "tab:red", "alpha": 0.9},
    ).set_parse_math(False)


def plot_elbow(
    ks: Sequence[int],
    inertias: Sequence[float],
    out: Path,
    *,
    chosen_k: int | None,
    method: str = "",
    scores: Mapping[int, float] | None = None,
    score_label: str = "silhouette",
) -> None:
    """Plot k-means inertia against k, and a second criterion below it, chosen k marked on both.

    Parameters
    ----------
    ks : sequence of int
        Swept values of k (at least one, same length as ``inertias``).
    inertias : sequence of float
        Finite inertia per k.
    out : pathlib.Path
        PNG to write (800 x 500 px, or 800 x 800 px with ``scores``); written atomically,
        parent folders created.
    chosen_k : int or None
        The k used, normally one of ``ks`` (a fixed k outside the sweep is marked by a
        vertical line only); None writes "no clear knee" on the plot.
    method : str, default=""
        How k was chosen (e.g. ``KneeResult.method``), shown next to the mark; unused
        when ``chosen_k`` is None.
    scores : mapping of int to float, optional
        A second criterion per k (e.g. silhouette on a sample: higher is better), drawn in a
        panel under the inertia; non-finite values are left out.
    score_label : str, default="silhouette"
        The second panel's y-axis label.

    Raises
    ------
    ConfigError
        If lengths differ, nothing is given or an inertia is not finite.
    """
    ks_list = [int(k) for k in ks]
    ys = np.asarray(list(inertias), dtype=np.float64)
    if len(ks_list) == 0 or len(ks_list) != ys.size:
        raise ConfigError(
            f"ks and inertias must be non-empty and of the same length. Got {len(ks_list)} "
            f"ks and {ys.size} inertias instead."
        )
    if not np.all(np.isfinite(ys)):
        raise ConfigError(f"inertias must be finite. Got {ys.tolist()!r} instead.")
    second = sorted((int(k), float(v)) for k, v in (scores or {}).items() if math.isfinite(v))

    if second:
        fig = Figure(figsize=(_PLOT_SIZE[0], 8.0), dpi=_DPI, layout="constrained")
        ax, ax2 = fig.subplots(2, 1, sharex=True)
    else:
        fig, ax2 = plot_figure(), None
        ax = fig.add_subplot()
    ax.plot(ks_list, ys, "o-", color="tab:blue", linewidth=1.6, markersize=5)
    ax.set_ylabel("inertia (sum of squared distances to centres)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    (ax2 or ax).set_xlabel("number of clusters k")
    how = f" ({drawable(method, 10.0)})" if method else ""
    if chosen_k is not None:
        if chosen_k not in ks_list:
            how += ", not in the sweep"
        _mark_k(ax, ks_list, ys, chosen_k, how, annotate=True)
        ax.set_title(f"Elbow: inertia vs k — chosen k = {chosen_k}{how}")
    else:
        # top right is empty on a decreasing curve
        ax.text(0.97, 0.95, "no clear knee", transform=ax.transAxes, ha="right",
                va="top", fontsize=16, color="tab:red",
                bbox={"boxstyle": "round", "fc": "white", "ec": "tab:red", "alpha": 0.9},
                parse_math=False)
        ax.set_title("Elbow: inertia vs k — no clear knee")
    ax.title.set_parse_math(False)
    if ax2 is not None:
        sk = [k for k, _ in second]
        sv = np.asarray([v for _, v in second])
        ax2.plot(sk, sv, "s-", color="tab:green", linewidth=1.6, markersize=5)
        ax2.set_ylabel(drawable(score_label, 10.0))
        ax2.grid(True, alpha=0.3)
        best = sk[int(np.argmax(sv))]
        ax2.plot([best], [float(sv.max())], "^", color="tab:green", markersize=10,
                 label=f"highest: k = {best}")
        if chosen_k is not None:
            _mark_k(ax2, sk, sv, chosen_k, how, annotate=False)
        ax2.legend(loc="best").get_texts()[0].set_parse_math(False)
        ax2.set_title(f"{drawable(score_label, 10.0)} vs k (higher is better)")
        ax2.title.set_parse_math(False)
        ax2.yaxis.label.set_parse_math(False)
    save_figure(fig, out)


def plot_cluster_sizes(
    sizes: Sequence[int], out: Path, *, colours: Sequence[str] | None = None
) -> None:
    """Bar chart of the number of images in each cluster.

    Parameters
    ----------
    sizes : sequence of int
        Images per cluster, indexed by cluster label (at least one, >= 0).
    colours : sequence of str, optional
        One matplotlib colour per cluster (the map's), default all blue.
    out : pathlib.Path
        PNG to write (800 x 400 px); written atomically, parent folders created.

    Raises
    ------
    ConfigError
        If ``sizes`` is empty or has a negative count.
    """
    counts = np.asarray(list(sizes), dtype=np.int64)
    if counts.ndim != 1 or counts.size == 0 or np.any(counts < 0):
        raise ConfigError(
            f"sizes must be a non-empty list of counts >= 0. Got {counts.tolist()!r} instead."
        )
    fig = Figure(figsize=(_PLOT_SIZE[0], 4.0), dpi=_DPI, layout="constrained")
    ax = fig.add_subplot()
    labels = np.arange(counts.size)
    ax.bar(labels, counts, color=list(colours) if colours else "tab:blue", width=0.8)
    if counts.size <= 40:
        ax.set_xticks(labels)
        for x, n in zip(labels, counts):
            ax.text(float(x), float(n), f"{n:,}", ha="center", va="bottom", fontsize=8)
    ax.set_xlabel("cluster")
    ax.set_ylabel("images")
    ax.set_xlim(-0.6, counts.size - 0.4)
    ax.set_ylim(0, max(1, int(counts.max())) * 1.1)
    if counts.size > 40:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(f"Cluster sizes: {int(counts.sum()):,} images in {counts.size} clusters "
                 f"(smallest {int(counts.min()):,}, largest {int(counts.max()):,})")
    save_figure(fig, out)
