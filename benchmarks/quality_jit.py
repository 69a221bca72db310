"""Fixed cost of umap-learn in a fresh process: import, numba compilation of fit and transform.

umap-learn compiles its numba kernels on first use in every new process (the timings show it
is not served from a disk cache), so a run that embeds with UMAP pays this once per process,
on top of the fit itself. Each line is one fresh interpreter::

    for i in 1 2 3; do python -m benchmarks.quality_jit; done

``first_fit - second_fit`` is the compilation of fit, ``first_transform - second_transform``
that of transform (300 and 50 random points, n_neighbors=30, min_dist=0, 10 dims).
"""

from __future__ import annotations

import time

import numpy as np


def main() -> None:
    """Print import, first/second fit and first/second transform times in seconds."""
    t0 = time.perf_counter()
    import umap  # type: ignore[import-untyped]

    t1 = time.perf_counter()
    x = np.random.default_rng(0).normal(size=(300, 20)).astype(np.float32)
    kw = {"n_neighbors": 30, "min_dist": 0.0, "n_components": 10, "random_state": 0}
    umap.UMAP(**kw).fit(x)
    t2 = time.perf_counter()
    m = umap.UMAP(**kw).fit(x)
    t3 = time.perf_counter()
    m.transform(x[:50])
    t4 = time.perf_counter()
    m.transform(x[50:100])
    t5 = time.perf_counter()
    print(
        f"import {t1 - t0:.2f} first_fit {t2 - t1:.2f} second_fit {t3 - t2:.2f} "
        f"first_transform {t4 - t3:.2f} second_transform {t5 - t4:.2f}"
    )


if __name__ == "__main__":
    main()
