"""The run folder: what a run writes, preparing it, and refusing to mix incompatible work.

Every check here runs before heavy work starts, so a wrong folder, changed settings, a changed
input folder or too little disk space is reported at once, with what to do about it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from stream_cluster.config import RunConfig, format_bytes
from stream_cluster.errors import (
    CheckpointMismatchError,
    ConfigError,
    CorruptSegmentError,
    DiskFullError,
    InputError,
)
from stream_cluster.stages.base import same_key
from stream_cluster.storage.checkpoint import RunState
from stream_cluster.storage.store import RowStore

__all__ = [
    "RUN_FILES",
    "check_counts",
    "check_decoded",
    "check_disk",
    "check_inputs",
    "check_settings",
    "discard_partials",
    "prepare_out_dir",
    "repair",
]

logger = logging.getLogger(__name__)

#: Files and folders a run creates; ``fresh=True`` removes only these.
RUN_FILES = (
    "state.json",
    "files.json",
    "files-sig.json",
    "order.json",
    "previous.h5",
    "assigned.csv",
    "assigned-skipped.csv",
    "pixels",
    "features",
    "pca-checkpoint.h5",
    "pca.h5",
    "kmeans.h5",
    "model.h5",
    "labels.csv",
    "skipped.csv",
    "run.json",
    "elbow.png",
    "variance.png",
    "montages",
    "thumbs",
    "clusters",
    "means",
    "sizes.png",
    "index.html",
    "memory.csv",
    "memory.png",
    "decode.log",
)


def prepare_out_dir(config: RunConfig, fresh: bool) -> None:
    """Create the run folder (or check it is writable); with ``fresh``, delete a run's files."""
    out = config.out_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except PermissionError:
        raise ConfigError(
            f"Cannot write to the output folder {out} (permission denied). "
            f"Choose a writable folder with --out."
        ) from None
    except FileExistsError:
        raise ConfigError(f"--out {out} exists and is not a folder. Give a folder path.") from None
    except OSError as exc:
        raise ConfigError(f"Cannot use the output folder {out}: {exc.strerror or exc}.") from None
    if fresh:
        for name in RUN_FILES:
            p = out / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            parts.append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return "; ".join(parts)


def check_settings(state: RunState, config: RunConfig) -> None:
    """Refuse to mix expensive stages made with other settings; reset cheap ones."""
    for stage in ("ingest", "pca"):
        rec = state.stage(stage)
        if rec and not same_key(rec.get("key"), config.stage_key(stage)):
            raise CheckpointMismatchError(
                f"The run folder {config.out_dir} was made with other {stage} settings "
                f"({_differences(rec.get('key') or {}, config.stage_key(stage))}). Rerun with "
                f"--fresh to discard it and start over, or give another --out folder."
            )
    later = ["space", "elbow", "cluster", "report"]
    for i, stage in enumerate(later[:-1]):
        rec = state.stage(stage)
        if rec and not same_key(rec.get("key"), config.stage_key(stage)):
            logger.info("settings for %s changed; it will run again", stage)
            state.reset(later[i:] if stage == "space" else [stage, "report"])


