"""Decode one image file into a fixed-size, letterboxed grey uint8 array in bounded memory."""

from __future__ import annotations

import logging
import math
import os
import stat
import struct

import cv2
import numpy as np
import pyvips

from .errors import ConfigError, DecodeError

__all__ = [
    "DECODE_MEMORY_CAP",
    "DEFAULT_MAX_PIXELS",
    "decode_cost_bound",
    "decode_image",
    "decode_worker_bytes",
]

logger = logging.getLogger(__name__)

#: Default refusal threshold for the pixel count an image header claims.
DEFAULT_MAX_PIXELS = 1_000_000_000

#: Modelled peak memory (bytes above an idle worker) that one decode may use. Images whose
#: modelled cost is higher are refused with a reason instead of being decoded.
DECODE_MEMORY_CAP = 256 * 2**20

# PNG/JPEG up to this many pixels (and files up to this size) are decoded whole by OpenCV, as
# /work/shared/datasets/prepare_clipart.py does, so the result is bit-identical to it. Above,
# libvips streams and box-shrinks the image: bounded memory, and faster. Measured on 508 files
# of the openclipart corpus (300 x 430 output): OpenCV 2.6 vs 2.9 ms below 0.1 Mpx, 19 vs 22 ms
# at 0.6-1 Mpx, 25 vs 28 ms at 1-2 Mpx; libvips 43 vs 67 ms at 2-5 Mpx and 5x faster at 40 Mpx.
CV2_MAX_PIXELS = 2_000_000
CV2_MAX_FILE_BYTES = 32 * 2**20

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
_MAX_SIDE = 1 << 20

_KIND_NAMES = {
    "png": "PNG",
    "jpeg": "JPEG",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "webp": "WebP",
}
_VIPS_LOADERS = {
    "png": "pngload_source",
    "jpeg": "jpegload_source",
    "gif": "gifload_source",
    "tiff": "tiffload_source",
    "webp": "webpload_source",
}
_TRANSPOSED = frozenset({5, 6, 7, 8})
_SAMPLE_BYTES = {"uchar": 1, "char": 1, "ushort": 2, "short": 2, "uint": 4, "int": 4, "float": 4}

_initialised = False


def _init_libraries() -> None:
    """Make libvips and OpenCV single-threaded, cache-free and quiet (once per process).

    The caller runs one decode per worker process, so extra threads would only add memory.
    OpenCV's own log lines are silenced: every failure becomes a DecodeError with a reason.
    """
    global _initialised
    if _initialised:
        return
    pyvips.cache_set_max(0)
    pyvips.cache_set_max_mem(0)
    pyvips.concurrency_set(1)
    cv2.setNumThreads(1)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    _initialised = True


def _fmt_pixels(n: int) -> str:
    return f"{n / 1e9:.1f} Gpx" if n >= 100_000_000 else f"{n / 1e6:.1f} Mpx"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{math.ceil(n / 2**20)} MiB"


def _vips_message(exc: pyvips.Error) -> str:
    """Return the useful lines of a libvips error as one line."""
    text = f"{getattr(exc, 'message', '')}\n{getattr(exc, 'detail', '')}"
    keep = []
    for raw in text.splitlines():
        line = raw.strip()
        generic = line.startswith("unable to ") or line.endswith("load error") or not line
        if not generic and line not in keep:
            keep.append(line)
    return "; ".join(keep) or " ".join(str(exc).split())


