"""Growing a run: when files were added to or removed from its folder, update the fitted run.

``--update`` ingests only the new files (a file whose content changed counts as removed and
added), continues the incremental PCA from its saved state with batches of the new images (the
same update a run makes), re-embeds every current image with the updated components and runs
k-means warm-started from the previous centres. Removed files leave the labels and features;
the PCA keeps what it learned from them (``--fresh`` refits from scratch).

Everything :func:`start_update` changes in the run folder is written before one atomic
``state.json`` write that makes the update official, so a kill at any moment either leaves the
finished run as it was or an update that the same command resumes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import adjusted_rand_score

from stream_cluster.errors import CheckpointMismatchError
from stream_cluster.images.scan import file_signatures
from stream_cluster.model.kmeans import KMeansResult
from stream_cluster.stages.ingest import ORDER_SEED, processing_order
from stream_cluster.storage.atomic import atomic_write_bytes, fsync_dir
from stream_cluster.storage.checkpoint import RunState, load_arrays, save_arrays

__all__ = [
    "Change",
    "active_rows",
    "compare_labels",
    "ingest_order",
    "previous_centers",
    "start_update",
]

logger = logging.getLogger(__name__)

ORDER_FILE = "order.json"
SIGNATURES_FILE = "files-sig.json"
PREVIOUS_FILE = "previous.h5"


@dataclass(frozen=True)
class Change:
    """How the folder differs from the run: files added, removed and changed (by content)."""

    added: list[str]
    removed: list[str]
    changed: list[str]

    @property
    def new(self) -> list[str]:
        """Files to ingest: added and changed, sorted."""
        return sorted({*self.added, *self.changed}, key=os.fsencode)


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def ingest_order(out_dir: Path, files: Sequence[str]) -> list[str]:
    """Every file in the order it is (was) ingested: ``order.json`` after an update, else the
    seeded permutation of the sorted ``files``."""
    order = _read_json(out_dir / ORDER_FILE, None)
    if isinstance(order, list):
        return [str(x) for x in order]
    return [files[i] for i in processing_order(len(files))]


def active_rows(names: Sequence[bytes], files: Sequence[str]) -> np.ndarray:
    """Pixel-store rows of the current files: each file's newest row, in store order."""
    current = {os.fsencode(f) for f in files}
    newest: dict[bytes, int] = {}
    for i, name in enumerate(names):
        if name in current:
            newest[name] = i
    return np.array(sorted(newest.values()), dtype=np.int64)


def _diff(out_dir: Path, root: Path, files: list[str]) -> Change:
    old = [str(x) for x in _read_json(out_dir / "files.json", [])]
    sigs = _read_json(out_dir / SIGNATURES_FILE, None)
    old_set, new_set = set(old), set(files)
    changed: list[str] = []
    if isinstance(sigs, list) and len(sigs) == len(old):
        before = dict(zip(old, sigs))
        both = sorted(old_set & new_set)
        changed = [f for f, s in zip(both, file_signatures(root, both)) if before[f] != s]
    return Change(sorted(new_set - old_set), sorted(old_set - new_set), changed)


