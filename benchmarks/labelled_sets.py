"""Build the labelled image folders of the quality benchmark (label = an image's top folder).

Every set is written as 8-bit grey PNGs under ``OUT/<label>/<name>.png``, shaped like the seed
corpus: composited over white, converted to grey, letterboxed (aspect kept, white padding) to
WIDTH x HEIGHT. Images are never committed; these functions rebuild them on any machine.

Sets
----
``digits``
    scikit-learn's ``load_digits`` (1,797 images of 8x8, 10 classes, shipped inside the
    scikit-learn wheel, BSD-3; no download). Values 0..16 are ink, so they are inverted to dark
    ink on white (``255 - 255 * v / 16``, rounded) like the seed's catalogue cuts. At 8x8 they are
    written as they are; at any other size each digit is upscaled (bicubic) into the letterbox,
    e.g. ``--size 300x430`` gives a 300x300 digit centred in a 300x430 white frame.
``clipart``
    The prepared clip-art corpus (/work/data/clipart, 8,121 images, 22 category folders) built
    by ``/work/shared/datasets/prepare_clipart.py`` from Debian's ``openclipart-png``. Its
    folders are weak labels (a category such as "signs_and_symbols" holds very different
    pictures). Nothing is written: ``clipart`` only checks the folder and prints its counts.
``tuxpaint``
    Debian's ``tuxpaint-stamps-default`` (2022.06.04-1, GPL-2, "Copyright: 2002-2022 by Bill
    Kendrick"; ``apt-get update && apt-get install -y tuxpaint-stamps-default``), the stamps of
    the children's paint program Tux Paint: real drawn and photographed objects as PNGs (alpha)
    and SVGs in themed folders under /usr/share/tuxpaint/stamps. Label = the first folder below
    ``stamps/`` (animals, clothes, food, household, plants, seasonal, symbols, town, vehicles).
    Kept: every ``*.png`` and ``*.svg``; when a stamp ships both (83 stems), the PNG is used and
    the SVG dropped, so no picture is counted twice. Dropped: the ``*_mirror.png`` files (11
    pre-mirrored copies of another stamp, near-duplicates) and every top folder with fewer than
    ``--min-per-class`` (40) images after that: cartoon (6), hobbies (17), medical (6), military
    (11), naturalforces (3), people (30), space (23), sports (13), too small to form a class.
    Result: 9 classes, 847 images: animals 154, clothes 48, food 74, household 73, plants 40,
    seasonal 71, symbols 249 (letters, ASL hands, coins, money signs), town 80, vehicles 58.
    SVGs are rendered by libvips (pyvips) straight at the letterbox size. The labels are
    semantic themes, so some are visually mixed ("seasonal":
    Christmas trees, pumpkins, dreidels; "town": buildings and road signs).

Usage (from the repository root)::

    python -m benchmarks.labelled_sets digits /tmp/qsets/digits8 --size 8x8
    python -m benchmarks.labelled_sets digits /tmp/qsets/digits300 --size 300x430
    python -m benchmarks.labelled_sets clipart
    python -m benchmarks.labelled_sets tuxpaint /tmp/qsets/tuxpaint --size 300x430

Idempotent: an image already written is kept, so an interrupted build can be started again.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

__all__ = [
    "CLIPART",
    "TUXPAINT",
    "build_digits",
    "check_clipart",
    "build_tuxpaint",
    "label_counts",
    "letterbox",
    "tuxpaint_sources",
]

CLIPART = Path("/work/data/clipart")
TUXPAINT = Path("/usr/share/tuxpaint/stamps")


def parse_size(text: str) -> tuple[int, int]:
    """``"300x430"`` -> (width, height)."""
    w, _, h = text.lower().partition("x")
    if not (w.isdigit() and h.isdigit()) or int(w) < 1 or int(h) < 1:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, e.g. 300x430. Got {text!r}")
    return int(w), int(h)


def letterbox(grey: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a 2-D uint8 image keeping its aspect and centre it on a white WIDTH x HEIGHT canvas.

    The same rule as the clip-art corpus (shared/datasets/prepare_clipart.py): area averaging
    when shrinking, bicubic when enlarging, white padding.
    """
    h, w = grey.shape
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if (nw, nh) != (w, h):
        interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
        grey = cv2.resize(grey, (nw, nh), interpolation=interp)
    canvas = np.full((height, width), 255, dtype=np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    canvas[y : y + nh, x : x + nw] = grey
    return canvas


def _over_white(img: np.ndarray, rgb_order: bool) -> np.ndarray:
    """Composite an (h, w[, c]) uint8 image with optional alpha over white and make it grey."""
    if img.ndim == 2:
        return img
    if img.shape[2] in (2, 4):
        alpha = img[:, :, -1:].astype(np.float32) / 255.0
        col = img[:, :, :-1].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        img = np.clip(np.rint(col), 0, 255).astype(np.uint8)
    if img.shape[2] == 1:
        return img[:, :, 0]
    code = cv2.COLOR_RGB2GRAY if rgb_order else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(np.ascontiguousarray(img[:, :, :3]), code)


def _write_png(dst: Path, img: np.ndarray) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.stem + ".tmp.png")
    if not cv2.imwrite(str(tmp), img):
        raise OSError(f"could not write {tmp}")
    os.replace(tmp, dst)


