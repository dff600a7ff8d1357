"""Image files in, canonical images out: listing, checking, decoding, resizing, caching.

Nothing else in con2 opens image files. A folder or a list of paths is turned into the
same canonical images every other input becomes: an array of shape (n_samples,
n_channels, height, width), ``uint8`` (8-bit files) or ``float32`` in [0, 1] (16-bit
files, or any file with ``value_range``).

What each Pillow mode becomes (files are decoded with Pillow; PNG, JPEG, BMP, TIFF and
WEBP; EXIF orientation is applied, so an image is used the way viewers show it; of a
multi-page TIFF, the first page):

====================  ==========================================================
mode                  becomes
====================  ==========================================================
``1``                 grayscale, black 0 and white 255
``L``                 grayscale, 8-bit
``LA``                grayscale, 8-bit; the alpha channel is discarded
``I;16`` (B, L, N)    grayscale, 16-bit: its values over 0..65535 (or ``value_range``)
``I``                 as ``I;16`` when every value lies in 0..65535, else an error
``P``                 colour: the palette's RGB values (transparency is ignored)
``RGB``               colour, 8-bit
``RGBA``              colour, 8-bit; the alpha channel is discarded
``CMYK``              colour, converted to RGB by Pillow
``YCbCr``, ``LAB``,   colour, converted to RGB by Pillow
``HSV``
``F`` and others      an error (floating-point files are ambiguous about their range)
====================  ==========================================================

Channels. The training files fix the number of channels: all grayscale gives 1, any
colour gives 3 (grayscale files are then repeated over 3 channels). Colour is never
dropped silently: a colour file for a 1-channel model is an error naming the file,
unless its three channels are equal.

Size. Files are resized whole to the model's ``(height, width)`` (bilinear, with Pillow's
antialiasing when shrinking), never cropped: a crop could cut the defect away. The
aspect ratio follows the target. Files already at the target size are not resampled.

Values. 8-bit files stay ``uint8``. 16-bit files become ``float32`` in [0, 1]: their
values over 0..65535, or over ``value_range`` when one is given, computed exactly as for
an array with that ``value_range``; with ``value_range``, 8-bit files are mapped the same
way. 16-bit colour files are read at 8 bits (Pillow's RGB modes hold 8 bits a channel).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from con2._utils import allocate, scratch_folder

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFileError",
    "decode_cache",
    "decode_files",
    "inspect_files",
    "is_file_input",
    "list_images",
    "target_shape",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_GRAY_MODES = {"1": "L", "L": "L", "LA": "L", "I;16": "I;16", "I;16B": "I;16",
               "I;16L": "I;16", "I;16N": "I;16", "I": "I;16"}  # fmt: skip
_COLOUR_MODES = {"P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "PA"}
_PARALLEL_MIN_FILES = 64  # below this, decoding in this process beats starting workers
_BATCH_FILES = 256  # files per task handed to a decoding worker


class ImageFileError(ValueError):
    """A file that cannot be used as an image; ``path`` names it."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # rebuilt from (path, reason) after crossing a process boundary
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class FileInfo:
    """What a file's header says: its size (width, height) and its kind of pixels.

    ``kind`` is ``"gray8"``, ``"gray16"`` or ``"colour"``.
    """

    path: str
    size: tuple
    kind: str


def is_file_input(X) -> bool:
    """Whether ``X`` names files: a path, or a non-empty list or 1-D array of paths."""
    if isinstance(X, str | os.PathLike):
        return True
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and X.size > 0 and X.dtype.kind in "USO" and _all_paths(X.tolist())
    return isinstance(X, list | tuple) and len(X) > 0 and _all_paths(X)


def _all_paths(items) -> bool:
    return all(isinstance(item, str | os.PathLike) for item in items)


def list_images(X) -> list:
    """Return the image files ``X`` names, as strings.

    A folder gives every file below it with an image extension, recursively, in sorted
    relative-path order; hidden files and folders (names starting with ".") and other
    extensions are ignored. A file path gives itself. A list gives its paths in order
    (folders in it are expanded in place). Missing paths and empty folders are errors.
    """
    items = [X] if isinstance(X, str | os.PathLike) else list(X)
    files = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = _folder_images(path)
            if not found:
                raise ImageFileError(path, _empty_folder_reason(path))
            files += found
        elif path.exists():
            files.append(str(item))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder.")
    return files


def _folder_images(folder: Path) -> list:
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(root, name)
            for name in names
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        ]
    return [str(p) for p in sorted(found, key=lambda p: p.relative_to(folder).parts)]


