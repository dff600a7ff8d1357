"""The SimCLR augmentation family T, per-sample random and batched on the device.

``T`` is random resized crop (scale 0.08-1, aspect ratio 3/4-4/3) with horizontal flip
(p=0.5), colour jitter (brightness, contrast, saturation 0.4, hue 0.1; applied with
p=0.8, in a random order per image) and random grayscale (p=0.2) [1]_. Every image of a
batch gets its own parameters, drawn from a :class:`torch.Generator`; the whole batch is
transformed with one ``grid_sample`` and a few elementwise kernels, never a Python loop
over images.

Parameters are drawn first (:meth:`SimCLRAugment.sample`) and applied second
(:meth:`SimCLRAugment.apply`), so the same parameters can be applied to many images: the
detector's fixed test-time augmentations are parameters drawn once at ``fit``.

References
----------
.. [1] Chen et al., "A Simple Framework for Contrastive Learning of Visual
   Representations", ICML 2020. https://arxiv.org/abs/2002.05709
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AugmentParams", "KeyedRandom", "SimCLRAugment", "hash_words"]

_N_CROP_TRIES = 10  # as torchvision's RandomResizedCrop
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision and PIL


@dataclass
class AugmentParams:
    """Per-image parameters of T; every field has leading dimension ``batch_size``.

    Attributes
    ----------
    crop : Tensor of shape (batch_size, 4), float
        Crop box in pixels: top, left, height, width.
    flip : Tensor of shape (batch_size,), bool
        Horizontal flip.
    jitter : Tensor of shape (batch_size,), bool
        Whether colour jitter is applied.
    factors : Tensor of shape (batch_size, 4), float
        Brightness, contrast and saturation factors and the hue shift.
    order : Tensor of shape (batch_size, 4), long
        Order in which the four jitter operations are applied (a permutation of 0..3).
    gray : Tensor of shape (batch_size,), bool
        Conversion to grayscale.
    """

    crop: Tensor
    flip: Tensor
    jitter: Tensor
    factors: Tensor
    order: Tensor
    gray: Tensor

    def __len__(self) -> int:
        return self.crop.shape[0]

    def map(self, fn) -> AugmentParams:
        """Return new parameters with ``fn`` applied to every field."""
        return AugmentParams(**{f.name: fn(getattr(self, f.name)) for f in fields(self)})


@dataclass(frozen=True)
class SimCLRAugment:
    """The augmentation family T of SimCLR, batched.

    Parameters
    ----------
    scale : tuple of float, default=(0.08, 1.0)
        Range of the crop area as a fraction of the image area.
    ratio : tuple of float, default=(3/4, 4/3)
        Range of the crop aspect ratio (width / height), sampled log-uniformly.
    p_flip : float, default=0.5
        Probability of a horizontal flip.
    jitter : tuple of float, default=(0.4, 0.4, 0.4, 0.1)
        Strength of brightness, contrast, saturation and hue jitter.
    p_jitter : float, default=0.8
        Probability of applying colour jitter.
    p_gray : float, default=0.2
        Probability of converting to grayscale (no effect on 1-channel images).

    Examples
    --------
    >>> import torch
    >>> augment = SimCLRAugment()
    >>> x = torch.rand(8, 3, 32, 32)
    >>> params = augment.sample(8, (32, 32), torch.Generator().manual_seed(0))
    >>> augment.apply(x, params).shape
    torch.Size([8, 3, 32, 32])
    """

    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    p_flip: float = 0.5
    jitter: tuple = (0.4, 0.4, 0.4, 0.1)
    p_jitter: float = 0.8
    p_gray: float = 0.2

    def sample(self, batch_size: int, size: tuple, generator) -> AugmentParams:
        """Draw parameters for ``batch_size`` images of ``size = (height, width)``.

        All draws come from ``generator``, a :class:`torch.Generator` or a
        :class:`KeyedRandom` (draws that depend on each image's key, not on the
        generator's history), and land on its device.
        """
        device = generator.device

        def uniform(*shape, low=0.0, high=1.0):
            if isinstance(generator, KeyedRandom):
                draws = generator.rand(shape)
            else:
                draws = torch.rand(shape, generator=generator, device=device)
            return draws * (high - low) + low

        b, c, s, h = self.jitter
        factors = torch.stack(
            [
                uniform(batch_size, low=max(0.0, 1 - b), high=1 + b),
                uniform(batch_size, low=max(0.0, 1 - c), high=1 + c),
                uniform(batch_size, low=max(0.0, 1 - s), high=1 + s),
                uniform(batch_size, low=-h, high=h),
            ],
            dim=1,
        )
        return AugmentParams(
            crop=self._sample_crop(batch_size, size, uniform),
            flip=uniform(batch_size) < self.p_flip,
            jitter=uniform(batch_size) < self.p_jitter,
            factors=factors,
            order=uniform(batch_size, 4).argsort(dim=1),
            gray=uniform(batch_size) < self.p_gray,
        )

    def _sample_crop(self, batch_size: int, size: tuple, uniform) -> Tensor:
        """Crop boxes with torchvision's RandomResizedCrop rule, for a whole batch.

        Up to 10 (area, ratio) draws per image; the first that fits is used, else a
        centred crop with the ratio clamped to the allowed range.
        """
        height, width = size
        area = height * width
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        target = area * uniform(batch_size, _N_CROP_TRIES, low=self.scale[0], high=self.scale[1])
        aspect = torch.exp(uniform(batch_size, _N_CROP_TRIES, low=log_lo, high=log_hi))
        w = torch.round(torch.sqrt(target * aspect))
        h = torch.round(torch.sqrt(target / aspect))
        fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
        first = fits.float().argmax(dim=1, keepdim=True)  # first try that fits
        w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
        found = fits.any(dim=1)
        fallback_w, fallback_h = self._fallback_crop(height, width)
        w = torch.where(found, w, torch.full_like(w, fallback_w))
        h = torch.where(found, h, torch.full_like(h, fallback_h))
        top = torch.floor(uniform(batch_size) * (height - h + 1))
        left = torch.floor(uniform(batch_size) * (width - w + 1))
        top = torch.where(found, top, torch.floor((height - h) / 2))
        left = torch.where(found, left, torch.floor((width - w) / 2))
        return torch.stack([top, left, h, w], dim=1)

    def _fallback_crop(self, height: int, width: int) -> tuple[float, float]:
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            return float(width), float(round(width / min(self.ratio)))
        if in_ratio > max(self.ratio):
            return float(round(height * max(self.ratio))), float(height)
        return float(width), float(height)

    def apply(self, x: Tensor, params: AugmentParams) -> Tensor:
        """Apply per-image parameters to ``x``.

        Parameters
        ----------
        x : Tensor of shape (batch_size, n_channels, height, width)
            Floats in [0, 1].
        params : AugmentParams
            Of length ``batch_size``, on the device of ``x``.

        Returns
        -------
        Tensor of shape (batch_size, n_channels, height, width)
            Floats in [0, 1].
        """
        x = _resized_crop(x, params.crop, params.flip)  # a new tensor: ours to update
        x = _color_jitter(x, params, in_place=True)
        if x.shape[1] == 3 and _selecting(x):  # the chosen images only (see _color_jitter)
            chosen = torch.nonzero(params.gray).flatten()
            x.index_copy_(0, chosen, _grayscale(x.index_select(0, chosen)).expand(-1, 3, -1, -1))
        elif x.shape[1] == 3:
            x = torch.where(params.gray[:, None, None, None], _grayscale(x).expand_as(x), x)
        return x


class KeyedRandom:
    """Uniform draws in [0, 1) that are a function of per-row keys, not of a state.

    Row ``i`` of the ``k``-th call of :meth:`rand` is a hash of ``(keys[i], k, column)``,
    so a row's draws do not depend on which other rows share the batch, nor on the
    process, the device or how many draws came before in other batches. The training
    loop keys each view by ``(random_state, epoch, image index, context, draw)``: an
    image's augmentations are the same with one process or many.

    Parameters
    ----------
    keys : Tensor of shape (batch_size,), int64
        32-bit keys (see :func:`hash_words`), on the device the draws should land on.
    """

    def __init__(self, keys: Tensor):
        self.keys, self.device, self._calls = keys, keys.device, 0

    def rand(self, shape: tuple) -> Tensor:
        """Draw floats of ``shape = (batch_size, ...)``, 24 random bits each."""
        self._calls += 1
        columns = math.prod(shape[1:])
        column = torch.arange(columns, device=self.device)
        bits = hash_words(self.keys[:, None], self._calls, column[None, :])
        return ((bits >> 8).to(torch.float32) / 2**24).view(shape)


_M32 = 0xFFFFFFFF


def _mix(x: Tensor) -> Tensor:
    """Hash with "lowbias32" (C. Wellons), on int64 tensors holding 32-bit values.

    Products are taken in 16-bit halves so that no int64 product overflows.
    """

    def times(x, constant):
        low = (x & 0xFFFF) * constant
        high = (((x >> 16) * constant) & 0xFFFF) << 16
        return (low + high) & _M32

    x = x & _M32
    x = times(x ^ (x >> 16), 0x7FEB352D)
    x = times(x ^ (x >> 15), 0x846CA68B)
    return x ^ (x >> 16)


def hash_words(*words) -> Tensor:
    """Hash integers (ints or int64 tensors, broadcast together) into 32-bit values."""
    tensor = next((w for w in words if isinstance(w, Tensor)), None)
    device = tensor.device if tensor is not None else None
    h = torch.tensor(0x2545F491, dtype=torch.int64, device=device)
    for position, word in enumerate(words):
        word = torch.as_tensor(word, dtype=torch.int64, device=device)
        h = _mix(h ^ _mix(word + 0x9E3779B9 * (position + 1)))
    return h


def _resized_crop(x: Tensor, crop: Tensor, flip: Tensor) -> Tensor:
    """Crop each image to its box and resize it back to full size, bilinearly.

    One ``grid_sample`` for the whole batch. Output pixel ``u`` samples input
    ``left + (u + 0.5) * w / W - 0.5``, clamped to the crop box: the sampling grid of
    cropping the pixels and resizing them with ``F.interpolate(align_corners=False)``,
    as torchvision does. A flip reverses the output columns.
    """
    _, _, height, width = x.shape
    top, left, h, w = crop.to(x.dtype).unbind(1)
    cols = torch.arange(width, dtype=x.dtype, device=x.device)
    rows = torch.arange(height, dtype=x.dtype, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(0), cols)
    src_x = left[:, None] + (cols + 0.5) * (w / width)[:, None] - 0.5
    src_y = top[:, None] + (rows + 0.5) * (h / height)[:, None] - 0.5
    src_x = src_x.clamp(min=left[:, None], max=(left + w - 1)[:, None])
    src_y = src_y.clamp(min=top[:, None], max=(top + h - 1)[:, None])
    # pixel index -> normalised coordinate of grid_sample with align_corners=False
    grid_x = ((2 * src_x + 1) / width - 1)[:, None, :].expand(-1, height, -1)
    grid_y = ((2 * src_y + 1) / height - 1)[:, :, None].expand(-1, -1, width)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _selecting(x: Tensor) -> bool:
    """Whether to apply per-image operations to the selected images only (eager CPU)."""
    return x.device.type == "cpu" and not torch.compiler.is_compiling()


def _grayscale(x: Tensor) -> Tensor:
    """Luma of RGB images, shape (batch_size, 1, height, width)."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _color_jitter(x: Tensor, params: AugmentParams, in_place: bool = False) -> Tensor:
    """Brightness, contrast, saturation and hue in each image's own random order.

    Slot ``k`` applies, to every image, the operation ``order[:, k]`` names for it.
    Saturation and hue do nothing to 1-channel images, as in torchvision, so they are
    skipped there. Eagerly on the CPU each operation runs on the images that take it in
    that slot (a quarter of them), which are gathered with ``index_select`` and written
    back with ``index_copy_`` (``in_place``: into ``x`` itself, a tensor the caller
    owns); elsewhere every operation runs on every image and a ``where`` picks, because
    selecting images would wait for the device (and has no exportable shape). Each
    image's arithmetic is the same either way, so are the results, bit for bit.
    """
    n_ops = 4 if x.shape[1] == 3 else 2
    factors = params.factors[:, :, None, None, None].to(x.dtype)
    cpu = _selecting(x)
    if cpu and not in_place:
        x = x.clone()  # updated in place below: each image by one operation per slot
    for slot in range(4):
        op = params.order[:, slot]
        if cpu:
            for index in range(n_ops):
                chosen = torch.nonzero(params.jitter & (op == index)).flatten()
                if len(chosen):
                    done = _JITTER_OPS[index](x.index_select(0, chosen), factors[chosen, index])
                    x.index_copy_(0, chosen, done)
            continue
        out = x
        for index in range(n_ops):
            chosen = (params.jitter & (op == index))[:, None, None, None]
            out = torch.where(chosen, _JITTER_OPS[index](x, factors[:, index]), out)
        x = out
    return x


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return (x * f).clamp_(0.0, 1.0)


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0.0, 1.0)


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    return (f * x + (1 - f) * _grayscale(x)).clamp_(0.0, 1.0)


def _hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of RGB images by ``shift`` (a fraction of a turn), via HSV."""
    r, g, b = x.split(1, dim=1)
    # Elementwise over the three channels: exactly x.max(dim=1), at a fraction of the cost
    # of a reduction over a strided dimension of three.
    maxc = torch.maximum(torch.maximum(r, g), b)
    minc = torch.minimum(torch.minimum(r, g), b)
    value = maxc
    delta = maxc - minc
    saturation = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    safe = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    hue = (hue + shift) % 1.0
    # HSV -> RGB: each channel is v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
    # n = (5, 3, 1), made on the device: torch.tensor([...]) would copy from the host.
    n = torch.arange(5.0, 0.0, -2.0, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    k = (n + hue * 6.0) % 6.0
    return value - value * saturation * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


_JITTER_OPS = (_brightness, _contrast, _saturation, _hue)
