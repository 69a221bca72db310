"""The PCA math: :class:`StreamingPCA` (exact incremental PCA through the Gram matrix), its
update, merge and column-block kernels, and its memory model.

May import: ``storage``, ``images`` and the bottom layer (``config``, ``errors``).
"""

from __future__ import annotations

from stream_cluster.pca.memory import pca_memory_bytes
from stream_cluster.pca.streaming import StreamingPCA
from stream_cluster.pca.tree import merge_tree

__all__ = ["StreamingPCA", "merge_tree", "pca_memory_bytes"]
