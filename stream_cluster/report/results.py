"""What a finished run hands over: labels.csv, skipped.csv, run.json and the RunResult.

Written atomically; paths keep their original bytes (surrogate escapes) so they map back to
files whatever their encoding.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster._version import __version__
from stream_cluster.config import RunConfig, fingerprint
from stream_cluster.memory.budget import MemoryPlan
from stream_cluster.model.kmeans import KMeansResult
from stream_cluster.storage.atomic import atomic_write_bytes

__all__ = ["RunResult", "write_csv", "write_labels", "write_run_json", "write_skipped"]


@dataclass
class RunResult:
    """What a finished run produced (all paths inside ``out_dir``)."""

    out_dir: Path
    n_images: int
    n_skipped: int
    n_components: int
    explained_variance: float
    k: int
    inertia: float
    cluster_sizes: list[int]
    elbow: dict[int, float] = field(default_factory=dict)
    peak_rss: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV atomically (UTF-8; undecodable file-name bytes written back as they were)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode("utf-8", errors="surrogateescape"))


def write_skipped(out_dir: Path, skipped: Sequence[tuple[str, str]]) -> None:
    """``skipped.csv``: every file left out, with its reason."""
    write_csv(out_dir / "skipped.csv", ["path", "reason"], [[p, r] for p, r in skipped])


def write_labels(out_dir: Path, names: Sequence[str], km: KMeansResult) -> None:
    """``labels.csv``: path, cluster and distance to the centre of every image, sorted by path."""
    dist = np.sqrt(km.sq_distances)
    by_path = sorted(range(len(names)), key=lambda i: os.fsencode(names[i]))
    write_csv(
        out_dir / "labels.csv",
        ["path", "cluster", "distance"],
        [[names[i], int(km.labels[i]), f"{dist[i]:.6g}"] for i in by_path],
    )


def _versions() -> dict[str, str]:
    import cv2
    import h5py
    import sklearn

    try:
        import pyvips

        vips = f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    except Exception:  # libvips missing: decode falls back to OpenCV only
        vips = "unavailable"
    return {
        "stream_cluster": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "h5py": h5py.__version__,
        "opencv": cv2.__version__,
        "libvips": vips,
    }


def write_run_json(
    out_dir: Path,
    config: RunConfig,
    plan: MemoryPlan,
    stages: Mapping[str, Mapping[str, Any]],
    stage_names: Sequence[str],
    peak_rss: int,
    result: RunResult,
    k_at_knee: int | None,
) -> None:
    """``run.json``: settings, versions, plan, seconds and peak RSS per stage, results."""
    pca = stages.get("pca", {})
    doc = {
        "settings": config.as_dict(),
        "fingerprint": fingerprint(config.as_dict()),
        "versions": _versions(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "plan": plan.as_dict(),
        # With decoding overlapped, "ingest+pca" holds the shared peak; "ingest" and "pca"
        # then give each side's own wall time.
        "stages": {
            s: {
                "seconds": round(float(stages.get(s, {}).get("seconds", 0.0)), 3),
                "peak_rss_bytes": int(stages.get(s, {}).get("peak_rss", 0)),
            }
            for s in (*stage_names[:3], "ingest+pca", *stage_names[3:])
            if s != "ingest+pca" or s in stages
        },
        "peak_rss_bytes": peak_rss,
        "update": dict(stages.get("update", {})) or None,
        "results": {
            "n_images": result.n_images,
            "n_skipped": result.n_skipped,
            "n_components": result.n_components,
            "explained_variance": result.explained_variance,
            "explained_variance_ratio": pca.get("explained_variance_ratio", []),
            "k": result.k,
            "k_at_knee": k_at_knee,
            "inertia": result.inertia,
            "cluster_sizes": result.cluster_sizes,
            "elbow_inertias": {str(a): v for a, v in sorted(result.elbow.items())},
        },
    }
    atomic_write_bytes(out_dir / "run.json", json.dumps(doc, indent=1).encode())
