"""The only importer of scikit-learn's private API (parameter validation, fit context).

Keeping these imports in one place means a scikit-learn release that moves them
breaks one file, not the package.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions

__all__ = ["HasMethods", "Interval", "StrOptions", "_fit_context"]
