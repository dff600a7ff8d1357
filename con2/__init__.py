"""con2: image anomaly detection with aligned representation pairs, as a scikit-learn estimator.

>>> from con2 import Con2Detector, check_context

The names below are imported on first use, so that ``import con2`` (and the ``con2``
command's ``--help`` and ``--version``) does not load torch before it is needed.
"""

from __future__ import annotations

import importlib

from con2._version import __version__ as __version__

_HOMES = {
    "Con2Detector": "con2._detector",
    "load": "con2._detector",
    "CONTEXTS": "con2.contexts",
    "ColorInvert": "con2.contexts",
    "ContextAugmentation": "con2.contexts",
    "HistogramEqualize": "con2.contexts",
    "VerticalFlip": "con2.contexts",
    "check_context": "con2.contexts",
    "OBJECTIVES": "con2.objectives",
    "CSIObjective": "con2.objectives",
    "Con2Objective": "con2.objectives",
    "FIRMObjective": "con2.objectives",
    "Objective": "con2.objectives",
    "SimCLRObjective": "con2.objectives",
    "SCORERS": "con2.scorers",
    "CSIScorer": "con2.scorers",
    "GaussianScorer": "con2.scorers",
    "NearestNeighborScorer": "con2.scorers",
    "Scorer": "con2.scorers",
}

__all__ = sorted([*_HOMES, "__version__"])


def __getattr__(name: str):
    """Import a public name from its module the first time it is asked for."""
    if name not in _HOMES:
        raise AttributeError(f"module 'con2' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted([*globals(), *_HOMES])
