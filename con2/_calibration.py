"""Thresholds and p-values from calibration scores: the conformal arithmetic.

The calibration scores are the leave-one-out scores of the training images (see
:class:`con2.Con2Detector`); a new image's score is compared with them. Higher scores are
more normal, so small p-values and scores below the threshold mean "unusual".
"""

from __future__ import annotations

from numbers import Real

import numpy as np

AUTO_CONTAMINATION = 0.01  # what contamination="auto" means: a 1% false-positive target


def offset_for_contamination(calibration_scores: np.ndarray, contamination) -> float:
    """Return the ``contamination`` quantile of the calibration scores (``"auto"``: 1%)."""
    rate = AUTO_CONTAMINATION if contamination == "auto" else contamination
    return float(np.percentile(calibration_scores, 100 * rate))


def offset_for_fpr(calibration_scores: np.ndarray, fpr) -> float:
    """Return the threshold that flags exactly the scores whose p-value is at most ``fpr``.

    With ``n`` calibration scores, rates below ``1 / (n + 1)`` cannot be told apart from
    0 and are refused.
    """
    n = len(calibration_scores)
    if not isinstance(fpr, Real) or isinstance(fpr, bool) or not 0 < fpr < 1:
        raise ValueError(f"fpr must be a number in (0, 1); got {fpr!r}.")
    if fpr < 1 / (n + 1):
        raise ValueError(
            f"fpr={fpr:g} is below 1/(n+1) = {1 / (n + 1):.3g}, the smallest rate {n} "
            "calibration scores can resolve; allow a larger rate or train on more images."
        )
    # Flag x iff p(x) <= fpr, i.e. iff fewer than k + 1 calibration scores are <= s(x),
    # i.e. iff s(x) < the (k + 1)-th smallest calibration score.
    k = int(np.floor(fpr * (n + 1) + 1e-9)) - 1
    return float(np.sort(calibration_scores)[k])


def p_values(calibration_scores: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Return ``(1 + #{calibration scores <= score}) / (n + 1)`` for each score."""
    calibration = np.sort(calibration_scores)
    below = np.searchsorted(calibration, scores, side="right")
    return (1.0 + below) / (len(calibration) + 1.0)


def labels(decision: np.ndarray) -> np.ndarray:
    """Return +1 (normal) where ``decision >= 0`` and -1 (anomaly) elsewhere."""
    found = np.ones_like(decision, dtype=int)
    found[decision < 0] = -1
    return found
