"""con2: image anomaly detection with aligned representation pairs, as a scikit-learn estimator.

>>> from con2 import Con2Detector, check_context
"""

from con2._detector import Con2Detector
from con2._persistence import load
from con2.contexts import (
    CONTEXTS,
    ColorInvert,
    ContextAugmentation,
    HistogramEqualize,
    VerticalFlip,
    check_context,
)
from con2.scorers import SCORERS, GaussianScorer, NearestNeighborScorer, Scorer

__version__ = "0.1.0.dev0"

__all__ = [
    "CONTEXTS",
    "SCORERS",
    "ColorInvert",
    "Con2Detector",
    "ContextAugmentation",
    "GaussianScorer",
    "HistogramEqualize",
    "NearestNeighborScorer",
    "Scorer",
    "VerticalFlip",
    "__version__",
    "check_context",
    "load",
]
