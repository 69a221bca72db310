"""Merging many fitted :class:`~stream_cluster.pca.StreamingPCA` models in a fixed tree."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from stream_cluster.pca._merge import reduce_tree
from stream_cluster.pca.streaming import StreamingPCA

__all__ = ["merge_tree"]


def merge_tree(
    models: Sequence[StreamingPCA | Mapping[str, np.ndarray]], *, n_components: int | None = None
) -> StreamingPCA:
    """Merge fitted models (or their :meth:`~StreamingPCA.get_state` dicts) in a fixed tree.

    Pairs ``(0, 1), (2, 3), ...`` are merged with :meth:`StreamingPCA.merge`, then the results
    pairwise, and so on (an odd one out moves up a level), so the result depends only on the
    order of ``models``, not on which finished first: give them in shard order.

    Exact (to rounding) when no model or merge discards variance; otherwise each truncation
    drops its discarded tail, and more leaves mean more truncations.

    Parameters
    ----------
    models : sequence of StreamingPCA or mapping of str to ndarray
        At least one. States are rebuilt with :meth:`StreamingPCA.from_state` when needed.
    n_components : int, optional
        Passed to every merge (default: the smaller of the two models' ``n_components``).

    Returns
    -------
    StreamingPCA
        A new model (a copy for a single input); the inputs are not modified.

    Notes
    -----
    Memory: evaluated depth first, so at most one rebuilt or merged model per tree level
    (``ceil(log2(len(models)))`` of them) is alive at once, plus one merge's buffers.
    """
    def load(item: StreamingPCA | Mapping[str, np.ndarray]) -> StreamingPCA:
        return item if isinstance(item, StreamingPCA) else StreamingPCA.from_state(item)

    def merge(a: StreamingPCA, b: StreamingPCA) -> StreamingPCA:
        return a.merge(b, n_components=n_components)

    if len(models) == 1:
        return StreamingPCA.from_state(load(models[0]).get_state())
    return reduce_tree(models, load, merge)
