"""Build a folder of hostile and odd image files for scan, decode and ingest tests."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pyvips
from PIL import Image

__all__ = [
    "IGNORED",
    "OK",
    "call_unprivileged",
    "SCAN_REASONS",
    "gradient_rgb",
    "make_hostile_folder",
    "png_chunk",
    "running_as_root",
]

#: Expected outcome of a file that scans and decodes fine.
OK = "ok"
#: Expected outcome of a file that scan leaves out silently (hidden, not an image suffix).
IGNORED = "ignored"
#: Substrings of expected outcomes that come from scan (the others come from decode).
SCAN_REASONS = (
    "broken symlink",
    "symlink loop",
    "outside root",
    "not a regular file",
    "already scanned",
    "permission denied",
)

# 50 folder levels: deeper than anything a naive recursive walk should trip on, still short of
# PATH_MAX (4096 bytes) under a pytest tmp_path.
DEEP_LEVELS = 50


def running_as_root() -> bool:
    """Return True when file permissions do not apply to this process (root, CAP_DAC_OVERRIDE).

    Tests that chmod a file to 000 must check this: root reads such files anyway.
    """
    return hasattr(os, "geteuid") and os.geteuid() == 0


def call_unprivileged(func: Callable[..., object], *args: object) -> object:
    """Run ``func(*args)`` in a forked child that dropped root to 'nobody'; return its result.

    Lets permission tests run for real when the suite runs as root. The result must be
    JSON-serialisable; an exception in the child is re-raised here as RuntimeError. Paths that
    ``func`` touches must be reachable by 'nobody' (pytest's tmp_path is not: it is 0700).
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            payload = {"ok": func(*args)}
        except BaseException as exc:  # report anything to the parent
            payload = {"error": f"{type(exc).__name__}: {exc}"}
            code = 1
        with os.fdopen(write_fd, "w") as out:
            json.dump(payload, out)
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as inp:
        text = inp.read()
    os.waitpid(pid, 0)
    payload = json.loads(text)
    if "error" in payload:
        raise RuntimeError(payload["error"])
    return payload["ok"]


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    """Return one PNG chunk (length, type, payload, CRC-32 over type and payload)."""
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _bomb_png(width: int, height: int) -> bytes:
    """Return a tiny valid-looking RGBA PNG whose IHDR claims ``width`` x ``height`` pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    # One compressed row of zeros: enough for a decoder to start, far too little to finish.
    idat = zlib.compress(b"\x00" * (1 + 4 * 64))
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def gradient_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Return a deterministic (height, width, 3) uint8 RGB picture with structure in both axes.

    Smooth gradients plus a few blocks, so that resizing, rotation and cropping errors all show.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (255 * x / max(1, width - 1)).astype(np.uint8)
    img[..., 1] = (255 * y / max(1, height - 1)).astype(np.uint8)
    img[..., 2] = ((x // 8 + y // 8) % 2 * 200).astype(np.uint8)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        img[y0 : y0 + height // 5, x0 : x0 + width // 5] = rng.integers(0, 256, 3, dtype=np.uint8)
    return img


def _pil_bytes(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _write(root: Path, rel: str | bytes, data: bytes) -> None:
    path = os.path.join(os.fsencode(root), os.fsencode(rel))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def make_hostile_folder(root: Path) -> dict[str, str]:
    """Fill ``root`` with hostile and odd image files and return the expected outcome of each.

    Parameters
    ----------
    root : Path
        Folder to fill (created if missing). A sibling folder ``<root>-outside`` is created too,
        holding the target of the symlink that points outside ``root``.

    Returns
    -------
    dict[str, str]
        Path relative to ``root`` (posix, str; non-UTF-8 names use surrogateescape) -> expected
        outcome: ``OK`` ("ok": listed by scan and decoded), ``IGNORED`` ("ignored": silently
        left out by scan), or a substring of the skip reason. Reasons containing one of
        ``SCAN_REASONS`` are given by scan; the others by ``decode_image``. The chmod-000 file
        expects "permission denied" only when permissions apply (not under root), else "ok".
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    expected: dict[str, str] = {}
    rgb = gradient_rgb(64, 48)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    png = cv2.imencode(".png", bgr)[1].tobytes()
    jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()

    def add(rel: str, data: bytes, outcome: str) -> None:
        _write(root, rel, data)
        expected[rel] = outcome

    add("plain.png", png, OK)
    add("UPPER.PNG", png, OK)
    add("empty.png", b"", "empty file (0 bytes)")
    add("truncated.png", png[: len(png) // 2], "truncated or corrupt PNG")
    add("truncated.jpg", jpg[: len(jpg) // 2], "truncated or corrupt JPEG")
    add("text.png", b"hello, I am not an image\n" * 4, "not an image")
    add("bomb.png", _bomb_png(100_000, 100_000), "decompression bomb")

    ramp16 = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    add("sixteen_bit.png", cv2.imencode(".png", ramp16)[1].tobytes(), OK)

    la = Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]]), mode="LA")
    add("grey_alpha.png", _pil_bytes(la, "PNG"), OK)

    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    add("palette_trns.png", _pil_bytes(pal, "PNG", transparency=0), OK)

    add("cmyk.jpg", _pil_bytes(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), OK)

    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    add("exif_rot6.jpg", _pil_bytes(Image.fromarray(rgb), "JPEG", quality=95, exif=exif), OK)

    frames = [Image.fromarray(gradient_rgb(64, 48, seed=s)) for s in range(3)]
    add(
        "animated.gif",
        _pil_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        OK,
    )
    add(
        "multipage.tif",
        _pil_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        OK,
    )
    add("exif_rot6.png", _pil_bytes(Image.fromarray(rgb), "PNG", exif=exif), OK)
    interlaced = pyvips.Image.new_from_array(rgb).copy(interpretation="srgb")
    add("interlaced.png", interlaced.pngsave_buffer(interlace=True), OK)
    add("photo.webp", _pil_bytes(Image.fromarray(rgb), "WEBP", quality=90), OK)
    add("bitmap.bmp", cv2.imencode(".bmp", bgr)[1].tobytes(), OK)

    add("unreadable.png", png, OK if running_as_root() else "permission denied: cannot read file")
    os.chmod(root / "unreadable.png", 0)

    os.symlink(root / "does-not-exist.png", root / "broken_link.png")
    expected["broken_link.png"] = "broken symlink"
    (root / "loop").mkdir()
    add("loop/inner.png", png, OK)
    os.symlink("..", root / "loop" / "parent")
    expected["loop/parent"] = "symlink loop"
    _write(outside, "external.png", png)
    os.symlink(outside / "external.png", root / "external_link.png")
    expected["external_link.png"] = "outside root"
    os.symlink("plain.png", root / "internal_link.png")
    expected["internal_link.png"] = OK
    os.symlink("chain_b.png", root / "chain_a.png")
    os.symlink("chain_a.png", root / "chain_b.png")
    expected["chain_a.png"] = expected["chain_b.png"] = "symlink loop"
    os.symlink("loop", root / "alias_dir")
    expected["alias_dir"] = "already scanned"
    add(".store/kept.png", png, IGNORED)
    os.symlink(".store", root / "linked_dir")
    expected["linked_dir/kept.png"] = OK
    os.mkfifo(root / "pipe.png")
    expected["pipe.png"] = "not a regular file"
    _write(root, "locked_dir/inside.png", png)
    os.chmod(root / "locked_dir", 0)
    if running_as_root():
        expected["locked_dir/inside.png"] = OK
    else:
        expected["locked_dir"] = "permission denied: cannot list folder"

    add(".hidden.png", png, IGNORED)
    add(".hidden_dir/inside.png", png, IGNORED)
    add("notes.txt", b"not an image suffix\n", IGNORED)

    nonutf8 = b"caf\xe9.png"
    _write(root, nonutf8, png)
    expected[os.fsdecode(nonutf8)] = OK
    add("日本語の画像.png", png, OK)
    add("<img src=x onerror=alert(1)>.png", png, OK)
    add("$(touch pwned);'\".png", png, OK)
    deep = "/".join(f"d{i}" for i in range(DEEP_LEVELS)) + "/deep.png"
    add(deep, png, OK)
    dup = cv2.imencode(".png", gradient_rgb(40, 40, seed=7)[..., ::-1])[1].tobytes()
    add("dup_a.png", dup, OK)
    add("dup_b.png", dup, OK)
    return expected
