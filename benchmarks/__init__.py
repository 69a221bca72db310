"""Benchmark suite: stream-cluster against Dask, in-memory scikit-learn and a plain IPCA loop.

Run ``python -m benchmarks.run --help``; see ``benchmarks/README.md``. Nothing here is imported
by ``stream_cluster`` and the default pytest run does not collect it.
"""

from __future__ import annotations
