"""Anomaly maps: which pixels make an image look anomalous to a fitted detector.

A map has the image's height and width and is **higher where the image is more
anomalous**, the opposite of :meth:`con2.Con2Detector.score_samples` (higher = more
normal): a map shows the anomaly, as heat maps do everywhere else.

Every method compares the image ``x`` with a *reference* ``r``, a normal image it
should have been: the training image nearest to ``x`` in pixels among the detector's
``reference_images_`` (a fixed sample of training images kept at fit), or their mean.
With ``s`` the detector's normality score (the mean over the test-time views, exactly
``score_samples``' arithmetic for a new image):

- ``"gradient"`` (the default): where the model says moving toward the reference helps,
  times what changed there. The first-order gain ``g = sum_c (r - x) * ds/dx`` (input
  times gradient against the reference), its positive part averaged over a ``smooth``
  x ``smooth`` neighbourhood, square-rooted, times how far each pixel is from the
  reference, ``sum_c |r - x|``. A single pixel's gain is noisy and often negative inside
  a defect (its neighbours carry the evidence); the neighbourhood says where, the
  difference says which pixels, and the square root keeps a pixel that changed much in
  a region of modest gain (a thin scratch) visible. Chosen by measurement
  (``benchmarks/maps.py``). One forward and one backward pass.
- ``"input-gradient"``: the gain ``g`` itself, pixel by pixel (positive part).
- ``"integrated"``: integrated gradients [1]_ along the straight path from ``x`` to
  ``r`` (``steps`` points): the gains add up to ``s(r) - s(x)``.
- ``"occlusion"``: each window of ``window`` pixels (stride half of it) replaced by the
  reference's window, the score gain shared by its pixels in proportion to how far each
  moved (averaged where windows overlap); no gradient, so every context works, but a
  forward pass per window.

Negative gains (pixels that look *more* normal than the reference) are cut to 0. Maps
depend on nothing but the image and the fitted detector: not on the batch, nor on the
other images.

References
----------
.. [1] Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017.
   https://arxiv.org/abs/1703.01365
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["METHODS", "REFERENCES", "ReferenceSet", "heat", "maps_of", "overlay", "reference_for"]

METHODS = ("gradient", "input-gradient", "integrated", "occlusion")
REFERENCES = ("nearest", "mean")


class ReferenceSet:
    """Reference images, with what finding the nearest one needs computed once.

    ``references`` (n_references, C, H, W): floats in [0, 1]. :meth:`nearest` finds each
    image's nearest reference in pixels (Euclidean) by one float64 matrix-vector product
    per image, so the answer for an image is the same arithmetic alone or in any batch.
    """

    def __init__(self, references: Tensor):
        self.images = references
        self.flat = references.flatten(1).double()
        self.squared_norms = (self.flat * self.flat).sum(dim=1)
        self.mean_image = references.mean(dim=0, keepdim=True)

    def nearest(self, x: Tensor) -> Tensor:
        """Return the nearest reference of each image of ``x`` (batch_size, C, H, W)."""
        rows = x.flatten(1).double()
        # |x - r|^2 = |x|^2 - 2 x.r + |r|^2, and |x|^2 is the same for every r
        found = [(self.squared_norms - 2 * (self.flat @ row)).argmin() for row in rows]
        return self.images[torch.stack(found)]

    def mean(self, x: Tensor) -> Tensor:
        """Return the mean reference image for each image of ``x``."""
        return self.mean_image.expand_as(x)


def reference_for(x: Tensor, references, kind: str) -> Tensor:
    """Return each image's reference: the nearest of ``references`` in pixels, or their mean.

    ``x`` (batch_size, C, H, W) and ``references`` (n_references, C, H, W, or a
    :class:`ReferenceSet` of them) are floats in [0, 1] on one device.
    """
    if not isinstance(references, ReferenceSet):
        references = ReferenceSet(references)
    return references.mean(x) if kind == "mean" else references.nearest(x)


def maps_of(module, x: Tensor, reference: Tensor, method: str, steps: int = 8,
            window: int = 0, smooth: int = 0) -> Tensor:  # fmt: skip
    """Return maps (batch_size, H, W), float32, of images ``x`` against ``reference``.

    ``module`` is the detector's :class:`con2.export.ScoringModule` (its ``score_unit``
    scores floats in [0, 1]). ``window`` (occlusion) 0 means a quarter of the smaller
    side; ``smooth`` (gradient) 0 means the odd number nearest a sixth of it, at least 3
    (5 at 28 pixels).
    """
    if smooth < 0 or (smooth % 2 == 0 and smooth):
        raise ValueError(f"smooth must be an odd number of pixels (or 0); got {smooth}.")
    if method == "gradient":
        gain = ((reference - x) * _gradient(module, x)).sum(dim=1, keepdim=True)
        size = smooth or max(3, 2 * round((min(x.shape[-2:]) / 6 - 1) / 2) + 1)
        regional = torch.nn.functional.avg_pool2d(
            gain.clamp_min(0), size, stride=1, padding=size // 2, count_include_pad=False
        )
        return (regional[:, 0].sqrt() * (reference - x).abs().sum(dim=1)).float()
    if method == "input-gradient":
        gain = (reference - x) * _gradient(module, x)
    elif method == "integrated":
        path = torch.linspace(0.5 / steps, 1 - 0.5 / steps, steps, device=x.device)  # midpoints
        total = sum(_gradient(module, x + t * (reference - x)) for t in path)
        gain = (reference - x) * total / steps
    elif method == "occlusion":
        return _occlusion(module, x, reference, window or max(2, min(x.shape[-2:]) // 4))
    else:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    return gain.sum(dim=1).clamp_min(0).float()


def _gradient(module, x: Tensor) -> Tensor:
    """Gradient of each image's score with respect to its own pixels."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(module.score_unit(x).sum(), x)
    return grad


