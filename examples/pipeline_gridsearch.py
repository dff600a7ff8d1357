"""
==========================================
Grid search over context and scorer by AUROC
==========================================

:class:`con2.Con2Detector` in a scikit-learn ``Pipeline`` and a ``GridSearchCV`` with
``scoring="roc_auc"``. The detector trains on normal images only, so the split is
explicit: fit on normal images, validate on a labelled mix (+1 normal, -1 anomaly).

Uses scikit-learn's built-in digits (flattened rows of 64 grey levels 0..16, so the
pipeline declares ``image_shape`` and ``value_range``). ``--fast`` for a smoke run.
"""

import argparse

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from con2 import Con2Detector

parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true")
args = parser.parse_args()

digits = load_digits()
X, y = digits.data, digits.target  # (1797, 64) floats in 0..16
rng = np.random.default_rng(0)
normal = rng.permutation(np.flatnonzero(y == 4))
train = normal[:120]
validation = np.setdiff1d(np.arange(len(X)), train)
X_all = np.concatenate([X[train], X[validation]])
labels = np.r_[np.ones(len(train)), np.where(y[validation] == 4, 1, -1)]
split = [(np.arange(len(train)), np.arange(len(train), len(X_all)))]

epochs, width = (2, 4) if args.fast else (60, 16)
pipe = Pipeline([
    ("con2", Con2Detector(image_shape=(1, 8, 8), value_range=(0, 16), base_width=width,
                          n_epochs=epochs, batch_size=64, n_test_augmentations=8,
                          random_state=0)),
])  # fmt: skip
search = GridSearchCV(
    pipe,
    {"con2__context": ["vflip", "invert", None], "con2__scorer": ["nnd", "lh"]},
    scoring="roc_auc",
    cv=split,
)
search.fit(X_all, labels)

columns = ["param_con2__context", "param_con2__scorer", "mean_test_score", "mean_fit_time"]
results = pd.DataFrame(search.cv_results_)[columns].astype({"param_con2__context": str})
print(results.sort_values("mean_test_score", ascending=False).to_string(index=False))
print("best:", search.best_params_, f"AUROC {search.best_score_:.3f}")