def _empty_folder_reason(folder: Path) -> str:
    if not any(folder.iterdir()):
        return "the folder is empty."
    return (
        "the folder holds no image files (extensions "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}; hidden files are ignored)."
    )


def inspect_files(paths: list, n_jobs: int | None = None) -> list:
    """Read every file's header (cheap: no pixels are decoded) and return FileInfos.

    Raises :class:`ImageFileError` naming the first file that is missing, not an image,
    or of an unsupported mode.
    """
    return _map_batches(_inspect_batch, paths, (), n_jobs)


def _inspect_batch(paths: list) -> list:
    return [_inspect(path) for path in paths]


def _inspect(path) -> FileInfo:
    with _open(path) as image:
        kind = _kind(path, image.mode)
        width, height = image.size
        if _exif_swaps_axes(image):
            width, height = height, width
    return FileInfo(str(path), (width, height), kind)


def _kind(path, mode: str) -> str:
    if mode in _GRAY_MODES:
        return "gray16" if _GRAY_MODES[mode] == "I;16" else "gray8"
    if mode in _COLOUR_MODES:
        return "colour"
    raise ImageFileError(path, f"Pillow mode {mode!r} is not supported (see con2.io).")


def _exif_swaps_axes(image) -> bool:
    try:
        orientation = image.getexif().get(0x0112, 1)  # EXIF Orientation
    except Exception:  # a damaged EXIF block: the pixels are still usable
        return False
    return orientation in (5, 6, 7, 8)


@contextlib.contextmanager
def _open(path):
    """Open an image file, turning every way it can fail into an ImageFileError."""
    try:
        with Image.open(path) as image:
            yield image
    except ImageFileError:
        raise
    except FileNotFoundError:
        raise ImageFileError(path, "no such file.") from None
    except UnidentifiedImageError:
        raise ImageFileError(path, "not an image file Pillow can read.") from None
    except Image.DecompressionBombError as exc:
        raise ImageFileError(path, f"refused as a decompression bomb ({exc}).") from None
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise ImageFileError(path, f"unreadable ({exc}).") from None


def target_shape(infos: list, image_shape=None) -> tuple:
    """Return the ``(n_channels, height, width)`` that training files are brought to.

    Channels come from ``image_shape`` when it has three entries, else from the files
    (any colour file: 3, else 1). The size comes from ``image_shape``, else all files must
    share one (the error names two that differ and suggests ``image_shape``).
    """
    channels = 3 if any(info.kind == "colour" for info in infos) else 1
    if image_shape is not None and len(image_shape) == 3:
        channels = int(image_shape[0])
    if image_shape is not None:
        return channels, int(image_shape[-2]), int(image_shape[-1])
    first = infos[0]
    for info in infos[1:]:
        if info.size != first.size:
            raise ValueError(
                f"The training files differ in size: {first.path} is {first.size[0]}x"
                f"{first.size[1]} and {info.path} is {info.size[0]}x{info.size[1]} (width x "
                "height). Pass image_shape=(n_channels, height, width) to resize them all."
            )
    return channels, first.size[1], first.size[0]


def cache_dtype(infos: list, value_range) -> np.dtype:
    """``uint8`` when every file is 8-bit and no other range is declared, else float32."""
    eight_bit = all(info.kind != "gray16" for info in infos)
    if eight_bit and value_range in (None, (0.0, 255.0)):
        return np.dtype(np.uint8)
    return np.dtype(np.float32)


def decode(path, shape: tuple, dtype, value_range=None) -> np.ndarray:
    """Decode one file to a canonical image of ``shape = (n_channels, height, width)``."""
    channels, height, width = shape
    with _open(path) as image:  # decoding errors inside the block are named too
        pixels = _resized(_pixels(path, ImageOps.exif_transpose(image)), (width, height))
    pixels = _channels(path, pixels, channels)
    return _scaled(path, pixels, dtype, value_range)


def _pixels(path, image):
    """Return the image in mode L, RGB, or F holding 16-bit values."""
    mode = image.mode
    kind = _kind(path, mode)
    if kind == "colour":
        return image.convert("RGB")
    if kind == "gray8":
        return image.convert("L")
    values = np.asarray(image)
    if values.dtype.kind == "i" and (values.min() < 0 or values.max() > 65535):
        raise ImageFileError(
            path, f"32-bit values in [{values.min()}, {values.max()}] exceed 16 bits."
        )
    return Image.fromarray(values.astype(np.float32))  # mode F


