"""con2: image anomaly detection with aligned representation pairs, as a scikit-learn estimator.

>>> from con2 import Con2Detector, check_context
"""

from con2._detector import Con2Detector, load
from con2._version import __version__
from con2.contexts import (
    CONTEXTS,
    ColorInvert,
    ContextAugmentation,
    HistogramEqualize,
    VerticalFlip,
    check_context,
)
from con2.objectives import (
    OBJECTIVES,
    Con2Objective,
    CSIObjective,
    FIRMObjective,
    Objective,
    SimCLRObjective,
)
from con2.scorers import SCORERS, CSIScorer, GaussianScorer, NearestNeighborScorer, Scorer

__all__ = [
    "CONTEXTS",
    "OBJECTIVES",
    "SCORERS",
    "CSIObjective",
    "CSIScorer",
    "ColorInvert",
    "Con2Detector",
    "Con2Objective",
    "ContextAugmentation",
    "FIRMObjective",
    "GaussianScorer",
    "HistogramEqualize",
    "NearestNeighborScorer",
    "Objective",
    "Scorer",
    "SimCLRObjective",
    "VerticalFlip",
    "__version__",
    "check_context",
    "load",
]
