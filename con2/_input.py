"""Turn what users pass as ``X`` into one canonical image tensor, or say precisely why not.

Accepted layouts (see the README, "Input"):

- ``(n_samples, height, width)``: grayscale images;
- ``(n_samples, n_channels, height, width)``: channels first (torch convention);
- ``(n_samples, height, width, n_channels)``: channels last (numpy/PIL convention);
- ``(n_samples, n_features)``: flattened images in ``(n_channels, height, width)`` order
  when ``image_shape`` is given, otherwise each row is one image of height 1.

``n_channels`` is 1 or 3. Values are ``uint8`` (0..255) or floats in [0, 1], unless
``value_range=(low, high)`` declares another intensity range, which is then mapped
linearly onto [0, 1]. The canonical form is a CPU tensor of shape
``(n_samples, n_channels, height, width)``, ``uint8`` or ``float32`` in [0, 1].
"""

from __future__ import annotations

import hashlib
from numbers import Real

import numpy as np
import torch
from sklearn.utils.validation import check_array, validate_data

CHANNELS = (1, 3)


def check_image_shape(image_shape) -> tuple[int, int, int] | None:
    """Validate the ``image_shape`` parameter and return it as ``(C, H, W)`` or None."""
    if image_shape is None:
        return None
    if not isinstance(image_shape, tuple | list | torch.Size) or len(image_shape) not in (2, 3):
        raise ValueError(
            "image_shape must be None, (height, width) or (n_channels, height, width); "
            f"got {image_shape!r}."
        )
    if not all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in image_shape):
        raise TypeError(f"image_shape must hold integers; got {image_shape!r}.")
    shape = tuple(int(v) for v in image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if shape[0] not in CHANNELS or shape[1] < 1 or shape[2] < 1:
        raise ValueError(
            f"image_shape must have 1 or 3 channels and a positive height and width; got {shape}."
        )
    return shape


def check_value_range(value_range) -> tuple[float, float] | None:
    """Validate the ``value_range`` parameter."""
    if value_range is None:
        return None
    ok = (
        isinstance(value_range, tuple | list)
        and len(value_range) == 2
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in value_range)
        and np.all(np.isfinite(value_range))
        and value_range[0] < value_range[1]
    )
    if not ok:
        raise ValueError(
            "value_range must be None or a pair (low, high) of finite numbers with low < high; "
            f"got {value_range!r}."
        )
    return float(value_range[0]), float(value_range[1])


def as_images(X, *, image_shape=None, value_range=None) -> torch.Tensor:
    """Validate ``X`` without an estimator and return canonical images.

    Parameters
    ----------
    X : array-like or Tensor
        Images in any layout listed in the module docstring.
    image_shape : tuple of int, default=None
        ``(n_channels, height, width)`` to read flattened rows or resolve an ambiguous
        channel axis.
    value_range : tuple of float, default=None
        Intensity range of the pixel values; see :class:`con2.Con2Detector`.

    Returns
    -------
    images : Tensor of shape (n_samples, n_channels, height, width)
        ``uint8`` or ``float32`` in [0, 1], on the CPU.
    """
    X = _check_array(X)
    images = _to_nchw(X, check_image_shape(image_shape), fitted=False)
    return _to_unit_range(images, check_value_range(value_range))


def _check_array(X, estimator=None, reset=True) -> np.ndarray:
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    if isinstance(X, list | tuple) and X and all(hasattr(x, "shape") for x in X):
        shapes = sorted({tuple(x.shape) for x in X})
        if len(shapes) > 1:
            raise ValueError(
                f"All images must have the same shape; got {len(shapes)} shapes, e.g. "
                f"{shapes[-1]} and {shapes[0]}. Resize or crop them first."
            )
    ndim = getattr(X, "ndim", None)
    if ndim is None:  # lists, tuples, _NotAnArray: let check_array find the shape
        X = check_array(X, dtype="numeric", allow_nd=True, ensure_2d=False, ensure_all_finite=False)
        ndim = X.ndim
    if ndim <= 2 and estimator is not None:
        return validate_data(estimator, X, reset=reset, dtype="numeric")
    return check_array(X, dtype="numeric", allow_nd=True)


def validate_images(estimator, X, *, reset: bool) -> torch.Tensor:
    """Validate ``X`` for ``estimator`` and return canonical images.

    With ``reset=True`` (in ``fit``) this sets ``n_features_in_`` (the number of pixel
    values per image), ``feature_names_in_`` for DataFrames, and the caller stores the
    image shape. With ``reset=False`` the images must match ``estimator.image_shape_``.
    """
    if not reset:
        _refuse_single_image(X, estimator.image_shape_)
    X = _check_array(X, estimator, reset)
    if reset:
        shape = check_image_shape(estimator.image_shape)
    else:
        shape = estimator.image_shape_
    images = _to_nchw(X, shape, fitted=not reset)
    if reset:
        estimator.n_features_in_ = int(np.prod(images.shape[1:]))
    return _to_unit_range(images, check_value_range(estimator.value_range))


def _refuse_single_image(X, image_shape) -> None:
    """Name the mistake when one image comes without its batch axis.

    Only shapes that no batch reading explains are refused: a (1, H, W) array is a
    batch of one grayscale image, a (1, n_features) array one flattened image.
    """
    shape = tuple(getattr(X, "shape", ()))
    channels, height, width = image_shape
    looks_single = shape in {(channels, height, width), (height, width, channels)} or (
        channels == 1 and shape == (height, width)
    )
    batch = (len(shape) == 2 and shape[1] == channels * height * width) or (
        len(shape) == 3 and channels == 1 and shape[1:] == (height, width)
    )
    if looks_single and not batch:
        raise ValueError(
            f"X of shape {shape} looks like a single image; pass a batch of images, "
            "e.g. X[None] for one image."
        )


