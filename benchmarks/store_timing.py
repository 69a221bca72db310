"""Run stream-cluster with the pixel store's codec forced, timing every RowStore call.

Wall and CPU seconds (of the calling thread) spent in ``RowStore.read`` and ``append`` are
summed per store folder and written to ``OUT.io.json`` when the run ends, so two runs that
differ only in the codec can be compared by the store's own cost, which the CPU time shows
even on a loaded machine where the run's wall time does not::

    python -m benchmarks.store_timing zstd /tmp/run-zstd /work/data/clipart \\
        --mem-budget 2G --components 800 --k 10 --seed 0 --no-progress
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import stream_cluster.storage.store as st

__all__ = ["main"]


def _timed(name: str, totals: dict[str, list[float]]) -> None:
    orig: Callable[..., Any] = getattr(st.RowStore, name)

    def timed(self: st.RowStore, *args: Any, **kwargs: Any) -> Any:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return orig(self, *args, **kwargs)
        finally:
            row = totals.setdefault(f"{self.directory.name}.{name}", [0, 0.0, 0.0])
            row[0] += 1
            row[1] += time.perf_counter() - w0
            row[2] += time.thread_time() - c0

    setattr(st.RowStore, name, timed)


def main(argv: list[str]) -> int:
    """``CODEC OUT ARGS...``: run ``stream-cluster ARGS --out OUT`` with pixels in CODEC."""
    codec, out, rest = argv[0], argv[1], argv[2:]
    st.AUTO_UINT8 = st.resolve_compression(codec, "uint8")
    totals: dict[str, list[float]] = {}
    for name in ("read", "append"):
        _timed(name, totals)
    from stream_cluster._cli.main import main as cli

    try:
        return cli([*rest, "--out", out])
    finally:
        Path(out + ".io.json").write_text(json.dumps(totals, indent=1))


if __name__ == "__main__":  # decode workers are spawned and re-import this module
    sys.exit(main(sys.argv[1:]))
