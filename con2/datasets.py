"""Offline datasets: an IDX reader for (Fashion-)MNIST files and the built-in digits.

Nothing here downloads. Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``), which puts the
gzipped IDX files in ``/usr/share/datasets/fashion-mnist/``; any folder holding the four
standard files works.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

__all__ = ["FASHION_MNIST_CLASSES", "load_digits_images", "load_fashion_mnist", "read_idx"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_IDX_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array.

    Parameters
    ----------
    path : str or Path
        File in the IDX format of LeCun's MNIST distribution; a ``.gz`` suffix is
        decompressed on the fly.

    Returns
    -------
    array : ndarray
        With the shape and dtype the file header declares (native byte order).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()}).")
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: header says {shape} of {dtype}, i.e. "
            f"{expected} bytes, but {len(data) - offset} follow."
        )
    array = np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def load_fashion_mnist(path=None):
    """Load Fashion-MNIST from local IDX files.

    Parameters
    ----------
    path : str or Path, default=None
        Folder with ``train-images-idx3-ubyte[.gz]`` and the three sibling files. Defaults
        to ``$CON2_FASHION_MNIST`` if set, else ``/usr/share/datasets/fashion-mnist``.

    Returns
    -------
    X_train : ndarray of shape (60000, 28, 28), uint8
    y_train : ndarray of shape (60000,), uint8
    X_test : ndarray of shape (10000, 28, 28), uint8
    y_test : ndarray of shape (10000,), uint8
    """
    folder = Path(path or os.environ.get("CON2_FASHION_MNIST", FASHION_MNIST_DIR))
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")  # fmt: skip
    arrays = []
    for name in names:
        candidates = [folder / f"{name}.gz", folder / name]
        found = next((p for p in candidates if p.exists()), None)
        if found is None:
            raise FileNotFoundError(
                f"Fashion-MNIST file {name}[.gz] not found in {folder}. On Debian/Ubuntu run "
                "`apt-get install -y dataset-fashion-mnist`, or download the four IDX files "
                "from https://github.com/zalandoresearch/fashion-mnist and pass their folder "
                "as `path` (or set CON2_FASHION_MNIST)."
            )
        arrays.append(read_idx(found))
    return tuple(arrays)


def load_digits_images():
    """Return scikit-learn's 8x8 digits as images.

    Returns
    -------
    X : ndarray of shape (1797, 8, 8), uint8
        Grey levels 0..16 of the original data rescaled to 0..255.
    y : ndarray of shape (1797,), int
        The digit shown.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return X, digits.target
