"""Pick the number of clusters k from an inertia-versus-k curve (elbow / knee detection)."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np

from stream_cluster.errors import ConfigError

__all__ = ["KneeResult", "MIN_CHORD_DISTANCE", "find_knee"]

logger = logging.getLogger(__name__)

#: Smallest bulge (normalised chord distance, see :func:`find_knee`) that counts as a knee at
#: ``sensitivity=1``. A straight line scores 0, a noisy line a few hundredths, ``1/k`` over
#: k = 1..10 about 0.6, and k-means on well-separated blobs 0.5 or more.
MIN_CHORD_DISTANCE = 0.1

#: How much lower than the best chord distance kneed's pick may score and still be kept.
#: Kneedle returns the *first* local maximum of the same difference curve that clears its
#: threshold; on noisy curves that can be an early bump far below the real elbow.
KNEEDLE_AGREEMENT = 0.9


@dataclass(frozen=True)
class KneeResult:
    """The chosen k and how it was chosen.

    Attributes
    ----------
    k : int or None
        The chosen number of clusters, always one of the ``ks`` given, or None when the curve
        has no knee (a straight line, a flat or increasing curve, a concave curve).
    method : str
        ``"kneedle"`` when kneed's pick was kept, ``"max-chord-distance"`` when the fallback
        chose, ``"none"`` when no k was chosen.
    scores : dict of int to float
        Normalised chord distance per k (see :func:`find_knee`); larger means a sharper
        elbow there. Empty when the curve cannot be normalised (flat).
    reason : str
        One sentence a person can read saying why this k (or no k) was chosen.
    """

    k: int | None
    method: str
    scores: dict[int, float] = field(default_factory=dict)
    reason: str = ""


def _validate(
    ks: Sequence[int], inertias: Sequence[float], sensitivity: float
) -> tuple[list[int], np.ndarray]:
    """Check the curve and return it as (list of int, float64 array); raise ConfigError."""
    ks_list = list(ks)
    ys_list = list(inertias)
    if len(ks_list) != len(ys_list):
        raise ConfigError(
            f"ks and inertias must have the same length. Got {len(ks_list)} ks and "
            f"{len(ys_list)} inertias instead."
        )
    if len(ks_list) < 3:
        raise ConfigError(
            f"Finding a knee needs at least 3 points on the inertia curve. Got {len(ks_list)} "
            f"(ks={ks_list!r}) instead; sweep at least 3 values of k."
        )
    for k in ks_list:
        if isinstance(k, bool) or not isinstance(k, Integral):
            raise ConfigError(f"ks must be integers. Got {k!r} in ks={ks_list!r} instead.")
    ks_int = [int(k) for k in ks_list]
    for a, b in zip(ks_int[:-1], ks_int[1:], strict=True):
        if b <= a:
            raise ConfigError(
                f"ks must be strictly increasing. Got {b} after {a} in ks={ks_int!r} instead."
            )
    for k, y in zip(ks_int, ys_list, strict=True):
        if isinstance(y, bool) or not isinstance(y, Real) or not math.isfinite(float(y)):
            raise ConfigError(
                f"inertias must be finite numbers. Got {y!r} for k={k} instead."
            )
    if (
        isinstance(sensitivity, bool)
        or not isinstance(sensitivity, Real)
        or not math.isfinite(float(sensitivity))
        or sensitivity <= 0
    ):
        raise ConfigError(f"sensitivity must be a finite number > 0. Got {sensitivity!r} instead.")
    return ks_int, np.asarray([float(y) for y in ys_list], dtype=np.float64)


def chord_distances(
    ks: Sequence[int], inertias: Sequence[float] | np.ndarray
) -> dict[int, float]:
    """Return the normalised vertical distance of each point below the end-to-end chord.

    Both axes are scaled to [0, 1] (k by its range, inertia by ``max - min``), a straight
    line is drawn from the first point to the last, and each point scores how far it lies
    *below* that line. For a monotone decreasing curve this is exactly Kneedle's difference
    curve; a convex elbow scores high, a straight line 0, a concave bend negative.

    Parameters
    ----------
    ks : sequence of int
        Strictly increasing k values (not re-validated here; use :func:`find_knee`).
    inertias : sequence of float
        Finite inertia per k.

    Returns
    -------
    dict of int to float
        Score per k; empty when all inertias are equal (nothing to normalise).
    """
    x = np.asarray(ks, dtype=np.float64)
    y = np.asarray(inertias, dtype=np.float64)
    y_range = float(y.max() - y.min())
    if y_range == 0.0 or not math.isfinite(y_range):
        # flat, or so spread that max - min overflows float64: nothing to normalise
        return {}
    x_n = (x - x[0]) / (x[-1] - x[0])
    y_n = (y - y.min()) / y_range
    chord = y_n[0] + (y_n[-1] - y_n[0]) * x_n
    return {int(k): float(d) for k, d in zip(ks, chord - y_n, strict=True)}


def _kneedle(ks: list[int], ys: np.ndarray, sensitivity: float) -> int | None:
    """Run kneed's KneeLocator for a convex decreasing curve; None if it finds no knee."""
    # imported lazily: kneed pulls in scipy.signal
    from kneed import KneeLocator

    with warnings.catch_warnings():
        # kneed warns "No knee/elbow found" and divides by zero on degenerate input;
        # both are answered by returning None here.
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            try:
                locator = KneeLocator(
                    ks, ys, S=sensitivity, curve="convex", direction="decreasing",
                    interp_method="interp1d", online=False,
                )
            except (ValueError, IndexError, ZeroDivisionError, FloatingPointError) as exc:
                logger.debug("kneed failed on ks=%r: %s", ks, exc)
                return None
    knee = locator.knee
    if knee is None:
        return None
    knee_f = float(knee)
    if not math.isfinite(knee_f) or int(knee_f) not in ks:
        return None
    return int(knee_f)