def _open_regular(path: str | os.PathLike[str]) -> int:
    """Open ``path`` read-only and return its descriptor; refuse anything but a regular file.

    O_NONBLOCK keeps a FIFO named ``*.png`` from blocking the worker forever.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except PermissionError:
        raise DecodeError("permission denied") from None
    except FileNotFoundError:
        raise DecodeError("file not found (deleted or moved since the scan?)") from None
    except IsADirectoryError:
        raise DecodeError("is a folder, not a file") from None
    except OSError as exc:
        raise DecodeError(f"cannot open file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            if stat.S_ISDIR(st.st_mode):
                raise DecodeError("is a folder, not a file")
            raise DecodeError("not a regular file (FIFO, device or socket)")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sniff(head: bytes, suffix: str) -> str:
    """Return the image kind from the first bytes, or raise DecodeError saying what it is."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:2] == b"BM" and len(head) >= 26:
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    ext = f" despite {suffix} extension" if suffix else ""
    named = {b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive"}.get(head[:4])
    if named is None and head[4:8] == b"ftyp":
        named = "an HEIF/AVIF/MP4 file (not supported)"
    if named is not None:
        return _raise(f"not an image: file content is {named}{ext}")
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and all(c.isprintable() or c in "\t\r\n" for c in text):
        return _raise(f"not an image: file content is text{ext}")
    return _raise(f"not an image: unknown format (starts with {head[:8].hex(' ')}){ext}")


def _raise(reason: str) -> str:
    raise DecodeError(reason)


class _Header:
    """What the file header says, read without decoding pixels."""

    __slots__ = (
        "bands", "bps", "height", "image", "interlaced", "lossy_webp", "multiscan",
        "orientation", "tiff_block", "width",
    )

    def __init__(self) -> None:
        self.width = 0
        self.height = 0
        self.bands = 0
        self.bps = 1  # bytes per sample
        self.orientation = 1
        self.multiscan = False  # progressive JPEG
        self.interlaced = False  # Adam7 PNG
        self.lossy_webp = False  # simple-format lossy WebP (decoded row by row)
        self.tiff_block = 0  # pixels in one TIFF strip or tile, 0 if unknown
        self.image: pyvips.Image | None = None


def _bmp_header(head: bytes) -> _Header:
    hdr = _Header()
    try:
        dib = struct.unpack_from("<I", head, 14)[0]
        if dib == 12:
            hdr.width, h, _, bpp = struct.unpack_from("<HHHH", head, 18)
        else:
            hdr.width, h, _, bpp = struct.unpack_from("<iiHH", head, 18)
    except struct.error:
        raise DecodeError("truncated or corrupt BMP: header too short") from None
    hdr.height = abs(h)
    hdr.bands = 4 if bpp == 32 else 3
    if hdr.width <= 0 or hdr.height <= 0:
        raise DecodeError(f"truncated or corrupt BMP: header claims {hdr.width} x {h} pixels")
    return hdr


def _vips_load(kind: str, fd: int, **options: object) -> pyvips.Image:
    loader = getattr(pyvips.Image, _VIPS_LOADERS[kind])
    source = pyvips.Source.new_from_descriptor(fd)
    return loader(source, access="sequential", fail_on="truncated", **options)


def _vips_header(kind: str, fd: int) -> _Header:
    try:
        image = _vips_load(kind, fd)
    except pyvips.Error as exc:
        name = _KIND_NAMES[kind]
        raise DecodeError(f"truncated or corrupt {name}: {_vips_message(exc)}") from None
    hdr = _Header()
    hdr.image = image
    hdr.width, hdr.height, hdr.bands = image.width, image.height, image.bands
    hdr.bps = _SAMPLE_BYTES.get(image.format, 8)
    fields = image.get_fields()
    if "orientation" in fields:
        value = int(image.get("orientation"))
        hdr.orientation = value if 1 <= value <= 8 else 1
    if "jpeg-multiscan" in fields:
        hdr.multiscan = bool(image.get("jpeg-multiscan"))
    return hdr


def _header(kind: str, fd: int, head: bytes, size: int) -> _Header:
    """Everything the memory model needs from the header (libvips opens lazily: no pixels)."""
    hdr = _bmp_header(head) if kind == "bmp" else _vips_header(kind, fd)
    if kind == "png" and len(head) >= 29:
        hdr.interlaced = head[28] == 1
    elif kind == "webp":
        hdr.lossy_webp = _webp_is_lossy(fd, size)
    elif kind == "tiff":
        hdr.tiff_block = _tiff_block_pixels(fd, head, size)
    return hdr


def _webp_is_lossy(fd: int, size: int) -> bool:
    """Whether the (first) WebP bitstream is lossy VP8, which libwebp can decode scaled by rows.

    Walks the RIFF chunks (VP8X files put ICC/EXIF/ALPH chunks first). Lossless VP8L and
    animations are reported as not lossy, so the memory model assumes a full frame buffer.
    """
    offset = 12
    for _ in range(16):
        try:
            chunk = os.pread(fd, 8, offset)
        except OSError:
            return False
        if len(chunk) < 8:
            return False
        fourcc, length = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if fourcc == b"VP8 ":
            return True
        if fourcc in (b"VP8L", b"ANIM", b"ANMF"):
            return False
        offset += 8 + length + (length & 1)
        if offset >= size:
            return False
    return False


def _tiff_block_pixels(fd: int, head: bytes, size: int) -> int:
    """Return the pixels libtiff/libvips hold for one strip or one row of tiles, 0 if unknown.

    Reads only the first IFD (classic TIFF; BigTIFF returns 0, i.e. assume the worst). For tiled
    files libvips caches a whole row of tiles, hence width x tile length.
    """
    order = "<" if head[:2] == b"II" else ">"
    if head[2:4] not in (b"*\x00", b"\x00*"):
        return 0
    try:
        (ifd,) = struct.unpack(order + "I", head[4:8])
        if not 8 <= ifd < size:
            return 0
        (count,) = struct.unpack(order + "H", os.pread(fd, 2, ifd))
        table = os.pread(fd, 12 * min(count, 512), ifd + 2)
    except (OSError, struct.error):
        return 0
    tags: dict[int, int] = {}
    for i in range(len(table) // 12):
        tag, typ, n = struct.unpack_from(order + "HHI", table, 12 * i)
        if typ == 3 and n == 1:  # SHORT
            tags[tag] = struct.unpack_from(order + "H", table, 12 * i + 8)[0]
        elif typ == 4 and n == 1:  # LONG
            tags[tag] = struct.unpack_from(order + "I", table, 12 * i + 8)[0]
    width, length = tags.get(256, 0), tags.get(257, 0)
    if 322 in tags and 323 in tags:
        tiles_across = -(-width // max(1, tags[322]))
        return tiles_across * tags[322] * tags[323]
    rows = min(tags.get(278, length), length)
    return width * rows


def _fit(width: int, height: int, src_w: int, src_h: int) -> tuple[float, int, int]:
    """Letterbox geometry exactly as prepare_clipart.py computes it."""
    scale = min(width / src_w, height / src_h)
    return scale, max(1, round(src_w * scale)), max(1, round(src_h * scale))


def _stream_plan(hdr: _Header, width: int, height: int) -> tuple[int, int, int, int]:
    """Return (new width, new height, box shrink x, box shrink y) in stored (unrotated) axes."""
    dw, dh = hdr.width, hdr.height
    if hdr.orientation in _TRANSPOSED:
        dw, dh = dh, dw
    _, nw, nh = _fit(width, height, dw, dh)
    if hdr.orientation in _TRANSPOSED:
        nw, nh = nh, nw
    kx = max(1, hdr.width // (_INTERMEDIATE_FACTOR * nw))
    ky = max(1, hdr.height // (_INTERMEDIATE_FACTOR * nh))
    return nw, nh, kx, ky


def _estimate(kind: str, hdr: _Header, file_size: int, use_cv2: bool, width: int,
              height: int) -> tuple[int, str]:
    """Return the modelled peak bytes of decoding this image and what dominates it."""
    w, h, pixels = hdr.width, hdr.height, hdr.width * hdr.height
    if use_cv2:
        decoded = pixels * 4 * hdr.bps
        shifted = pixels * 4 if hdr.bps > 1 else 0
        return _CV2_OVERHEAD + file_size + decoded + shifted, "decoded whole"
    _, _, kx, ky = _stream_plan(hdr, width, height)
    row_bytes = w * hdr.bands * hdr.bps
    shrink_on_load = 1
    if kind == "jpeg":
        shrink_on_load = _jpeg_shrink(kx, ky)
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


def _jpeg_shrink(kx: int, ky: int) -> int:
    k = min(kx, ky)
    return 8 if k >= 8 else 4 if k >= 4 else 2 if k >= 2 else 1


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) so the array looks as a viewer shows it."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:
        arr = arr.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        arr = arr.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        arr = arr.swapaxes(0, 1)[::-1]
    return np.ascontiguousarray(arr)


def _letterbox(im: np.ndarray, width: int, height: int, full_size: tuple[int, int]) -> np.ndarray:
    """Resize, composite alpha over white, grey and pad: the steps of prepare_clipart.py.

    ``im`` is (h, w, c) uint8 in OpenCV channel order (grey, grey+alpha, BGR or BGRA), already
    oriented; ``full_size`` is the (w, h) of the full-resolution image it came from (it differs
    from ``im``'s size when libvips shrank it on load). Shrink first while still 8-bit, then
    composite, as prepare_clipart.py does, so the two agree bit for bit on whole-image decodes.
    """
    scale, nw, nh = _fit(width, height, *full_size)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    small = cv2.resize(im, (nw, nh), interpolation=interp)
    if small.ndim == 2:
        small = small[:, :, None]
    channels = small.shape[2]
    if channels in (2, 4):
        small = _over_white(small)
    if small.shape[2] >= 3:
        grey = cv2.cvtColor(small[:, :, :3], cv2.COLOR_BGR2GRAY)
    else:
        grey = small[:, :, 0]
    canvas = np.full((height, width), 255, dtype=np.uint8)
    y, x = (height - nh) // 2, (width - nw) // 2
    canvas[y : y + nh, x : x + nw] = grey
    return canvas


def _over_white(im: np.ndarray) -> np.ndarray:
    """Composite straight alpha (last channel) over white with prepare_clipart.py's formula.

    Same float32 operations in the same order, so bit-identical, but one 2-D plane at a time:
    broadcasting an (h, w, 1) alpha over (h, w, 3) runs numpy's inner loop over 3 elements and
    is ~4x slower on a 300 x 430 image.
    """
    alpha = im[:, :, -1].astype(np.float32) / 255.0
    white = 255.0 * (1.0 - alpha)
    planes = []
    for i in range(im.shape[2] - 1):
        mixed = im[:, :, i].astype(np.float32) * alpha + white
        planes.append(np.clip(mixed, 0, 255).astype(np.uint8))
    out: np.ndarray = planes[0][:, :, None] if len(planes) == 1 else np.asarray(cv2.merge(planes))
    return out


def _to_cv_channels(arr: np.ndarray) -> np.ndarray:
    """Turn a libvips (h, w[, c]) RGB-order array into what cv2.imdecode would give."""
    if arr.ndim == 2:
        return arr[:, :, None]
    channels = arr.shape[2]
    if channels == 2:
        # OpenCV reads grey+alpha as BGRA, and cv2.resize rounds differently for 2 and 4
        # channels (up to 1 grey level): expand so both paths give identical pixels.
        grey, alpha = arr[:, :, 0], arr[:, :, 1]
        return np.dstack([grey, grey, grey, alpha])
    if channels == 3:
        return np.ascontiguousarray(arr[:, :, ::-1])
    if channels == 4:
        return np.ascontiguousarray(arr[:, :, [2, 1, 0, 3]])
    return arr


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


def _decode_vips(kind: str, fd: int, hdr: _Header, width: int, height: int) -> np.ndarray:
    """Stream the image through libvips, box-shrinking to about twice the final size."""
    name = _KIND_NAMES[kind]
    _, _, kx, ky = _stream_plan(hdr, width, height)
    try:
        if kind == "jpeg" and _jpeg_shrink(kx, ky) > 1:
            # libjpeg scales in the DCT domain: far less work and memory than a full decode.
            factor = _jpeg_shrink(kx, ky)
            image = _vips_load(kind, fd, shrink=factor)
            kx = max(1, kx // factor)
            ky = max(1, ky // factor)
        elif kind == "webp" and min(kx, ky) > 1:
            # libwebp's scaled decode never holds the full-size frame for lossy images.
            factor = min(kx, ky)
            image = _vips_load(kind, fd, scale=1.0 / factor)
            kx = max(1, round(image.width / (hdr.width / kx)))
            ky = max(1, round(image.height / (hdr.height / ky)))
        else:
            image = hdr.image if hdr.image is not None else _vips_load(kind, fd)
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
        raise DecodeError(f"truncated or corrupt {name}: {_vips_message(exc)}") from None
    return _to_cv_channels(arr)


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
    ``INTER_CUBIC`` when enlarging), centred on white. For images up to ``CV2_MAX_PIXELS`` the
    result is bit-identical to ``/work/shared/datasets/prepare_clipart.py``. Animated GIF and
    WebP give their first frame, multi-page TIFF its first page. The file content decides the
    format (PNG, JPEG, GIF, BMP, TIFF, WebP), not the extension.

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
    _init_libraries()
    fd = _open_regular(path)
    hdr: _Header | None = None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            raise DecodeError("empty file (0 bytes)")
        try:
            head = os.pread(fd, 64, 0)
        except OSError as exc:
            raise DecodeError(f"read error: {exc.strerror or exc}") from None
        suffix = os.path.splitext(os.fsdecode(path))[1]
        kind = _sniff(head, suffix)
        name = _KIND_NAMES[kind]
        hdr = (_png_plain_header(fd, head, size) if kind == "png" else None) or _header(
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
        use_cv2 = kind == "bmp" or (
            kind in ("png", "jpeg") and pixels <= CV2_MAX_PIXELS and size <= CV2_MAX_FILE_BYTES
        )
        cost, what = _estimate(kind, hdr, size, use_cv2, width, height)
        if cost > memory_cap:
            raise DecodeError(
                f"image too large to decode in bounded memory: {name} {hdr.width} x "
                f"{hdr.height} x {hdr.bands} bands ({what}) needs ~{_fmt_bytes(cost)} "
                f"> cap {_fmt_bytes(memory_cap)}"
            )
        arr = _decode_cv2(fd, size, kind) if use_cv2 else None
        if arr is not None:
            full = (arr.shape[1], arr.shape[0])
            if hdr.orientation in _TRANSPOSED:
                full = full[::-1]
        elif kind == "bmp":
            raise DecodeError("truncated or corrupt BMP: OpenCV could not decode it")
        else:
            arr = _decode_vips(kind, fd, hdr, width, height)
            full = (hdr.width, hdr.height)
            if hdr.orientation in _TRANSPOSED:
                full = full[::-1]
        hdr.image = None
        arr = _orient(arr, hdr.orientation)
        return _letterbox(arr, width, height, full)
    finally:
        if hdr is not None:
            hdr.image = None
        os.close(fd)


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


# Bands libvips may report per PNG colour type (a tRNS chunk adds alpha; palettes expand).
_PNG_MAX_BANDS = {0: 2, 2: 4, 3: 4, 4: 2, 6: 4}
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


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
        fd = _open_regular(path)
    except DecodeError:
        return 0
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 64, 0) if size else b""
        if not head:
            return 0
        try:
            kind = _sniff(head, "")
        except DecodeError:
            return 0
        if kind == "png":
            hdr = _png_bound_header(head)
        elif kind == "jpeg":
            hdr = _jpeg_bound_header(fd)
        else:
            _init_libraries()
            try:
                hdr = _header(kind, fd, head, size)  # libvips for GIF/TIFF/WebP (~0.3 ms)
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
    use_cv2 = kind == "bmp" or (
        kind in ("png", "jpeg") and pixels <= CV2_MAX_PIXELS and size <= CV2_MAX_FILE_BYTES
    )
    if kind == "jpeg" and not use_cv2:
        hdr.multiscan = True  # only a scan of the whole file could rule it out
    worst = 0
    for orientation in (1, 6):
        hdr.orientation = orientation
        worst = max(worst, _estimate(kind, hdr, size, use_cv2, width, height)[0])
    return min(worst, DECODE_MEMORY_CAP)


def _png_bound_header(head: bytes) -> _Header | None:
    if len(head) < 29 or head[12:16] != b"IHDR":
        return None
    hdr = _Header()
    hdr.width, hdr.height = struct.unpack(">II", head[16:24])
    depth, colour = head[24], head[25]
    hdr.bands = _PNG_MAX_BANDS.get(colour, 4)
    hdr.bps = 2 if depth == 16 else 1
    hdr.interlaced = head[28] == 1
    return hdr


# Chunks that cannot change how a PNG is shown (no orientation, no EXIF, no text that could
# carry a raw EXIF profile), before the first IDAT.
_PNG_PLAIN_CHUNKS = frozenset(
    {b"PLTE", b"tRNS", b"gAMA", b"cHRM", b"sRGB", b"iCCP", b"sBIT", b"pHYs", b"bKGD", b"hIST",
     b"tIME", b"sPLT"}
)


def _png_plain_header(fd: int, head: bytes, size: int) -> _Header | None:
    """Header of a PNG that OpenCV decodes whole and that carries no orientation, or None.

    Read from the chunk list without libvips (~10 us instead of ~0.4 ms, a third of decoding a
    seed-sized image). Anything else (EXIF or text chunks, big or odd files) returns None and
    goes through libvips' header as before.
    """
    if head[8:16] != b"\x00\x00\x00\x0dIHDR" or size > CV2_MAX_FILE_BYTES:
        return None
    hdr = _png_bound_header(head)
    if hdr is None or not 1 <= hdr.width * hdr.height <= CV2_MAX_PIXELS:
        return None
    offset = 33  # signature, IHDR length, type, 13 bytes of data and CRC
    for _ in range(64):
        chunk = os.pread(fd, 8, offset)
        if len(chunk) < 8:
            return None
        if chunk[4:] == b"IDAT":
            return hdr
        if chunk[4:] not in _PNG_PLAIN_CHUNKS:
            return None
        offset += 12 + struct.unpack(">I", chunk[:4])[0]
    return None


def _jpeg_bound_header(fd: int) -> _Header | None:
    """Frame header (SOFn) of a JPEG, found by walking the marker segments."""
    offset = 2
    for _ in range(512):
        seg = os.pread(fd, 10, offset)
        if len(seg) < 4 or seg[0] != 0xFF:
            return None
        marker = seg[1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            offset += 2
            continue
        if marker in _JPEG_SOF:
            if len(seg) < 10:
                return None
            hdr = _Header()
            hdr.height, hdr.width = struct.unpack(">HH", seg[5:9])
            hdr.bands = max(1, seg[9])
            hdr.bps = 2 if seg[4] > 8 else 1
            hdr.multiscan = marker in (0xC2, 0xC6, 0xCA, 0xCE)
            return hdr
        if marker in (0xD9, 0xDA):  # end of image or a scan before any frame header
            return None
        offset += 2 + struct.unpack(">H", seg[2:4])[0]
    return None