def start_update(
    state: RunState,
    out_dir: Path,
    root: Path,
    files: list[str],
    digest: str,
) -> Change | None:
    """Make a finished run ready to grow to ``files``; None when there is nothing to update.

    Reopens the ingest (new files appended to the processing order), the PCA (its final state
    becomes the checkpoint it continues from) and resets embed, elbow, cluster and report.
    Keeps the previous labels (``previous.h5``) to count the images that change cluster.
    """
    ingest = state.stage("ingest")
    update = state.stage("update")
    if not ingest or ingest.get("files_digest") == digest:
        return None  # a new run, an unchanged folder, or an update already under way
    if not state.stage("report").get("done"):
        raise CheckpointMismatchError(
            f"The run folder {out_dir} holds an unfinished run and the input folder changed. "
            f"--update grows a finished run: finish this one first on its files, or rerun with "
            f"--fresh to start over on the current files."
        )
    change = _diff(out_dir, root, files)
    old_files = [str(x) for x in _read_json(out_dir / "files.json", [])]
    generation = int(update.get("generation", 0)) + 1
    new = change.new
    order = ingest_order(out_dir, old_files)
    order += [new[i] for i in np.random.default_rng(ORDER_SEED + generation).permutation(len(new))]
    atomic_write_bytes(out_dir / ORDER_FILE, json.dumps(order).encode("utf-8"))
    # The labels before the update, by name, for the changed-cluster count afterwards.
    km, _ = load_arrays(out_dir / "kmeans.h5", required=("centers", "labels"))
    from stream_cluster.storage.store import RowStore

    width = int(state.stage("pca")["n_keep"])  # the features' width (centres may be 2-D)
    names = RowStore(out_dir / "features", width, np.float32).names()
    gone = {os.fsencode(f) for f in change.changed}  # a changed file is not an earlier image
    keep = np.array([n not in gone for n in names], dtype=bool)
    save_arrays(
        out_dir / PREVIOUS_FILE,
        {
            "names": np.array(names, dtype=bytes)[keep],
            "labels": km["labels"][keep],
            "centers": km["centers"],
        },
        {"generation": generation},
    )
    # The PCA continues from its final state: pca.h5 is the checkpoint of the last batch.
    tmp = out_dir / "pca-checkpoint.h5.partial"
    shutil.copyfile(out_dir / "pca.h5", tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, out_dir / "pca-checkpoint.h5")
    fsync_dir(out_dir)
    atomic_write_bytes(out_dir / "files.json", json.dumps(files).encode("utf-8"))
    sigs = file_signatures(root, files)
    atomic_write_bytes(out_dir / SIGNATURES_FILE, json.dumps(sigs).encode("utf-8"))
    stages = state.data["stages"]
    stages["ingest"].update(
        done=False, files_digest=digest, n_files=len(order), next_file=len(order) - len(new)
    )
    stages["pca"].update(done=False)
    for name in ("embed", "space", "elbow", "cluster", "report"):
        stages.pop(name, None)
    stages["update"] = {
        "generation": generation,
        "added": len(change.added),
        "removed": len(change.removed),
        "changed": len(change.changed),
        "previous_k": int(km["centers"].shape[0]),
        "done": False,
    }
    state.save()  # the one write that makes the update official
    logger.info(
        "updating the run: %d added, %d removed, %d changed",
        len(change.added), len(change.removed), len(change.changed),
    )  # fmt: skip
    return change


def previous_centers(out_dir: Path, state: RunState, k: int) -> np.ndarray | None:
    """The centres to warm-start k-means from during an update (same k), else None."""
    update = state.stage("update")
    if not update or update.get("done") or not (out_dir / PREVIOUS_FILE).exists():
        return None
    arrays, _ = load_arrays(out_dir / PREVIOUS_FILE, required=("centers",))
    centers = arrays["centers"]
    return centers if centers.shape[0] == k else None


def compare_labels(
    out_dir: Path, state: RunState, names: Sequence[str], km: KMeansResult
) -> dict[str, Any]:
    """After an update: how many earlier images changed cluster, and the ARI of old vs new."""
    update = state.stage("update")
    if not update or not (out_dir / PREVIOUS_FILE).exists():
        return {}
    arrays, _ = load_arrays(out_dir / PREVIOUS_FILE, required=("names", "labels"))
    before = {bytes(n): int(c) for n, c in zip(arrays["names"], arrays["labels"])}
    old, new = [], []
    for i, name in enumerate(names):
        c = before.get(os.fsencode(name))
        if c is not None:
            old.append(c)
            new.append(int(km.labels[i]))
    moved = int(sum(a != b for a, b in zip(old, new)))
    ari = float(adjusted_rand_score(old, new)) if old else float("nan")
    stats = {
        **update,
        "earlier_images": len(old),
        "changed_cluster": moved,
        "ari_vs_before": ari,
        "done": True,
    }
    state.update("update", **stats)
    return stats