def find_knee(
    ks: Sequence[int], inertias: Sequence[float], *, sensitivity: float = 1.0
) -> KneeResult:
    """Choose k at the elbow of a decreasing inertia curve, or say there is none.

    The rule, in order:

    1. If the inertia does not decrease overall (last >= first) or is flat, there is no knee.
    2. Score every k by its normalised distance below the end-to-end chord
       (:func:`chord_distances`). If the best score is below
       ``MIN_CHORD_DISTANCE * sensitivity`` (0.1 at the default), the curve is too close to a
       straight line (or concave) to have a knee: return ``k=None``.
    3. Otherwise ask kneed (``KneeLocator(curve="convex", direction="decreasing", S=
       sensitivity)``). Kneedle returns the *first* local maximum of the same difference
       curve that clears its threshold, so on noisy curves it may stop at an early bump or
       return None (kneed issues #31, #77, #88, #158). Keep its pick only if that k scores at
       least ``KNEEDLE_AGREEMENT`` (90 %) of the best chord distance; otherwise take the k of
       the best chord distance (the smallest such k on ties).

    Parameters
    ----------
    ks : sequence of int
        At least 3 strictly increasing values of k.
    inertias : sequence of float
        Finite inertia for each k (same length as ``ks``). Only the shape matters: the
        result does not change when all inertias are multiplied by a positive constant.
    sensitivity : float, default=1.0
        Larger is more conservative: kneed's ``S`` and a multiplier of the minimum bulge.

    Returns
    -------
    KneeResult
        ``k`` is one of ``ks`` or None; ``scores`` holds the chord distance per k.

    Raises
    ------
    ConfigError
        If the lengths differ, fewer than 3 points are given, ``ks`` is not strictly
        increasing integers, an inertia is not finite, or ``sensitivity`` is not > 0.

    Notes
    -----
    Cost is O(len(ks)) time and memory; no I/O.

    Examples
    --------
    >>> r = find_knee([1, 2, 3, 4, 5, 6, 7, 8], [100, 40, 12, 10, 8, 6, 4, 2])
    >>> r.k, r.method
    (3, 'kneedle')
    >>> find_knee([1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0]).k is None
    True
    """
    ks_int, ys = _validate(ks, inertias, sensitivity)
    scores = chord_distances(ks_int, ys)
    if not scores:
        return KneeResult(None, "none", {}, "inertia is the same for every k (or out of range)")
    if ys[-1] >= ys[0]:
        return KneeResult(
            None, "none", scores,
            f"inertia does not decrease from k={ks_int[0]} to k={ks_int[-1]}",
        )
    best_k = max(scores, key=lambda k: (scores[k], -k))
    best = scores[best_k]
    min_distance = MIN_CHORD_DISTANCE * float(sensitivity)
    if best < min_distance:
        return KneeResult(
            None, "none", scores,
            f"curve is nearly straight: largest chord distance {best:.3f} at k={best_k} "
            f"is below {min_distance:.3f}",
        )
    kneedle_k = _kneedle(ks_int, ys, float(sensitivity))
    if kneedle_k is not None and scores[kneedle_k] >= KNEEDLE_AGREEMENT * best:
        return KneeResult(
            kneedle_k, "kneedle", scores,
            f"kneedle elbow at k={kneedle_k} (chord distance {scores[kneedle_k]:.3f}, "
            f"best {best:.3f} at k={best_k})",
        )
    why = (
        "kneedle found no knee"
        if kneedle_k is None
        else f"kneedle's k={kneedle_k} scores only {scores[kneedle_k]:.3f}"
    )
    logger.info("knee: %s; using max chord distance k=%d (%.3f)", why, best_k, best)
    return KneeResult(
        best_k, "max-chord-distance", scores,
        f"{why}; largest chord distance {best:.3f} at k={best_k}",
    )
