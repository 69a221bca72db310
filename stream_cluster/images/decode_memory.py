"""The memory model of decoding: what one image costs to decode, and what a worker needs.

The planner sizes decode workers with :func:`decode_worker_bytes`; :func:`decode_cost_bound`
bounds a file's cost from its header alone, so a whole folder can be sized before decoding;
``decode_image`` refuses a file whose :func:`estimate_decode_bytes` is over its cap.
"""

from __future__ import annotations

import os

import numpy as np

from stream_cluster.errors import ConfigError, DecodeError
from stream_cluster.images.headers import (
    TRANSPOSED,
    Header,
    init_libraries,
    jpeg_bound_header,
    open_regular,
    png_bound_header,
    read_header,
    sniff,
    uses_opencv,
)

__all__ = [
    "DECODE_MEMORY_CAP",
    "decode_cost_bound",
    "decode_worker_bytes",
    "estimate_decode_bytes",
    "jpeg_shrink",
    "letterbox_geometry",
    "stream_plan",
]

#: Modelled peak memory (bytes above an idle worker) that one decode may use. Images whose
#: modelled cost is higher are refused with a reason instead of being decoded.
DECODE_MEMORY_CAP = 256 * 2**20


# Memory model (bytes), from peak RSS (VmHWM) of fresh workers (see tests/test_decode.py).
_CV2_OVERHEAD = 16 * 2**20
_STREAM_OVERHEAD = 48 * 2**20
# libvips' sequential line cache plus the shrink's input window: at most ~1,300 input rows were
# resident in measurements over widths 5,000..200,000 and shrink factors 6..700; 25% margin.
_STREAM_ROWS = 1600
# The streamed path keeps an intermediate at least this many times the final size, then lets
# OpenCV's INTER_AREA finish, so the result stays close to the whole-image path.
_INTERMEDIATE_FACTOR = 2
# Tail (resize, composite, grey, canvas) per output pixel, with margin.
_TAIL_BYTES_PER_OUTPUT_PIXEL = 96

def letterbox_geometry(width: int, height: int, src_w: int, src_h: int) -> tuple[float, int, int]:
    """Letterbox geometry exactly as prepare_clipart.py computes it."""
    scale = min(width / src_w, height / src_h)
    return scale, max(1, round(src_w * scale)), max(1, round(src_h * scale))


