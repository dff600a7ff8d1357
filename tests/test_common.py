"""scikit-learn's full common-check suite, and the contracts of every registered component."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from con2 import Con2Detector

# The common checks feed small tabular arrays (2-D, values within about -20..110): rows
# are read as 1 x n_features images and value_range declares a range that holds them. Three
# epochs let batch-norm running statistics settle, so the embeddings are not degenerate.
CHEAP = dict(
    base_width=4,
    n_epochs=3,
    batch_size=16,
    n_test_augmentations=2,
    value_range=(-200, 200),
    device="cpu",
)


@parametrize_with_checks(
    [
        Con2Detector(context="invert", scorer="nnd", **CHEAP),
        Con2Detector(context="invert", scorer="lh", **CHEAP),
    ],
)
@pytest.mark.slow
def test_sklearn_common_checks(estimator, check):
    check(estimator)
