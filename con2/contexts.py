"""Context augmentations: the second point of view on every normal image.

A context augmentation ``t_C`` maps a batch of images to the same batch seen in another
context [1]_. Con2 rests on two properties of ``t_C`` on the user's *normal* data:

- **distinctiveness**: no transformed image looks like an untransformed one, so the two
  contexts form separate clusters (vertical flips of upright objects, inverted x-rays);
- **alignment**: images that are similar stay just as similar after the transform, so the
  two clusters can be matched sample by sample.

:func:`check_context` measures both on a sample of images; :class:`con2.Con2Detector` runs
it at ``fit`` and warns when a context fails either.

References
----------
.. [1] Ryser et al., "Two Is Better Than One: Aligned Representation Pairs for Anomaly
   Detection", 2024. https://arxiv.org/abs/2405.18848
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from scipy.stats import spearmanr
from sklearn.utils import check_random_state, check_scalar
from torch import Tensor

from con2 import io
from con2._input import as_images, read_files, to_float
from con2._utils import warn

__all__ = [
    "CONTEXTS",
    "ColorInvert",
    "ContextAugmentation",
    "ContextReport",
    "HistogramEqualize",
    "Rotate90",
    "Rotate180",
    "Rotate270",
    "VerticalFlip",
    "check_context",
    "resolve_contexts",
]


@runtime_checkable
class ContextAugmentation(Protocol):
    """Map a batch of images to the same batch seen in another context.

    Implementations are deterministic and preserve shape, dtype and device. Input and
    output are floats in [0, 1] of shape (batch_size, n_channels, height, width); the
    detector normalises after the context and the augmentations, never before.

    Attributes
    ----------
    distinctive : bool
        The author's claim that, on the data the class docstring names, transformed
        images are told apart from untransformed ones (:func:`check_context` measures it).
    aligned : bool
        The author's claim that pairwise similarities between normal images survive the
        transform (:func:`check_context` measures it).
    """

    distinctive: ClassVar[bool]
    aligned: ClassVar[bool]

    def __call__(self, x: Tensor) -> Tensor:
        """Transform ``x`` of shape (batch_size, n_channels, height, width)."""


@dataclass(frozen=True)
class VerticalFlip:
    """Flip images upside down.

    Distinctive on images with a canonical "up" (digits, clothes, x-rays, upright
    objects); not on data seen from any angle (skin lesions, microscopy, textures). Aligned
    on any data: a flip permutes pixels, so pairwise distances are preserved exactly.

    Examples
    --------
    >>> import torch
    >>> VerticalFlip()(torch.tensor([[[[0.0], [1.0]]]])).flatten().tolist()
    [1.0, 0.0]
    """

    distinctive: ClassVar[bool] = True
    aligned: ClassVar[bool] = True

    def __call__(self, x: Tensor) -> Tensor:
        """Flip ``x`` of shape (batch_size, n_channels, height, width) along height."""
        return x.flip(-2)


@dataclass(frozen=True)
class ColorInvert:
    """Invert intensities, ``x -> 1 - x``.

    Distinctive when the intensity histogram of normal images is not symmetric about
    mid-grey (dark backgrounds, x-rays, most photographs). Aligned on any data: the map is
    an isometry of pixel space.

    Examples
    --------
    >>> import torch
    >>> ColorInvert()(torch.tensor([[[[0.0, 0.25]]]])).flatten().tolist()
    [1.0, 0.75]
    """

    distinctive: ClassVar[bool] = True
    aligned: ClassVar[bool] = True

    def __call__(self, x: Tensor) -> Tensor:
        """Invert ``x`` of shape (batch_size, n_channels, height, width), floats in [0, 1]."""
        return 1.0 - x


@dataclass(frozen=True)
class HistogramEqualize:
    """Equalize the intensity histogram of each channel of each image (PIL semantics).

    Distinctive on low-contrast images (x-rays, scans). PIL-style equalization leaves
    images of about 16x16 pixels or fewer unchanged, so it is **not** a context for tiny
    images; :func:`check_context` reports that. Alignment is not guaranteed: the intensity
    remapping differs from image to image.

    Examples
    --------
    >>> import torch
    >>> x = torch.linspace(0.4, 0.6, 32 * 32).reshape(1, 1, 32, 32)
    >>> y = HistogramEqualize()(x)
    >>> round(float(y.min()), 2), round(float(y.max()), 2)
    (0.0, 1.0)
    """

    distinctive: ClassVar[bool] = True
    aligned: ClassVar[bool] = False  # measured 0.49 to 0.89 on Fashion-MNIST classes

    def __call__(self, x: Tensor) -> Tensor:
        """Equalize ``x`` of shape (batch_size, n_channels, height, width)."""
        return TF.equalize(x)


@dataclass(frozen=True)
class _Rotation:
    """Rotate square images counter-clockwise by ``quarter_turns`` quarter turns."""

    distinctive: ClassVar[bool] = True
    aligned: ClassVar[bool] = True  # a permutation of the pixels
    quarter_turns: ClassVar[int]

    def __call__(self, x: Tensor) -> Tensor:
        """Rotate ``x`` of shape (batch_size, n_channels, size, size)."""
        if self.quarter_turns % 2 and x.shape[-2] != x.shape[-1]:
            raise ValueError(
                f"{type(self).__name__} needs square images; got height {x.shape[-2]} and "
                f"width {x.shape[-1]}. Resize them (image_shape=(C, S, S))."
            )
        return torch.rot90(x, self.quarter_turns, dims=(-2, -1))


class Rotate90(_Rotation):
    """Rotate square images a quarter turn counter-clockwise.

    Distinctive on images with a canonical "up"; aligned on any data. The shifted
    distribution of CSI and the synthetic outliers of FIRM (:mod:`con2.objectives`).

    Examples
    --------
    >>> import torch
    >>> Rotate90()(torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])).flatten().tolist()
    [2.0, 4.0, 1.0, 3.0]
    """

    quarter_turns = 1


class Rotate180(_Rotation):
    """Rotate images half a turn (a vertical flip composed with a horizontal one).

    With horizontal flips among the augmentations, it cannot be told from a vertical
    flip: do not use it beside the ``"vflip"`` context.
    """

    quarter_turns = 2


class Rotate270(_Rotation):
    """Rotate square images a quarter turn clockwise."""

    quarter_turns = 3


CONTEXTS: dict[str, type] = {
    "vflip": VerticalFlip,
    "invert": ColorInvert,
    "equalize": HistogramEqualize,
    "rot90": Rotate90,
    "rot180": Rotate180,
    "rot270": Rotate270,
}


def resolve_contexts(context) -> tuple:
    """Turn the ``context`` parameter into a tuple of context augmentations.

    ``None`` gives ``()`` (no context: plain instance discrimination); a name, an object
    or a list of them gives one context each.
    """
    if context is None:
        return ()
    items = context if isinstance(context, list | tuple) else [context]
    if len(items) == 0:
        raise ValueError("context must not be an empty list; use context=None for no context.")
    resolved = []
    for item in items:
        if isinstance(item, str):
            if item not in CONTEXTS:
                raise ValueError(
                    f"Unknown context {item!r}; choose one of {sorted(CONTEXTS)}, pass a "
                    "ContextAugmentation object, or None."
                )
            resolved.append(CONTEXTS[item]())
        elif isinstance(item, ContextAugmentation) and not isinstance(item, type):
            resolved.append(item)
        else:
            raise TypeError(
                "context must be a name, a ContextAugmentation object (callable with "
                "class attributes `distinctive` and `aligned`), a list of them, or None; "
                f"got {item!r}."
            )
    return tuple(resolved)


def apply_context(context, x: Tensor) -> Tensor:
    """Apply ``context`` to ``x`` and check that it kept shape, dtype and device."""
    y = context(x)
    if not isinstance(y, Tensor) or y.shape != x.shape or y.dtype != x.dtype:
        got = (
            f"{type(y).__name__} {tuple(y.shape)} {y.dtype}"
            if isinstance(y, Tensor)
            else type(y).__name__
        )
        raise ValueError(
            f"Context {context!r} must return a tensor of the same shape and dtype as its "
            f"input ({tuple(x.shape)} {x.dtype}); got {got}."
        )
    if y.device != x.device:
        raise ValueError(f"Context {context!r} moved its output from {x.device} to {y.device}.")
    return y


@dataclass(frozen=True)
class ContextReport:
    """What :func:`check_context` measured for one context augmentation.

    Attributes
    ----------
    context : ContextAugmentation
        The context that was measured.
    n_samples : int
        Number of images the statistics were computed on.
    distinctiveness : float
        Nearest-neighbour two-sample statistic in [0, 1]: the share of images, original
        and transformed pooled, whose nearest neighbour (excluding its own counterpart)
        is in the same context. 0.5 means the context is invisible, 1.0 fully distinct.
    alignment : float
        Spearman rank correlation between pairwise distances of the images before and
        after the transform. 1.0 means similarities are preserved exactly.
    distinctive : bool
        ``distinctiveness >= min_distinctiveness``.
    aligned : bool
        ``alignment >= min_alignment``.
    """

    context: object
    n_samples: int
    distinctiveness: float
    alignment: float
    distinctive: bool
    aligned: bool

    @property
    def passed(self) -> bool:
        """Whether the context is both distinctive and aligned on this data."""
        return self.distinctive and self.aligned

    def __str__(self) -> str:
        def mark(ok):
            return "ok" if ok else "FAILS"

        alignment = (
            "undefined (all images are identical)"
            if np.isnan(self.alignment)
            else f"{self.alignment:.3f}"
        )
        return (
            f"{self.context!r} on {self.n_samples} images: "
            f"distinctiveness {self.distinctiveness:.3f} ({mark(self.distinctive)}), "
            f"alignment {alignment} ({mark(self.aligned)})"
        )


def check_context(
    X,
    context,
    *,
    max_samples=512,
    min_distinctiveness=0.75,
    min_alignment=0.7,
    image_shape=None,
    value_range=None,
    random_state=0,
):
    """Measure distinctiveness and alignment of a context augmentation on images ``X``.

    Both statistics are computed in pixel space, downsampled to at most 16x16 so that
    they reflect image structure rather than pixel noise.

    Parameters
    ----------
    X : array-like of shape (n_samples, height, width), (n_samples, n_channels, height, \
            width), (n_samples, height, width, n_channels) or (n_samples, n_features), \
            or a folder or list of image files
        Normal images, in any form :class:`con2.Con2Detector` accepts. Of files, only the
        ``max_samples`` drawn are decoded (resized to ``image_shape`` when given).
    context : str, ContextAugmentation or list of them
        The context(s) to measure. A list gives one report per context.
    max_samples : int, default=512
        At most this many images (at least 3) are drawn (without replacement) from ``X``.
    min_distinctiveness : float in [0, 1], default=0.75
        Threshold of the ``distinctive`` verdict (0.5 is chance).
    min_alignment : float in [-1, 1], default=0.7
        Threshold of the ``aligned`` verdict (a rank correlation).
    image_shape, value_range : see :class:`con2.Con2Detector`.
    random_state : int, RandomState instance or None, default=0
        Draws the subsample.

    Returns
    -------
    report : ContextReport or list of ContextReport
        One report per context; a list when ``context`` is a list.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from con2 import check_context
    >>> X = load_digits().images / 16  # 8x8 images
    >>> check_context(X, "invert").distinctive
    True
    >>> check_context(X, "equalize").distinctive  # equalize is the identity at 8x8
    False
    """
    contexts = resolve_contexts(context)
    if not contexts:
        raise ValueError("check_context needs a context; got None.")
    check_scalar(max_samples, "max_samples", Integral, min_val=3)
    check_scalar(min_distinctiveness, "min_distinctiveness", Real, min_val=0, max_val=1)
    check_scalar(min_alignment, "min_alignment", Real, min_val=-1, max_val=1)  # a correlation
    rng = check_random_state(random_state)
    if io.is_file_input(X):  # draw the sample first, then decode only those files
        paths = io.list_images(X)
        if len(paths) > max_samples:
            paths = [paths[i] for i in np.sort(rng.choice(len(paths), max_samples, replace=False))]
        images = to_float(read_files(paths, image_shape, value_range))
    else:
        images = to_float(as_images(X, image_shape=image_shape, value_range=value_range))
        if images.shape[0] > max_samples:
            images = images[np.sort(rng.choice(images.shape[0], max_samples, replace=False))]
    if images.shape[0] < 3:
        raise ValueError(f"check_context needs at least 3 images; got n_samples={images.shape[0]}.")
    reports = [_measure(c, images, min_distinctiveness, min_alignment) for c in contexts]
    return reports if isinstance(context, list | tuple) else reports[0]


def warn_if_unsuitable(images: Tensor, contexts: tuple, max_samples: int) -> None:
    """Warn for each context that fails :func:`check_context` on canonical ``images``.

    ``fit`` runs this on up to ``max_samples`` training images.
    """
    if not contexts or images.shape[0] < 3:
        return
    if images.shape[0] > max_samples:  # the subset check_context would draw, taken first
        rng = check_random_state(0)
        images = images[np.sort(rng.choice(images.shape[0], max_samples, replace=False))]
    reports = check_context(images, list(contexts), image_shape=images.shape[1:])
    for report in reports:
        if not report.passed:
            warn(
                f"Context check failed: {report}. Con2 relies on a context that is "
                "distinctive and aligned on the normal images; consider another context "
                "(see con2.check_context)."
            )


def _measure(context, images: Tensor, min_distinctiveness, min_alignment) -> ContextReport:
    with torch.no_grad():
        transformed = apply_context(context, images)
        a, b = _downsample(images), _downsample(transformed)
    distinctiveness = _nn_two_sample(a, b)
    alignment = _distance_rank_correlation(a, b)
    return ContextReport(
        context=context,
        n_samples=int(images.shape[0]),
        distinctiveness=distinctiveness,
        alignment=alignment,
        distinctive=bool(distinctiveness >= min_distinctiveness),
        aligned=bool(alignment >= min_alignment),
    )


def _downsample(x: Tensor, size: int = 16) -> Tensor:
    if x.shape[-2] > size or x.shape[-1] > size:
        x = F.adaptive_avg_pool2d(x, (min(size, x.shape[-2]), min(size, x.shape[-1])))
    return x.flatten(1).double()


def _nn_two_sample(a: Tensor, b: Tensor) -> float:
    """Share of pooled points whose nearest neighbour carries the same label.

    Each point's own counterpart (x_i for t_C(x_i) and back) is excluded, so a context
    that merely perturbs every image a little does not count as distinct. Ties at the
    minimum distance count fractionally.
    """
    m = a.shape[0]
    pooled = torch.cat([a, b])
    labels = torch.arange(2 * m) >= m
    dist = torch.cdist(pooled, pooled)
    idx = torch.arange(2 * m)
    dist[idx, idx] = float("inf")
    dist[idx, (idx + m) % (2 * m)] = float("inf")
    nearest = dist.min(dim=1, keepdim=True).values
    ties = dist <= nearest + 1e-12 * nearest.clamp_min(1.0)
    same = labels[None, :] == labels[:, None]
    share = (ties & same).sum(1).double() / ties.sum(1).double()
    return float(share.mean())


def _distance_rank_correlation(a: Tensor, b: Tensor) -> float:
    iu = torch.triu_indices(a.shape[0], a.shape[0], offset=1)
    da = torch.cdist(a, a)[iu[0], iu[1]].numpy()
    db = torch.cdist(b, b)[iu[0], iu[1]].numpy()
    if np.ptp(da) == 0 or np.ptp(db) == 0:
        return float("nan")
    return float(spearmanr(da, db).statistic)
