"""The runner: one stage sequence with its bookkeeping (records, timing, memory labels,
progress events), run on local worker processes or on a Dask cluster; the run folder checks.

May import: ``stages`` and every layer below it; never the CLI.
"""

from __future__ import annotations
