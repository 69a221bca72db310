"""The precision README promises ("Reproducibility") for results computed in other row batches.

A run's features come from float32 GEMMs whose rounding depends on the BLAS kernel (AVX2 or
AVX-512), the thread count and, on AVX2 kernels, on where a row sits in its batch. So anything
that projects rows in other batches than the run did (``assign``, ``similar``, the model's
``transform``, a Dask shard) agrees with the run to this precision, not bitwise: each image's
feature vector within ``FEATURE_RTOL`` of its distance from the mean image (the norm of
``x - mean``), and so (triangle inequality) its distance to a centre too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stream_cluster.storage.checkpoint import load_arrays
from stream_cluster.storage.store import RowStore

#: README: "within 1e-5 of the image's distance from the mean image". Measured (benchmarks/
#: repro_precision.py): 2.2e-7 between AVX2, AVX and AVX-512 kernels, 1 and 2 threads, batches
#: of 1 to 600 rows, 4.9e-7 from the float64 product (200 components of 129,000 pixels).
FEATURE_RTOL = 1e-5


def assert_features_close(got: np.ndarray, want: np.ndarray, radius: np.ndarray) -> None:
    """Each row of ``got`` within ``FEATURE_RTOL * radius`` (Euclidean) of that row of ``want``."""
    err = np.linalg.norm(np.asarray(got, np.float64) - np.asarray(want, np.float64), axis=1)
    bound = FEATURE_RTOL * np.asarray(radius, np.float64)
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (
        f"row {worst}: features differ by {err[worst]:.3g}, more than {FEATURE_RTOL:g} of its "
        f"distance {radius[worst]:.3g} from the mean image"
    )


def distances_close(got: float, want: float, radius: float, printed_digits: int = 6) -> bool:
    """Whether two distances agree to README's precision (plus the rounding of a CSV's digits)."""
    printed = 10.0 ** (1 - printed_digits) * max(abs(got), abs(want))
    return abs(got - want) <= FEATURE_RTOL * radius + printed


def radii(run: Path, row_size: int) -> dict[str, float]:
    """Each stored image's distance from the run's mean image (the bound's scale), by path."""
    pixels = RowStore(run / "pixels", row_size, np.uint8)
    mean = load_arrays(run / "pca.h5")[0]["mean_"]
    dist = np.linalg.norm(pixels.read(0, len(pixels)) / 255.0 - mean, axis=1)
    return dict(zip((n.decode() for n in pixels.names()), map(float, dist)))