def stream_plan(hdr: Header, width: int, height: int) -> tuple[int, int, int, int]:
    """Return (new width, new height, box shrink x, box shrink y) in stored (unrotated) axes."""
    dw, dh = hdr.width, hdr.height
    if hdr.orientation in TRANSPOSED:
        dw, dh = dh, dw
    _, nw, nh = letterbox_geometry(width, height, dw, dh)
    if hdr.orientation in TRANSPOSED:
        nw, nh = nh, nw
    kx = max(1, hdr.width // (_INTERMEDIATE_FACTOR * nw))
    ky = max(1, hdr.height // (_INTERMEDIATE_FACTOR * nh))
    return nw, nh, kx, ky


def estimate_decode_bytes(kind: str, hdr: Header, file_size: int, use_cv2: bool, width: int,
              height: int) -> tuple[int, str]:
    """Return the modelled peak bytes of decoding this image and what dominates it."""
    w, h, pixels = hdr.width, hdr.height, hdr.width * hdr.height
    if use_cv2:
        decoded = pixels * 4 * hdr.bps
        shifted = pixels * 4 if hdr.bps > 1 else 0
        return _CV2_OVERHEAD + file_size + decoded + shifted, "decoded whole"
    _, _, kx, ky = stream_plan(hdr, width, height)
    row_bytes = w * hdr.bands * hdr.bps
    shrink_on_load = 1
    if kind == "jpeg":
        shrink_on_load = jpeg_shrink(kx, ky)
    inter = (w // kx + 1) * (h // ky + 1) * 4 * 3
    cost = _STREAM_OVERHEAD + _STREAM_ROWS * row_bytes // shrink_on_load + inter
    whole = 0
    what = "streamed"
    if kind == "png" and hdr.interlaced:
        whole, what = pixels * hdr.bands * hdr.bps, "interlaced, decoded whole"
    elif kind == "jpeg" and hdr.multiscan:
        whole, what = pixels * max(3, hdr.bands) * 2, "progressive, coefficients held whole"
    elif kind == "gif":
        whole, what = pixels * 4 * 2, "frame buffer"
    elif kind == "webp" and not hdr.lossy_webp:
        whole, what = pixels * 4, "lossless WebP, frame buffer"
    elif kind == "tiff":
        block = hdr.tiff_block if hdr.tiff_block else pixels
        # libtiff holds one compressed and one decoded strip or tile.
        whole = 2 * min(block, pixels) * hdr.bands * hdr.bps
        what = "TIFF strip/tile buffers" if hdr.tiff_block else "TIFF layout unknown, whole image"
    return cost + whole, what


def jpeg_shrink(kx: int, ky: int) -> int:
    k = min(kx, ky)
    return 8 if k >= 8 else 4 if k >= 4 else 2 if k >= 2 else 1


def decode_worker_bytes(width: int, height: int, memory_cap: int = DECODE_MEMORY_CAP) -> int:
    """Return the peak RSS a decode worker needs above an idle interpreter, in bytes.

    An idle interpreter is one with numpy, cv2 and pyvips imported. The bound covers the worst
    image ``decode_image`` accepts: ``memory_cap`` for the decode itself (larger images are
    refused before decoding) plus the resize/composite/canvas tail, which grows with the
    output size. Validated in tests/test_decode.py by measuring ru_maxrss of fresh worker
    processes decoding images at each path's limit and the largest openclipart file.

    Parameters
    ----------
    width, height : int
        Output size passed to ``decode_image``.
    memory_cap : int, default=DECODE_MEMORY_CAP
        The ``memory_cap`` passed to ``decode_image`` (e.g. a folder's largest
        :func:`decode_cost_bound`).

    Returns
    -------
    int
        Bytes.
    """
    for name, value in (("width", width), ("height", height), ("memory_cap", memory_cap)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be an int >= 1. Got {value!r} instead.")
    tail = _TAIL_BYTES_PER_OUTPUT_PIXEL * int(width) * int(height)
    # The streamed intermediate is up to (2 * factor)^2 output sizes, 4 channels, 3 copies.
    inter = (2 * _INTERMEDIATE_FACTOR) ** 2 * int(width) * int(height) * 4 * 3
    return int(memory_cap) + tail + inter

def decode_cost_bound(path: str | os.PathLike[str], width: int, height: int) -> int:
    """Return an upper bound of the decode cost ``decode_image`` will model for this file.

    Reads only the header (PNG and JPEG are parsed here without libvips, ~15 us a file; other
    formats through libvips' lazy open, ~0.3 ms), so a planner can size decode workers to a
    whole folder before decoding any of it. Details left unread are taken at their worst (both
    orientations, all bands, progressive JPEG); headers this parser does not follow get
    ``DECODE_MEMORY_CAP``. Files that ``decode_image`` refuses before decoding anything
    (unreadable, empty, not an image, corrupt header) cost 0.

    Returns
    -------
    int
        Bytes, at most ``DECODE_MEMORY_CAP``.
    """
    try:
        fd = open_regular(path)
    except DecodeError:
        return 0
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 64, 0) if size else b""
        if not head:
            return 0
        try:
            kind = sniff(head, "")
        except DecodeError:
            return 0
        if kind == "png":
            hdr = png_bound_header(head)
        elif kind == "jpeg":
            hdr = jpeg_bound_header(fd)
        else:
            init_libraries()
            try:
                hdr = read_header(kind, fd, head, size)  # libvips for GIF/TIFF/WebP (~0.3 ms)
            except DecodeError:
                return 0  # decode_image refuses it from the same header
            hdr.image = None
    except OSError:
        return DECODE_MEMORY_CAP
    finally:
        os.close(fd)
    if hdr is None or hdr.width < 1 or hdr.height < 1:
        return DECODE_MEMORY_CAP
    pixels = hdr.width * hdr.height
    use_cv2 = uses_opencv(kind, pixels, size)
    if kind == "jpeg" and not use_cv2:
        hdr.multiscan = True  # only a scan of the whole file could rule it out
    worst = 0
    for orientation in (1, 6):
        hdr.orientation = orientation
        worst = max(worst, estimate_decode_bytes(kind, hdr, size, use_cv2, width, height)[0])
    return min(worst, DECODE_MEMORY_CAP)


