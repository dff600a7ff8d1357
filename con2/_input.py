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

A folder or a list of image files is another ``X``: :mod:`con2.io` decodes it into the
same canonical form (:func:`training_images`, :func:`scoring_batches`). Arrays that live
on disk (``numpy.memmap``, ``np.load(..., mmap_mode="r")``) and the decode cache of
files are used in place, never copied whole into memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import warnings
from numbers import Real

import numpy as np
import torch
from sklearn import get_config
from sklearn.base import clone
from sklearn.utils.validation import check_array, validate_data

from con2 import io
from con2._utils import warn

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
        X = X.detach().cpu()
        if X.dtype.is_floating_point and X.dtype.itemsize < 4 and X.dtype != torch.float16:
            X = X.float()  # bfloat16 and float8 have no numpy dtype; float32 holds them exactly
        X = X.numpy()
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

    With ``reset=True`` (in ``fit``) scikit-learn's validation records
    ``n_features_in_`` and, for DataFrames, ``feature_names_in_`` on ``estimator``
    (:func:`training_images` passes a stand-in, so the detector changes only when its fit
    succeeds). With ``reset=False`` the images must match ``estimator.image_shape_``.
    """
    if not reset:
        _refuse_single_image(X, estimator.image_shape_)
    X = _check_array(X, estimator, reset)
    if reset:
        shape = check_image_shape(estimator.image_shape)
    else:
        shape = estimator.image_shape_
    images = _to_nchw(X, shape, fitted=not reset)
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
        if X.dtype != np.float32:
            _warn_if_copied_from_disk(X)
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
    _warn_if_copied_from_disk(X)
    scaled = (X.astype(np.float64, copy=False) - low) / (high - low)
    return _as_tensor(scaled.astype(np.float32))


def _warn_if_copied_from_disk(X: np.ndarray) -> None:
    """Say so when a memory-mapped file is about to be converted whole in memory."""
    if on_disk(X):
        warn(
            f"X is a memory-mapped file of {X.dtype} values, which are converted in memory "
            f"({X.size * 4 / 2**20:.0f} MiB as float32). Only uint8 images (with "
            "value_range None or (0, 255)) and float32 images in [0, 1] are read in place."
        )


def _as_tensor(X: np.ndarray) -> torch.Tensor:
    """Share ``X``'s memory, also when it is read-only or strided (memory-mapped files).

    Canonical images are never written to (:func:`to_float` returns new tensors), so a
    read-only array is safe to share; copying it would load a memory-mapped file whole.
    Negative strides (``X[::-1]``), which tensors cannot represent, are copied.
    """
    if any(stride < 0 for stride in X.strides):
        X = np.ascontiguousarray(X)
    if X.flags.writeable:
        return torch.from_numpy(X)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable")
        return torch.from_numpy(X)


def on_disk(X) -> bool:
    """Whether the array ``X`` (or what it views) is a memory-mapped file."""
    while X is not None:
        if isinstance(X, np.memmap | mmap.mmap):
            return True
        X = getattr(X, "base", None)
    return False


def to_float(images: torch.Tensor) -> torch.Tensor:
    """Return canonical images as new float tensors in [0, 1] (on their current device).

    Always a new tensor: canonical images may share memory with the user's array or a
    read-only file, and what follows may work in place.
    """
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.to(torch.float32, copy=True)


@contextlib.contextmanager
def training_images(estimator, X):
    """Yield ``(images, on_disk, features)`` for a fit of ``estimator`` on ``X``.

    ``images`` are the canonical training images and ``on_disk`` says whether they live
    in a file. Arrays are validated as :func:`validate_images` does. Files are listed,
    every header is checked, then all are decoded in parallel into a memory-mapped cache
    in ``estimator.cache_dir`` (a temporary folder when None), removed on leaving the
    block. ``features`` holds the fitted attributes the input sets, ``n_features_in_``
    (pixel values per image) and, for a DataFrame, ``feature_names_in_``; the estimator
    itself is not changed.
    """
    if not io.is_file_input(X):
        stand_in = clone(estimator)  # scikit-learn's validation records features on it
        images = validate_images(stand_in, X, reset=True)
        features = {"n_features_in_": int(np.prod(images.shape[1:]))}
        if hasattr(stand_in, "feature_names_in_"):
            features["feature_names_in_"] = stand_in.feature_names_in_
        # on disk only if the images still read the file (not a converted copy of it)
        yield images, on_disk(X) and np.may_share_memory(images.numpy(), X), features
        return
    paths = io.list_images(X)
    infos = io.inspect_files(paths)
    shape = io.target_shape(infos, _file_image_shape(estimator.image_shape))
    value_range = check_value_range(estimator.value_range)
    dtype = io.cache_dtype(infos, value_range)
    with io.decode_cache(paths, shape, dtype, value_range, estimator.cache_dir) as cache:
        yield _as_tensor(cache), True, {"n_features_in_": int(np.prod(shape))}


def scoring_batches(estimator, X):
    """Yield canonical images of ``X`` for a fitted ``estimator``, batch by batch.

    An array is one batch (the estimator chunks it further). Files are decoded in
    parallel, a batch at a time, at the fitted image shape, so a folder of any size is
    scored in bounded memory.
    """
    if not io.is_file_input(X):
        yield validate_images(estimator, X, reset=False)
        return
    paths = io.list_images(X)
    shape = estimator.image_shape_
    value_range = check_value_range(estimator.value_range)
    per_batch = max(64, get_config()["working_memory"] * 2**20 // (16 * int(np.prod(shape))))
    for start in range(0, len(paths), per_batch):
        batch = paths[start : start + per_batch]
        infos = io.inspect_files(batch)
        dtype = io.cache_dtype(infos, value_range)
        yield torch.from_numpy(io.decode_files(batch, shape, dtype, value_range))


def read_files(paths: list, image_shape=None, value_range=None) -> torch.Tensor:
    """Decode image files (all of them, in memory) into canonical images."""
    infos = io.inspect_files(paths)
    shape = io.target_shape(infos, _file_image_shape(image_shape))
    value_range = check_value_range(value_range)
    dtype = io.cache_dtype(infos, value_range)
    return torch.from_numpy(io.decode_files(paths, shape, dtype, value_range))


def _file_image_shape(image_shape):
    """``image_shape`` for files: ``(C, H, W)``, or ``(H, W)`` to take channels from files."""
    if image_shape is None:
        return None
    if isinstance(image_shape, tuple | list) and len(image_shape) == 2:
        check_image_shape(image_shape)  # validates the numbers
        return tuple(int(v) for v in image_shape)
    return check_image_shape(image_shape)


class TrainingIndex:
    """Recognise training images by their pixels (a 16-byte hash of each).

    Lets leave-one-out scorers score a training image without its own entry when it comes
    back through ``score_samples``. Memory: 24 bytes per training image (its hash and its
    index, in sorted arrays).

    Attributes
    ----------
    digests : ndarray of shape (n_unique,), void16
        Sorted hashes.
    positions : ndarray of shape (n_unique,), int64
        Training index of each hash (of duplicate images, the first).
    """

    def __init__(self, images: torch.Tensor):
        digests = np.frombuffer(b"".join(_digest(image) for image in images), "V16")
        self._set(digests, np.arange(len(digests)))

    def _set(self, digests: np.ndarray, positions: np.ndarray) -> None:
        order = np.lexsort((positions, digests))  # by hash, then by index
        digests, positions = digests[order], positions[order]
        first = np.ones(len(digests), dtype=bool)
        first[1:] = digests[1:] != digests[:-1]
        self.digests, self.positions = digests[first], positions[first].astype(np.int64)

    @classmethod
    def from_arrays(cls, digests: np.ndarray, positions: np.ndarray) -> TrainingIndex:
        """Rebuild an index from hashes (n, 16) uint8 and their training indices."""
        index = cls.__new__(cls)
        index._set(np.ascontiguousarray(digests, np.uint8).view("V16").ravel(),
                   np.asarray(positions))  # fmt: skip
        return index

    def lookup(self, images: torch.Tensor) -> torch.Tensor:
        """Return the training index of each image, or -1."""
        queries = np.frombuffer(b"".join(_digest(x) for x in images), "V16")
        found = np.searchsorted(self.digests, queries).clip(0, max(len(self.digests) - 1, 0))
        hit = self.digests[found] == queries if len(self.digests) else np.zeros(len(queries), bool)
        return torch.from_numpy(np.where(hit, self.positions[found], -1))


def _digest(image: torch.Tensor) -> bytes:
    return hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest()
