"""Seeded photo-like grey images: the hard case for a lossless codec, next to clip-art.

Clip-art is mostly flat white; photos have smooth shading, gradients, texture and sensor noise
in every pixel, which lossless codecs cannot squeeze much. These images are a stand-in for
that (not a model of any camera): the codec benchmark reports ratios on both.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["photo_like"]


def _smooth(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Gaussian noise on a coarse grid of ``cell``-pixel cells, upsampled cubically."""
    h, w = shape
    coarse = rng.standard_normal((max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def photo_like(i: int, seed: int = 0, height: int = 430, width: int = 300) -> np.ndarray:
    """Image ``i`` of the series ``seed``: ``(height, width)`` uint8, depends only on both.

    Layers: a random-direction brightness gradient, smooth blobs at three scales (shading,
    objects), a few soft-edged ellipses, a striped texture patch and Gaussian sensor noise
    (sigma 2-6 grey levels).
    """
    rng = np.random.default_rng([seed, i])
    shape = (height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    grad = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * rng.uniform(30, 90)
    img = rng.uniform(60, 190) + grad
    for cell, amp in ((64, 35.0), (16, 15.0), (4, 6.0)):
        img = img + amp * rng.uniform(0.5, 1.0) * _smooth(rng, shape, cell)
    mask = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(2, 6))):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(15, 90)), int(rng.integers(15, 90)))
        level = float(rng.uniform(-60, 60))
        cv2.ellipse(mask, centre, axes, float(rng.uniform(0, 180)), 0, 360, level, -1)
    img = img + cv2.GaussianBlur(mask, (0, 0), float(rng.uniform(1.0, 4.0)))
    y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    period = rng.uniform(3, 12)
    stripes = 12 * np.sin(2 * np.pi * (xx + yy * rng.uniform(-1, 1)) / period)
    patch = np.s_[y0 : y0 + height // 3, x0 : x0 + width // 3]
    img[patch] += stripes[patch]
    img = img + rng.normal(0, rng.uniform(2, 6), shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