def _resized(image, size: tuple) -> np.ndarray:
    if image.size != size:
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _channels(path, pixels: np.ndarray, channels: int) -> np.ndarray:
    if pixels.shape[0] == channels:
        return pixels
    if channels == 3:
        return np.repeat(pixels, 3, axis=0)
    if np.array_equal(pixels[0], pixels[1]) and np.array_equal(pixels[0], pixels[2]):
        return pixels[:1]
    raise ImageFileError(
        path,
        "a colour file, but the model reads grayscale images (1 channel) and colour is "
        "never dropped silently; convert the file to grayscale or train on colour images.",
    )


def _scaled(path, pixels: np.ndarray, dtype, value_range) -> np.ndarray:
    if dtype == np.uint8:
        return pixels
    low, high = value_range if value_range is not None else (
        (0.0, 65535.0) if pixels.dtype == np.float32 else (0.0, 255.0))  # fmt: skip
    data_low, data_high = float(pixels.min()), float(pixels.max())
    if data_low < low or data_high > high:
        raise ImageFileError(
            path, f"values in [{data_low:g}, {data_high:g}] lie outside value_range "
            f"({low:g}, {high:g}).",
        )  # fmt: skip
    # The same arithmetic as for arrays with a value_range (con2._input).
    return ((pixels.astype(np.float64) - low) / (high - low)).astype(np.float32)


def decode_files(paths: list, shape: tuple, dtype, value_range=None, n_jobs=None) -> np.ndarray:
    """Decode ``paths`` in parallel into an in-memory array of canonical images."""
    parts = _map_batches(_decode_batch, paths, (shape, dtype, value_range, None), n_jobs)
    return np.stack(parts) if parts else np.empty((0, *shape), dtype)


@contextlib.contextmanager
def decode_cache(paths: list, shape: tuple, dtype, value_range=None, directory=None,
                 n_jobs=None):  # fmt: skip
    """Decode ``paths`` in parallel into a memory-mapped file; yield it read-only.

    The file lives in a new folder inside ``directory`` (the system's temporary folder
    when None), removed on leaving the block, also when the process is terminated;
    folders of killed processes are removed by the next cache (see
    :func:`con2._utils.scratch_folder`). The file's room is reserved before decoding: a
    disk without it is a one-line error, not a crash half way. Workers write their rows
    into the file themselves, so no decoded pixels travel between processes and the
    cache never needs to fit in memory.
    """
    full_shape = (len(paths), *shape)
    nbytes = int(np.prod(full_shape)) * np.dtype(dtype).itemsize
    with scratch_folder("con2-cache-", directory, nbytes) as folder:
        file = folder / ("images.u8" if dtype == np.uint8 else "images.f32")
        allocate(file, nbytes)
        target = (str(file), np.dtype(dtype).str, full_shape)
        _map_batches(_decode_batch, list(enumerate(paths)), (shape, dtype, value_range, target),
                     n_jobs)  # fmt: skip
        yield np.memmap(file, dtype=dtype, mode="r", shape=full_shape)


def _decode_batch(items, shape, dtype, value_range, target):
    """Decode a batch; write it into ``target`` (a memmap spec) or return the images."""
    if target is None:
        return [decode(path, shape, dtype, value_range) for path in items]
    file, dtype_str, full_shape = target
    out = np.memmap(file, dtype=np.dtype(dtype_str), mode="r+", shape=full_shape)
    for index, path in items:
        out[index] = decode(path, shape, dtype, value_range)
    out.flush()
    return []


def _map_batches(function, items: list, args: tuple, n_jobs) -> list:
    """Run ``function(batch, *args)`` over batches of ``items``; concatenate the results.

    In parallel worker processes (joblib's loky backend, reused between calls; one per
    CPU unless ``n_jobs`` says otherwise) when there are enough items, else here.
    """
    n_jobs = joblib.cpu_count() if n_jobs is None else n_jobs
    if n_jobs == 1 or len(items) < _PARALLEL_MIN_FILES:
        return function(items, *args)
    size = max(1, min(_BATCH_FILES, -(-len(items) // (4 * n_jobs))))
    batches = [items[i : i + size] for i in range(0, len(items), size)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # loky's worker-restart notices
        parts = joblib.Parallel(n_jobs=n_jobs, backend="loky")(
            joblib.delayed(function)(batch, *args) for batch in batches
        )
    return [item for part in parts for item in part]