def _to_nchw(X: np.ndarray, shape, *, fitted: bool) -> np.ndarray:
    """Reshape a validated array to ``(n_samples, C, H, W)``, resolving the layout."""
    where = "this model was fitted on" if fitted else "image_shape is"
    if X.ndim == 2:
        if shape is None:
            return X.reshape(X.shape[0], 1, 1, X.shape[1])
        if X.shape[1] != np.prod(shape):
            raise ValueError(
                f"X has {X.shape[1]} features per row, but {where} {shape} "
                f"(n_channels, height, width), which is {int(np.prod(shape))} values."
            )
        return X.reshape(X.shape[0], *shape)
    if X.ndim == 3:
        if shape is not None and shape != (1, *X.shape[1:]):
            raise ValueError(
                f"3-D X is read as grayscale images (n_samples, height, width) = {X.shape}, "
                f"but {where} {shape} (n_channels, height, width). For a single image, "
                "add a leading batch axis: X[None]."
            )
        return X[:, None]
    if X.ndim == 4:
        return _resolve_4d(X, shape, where)
    raise ValueError(
        f"X must be 2-D, 3-D or 4-D (a batch of images); got a {X.ndim}-D array of shape {X.shape}."
    )


def _resolve_4d(X: np.ndarray, shape, where: str) -> np.ndarray:
    first, last = X.shape[1:], (X.shape[3], X.shape[1], X.shape[2])
    if shape is not None:
        if first == shape:
            return X
        if last == shape:
            return X.transpose(0, 3, 1, 2)
        raise ValueError(
            f"X of shape {X.shape} does not match {where} {shape} (n_channels, height, "
            "width) in either layout (n_samples, C, H, W) or (n_samples, H, W, C)."
        )
    channels_first = X.shape[1] in CHANNELS
    channels_last = X.shape[3] in CHANNELS
    if channels_first and channels_last:
        raise ValueError(
            f"The channel axis of X with shape {X.shape} is ambiguous: axis 1 and axis 3 "
            "could both hold 1 or 3 channels. Pass image_shape=(n_channels, height, width) "
            "to say which."
        )
    if channels_first:
        return X
    if channels_last:
        return X.transpose(0, 3, 1, 2)
    raise ValueError(
        f"4-D X must have 1 or 3 channels on axis 1 (n_samples, C, H, W) or on axis 3 "
        f"(n_samples, H, W, C); got shape {X.shape}. Drop an alpha channel with X[..., :3]."
    )


def _to_unit_range(X: np.ndarray, value_range) -> torch.Tensor:
    """Map pixel values to uint8 or float32 in [0, 1], refusing ambiguous ranges."""
    if value_range is None:
        if X.dtype == np.bool_:  # binary images: False is black, True is white
            X = X.astype(np.uint8) * np.uint8(255)
        if X.dtype == np.uint8:
            return _as_tensor(X)
        if X.dtype.kind in "iu":
            raise ValueError(
                f"Integer images must be uint8 (0..255); got dtype {X.dtype}. Convert with "
                "X.astype(np.uint8) if the values are 8-bit, or pass value_range=(low, high) "
                "for another intensity range, e.g. (0, 65535) for 16-bit images."
            )
        low, high = float(X.min()), float(X.max())
        if low < 0.0 or high > 1.0:
            hint = (
                " They look like 8-bit values: pass X.astype(np.uint8) or value_range=(0, 255)."
                if low >= 0.0 and high <= 255.0
                else " Pass value_range=(low, high) to declare the intensity range."
            )
            raise ValueError(
                f"Float images must lie in [0, 1]; got values in [{low:g}, {high:g}].{hint}"
            )
        return _as_tensor(X.astype(np.float32, copy=False))
    low, high = value_range
    if X.dtype == np.uint8 and (low, high) == (0.0, 255.0):
        return _as_tensor(X)
    data_low, data_high = float(X.min()), float(X.max())
    if data_low < low or data_high > high:
        raise ValueError(
            f"Images must lie in value_range=({low:g}, {high:g}); got values in "
            f"[{data_low:g}, {data_high:g}]."
        )
    scaled = (X.astype(np.float64, copy=False) - low) / (high - low)
    return _as_tensor(scaled.astype(np.float32))


def _as_tensor(X: np.ndarray) -> torch.Tensor:
    if not (X.flags.c_contiguous and X.flags.writeable):
        X = np.array(X, order="C", copy=True)
    return torch.from_numpy(X)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Return canonical images as floats in [0, 1] (on their current device)."""
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


class TrainingIndex:
    """Recognise training images by their pixels (a 16-byte hash of each).

    Lets leave-one-out scorers score a training image without its own entry when it comes
    back through ``score_samples``. Memory: 16 bytes and an int per training image.
    """

    def __init__(self, images: torch.Tensor):
        self.positions = {}
        for i, image in enumerate(images):
            self.positions.setdefault(_digest(image), i)  # duplicates: the first one

    @classmethod
    def from_positions(cls, positions: dict) -> TrainingIndex:
        """Rebuild an index from its ``positions`` (digest -> training index)."""
        index = cls.__new__(cls)
        index.positions = dict(positions)
        return index

    def lookup(self, images: torch.Tensor) -> torch.Tensor:
        """Return the training index of each image, or -1."""
        return torch.tensor([self.positions.get(_digest(x), -1) for x in images])


def _digest(image: torch.Tensor) -> bytes:
    return hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest()
