"""The memory timeline plot: the run's RSS samples (``memory.csv``) against the budget, by stage."""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np

from stream_cluster.errors import ConfigError, StoreError
from stream_cluster.report.montage import display_name
from stream_cluster.report.plots import GIB, drawable, plot_figure, save_figure

__all__ = ["MEMORY_CSV_HEADER", "plot_memory_timeline"]

logger = logging.getLogger(__name__)

#: Header of the memory samples CSV read by :func:`plot_memory_timeline`.
MEMORY_CSV_HEADER = ("t_s", "rss_bytes", "stage")


def _read_memory_csv(samples_csv: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read (t_s, rss_bytes, stage) rows; skip malformed rows (a killed run tears the last)."""
    times: list[float] = []
    rss: list[float] = []
    stages: list[str] = []
    bad = 0
    with open(samples_csv, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != MEMORY_CSV_HEADER:
            raise StoreError(
                f"{display_name(str(samples_csv))} is not a memory samples CSV: the header "
                f"must be {','.join(MEMORY_CSV_HEADER)!r}. Got {header!r} instead."
            )
        for row in reader:
            try:
                t, r = float(row[0]), float(row[1])
                stage = row[2]
            except (IndexError, ValueError):
                bad += 1
                continue
            if not (math.isfinite(t) and math.isfinite(r)) or len(row) != 3:
                bad += 1
                continue
            times.append(t)
            rss.append(r)
            stages.append(stage)
    if bad:
        logger.warning("%s: skipped %d malformed memory samples", samples_csv, bad)
    return np.asarray(times), np.asarray(rss), stages


def _stage_runs(times: np.ndarray, stages: list[str]) -> list[tuple[str, float, float]]:
    """Group consecutive samples of one stage into (stage, start, end) spans."""
    runs: list[tuple[str, float, float]] = []
    start = 0
    for i in range(1, len(stages) + 1):
        if i == len(stages) or stages[i] != stages[start]:
            # a span lasts until the next stage's first sample, so spans tile the time axis
            end = float(times[i]) if i < len(stages) else float(times[-1])
            runs.append((stages[start], float(times[start]), end))
            start = i
    return runs


def plot_memory_timeline(
    samples_csv: Path, out: Path, *, budget_bytes: int | None = None
) -> None:
    """Plot resident memory (GiB) over time with pipeline stages shaded and the budget line.

    Parameters
    ----------
    samples_csv : pathlib.Path
        CSV with header ``t_s,rss_bytes,stage``: seconds since start, RSS of the whole
        process tree in bytes, and the stage running at that sample. Malformed rows (such
        as a last line torn by a kill) are skipped with a warning.
    out : pathlib.Path
        PNG to write (800 x 500 px); written atomically, parent folders created.
    budget_bytes : int, optional
        The user's memory budget, drawn as a horizontal line.

    Raises
    ------
    StoreError
        If the file does not start with the expected header.
    ConfigError
        If ``budget_bytes`` is not a positive integer.

    Notes
    -----
    Holds the samples in memory: about 50 bytes per sample, so a 10-hour run sampled
    every 0.1 s (360,000 samples) costs about 20 MB.
    """
    if budget_bytes is not None and (
        isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int | np.integer)
        or budget_bytes <= 0
    ):
        raise ConfigError(f"budget_bytes must be a positive integer. Got {budget_bytes!r} instead.")
    times, rss, stages = _read_memory_csv(Path(samples_csv))

    fig = plot_figure()
    ax = fig.add_subplot()
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("resident memory of process tree (GiB)")
    ax.grid(True, alpha=0.3)
    budget_gib = None if budget_bytes is None else budget_bytes / GIB
    if budget_gib is not None:
        ax.axhline(budget_gib, color="tab:red", linestyle="--", linewidth=1.4,
                   label=f"budget {budget_gib:.2f} GiB")

    if times.size == 0:
        ax.text(0.5, 0.5, "no memory samples recorded", transform=ax.transAxes,
                ha="center", va="center", fontsize=14)
        ax.set_title("Memory over time")
        if budget_gib is not None:
            ax.set_ylim(0.0, budget_gib * 1.15)
            ax.legend(loc="lower right")
        save_figure(fig, out)
        return

    order = np.argsort(times, kind="stable")
    times, rss = times[order], rss[order]
    stages = [stages[i] for i in order]
    gib = rss / GIB
    span = float(times[-1] - times[0]) or 1.0

    colours: dict[str, str] = {}
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink",
               "tab:olive", "tab:cyan", "tab:gray"]
    for name, start, end in _stage_runs(times, stages):
        first = name not in colours
        if first:
            colours[name] = palette[len(colours) % len(palette)]
        label = drawable(name, 9.0) if first else None
        ax.axvspan(start, end, color=colours[name], alpha=0.13, linewidth=0, label=label)
        if (end - start) / span >= 0.08:
            ax.text((start + end) / 2, 0.985, drawable(name, 9.0),
                    transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=9,
                    color="0.25", clip_on=True, parse_math=False)

    ax.plot(times, gib, color="black", linewidth=1.2, label="RSS")
    peak_i = int(np.argmax(gib))
    peak = float(gib[peak_i])
    ax.plot([times[peak_i]], [peak], "v", color="tab:red", markersize=8)
    ax.annotate(f"peak {peak:.2f} GiB", xy=(times[peak_i], peak), xytext=(0, 8),
                textcoords="offset points", ha="center", fontsize=9, color="tab:red")
    ax.set_xlim(float(times[0]), float(times[-1]) if times[-1] > times[0] else times[0] + 1.0)
    top = max(peak, budget_gib or 0.0)
    ax.set_ylim(0.0, top * 1.18 if top > 0 else 1.0)

    legend = ax.legend(loc="lower right", fontsize=8, ncols=2, framealpha=0.9)
    for text in legend.get_texts():
        text.set_parse_math(False)
    if budget_gib is None:
        title = f"Memory over time: peak {peak:.2f} GiB"
    else:
        verdict = "within" if peak <= budget_gib else "OVER"
        title = (f"Memory over time: peak {peak:.2f} GiB, {verdict} the budget of "
                 f"{budget_gib:.2f} GiB")
    ax.set_title(title)
    save_figure(fig, out)
