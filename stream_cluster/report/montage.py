"""Cluster montages: a grid of captioned thumbnails drawn with OpenCV, plus display_name."""

from __future__ import annotations

import math
import os
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from stream_cluster.errors import ConfigError, StoreError

__all__ = ["MontageLayout", "display_name", "montage_layout", "write_montage"]

# Geometry, in pixels.
_PAD = 6
_TITLE_BAND = 34
_CAPTION_BAND = 16
_EMPTY_BODY = 60  # height under the title of the "no images" placeholder
_MAX_TITLE_PX = 1600  # a longer title is shortened rather than widening the PNG further

# Text. With OpenCV >= 5 the Hershey ids select the built-in Unicode font (Latin, Greek,
# Cyrillic, CJK, Hangul, ...); OpenCV draws '?' for any character its font lacks.
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_TITLE_SCALE, _TITLE_THICKNESS = 0.55, 2
_CAPTION_SCALE, _CAPTION_THICKNESS = 0.38, 1
_ELLIPSIS = "..."

# Grey levels.
_BACKGROUND = 228  # light grey, so white-background thumbnails keep a visible edge
_TITLE_INK = 0
_CAPTION_INK = 30
_NOTE_INK = 80

# The "up" filter with zlib's RLE strategy: montages are mostly flat background and flat
# clipart, so this is within 10 % of the smallest PNG and 3-5x faster than adaptive filters
# or higher levels (~8 ms for 48 thumbnails). IMWRITE_PNG_FILTER exists since OpenCV 4.10.
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION, 3, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE
]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def display_name(name: str) -> str:
    """Return ``name`` as printable, valid Unicode text for a person to read.

    File names on POSIX are bytes; Python hands the undecodable ones over with lone
    surrogates (``surrogateescape``), which cannot be encoded to UTF-8 and crash text
    rendering. They are turned back into their bytes and shown as ``\\xNN``
    (``b"caf\\xe9.png"`` -> ``caf\\xe9.png``). Control characters (newline, NUL, ESC, ...) are
    shown as ``\\xNN`` too, so a name is always one line. Everything else is kept as is.

    Parameters
    ----------
    name : str
        A file name or any other text that came from outside.

    Returns
    -------
    str
        Text that encodes to UTF-8 without error and contains no control characters.

    Examples
    --------
    >>> display_name(b"caf\\xe9.png".decode("utf-8", "surrogateescape"))
    'caf\\\\xe9.png'
    >>> display_name("a\\nb")
    'a\\\\x0ab'
    """
    try:
        text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that surrogateescape did not make
        text = name.encode("utf-8", "backslashreplace").decode("utf-8")
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        text = "".join(
            f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" else ch for ch in text
        )
    return text


def _fit_text(
    text: str, max_px: float, measure: Callable[[str], float], ellipsis: str = _ELLIPSIS
) -> str:
    """Shorten ``text`` in the middle with ``ellipsis`` until ``measure`` says it fits.

    The tail is kept because file names end in the informative part (``_01.png``). The cut
    is estimated from the full width and then corrected one character at a time, so a
    caption costs a handful of measurements. If not even the ellipsis fits, it is returned.
    """
    width = measure(text)
    if width <= max_px:
        return text

    def cut(kept: int) -> str:
        tail = kept * 2 // 5
        return text[: kept - tail] + ellipsis + (text[len(text) - tail :] if tail else "")

    kept = min(len(text) - 1, max(0, int(len(text) * max_px / width) - len(ellipsis)))
    while kept > 0 and measure(cut(kept)) > max_px:
        kept -= 1
    while kept + 1 < len(text) and measure(cut(kept + 1)) <= max_px:
        kept += 1
    return cut(kept)


def _text_width(scale: float, thickness: int) -> Callable[[str], float]:
    def measure(text: str) -> float:
        (width, _), _ = cv2.getTextSize(text, _FONT, scale, thickness)
        return float(width)

    return measure


def _ascent(scale: float, thickness: int) -> int:
    """Pixels from the top of capitals to the baseline, so every line sits on one baseline."""
    (_, height), _ = cv2.getTextSize("Hg", _FONT, scale, thickness)
    return int(height)


def _drawable(text: str) -> str:
    """Make ``text`` safe to hand to OpenCV: printable (display_name) and composed (NFC).

    NFC joins a letter and its combining accent into one glyph; the font draws a lone
    combining mark beside its letter.
    """
    return unicodedata.normalize("NFC", display_name(text))


