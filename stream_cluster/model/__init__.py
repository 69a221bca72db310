"""The fitted model: k-means, choosing k, and the saved model a finished run is used through
(``model.h5``: assign new images to clusters, find similar images).

May import: ``pca``, ``storage``, ``images`` and the bottom layer (``config``, ``errors``).
"""

from __future__ import annotations

from stream_cluster.model.fitted import FittedModel, load_model, similar

__all__ = ["FittedModel", "load_model", "similar"]
