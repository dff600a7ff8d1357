"""Shared test settings: the smallest detector that still learns something."""

from con2 import Con2Detector

# Fits in well under a second on a CPU. The context is "invert": "vflip" is not
# distinctive on the digit 0 (check_context measures 0.74) and would warn in every test.
TINY = dict(
    context="invert",
    base_width=4,
    n_epochs=2,
    batch_size=16,
    n_test_augmentations=4,
    device="cpu",
)


def tiny_detector(**params) -> Con2Detector:
    """A Con2Detector with TINY settings, random_state=0, and ``params`` on top."""
    return Con2Detector(**{**TINY, "random_state": 0, **params})