@dataclass(frozen=True)
class MontageLayout:
    """Pixel geometry of a montage grid (before widening for a long title).

    Attributes
    ----------
    rows, columns : int
        Grid size; ``columns = min(columns asked, n)`` and ``rows = ceil(n / columns)``.
    thumb_width, thumb_height : int
        Size of each thumbnail; height keeps the images' aspect ratio.
    caption_height : int
        Pixels under each thumbnail for its caption (0 without captions).
    width, height : int
        Size of the PNG, title band included.
    """

    rows: int
    columns: int
    thumb_width: int
    thumb_height: int
    caption_height: int
    width: int
    height: int

    def cell_origin(self, index: int) -> tuple[int, int]:
        """Return (x, y) of the top-left pixel of thumbnail ``index`` (row-major)."""
        row, col = divmod(index, self.columns)
        x = _PAD + col * (self.thumb_width + _PAD)
        y = _TITLE_BAND + row * (self.thumb_height + self.caption_height + _PAD)
        return x, y


def montage_layout(
    n: int,
    image_shape: tuple[int, int],
    *,
    thumb_width: int = 120,
    columns: int = 8,
    captions: bool = False,
) -> MontageLayout:
    """Compute the grid of a montage of ``n`` images of ``image_shape`` (height, width).

    Examples
    --------
    >>> lay = montage_layout(48, (430, 300))
    >>> (lay.rows, lay.columns, lay.thumb_width, lay.thumb_height)
    (6, 8, 120, 172)
    >>> montage_layout(3, (430, 300)).columns
    3
    """
    if n < 1:
        raise ConfigError(f"a montage needs at least 1 image. Got {n} instead.")
    height, width = image_shape
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    thumb_h = max(1, round(height * thumb_width / width))
    cap = _CAPTION_BAND if captions else 0
    return MontageLayout(
        rows=rows,
        columns=cols,
        thumb_width=thumb_width,
        thumb_height=thumb_h,
        caption_height=cap,
        width=_PAD + cols * (thumb_width + _PAD),
        height=_TITLE_BAND + rows * (thumb_h + cap + _PAD),
    )


def _check_montage_args(
    images: Sequence[np.ndarray],
    captions: Sequence[str] | None,
    thumb_width: int,
    columns: int,
) -> tuple[int, int] | None:
    """Validate write_montage's input; return the common (height, width) or None if empty."""
    if isinstance(thumb_width, bool) or not isinstance(thumb_width, int) or thumb_width < 16:
        raise ConfigError(f"thumb_width must be an integer >= 16. Got {thumb_width!r} instead.")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise ConfigError(f"columns must be an integer >= 1. Got {columns!r} instead.")
    if captions is not None and len(captions) != len(images):
        raise ConfigError(
            f"captions must have one entry per image. Got {len(captions)} captions for "
            f"{len(images)} images instead."
        )
    if len(images) == 0:
        return None
    shape = np.shape(images[0])
    for i, img in enumerate(images):
        arr = np.asarray(img)
        if arr.dtype != np.uint8 or arr.ndim != 2 or 0 in arr.shape:
            raise ConfigError(
                "images must be non-empty 2-D uint8 grey arrays. Got dtype "
                f"{arr.dtype} shape {arr.shape} for image {i} instead."
            )
        if arr.shape != shape:
            raise ConfigError(
                f"images must all have the same shape. Got {arr.shape} for image {i} after "
                f"{shape} for image 0 instead."
            )
    return int(shape[0]), int(shape[1])


def _put(canvas: np.ndarray, text: str, x: int, baseline: int, scale: float, thickness: int,
         ink: int) -> None:
    cv2.putText(canvas, text, (x, baseline), _FONT, scale, ink, thickness, cv2.LINE_AA)


def _write_png(canvas: np.ndarray, out: Path) -> None:
    """Encode ``canvas`` and write it at ``out`` through a ``.partial`` file and a rename.

    Encoding in memory (rather than ``cv2.imwrite``) lets the partial file keep its
    ``.partial`` suffix and lets Python open paths with any bytes in them.
    """
    ok, png = cv2.imencode(".png", canvas, _PNG_PARAMS)
    if not ok:
        raise StoreError(
            f"OpenCV could not encode a {canvas.shape[1]} x {canvas.shape[0]} montage as PNG "
            f"for {display_name(str(out))}."
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        with open(partial, "wb") as fh:
            fh.write(png.data)
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)


