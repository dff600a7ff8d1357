"""
====================================================
Writing, checking and using your own context augmentation
====================================================

A context augmentation is any callable on float image batches (B, C, H, W) in [0, 1]
that keeps shape and dtype and declares two claims, ``distinctive`` and ``aligned``.
:func:`con2.check_context` measures both on your images before you spend time training.

Here: a 90-degree rotation, checked on upright digits (distinct and aligned) and on
rotation-symmetric noise (not distinct), then used to train. ``--fast`` for a smoke run.
"""

import argparse
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from con2 import Con2Detector, ContextAugmentation, check_context
from con2.datasets import load_digits_images


@dataclass(frozen=True)
class Rotate90:
    """Rotate square images by 90 degrees counter-clockwise."""

    distinctive: ClassVar[bool] = True  # claim: a rotated digit never looks upright
    aligned: ClassVar[bool] = True  # a rotation permutes pixels: distances are kept

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.rot90(x, 1, dims=(-2, -1))


parser = argparse.ArgumentParser()
parser.add_argument("--fast", action="store_true")
args = parser.parse_args()

assert isinstance(Rotate90(), ContextAugmentation)  # the protocol, checked at run time
X, y = load_digits_images()
print("digits 7:", check_context(X[y == 7], Rotate90()))
noise = np.random.default_rng(0).random((300, 8, 8))
print("noise:   ", check_context(noise, Rotate90()))

train, test = X[y == 7][:120], np.concatenate([X[y == 7][120:], X[y != 7]])
is_normal = np.r_[np.ones(len(X[y == 7]) - 120), -np.ones((y != 7).sum())]
epochs, width = (2, 4) if args.fast else (100, 16)
det = Con2Detector(context=Rotate90(), base_width=width, n_epochs=epochs, batch_size=64,
                   random_state=0).fit(train)  # fmt: skip
print(
    f"Con2 with Rotate90 on digit 7: AUROC {roc_auc_score(is_normal, det.score_samples(test)):.3f}"
)
