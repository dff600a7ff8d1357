"""
=======================================
Quick start: flag digits that are not 3
=======================================

Fit :class:`con2.Con2Detector` on images of one digit from scikit-learn's built-in
8x8 digits, score held-out images of that digit and all other digits, and compare the
AUROC with IsolationForest and OneClassSVM fitted on the same raw pixels.

8x8 digits are easy for pixel methods; Con2 is built for larger images (see
benchmarks/). Run with ``--fast`` for a few-second smoke run.
"""

import argparse
import time

import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.svm import OneClassSVM

from con2 import Con2Detector, check_context
from con2.datasets import load_digits_images

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
parser.add_argument("--digit", type=int, default=3, help="the normal class")
parser.add_argument("--fast", action="store_true", help="tiny network, 3 epochs")
args = parser.parse_args()

# Data: 2/3 of the chosen digit for training; the rest of it and every other digit to test.
X, y = load_digits_images()  # (1797, 8, 8) uint8
rng = np.random.default_rng(0)
normal = rng.permutation(np.flatnonzero(y == args.digit))
train = normal[: 2 * len(normal) // 3]
test = np.setdiff1d(np.arange(len(X)), train)
is_normal = np.where(y[test] == args.digit, 1, -1)  # scikit-learn: +1 normal, -1 anomaly

# Which context suits these images? Upside-down digits look different; equalize does
# nothing to 8x8 images.
for name in ("vflip", "invert", "equalize"):
    print(check_context(X[train], name))

settings = dict(base_width=4, n_epochs=3) if args.fast else dict(base_width=16, n_epochs=150)
det = Con2Detector(
    context="vflip", batch_size=64, n_test_augmentations=16, random_state=0, **settings
)
start = time.perf_counter()
det.fit(X[train])
print(
    f"\nCon2 trained {det.n_epochs} epochs in {time.perf_counter() - start:.0f} s on {det.device_}"
)

pixels = X.reshape(len(X), -1) / 255.0
results = {
    "Con2 (vflip, nnd)": det.score_samples(X[test]),
    "IsolationForest (pixels)": IsolationForest(random_state=0)
    .fit(pixels[train])
    .score_samples(pixels[test]),
    "OneClassSVM (pixels)": OneClassSVM(gamma="scale", nu=0.1)
    .fit(pixels[train])
    .score_samples(pixels[test]),
}
print(f"\nAUROC, digit {args.digit} normal, {len(train)} training images, {len(test)} test images:")
for name, scores in results.items():
    print(f"  {name:26s} {roc_auc_score(is_normal, scores):.3f}")
labels = det.predict(X[test])  # threshold offset_ from contamination="auto" (1% of training)
print(
    f"\nCon2 flags {np.mean(labels[is_normal == 1] == -1):.0%} of the held-out {args.digit}s and "
    f"{np.mean(labels[is_normal == -1] == -1):.0%} of the other digits."
)
