"""Executors: "run f over these shards, yield results as they finish", in local worker
processes or on Dask futures, and the Dask layout of a run. Stage code never imports Dask.

May import: ``memory`` and every layer below it.
"""

from __future__ import annotations
