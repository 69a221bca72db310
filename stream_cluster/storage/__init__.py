"""Storage: the row store (segmented HDF5), the row protocols, checkpoints and ``state.json``.

May import: ``images`` and the bottom layer (``config``, ``errors``).
"""

from __future__ import annotations

from stream_cluster.storage.store import RowStore

__all__ = ["RowStore"]
