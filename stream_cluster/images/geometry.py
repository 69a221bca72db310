"""The array steps of a decode: EXIF orientation, alpha over white, grey conversion channels,
and the letterbox into the fixed output size (aspect kept, centred, white fill)."""

from __future__ import annotations

import cv2
import numpy as np

from stream_cluster.images.decode_memory import letterbox_geometry

__all__ = ["letterbox", "orient", "to_cv_channels"]


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
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


def letterbox(im: np.ndarray, width: int, height: int, full_size: tuple[int, int]) -> np.ndarray:
    """Resize, composite alpha over white, grey and pad: the steps of prepare_clipart.py.

    ``im`` is (h, w, c) uint8 in OpenCV channel order (grey, grey+alpha, BGR or BGRA), already
    oriented; ``full_size`` is the (w, h) of the full-resolution image it came from (it differs
    from ``im``'s size when libvips shrank it on load). Shrink first while still 8-bit, then
    composite, as prepare_clipart.py does, so the two agree bit for bit on whole-image decodes.
    """
    scale, nw, nh = letterbox_geometry(width, height, *full_size)
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


def to_cv_channels(arr: np.ndarray) -> np.ndarray:
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
