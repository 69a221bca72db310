"""Decode one image file into a fixed-size, letterboxed grey uint8 array in bounded memory.

The header is read first (:mod:`stream_cluster.images.headers`) and the decode's modelled cost is
checked against a cap (:mod:`stream_cluster.images.decode_memory`) before any pixel is decoded.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import pyvips

from stream_cluster.errors import ConfigError, DecodeError
from stream_cluster.images.decode_memory import (
    DECODE_MEMORY_CAP,
    decode_cost_bound,
    decode_worker_bytes,
    estimate_decode_bytes,
    jpeg_shrink,
    stream_plan,
)
from stream_cluster.images.geometry import letterbox, orient, to_cv_channels
from stream_cluster.images.headers import (
    KIND_NAMES,
    TRANSPOSED,
    Header,
    init_libraries,
    open_regular,
    png_plain_header,
    read_header,
    sniff,
    uses_opencv,
    vips_load,
    vips_message,
)

# decode_cost_bound and decode_worker_bytes live in decode_memory; re-exported here because
# callers have always found them next to decode_image.
__all__ = [
    "DECODE_MEMORY_CAP",
    "DEFAULT_MAX_PIXELS",
    "decode_cost_bound",
    "DecodeChunk",
    "DecodeTask",
    "decode_image",
    "decode_many",
    "decode_worker_bytes",
]

logger = logging.getLogger(__name__)

#: Pixels are stored as uint8 and fitted as float32 in 0..1.
PIXEL_SCALE = np.float32(1.0 / 255.0)
#: Default refusal threshold for the pixel count an image header claims.
DEFAULT_MAX_PIXELS = 1_000_000_000
_MAX_SIDE = 1 << 20


def _fmt_pixels(n: int) -> str:
    return f"{n / 1e9:.1f} Gpx" if n >= 100_000_000 else f"{n / 1e6:.1f} Mpx"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{math.ceil(n / 2**20)} MiB"


def _decode_cv2(fd: int, size: int, kind: str) -> np.ndarray | None:
    """Decode the whole file with OpenCV; None if OpenCV cannot."""
    # pread, not read: libvips shares this descriptor's file offset after reading the header.
    data = bytearray()
    while len(data) < size:
        chunk = os.pread(fd, min(size - len(data), 1 << 22), len(data))
        if not chunk:
            break
        data += chunk
    try:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        logger.debug("OpenCV failed on a %s: %s", kind, exc)
        return None
    del data
    if arr is None or arr.size == 0:
        return None
    if arr.dtype == np.uint16:
        arr = np.right_shift(arr, 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        return None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


def _decode_vips(kind: str, fd: int, hdr: Header, width: int, height: int) -> np.ndarray:
    """Stream the image through libvips, box-shrinking to about twice the final size."""
    name = KIND_NAMES[kind]
    _, _, kx, ky = stream_plan(hdr, width, height)
    try:
        if kind == "jpeg" and jpeg_shrink(kx, ky) > 1:
            # libjpeg scales in the DCT domain: far less work and memory than a full decode.
            factor = jpeg_shrink(kx, ky)
            image = vips_load(kind, fd, shrink=factor)
            kx = max(1, kx // factor)
            ky = max(1, ky // factor)
        elif kind == "webp" and min(kx, ky) > 1:
            # libwebp's scaled decode never holds the full-size frame for lossy images.
            factor = min(kx, ky)
            image = vips_load(kind, fd, scale=1.0 / factor)
            kx = max(1, round(image.width / (hdr.width / kx)))
            ky = max(1, round(image.height / (hdr.height / ky)))
        else:
            image = hdr.image if hdr.image is not None else vips_load(kind, fd)
        if image.interpretation in ("cmyk", "lab", "labs", "lch", "cmc", "xyz", "yxy", "scrgb",
                                    "hsv"):
            image = image.colourspace("srgb")
        if image.format == "ushort":
            image = (image >> 8).cast("uchar")
        elif image.format != "uchar":
            raise DecodeError(
                f"unsupported pixel format in {name}: {image.format} samples "
                "(only 8- and 16-bit unsigned integers are supported)"
            )
        if image.bands > 4:
            image = image.extract_band(0, n=4)
        if kx > 1 or ky > 1:
            image = image.shrink(kx, ky)
        # pyvips squeezes unit axes (a 1 x 1 grey image comes back 0-d): restore them.
        arr = image.numpy().reshape(image.height, image.width, image.bands)
    except pyvips.Error as exc:
        raise DecodeError(f"truncated or corrupt {name}: {vips_message(exc)}") from None
    return to_cv_channels(arr)


def decode_image(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    memory_cap: int = DECODE_MEMORY_CAP,
) -> np.ndarray:
    """Decode one image file to a ``(height, width)`` grey uint8 array, as a viewer shows it.

    Alpha is composited over white, colour is turned into grey with BT.601 weights (OpenCV's
    ``COLOR_BGR2GRAY``), 16-bit samples are reduced by ``>> 8``, the EXIF orientation is applied,
    and the picture is letterboxed: aspect kept, resized to fit (``INTER_AREA`` when shrinking,
    ``INTER_CUBIC`` when enlarging), centred on white. For images up to
    ``headers.CV2_MAX_PIXELS`` the result is bit-identical to
    ``/work/shared/datasets/prepare_clipart.py``. Animated GIF and WebP give their first frame,
    multi-page TIFF its first page. The file content decides the format (PNG, JPEG, GIF, BMP,
    TIFF, WebP), not the extension.

    Parameters
    ----------
    path : str or os.PathLike
        File to read (non-UTF-8 names as surrogate-escaped str are fine).
    width, height : int
        Size of the output array (columns, rows), each >= 1.
    max_pixels : int, default=1_000_000_000
        Refuse images whose header claims more pixels than this, before decoding anything.
    memory_cap : int, default=DECODE_MEMORY_CAP
        Refuse images whose modelled decode cost is above this many bytes (the planner lowers
        it to the folder's largest :func:`decode_cost_bound` when it sizes workers by that).

    Returns
    -------
    numpy.ndarray
        ``(height, width)`` uint8, white (255) where there is no picture.

    Raises
    ------
    DecodeError
        The file cannot be used; ``reason`` says why (empty, truncated, not an image,
        decompression bomb, too large for the memory cap, permission denied, ...).
    ConfigError
        ``width``, ``height`` or ``max_pixels`` is out of range.

    Notes
    -----
    Memory: the header is read first (libvips opens files lazily) and the modelled peak cost of
    the decode is checked against ``DECODE_MEMORY_CAP`` before any pixel is decoded. Small images
    are decoded whole by OpenCV (a few MB); big ones are streamed by libvips, which keeps about
    1,300 input rows resident and box-shrinks them to about twice the output size, so a
    20,990 x 29,700 RGBA PNG needs ~100 MB instead of the 2.5 GB of a whole decode.
    ``decode_worker_bytes`` gives the bound for a worker process. The function sets libvips to
    one thread with no operation cache, silences OpenCV's log, and is deterministic.
    """
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be an int. Got {value!r} instead.")
        if not 1 <= value <= 65_535:
            raise ConfigError(f"{name} must be in the range [1, 65535]. Got {value} instead.")
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)) or (
        max_pixels < 1
    ):
        raise ConfigError(f"max_pixels must be an int >= 1. Got {max_pixels!r} instead.")
    if isinstance(memory_cap, bool) or not isinstance(memory_cap, (int, np.integer)) or (
        memory_cap < 1
    ):
        raise ConfigError(f"memory_cap must be an int >= 1. Got {memory_cap!r} instead.")
    width, height = int(width), int(height)
    init_libraries()
    fd = open_regular(path)
    hdr: Header | None = None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise DecodeError("empty file (0 bytes)")
        try:
            head = os.pread(fd, 64, 0)
        except OSError as exc:
            raise DecodeError(f"read error: {exc.strerror or exc}") from None
        suffix = os.path.splitext(os.fsdecode(path))[1]
        kind = sniff(head, suffix)
        name = KIND_NAMES[kind]
        hdr = (png_plain_header(fd, head, size) if kind == "png" else None) or read_header(
            kind, fd, head, size
        )
        pixels = hdr.width * hdr.height
        if pixels > max_pixels:
            raise DecodeError(
                f"decompression bomb: header claims {hdr.width} x {hdr.height} = "
                f"{_fmt_pixels(pixels)} > limit {_fmt_pixels(max_pixels)}"
            )
        if max(hdr.width, hdr.height) > _MAX_SIDE:
            raise DecodeError(
                f"image too large: {name} {hdr.width} x {hdr.height} has a side over "
                f"{_MAX_SIDE} pixels"
            )
        use_cv2 = uses_opencv(kind, pixels, size)
        cost, what = estimate_decode_bytes(kind, hdr, size, use_cv2, width, height)
        if cost > memory_cap:
            raise DecodeError(
                f"image too large to decode in bounded memory: {name} {hdr.width} x "
                f"{hdr.height} x {hdr.bands} bands ({what}) needs ~{_fmt_bytes(cost)} "
                f"> cap {_fmt_bytes(memory_cap)}"
            )
        arr = _decode_cv2(fd, size, kind) if use_cv2 else None
        if arr is not None:
            full = (arr.shape[1], arr.shape[0])
            if hdr.orientation in TRANSPOSED:
                full = full[::-1]
        elif kind == "bmp":
            raise DecodeError("truncated or corrupt BMP: OpenCV could not decode it")
        else:
            arr = _decode_vips(kind, fd, hdr, width, height)
            full = (hdr.width, hdr.height)
            if hdr.orientation in TRANSPOSED:
                full = full[::-1]
        hdr.image = None
        arr = orient(arr, hdr.orientation)
        return letterbox(arr, width, height, full)
    finally:
        if hdr is not None:
            hdr.image = None
        os.close(fd)


# Executor tasks decode in worker processes that import only this module's dependencies
# (numpy, OpenCV, pyvips): no h5py, scikit-learn or matplotlib in a worker's RSS.
DecodeChunk = Callable[[str, Sequence[str], int, int], tuple[np.ndarray, list[str | None]]]


def decode_many(
    root: str,
    rel_paths: Sequence[str],
    width: int,
    height: int,
    memory_cap: int = DECODE_MEMORY_CAP,
) -> tuple[np.ndarray, list[str | None]]:
    """Decode several files; returns stacked rows and, per file, None or the skip reason."""
    out = np.full((len(rel_paths), width * height), 255, dtype=np.uint8)
    reasons: list[str | None] = []
    for i, rel in enumerate(rel_paths):
        try:
            path = os.path.join(root, rel)
            out[i] = decode_image(path, width, height, memory_cap=memory_cap).reshape(-1)
            reasons.append(None)
        except DecodeError as exc:
            reasons.append(exc.reason)
        except MemoryError:
            reasons.append("out of memory while decoding")
        except Exception as exc:  # a decoder bug must not end the run: record and go on
            reasons.append(f"unexpected decoder error: {type(exc).__name__}: {exc}"[:300])
    return out, reasons


@dataclass(frozen=True)
class DecodeTask:
    """One executor task: decode a chunk of files under ``root`` (picklable by reference)."""

    decode_chunk: DecodeChunk
    root: str
    width: int
    height: int
    #: Bytes per returned row when the chunk adds features (0: ``width * height``).
    row_bytes: int = 0

    def __call__(self, files: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
        return self.decode_chunk(self.root, files, self.width, self.height)


def letterbox_array(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Turn an in-memory image into a ``(height, width)`` grey row as ``decode_image`` would.

    ``image`` is ``(h, w)`` grey, ``(h, w, 2)`` grey + alpha, or ``(h, w, 3|4)`` in RGB(A)
    order (as PIL, imageio and matplotlib give them); uint8, or uint16 reduced by ``>> 8``.
    An array already of the output size and grey is returned as is.

    Raises
    ------
    ConfigError
        For any other shape or dtype.
    """
    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = np.right_shift(arr, 8).astype(np.uint8)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1 or (
        arr.ndim == 3 and arr.shape[2] not in (1, 2, 3, 4)
    ):
        raise ConfigError(
            f"An image array must be uint8 or uint16 of shape (h, w), (h, w, 2), (h, w, 3) or "
            f"(h, w, 4). Got {arr.dtype} {arr.shape} instead."
        )
    if arr.shape == (height, width):
        return np.ascontiguousarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    cv = to_cv_channels(arr if arr.shape[2] != 1 else arr[:, :, 0])
    return letterbox(cv, int(width), int(height), (arr.shape[1], arr.shape[0]))