def build_digits(out: Path, width: int = 8, height: int = 8) -> int:
    """Write scikit-learn's 1,797 digits as dark-on-white PNGs ``out/<digit>/<index>.png``.

    Returns the number of images in the folder afterwards.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    grey = np.rint(255.0 - d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    for i, (img, lab) in enumerate(zip(grey, d.target, strict=True)):
        dst = out / str(int(lab)) / f"{i:04d}.png"
        if not dst.exists():
            _write_png(dst, letterbox(img, width, height))
    return len(grey)


def check_clipart(root: Path = CLIPART) -> Counter[str]:
    """Count the prepared clip-art per category folder; raises if the folder is missing."""
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} not found: build it with /work/shared/datasets/prepare_clipart.py {root}"
        )
    return label_counts(root)


def label_counts(root: Path) -> Counter[str]:
    """Images (``*.png``) per top folder of ``root``."""
    return Counter(p.relative_to(root).parts[0] for p in root.rglob("*.png") if p.is_file())


def tuxpaint_sources(
    root: Path = TUXPAINT, min_per_class: int = 40
) -> tuple[list[tuple[Path, str]], dict[str, int]]:
    """The stamps kept as (source file, label) sorted by path, and the classes dropped with sizes.

    See the module docstring for the rules (PNG preferred over a same-stem SVG, no mirrors,
    classes below ``min_per_class`` dropped).
    """
    files = sorted(p for p in root.rglob("*") if p.suffix in (".png", ".svg") and p.is_file())
    pngs = {p.with_suffix("") for p in files if p.suffix == ".png"}
    kept = [
        p
        for p in files
        if not p.stem.endswith("_mirror") and not (p.suffix == ".svg" and p.with_suffix("") in pngs)
    ]
    labelled = [
        (p, p.relative_to(root).parts[0]) for p in kept if len(p.relative_to(root).parts) > 1
    ]
    sizes = Counter(lab for _, lab in labelled)
    dropped = {lab: n for lab, n in sorted(sizes.items()) if n < min_per_class}
    return [(p, lab) for p, lab in labelled if lab not in dropped], dropped


def _render(job: tuple[Path, Path, int, int]) -> int:
    src, dst, width, height = job
    if dst.exists():
        return 0
    if src.suffix == ".svg":
        import pyvips

        # thumbnail() renders the vector straight at the size that fits the box.
        im = pyvips.Image.thumbnail(str(src), width, height=height)
        arr = np.ndarray(
            buffer=im.write_to_memory(), dtype=np.uint8, shape=(im.height, im.width, im.bands)
        )
        grey = _over_white(arr, rgb_order=True)
    else:
        raw = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
        if raw is None:
            return 1
        if raw.dtype == np.uint16:
            raw = (raw.astype(np.uint16) >> 8).astype(np.uint8)
        grey = _over_white(raw, rgb_order=False)
    _write_png(dst, letterbox(grey, width, height))
    return 0


def _dest_name(src: Path, root: Path) -> str:
    # Flatten the sub-folders into the name so stamps with the same stem stay apart.
    rel = src.relative_to(root).with_suffix("")
    return "__".join(rel.parts[1:]) + ".png"


def build_tuxpaint(
    out: Path,
    width: int = 300,
    height: int = 430,
    root: Path = TUXPAINT,
    min_per_class: int = 40,
    workers: int = 2,
) -> tuple[int, int, dict[str, int]]:
    """Render the kept Tux Paint stamps into ``out/<label>/``.

    Returns (written or already present, unreadable, dropped classes with their sizes).
    """
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root} not found: run 'apt-get install -y tuxpaint-stamps-default' first"
        )
    sources, dropped = tuxpaint_sources(root, min_per_class)
    jobs = [(src, out / lab / _dest_name(src, root), width, height) for src, lab in sources]
    with ProcessPoolExecutor(workers) as pool:
        failed = sum(pool.map(_render, jobs, chunksize=16))
    return len(jobs) - failed, failed, dropped


def _print_counts(counts: Iterable[tuple[str, int]]) -> None:
    items = list(counts)
    print(f"{sum(n for _, n in items)} images in {len(items)} classes:")
    print("  " + ", ".join(f"{lab} {n}" for lab, n in items))


def main(argv: list[str] | None = None) -> int:
    """Command line: ``digits OUT``, ``clipart``, ``tuxpaint OUT`` (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="set", required=True)
    p = sub.add_parser("digits", help="scikit-learn digits as PNGs")
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=parse_size, default=(8, 8))
    p = sub.add_parser("clipart", help="check the prepared clip-art folder")
    p.add_argument("root", type=Path, nargs="?", default=CLIPART)
    p = sub.add_parser("tuxpaint", help="Debian tuxpaint-stamps-default, one class per theme")
    p.add_argument("out", type=Path)
    p.add_argument("--size", type=parse_size, default=(300, 430))
    p.add_argument("--src", type=Path, default=TUXPAINT)
    p.add_argument("--min-per-class", type=int, default=40)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args(argv)
    try:
        if a.set == "digits":
            build_digits(a.out, *a.size)
            _print_counts(sorted(label_counts(a.out).items()))
        elif a.set == "clipart":
            _print_counts(sorted(check_clipart(a.root).items()))
        else:
            width, height = a.size
            done, failed, dropped = build_tuxpaint(
                a.out, width, height, root=a.src, min_per_class=a.min_per_class, workers=a.workers
            )
            print(f"dropped classes (< {a.min_per_class} images): {dropped}; unreadable: {failed}")
            _print_counts(sorted(label_counts(a.out).items()))
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