def _title_canvas(title: str, grid_width: int, body_height: int) -> np.ndarray:
    """Return a background canvas with ``title`` drawn in its top band.

    The canvas is ``grid_width`` wide, or wider if the title needs it, up to
    ``max(grid_width, _MAX_TITLE_PX)``; a title longer than that is shortened in the middle.
    """
    measure = _text_width(_TITLE_SCALE, _TITLE_THICKNESS)
    limit = max(grid_width, _MAX_TITLE_PX)
    text = _fit_text(_drawable(title), limit - 2 * _PAD, measure)
    width = max(grid_width, math.ceil(measure(text)) + 2 * _PAD)  # <= limit, text fits
    canvas = np.full((_TITLE_BAND + body_height, width), _BACKGROUND, dtype=np.uint8)
    baseline = (_TITLE_BAND + _ascent(_TITLE_SCALE, _TITLE_THICKNESS)) // 2
    _put(canvas, text, _PAD, baseline, _TITLE_SCALE, _TITLE_THICKNESS, _TITLE_INK)
    return canvas


def write_montage(
    images: Sequence[np.ndarray],
    out: Path,
    *,
    title: str,
    captions: Sequence[str] | None = None,
    thumb_width: int = 120,
    columns: int = 8,
) -> None:
    """Write a PNG grid of thumbnails with a title and optional per-image captions.

    Images are placed row by row in the order given (the caller puts the ones nearest the
    cluster centre first), each scaled to ``thumb_width`` with its aspect ratio kept
    (``INTER_AREA`` when shrinking), on a light grey background so white thumbnails keep
    visible edges. Title and captions are drawn with OpenCV's anti-aliased font after
    :func:`display_name` (undecodable bytes as ``\\xNN``, no control characters); a
    character the font lacks is drawn as '?'. A caption wider than its thumbnail is
    shortened in the middle with '...', keeping the end of the name. The PNG is widened if
    the title needs it (up to 1600 px; a longer title is shortened the same way). An empty
    ``images`` writes a small PNG with the title and "no images".

    Parameters
    ----------
    images : sequence of numpy.ndarray
        uint8 2-D grey images, all of the same shape (e.g. 430 x 300).
    out : pathlib.Path
        PNG to write; written atomically, parent folders created.
    title : str
        Line drawn above the grid, e.g. "cluster 3 - 812 images (showing 48 nearest the
        centre)".
    captions : sequence of str, optional
        One caption per image.
    thumb_width : int, default=120
        Thumbnail width in pixels (>= 16).
    columns : int, default=8
        Maximum thumbnails per row.

    Raises
    ------
    ConfigError
        On images of another dtype, dimension or of unequal shapes, a caption count that
        differs from the image count, or out-of-range sizes.
    StoreError
        If OpenCV fails to encode the PNG.

    Notes
    -----
    Memory: one uint8 canvas of the PNG size, its encoded PNG and one thumbnail at a time;
    48 thumbnails of 120 x 172 make a 966 x 1200 px canvas (1.2 MB). Time: 20-40 ms for
    48 thumbnails of 430 x 300 with captions on a busy 2-core laptop, mostly resizing and
    PNG encoding; the first text drawn in a process also loads OpenCV's font (~60 ms).
    """
    shape = _check_montage_args(images, captions, thumb_width, columns)
    if shape is None:
        canvas = _title_canvas(title, 320, _EMPTY_BODY)
        note_w = int(_text_width(0.5, 1)("no images"))
        _put(canvas, "no images", (canvas.shape[1] - note_w) // 2,
             _TITLE_BAND + (_EMPTY_BODY + _ascent(0.5, 1)) // 2, 0.5, 1, _NOTE_INK)
        _write_png(canvas, out)
        return

    layout = montage_layout(
        len(images), shape, thumb_width=thumb_width, columns=columns,
        captions=captions is not None,
    )
    canvas = _title_canvas(title, layout.width, layout.height - _TITLE_BAND)
    size = (layout.thumb_width, layout.thumb_height)
    interp = cv2.INTER_AREA if layout.thumb_width <= shape[1] else cv2.INTER_LINEAR
    for i, img in enumerate(images):
        x, y = layout.cell_origin(i)
        canvas[y : y + layout.thumb_height, x : x + layout.thumb_width] = cv2.resize(
            np.asarray(img), size, interpolation=interp
        )
    if captions is not None:
        measure = _text_width(_CAPTION_SCALE, _CAPTION_THICKNESS)
        # one baseline for every caption: capitals start 2 px under the thumbnail
        below = 2 + _ascent(_CAPTION_SCALE, _CAPTION_THICKNESS)
        for i, caption in enumerate(captions):
            x, y = layout.cell_origin(i)
            text = _fit_text(_drawable(caption), layout.thumb_width - 2, measure)
            left = x + (layout.thumb_width - int(measure(text))) // 2
            _put(canvas, text, left, y + layout.thumb_height + below, _CAPTION_SCALE,
                 _CAPTION_THICKNESS, _CAPTION_INK)
    _write_png(canvas, out)

