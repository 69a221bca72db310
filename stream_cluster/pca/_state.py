"""What defines a fitted :class:`~stream_cluster.pca.StreamingPCA`, for the modules that update,
merge and size it without importing the estimator (which imports them)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

__all__ = ["LEARNED", "SOLVERS", "FittedState"]

SOLVERS = ("gram", "sklearn")
# Arrays and scalars that define a fitted estimator (the sklearn attribute names).
LEARNED = (
    "components_",
    "singular_values_",
    "mean_",
    "var_",
    "n_samples_seen_",
    "explained_variance_",
    "explained_variance_ratio_",
    "noise_variance_",
    "n_components_",
    "n_features_in_",
)


class FittedState(Protocol):
    """The learned attributes the Gram update and the merge read from a fitted model."""

    components_: np.ndarray
    singular_values_: np.ndarray
    mean_: np.ndarray
    var_: np.ndarray
    n_samples_seen_: int
    n_components_: int
    n_features_in_: int