def _occlusion(module, x: Tensor, reference: Tensor, window: int) -> Tensor:
    """Score gains of windows replaced by the reference, shared by the pixels that changed.

    A window's gain goes to its pixels in proportion to how far each moved (the absolute
    difference to the reference, summed over channels); a pixel's value is the mean of
    its shares over the windows that cover it.
    """
    _, _, height, width = x.shape
    stride = max(1, window // 2)
    tops = sorted({*range(0, max(1, height - window + 1), stride), max(0, height - window)})
    lefts = sorted({*range(0, max(1, width - window + 1), stride), max(0, width - window)})
    moved = (reference - x).abs().sum(dim=1)  # (batch_size, H, W)
    with torch.no_grad():
        base = module.score_unit(x)
        total = x.new_zeros(x.shape[0], height, width)
        count = x.new_zeros(height, width)
        for top in tops:
            for left in lefts:
                rows, cols = slice(top, top + window), slice(left, left + window)
                patched = x.clone()
                patched[:, :, rows, cols] = reference[:, :, rows, cols]
                gain = (module.score_unit(patched) - base).clamp_min(0).float()
                part = moved[:, rows, cols]
                share = part / part.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
                total[:, rows, cols] += gain[:, None, None] * share
                count[rows, cols] += 1
    return total / count


def heat(values: np.ndarray) -> np.ndarray:
    """Colour values in [0, 1] black -> red -> yellow -> white; float RGB, shape (..., 3).

    The "hot" ramp: brightness grows with the value, so it reads in grayscale too.
    """
    t = np.clip(values, 0.0, 1.0)[..., None]
    return np.clip(3 * t - np.array([0.0, 1.0, 2.0]), 0.0, 1.0)


def overlay(image: np.ndarray, values: np.ndarray, scale: float,
            opacity: float = 0.7) -> np.ndarray:  # fmt: skip
    """Blend a map over an image: uint8 RGB (height, width, 3).

    ``image``: floats in [0, 1], (height, width) or (height, width, 3); ``values``: a
    map of the same height and width. A pixel of value ``v`` is covered by its colour
    (:func:`heat` of ``v / scale``) at ``opacity * min(v / scale, 1)``: a pixel of map 0
    shows the image unchanged, so one colour scale serves every image of a run.
    """
    image = np.repeat(image[..., None], 3, axis=-1) if image.ndim == 2 else image
    level = np.clip(values / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(values)
    alpha = opacity * level[..., None]
    blended = (1 - alpha) * image + alpha * heat(level)
    return np.round(255 * np.clip(blended, 0.0, 1.0)).astype(np.uint8)
