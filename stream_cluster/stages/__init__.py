"""The stages: generator functions with explicit inputs and outputs (ingest, fit the PCA,
embed, elbow, cluster, report, update; the sharded PCA of a Dask run; assigning new images),
and what every stage shares (:mod:`~stream_cluster.stages.base`).

May import: ``report``, ``parallel``, ``memory`` and every layer below them; never the runner or
the CLI.
"""

from __future__ import annotations
