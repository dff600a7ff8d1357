"""Shared test helpers: the smallest detector that still learns something, files to read."""

import gzip
import struct

import numpy as np
from PIL import Image

from con2 import Con2Detector

# Fits in well under a second on a CPU. The context is "invert": "vflip" is not
# distinctive on the digit 0 (check_context measures 0.74) and would warn in every test.
# float32: "auto" would train in bfloat16 on some CPUs and float32 on others, and the
# tests would then check another configuration on each machine (bfloat16 has its own).
TINY = dict(
    context="invert",
    base_width=4,
    n_epochs=2,
    batch_size=16,
    n_test_augmentations=4,
    device="cpu",
    precision="float32",
)


def tiny_detector(**params) -> Con2Detector:
    """A Con2Detector with TINY settings, random_state=0, and ``params`` on top."""
    return Con2Detector(**{**TINY, "random_state": 0, **params})


def gradient(size=16, colour=False, seed=0):
    """A uint8 image, dark at the top (a vertical flip is visible), with some noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size)[:, None] + rng.integers(0, 50, (size, size))
    gray = ramp.astype(np.uint8)
    if not colour:
        return gray
    return np.stack([gray, gray[::-1], np.full_like(gray, 90 + seed)], axis=-1)


def write(path, array, **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **save)
    return str(path)


def write_idx(path, array, code=0x08):
    """Write ``array`` as an IDX file (gzipped when the name ends in .gz)."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += b"".join(struct.pack(">I", n) for n in array.shape)
    body = array.astype(array.dtype.newbyteorder(">")).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + body)


def pinned_data():
    """64 training and 24 test images, 16x16, dark at the top; a third of the tests flipped."""
    rng = np.random.default_rng(7)
    ramp = np.linspace(0.0, 1.0, 16)[None, :, None]
    train = np.clip(ramp * 0.7 + rng.random((64, 16, 16)) * 0.3, 0, 1)
    test = np.clip(ramp * 0.7 + rng.random((24, 16, 16)) * 0.3, 0, 1)
    test[::3] = test[::3, ::-1]
    return (train * 255).astype(np.uint8), (test * 255).astype(np.uint8)