def check_inputs(state: RunState, out: Path, files: list[str], digest: str) -> None:
    """Refuse a run folder made from other input files; say what was added or removed."""
    rec = state.stage("ingest")
    if not rec or rec.get("files_digest") == digest:
        return
    old: list[str] = []
    try:
        old = json.loads((out / "files.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    added = sorted(set(files) - set(old))
    removed = sorted(set(old) - set(files))
    changed = "" if (added or removed) else " some files were modified (size or time)"
    detail = ", ".join(
        x
        for x in (
            f"{len(added)} added (e.g. {added[0]!r})" if added else "",
            f"{len(removed)} removed (e.g. {removed[0]!r})" if removed else "",
        )
        if x
    )
    raise CheckpointMismatchError(
        f"The input folder changed since the run folder {out} was made: {detail}{changed}. "
        f"Rerun with --update to grow the run with the new files (the PCA continues, k-means "
        f"starts from the previous centres), with --fresh to start over on the current files, or "
        f"give another --out folder."
    )


def check_disk(out: Path, need: int) -> None:
    """Fail before starting when the run folder's disk cannot hold ``need`` more bytes."""
    free = shutil.disk_usage(out).free
    if free < need:
        raise DiskFullError(
            f"The output folder {out} has {format_bytes(free)} free but this run needs about "
            f"{format_bytes(need)}. Free space or choose another --out, then rerun."
        )


def check_counts(config: RunConfig, n_files: int) -> None:
    """Refuse, before any decoding, a folder with no images or too few for the settings."""
    if not n_files:
        raise InputError(
            f"No images found in {config.input_dir} (looked recursively for .png .jpg .jpeg "
            f".bmp .tif .tiff .webp .gif; hidden files are ignored). Point to a folder of images."
        )
    if n_files < config.n_components:
        raise InputError(
            f"{config.input_dir} has {n_files} images but --components is "
            f"{config.n_components}: PCA needs at least as many images as components. Use "
            f"--components {n_files} or fewer, or add images."
        )
    if config.k is not None and config.k > n_files:
        raise InputError(
            f"--k {config.k} is larger than the number of images ({n_files}). Use a smaller --k."
        )


def check_decoded(
    config: RunConfig, n: int, n_files: int, skipped: list[tuple[str, str]]
) -> None:
    """Stop when too few images decoded for the PCA, or any was skipped under ``--strict``."""
    out = config.out_dir
    if n < config.n_components:
        raise InputError(
            f"Only {n} of {n_files} images could be decoded ({len(skipped)} skipped, "
            f"see {out / 'skipped.csv'}), fewer than --components {config.n_components}. "
            f"Use --components {max(n, 1)} or fewer."
        )
    if config.strict and skipped:
        raise InputError(
            f"--strict: {len(skipped)} image(s) could not be used, e.g. "
            f"{skipped[0][0]!r}: {skipped[0][1]}. See {out / 'skipped.csv'}."
        )


def discard_partials(out: Path) -> None:
    """Delete torn ``*.partial`` files of the run folder (call only while holding the lock)."""
    for folder in (out, out / "pixels", out / "features", out / "montages"):
        for partial in folder.glob("*.partial"):
            partial.unlink(missing_ok=True)


def repair(config: RunConfig, exc: CorruptSegmentError) -> bool:
    """Rebuild a corrupt pixel segment from its images, or drop corrupt features to re-embed."""
    out, path = config.out_dir, Path(str(exc.segment))
    if path.parent == out / "pixels":
        from stream_cluster.stages.ingest import (
            repair_segment,  # imports the decoders: only when needed
        )

        pixels = RowStore(out / "pixels", config.n_features, np.uint8, config.store_compression)
        n = repair_segment(pixels, exc.index, config.input_dir, config.width, config.height)
        logger.warning("%s was corrupt; re-ingested its %d images from the source files", path, n)
        return True
    if path.parent == out / "descriptors":  # --features rows: computed again from the pixels
        from stream_cluster.images.features import parse_features

        # as many threads as the run's own extractor (with_features): --workers, or every CPU
        extractor = parse_features(config.features, threads=config.workers or os.cpu_count() or 1)
        w, h = config.width, config.height
        pixels = RowStore(out / "pixels", config.n_features, np.uint8, config.store_compression)
        rows_of = RowStore(out / "descriptors", extractor.dim(w, h), np.float32)
        lo, hi = pixels.segment_rows(exc.index)  # the two stores' segments hold the same rows
        feats = extractor.transform(pixels.read(lo, hi), w, h)
        rows_of.replace_segment(exc.index, feats, pixels.segment_names(exc.index))
        logger.warning("%s was corrupt; computed its features again from the pixels", path)
        return True
    if path.parent == out / "features":
        logger.warning("%s was corrupt; the features are computed again", path)
        RunState(out / "state.json").reset(["embed", "space", "elbow", "cluster", "report"])
        return True
    return False
