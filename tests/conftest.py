import os

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    # pytest -n N: share the cores out so that N workers (and the processes their tests
    # start, which inherit this) do not oversubscribe them, as joblib's loky workers do.
    # Set before torch is imported: its thread pool reads it once.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = max(1, (cores or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))

import numpy as np
import pytest
import torch
from helpers import TINY

from con2.datasets import load_digits_images


@pytest.fixture
def upright_images():
    """64 grayscale 16x16 images, dark at the top and bright at the bottom, uint8.

    A vertical flip is clearly visible on them (a distinctive context), so the detector
    has something to learn in one or two epochs.
    """
    rng = np.random.default_rng(0)
    ramp = np.linspace(0.0, 1.0, 16)[None, :, None]
    noise = rng.random((64, 16, 16)) * 0.3
    return np.clip(ramp * 0.7 + noise, 0, 1).__mul__(255).astype(np.uint8)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits, 0 as the normal class: ``(train, test, labels)``.

    100 zeros to train on; 78 held-out zeros and 80 ones to test, with labels +1
    (normal) and -1 (anomaly). Shared by every test of the session: read-only.
    """
    X, y = load_digits_images()
    zeros, ones = X[y == 0], X[y == 1]
    test = np.concatenate([zeros[100:], ones[:80]])
    labels = np.r_[np.ones(len(zeros) - 100, dtype=int), -np.ones(80, dtype=int)]
    return zeros[:100], test, labels


@pytest.fixture
def tiny():
    """Constructor arguments of the tiny detector (``helpers.TINY``), a fresh copy."""
    return dict(TINY)


@pytest.fixture(autouse=True)
def _seeded():
    """Seed the global generators so tests that draw test data are repeatable."""
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 - seeding the legacy global generator is the point


@pytest.fixture
def one_thread():
    """Torch threads of this process at 1, like Dask workers', so results are bitwise equal."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _environment_restored():
    """Put back any environment variable a test (or a library it drives) changed.

    Dask's nanny, for one, sets ``OMP_NUM_THREADS=1`` in the parent process; left in
    place, every later subprocess would run torch on another number of threads than
    the test process and cross-process comparisons of scores would differ in the last
    bits. (Fixtures of wider scope are set up before this one and restore their own.)
    """
    before = dict(os.environ)
    yield
    if os.environ != before:
        os.environ.clear()
        os.environ.update(before)
