"""Every wrong input gets a precise error from our own validation, or is handled correctly.

The closing table of issue 5 lists these cases; the README's "Errors and safety" section
summarises them.
"""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import torch
from helpers import tiny_detector
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import NotFittedError
from sklearn.utils._param_validation import InvalidParameterError

from con2 import NearestNeighborScorer, check_context
from con2._input import as_images
from con2.contexts import VerticalFlip

RNG = np.random.default_rng(0)
GOOD = RNG.random((20, 8, 8)) * 0.5  # 20 dark 8x8 images: "invert" is distinctive on them


@pytest.fixture(scope="module")
def fitted():
    """A detector fitted on GOOD. Read-only."""
    return tiny().fit(GOOD)


def tiny(**params):
    """The tiny detector, sized for the 20 images of GOOD."""
    return tiny_detector(**{"n_epochs": 1, "batch_size": 8, "n_test_augmentations": 2, **params})


def with_nan():
    x = GOOD.copy()
    x[3, 2, 2] = np.nan
    return x


def with_inf():
    x = GOOD.copy()
    x[0, 0, 0] = np.inf
    return x


class Crop:
    distinctive = True
    aligned = True

    def __call__(self, x):
        return x[..., 1:]


class ToDouble:
    distinctive = True
    aligned = True

    def __call__(self, x):
        return x.double()


class Flat(torch.nn.Module):
    embed_dim = 10

    def forward(self, x):
        return x.flatten(1)


FIT_CASES = [
    ("NaN pixel", with_nan(), {}, ValueError, "NaN"),
    ("infinite pixel", with_inf(), {}, ValueError, "infinity"),
    ("uint8 values as floats 0..255", GOOD * 255, {}, ValueError, r"\[0, 1\].*8-bit.*uint8"),
    ("negative floats", GOOD - 0.5, {}, ValueError, r"\[0, 1\].*value_range"),
    ("one dimension", GOOD[0, 0], {}, ValueError, "Expected 2D array"),
    ("five dimensions", GOOD[:, None, None], {}, ValueError, "2-D, 3-D or 4-D"),
    ("ambiguous channel axis", RNG.random((4, 3, 8, 3)), {}, ValueError, "ambiguous"),
    ("four channels", RNG.random((4, 8, 8, 4)), {}, ValueError, "1 or 3 channels"),
    ("zero images", GOOD[:0], {}, ValueError, "0 sample"),
    ("one image", GOOD[:1], {}, ValueError, "n_samples=1"),
    ("two images for Ledoit-Wolf", GOOD[:2], {"scorer": "lh"}, ValueError,
     "needs at least 3 training images"),
    ("fewer images than neighbours", GOOD[:5], {"scorer": NearestNeighborScorer(n_neighbors=5)},
     ValueError, "needs at least 6 training images"),
    ("object array of strings", np.array([["a", "b"], ["c", "d"]], dtype=object), {},
     ValueError, "could not convert|numeric"),
    ("string dtype", np.array([["a", "b"], ["c", "d"]]), {}, ValueError, "strings"),
    ("complex dtype", GOOD.astype(complex), {}, ValueError, "Complex data not supported"),
    ("sparse matrix", scipy.sparse.csr_matrix(GOOD.reshape(20, -1)), {}, TypeError, "[Ss]parse"),
    ("list of images of different shapes", [GOOD[0], GOOD[1, :7]], {}, ValueError,
     r"same shape.*\(8, 8\).*\(7, 8\)"),
    ("int64 images", (GOOD * 255).astype(np.int64), {}, ValueError, "must be uint8"),
    ("16-bit images without a range", (GOOD * 4095).astype(np.uint16), {}, ValueError,
     "value_range"),
    ("values outside the declared range", GOOD * 20, {"value_range": (0, 5)}, ValueError,
     "must lie in value_range"),
    ("single pixel images", GOOD[:, :1, :1].reshape(20, 1), {}, ValueError, "n_features=1"),
    ("flattened rows of the wrong length", GOOD.reshape(20, -1)[:, :60],
     {"image_shape": (1, 8, 8)}, ValueError, "60 features per row"),
]  # fmt: skip


@pytest.mark.parametrize("name, X, params, error, match", FIT_CASES, ids=[c[0] for c in FIT_CASES])
def test_fit_rejects_bad_images(name, X, params, error, match, monkeypatch):
    import con2._training

    def no_training(*args, **kwargs):  # every refusal comes before any training
        raise AssertionError("training started")

    monkeypatch.setattr(con2._training, "train_epoch", no_training)
    with pytest.raises(error, match=match):
        tiny(**params).fit(X)


PARAM_CASES = [
    ("unknown context name", {"context": "hflip"}, InvalidParameterError, "'context' parameter"),
    ("context class instead of instance", {"context": VerticalFlip}, TypeError,
     "ContextAugmentation object"),
    ("unknown scorer name", {"scorer": "knn"}, InvalidParameterError, "'scorer' parameter"),
    ("scorer without score_samples", {"scorer": object()}, InvalidParameterError,
     "'scorer' parameter"),
    ("batch size 1", {"batch_size": 1}, InvalidParameterError, "'batch_size'"),
    ("zero epochs", {"n_epochs": 0}, InvalidParameterError, "'n_epochs'"),
    ("epochs as a float", {"n_epochs": 2.5}, InvalidParameterError, "'n_epochs'"),
    ("contamination above 0.5", {"contamination": 0.7}, InvalidParameterError,
     "'contamination'"),
    ("negative temperature", {"temperature": -1.0}, InvalidParameterError, "'temperature'"),
    ("learning rate as text", {"learning_rate": "fast"}, InvalidParameterError,
     "'learning_rate'"),
    ("unknown device", {"device": "tpu"}, ValueError, "device must be"),
    ("two-channel image shape", {"image_shape": (2, 8, 8)}, ValueError, "1 or 3 channels"),
    ("reversed value range", {"value_range": (1, 0)}, ValueError, "low < high"),
    ("fewer test-time views than contexts", {"context": ["vflip", "invert"],
     "n_test_augmentations": 2}, ValueError, "fewer than the 3 contexts"),
    ("backbone with the wrong output shape", {"backbone": lambda shape: Flat()}, ValueError,
     "embed_dim=10"),
    ("backbone that is not a module", {"backbone": lambda shape: "resnet"}, TypeError,
     "torch.nn.Module"),
    ("context that changes the shape", {"context": Crop()}, ValueError, "same shape and dtype"),
    ("context that changes the dtype", {"context": ToDouble()}, ValueError,
     "same shape and dtype"),
]  # fmt: skip


@pytest.mark.parametrize("name, params, error, match", PARAM_CASES, ids=[c[0] for c in PARAM_CASES])
def test_fit_rejects_bad_parameters(name, params, error, match):
    with pytest.raises(error, match=match):
        tiny(**params).fit(GOOD)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="CUDA is not available"):
        tiny(device="cuda").fit(GOOD)


SCORE_CASES = [
    ("images of another size", RNG.random((3, 9, 9)), r"fitted on \(1, 8, 8\)"),
    ("images with three channels", RNG.random((3, 3, 8, 8)), r"fitted on \(1, 8, 8\)"),
    ("flattened rows of the wrong length", RNG.random((3, 81)), "81 features"),
    ("NaN pixel", with_nan()[2:5], "NaN"),
    ("floats 0..255", GOOD[:3] * 255, r"\[0, 1\]"),
    ("a single image without a batch axis", GOOD[0], r"single image.*X\[None\]"),
    ("zero images", GOOD[:0], "0 sample"),
]  # fmt: skip


@pytest.mark.parametrize("method", ["score_samples", "predict", "decision_function", "embed"])
@pytest.mark.parametrize("name, X, match", SCORE_CASES, ids=[c[0] for c in SCORE_CASES])
def test_scoring_rejects_bad_images(fitted, method, name, X, match):
    with pytest.raises(ValueError, match=match):
        getattr(fitted, method)(X)


@pytest.mark.parametrize("method", ["score_samples", "predict", "embed"])
def test_unfitted_detector(method):
    with pytest.raises(NotFittedError):
        getattr(tiny(), method)(GOOD)


@pytest.mark.parametrize(
    "name, X, context, match",
    [
        ("no context", GOOD, None, "needs a context"),
        ("unknown context", GOOD, "rotate", "Unknown context"),
        ("two images", GOOD[:2], "vflip", "at least 3 images"),
        ("context that changes the shape", GOOD, Crop(), "same shape and dtype"),
        ("context that changes the dtype", GOOD, ToDouble(), "same shape and dtype"),
        ("NaN pixel", with_nan(), "vflip", "NaN"),
    ],
)
def test_check_context_rejects_bad_input(name, X, context, match):
    with pytest.raises(ValueError, match=match):
        check_context(X, context)


# What is accepted, and how.


def test_fewer_images_than_the_batch_size_train_in_one_batch():
    det = tiny(batch_size=64).fit(GOOD)
    assert len(det.loss_curve_) == 1


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda x: np.asfortranarray(x), id="fortran order"),
        pytest.param(lambda x: np.repeat(x, 2, axis=2)[:, :, ::2], id="non-contiguous"),
        pytest.param(lambda x: x.tolist(), id="nested list"),
        pytest.param(lambda x: list(x), id="list of arrays"),
        pytest.param(lambda x: torch.from_numpy(x), id="torch tensor"),
        pytest.param(lambda x: x.astype(np.float32), id="float32"),
    ],
)
def test_equivalent_containers_give_identical_scores(fitted, convert):
    expected = fitted.score_samples(GOOD[:5])
    np.testing.assert_array_equal(fitted.score_samples(convert(GOOD[:5].copy())), expected)


def test_read_only_input_is_accepted(fitted):
    x = GOOD[:5].copy()
    x.setflags(write=False)
    np.testing.assert_array_equal(fitted.score_samples(x), fitted.score_samples(GOOD[:5]))


def test_dataframe_rows_with_image_shape(fitted):
    frame = pd.DataFrame(GOOD[:5].reshape(5, -1))
    det = tiny(image_shape=(1, 8, 8)).fit(pd.DataFrame(GOOD.reshape(20, -1)))
    assert det.score_samples(frame).shape == (5,)


@pytest.mark.filterwarnings("ignore:Context check failed")
def test_bool_images_are_black_and_white():
    det = tiny().fit(GOOD > 0.25)
    np.testing.assert_array_equal(
        det.score_samples(GOOD[:4] > 0.25), det.score_samples((GOOD[:4] > 0.25) * np.uint8(255))
    )


# Property-based: any shape and dtype either validates to the documented canonical form
# or raises ValueError/TypeError, never anything else.

LAYOUTS = ("gray", "nchw", "nhwc", "flat")
DTYPES = ("uint8", "float32", "float64", "bool", "int16", "complex64", "float16")


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(0, 4),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    channels=st.sampled_from([1, 2, 3, 4]),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([1.0, 255.0, -1.0]),
)
def test_as_images_validates_or_raises_cleanly(n, height, width, channels, layout, dtype, scale):
    base = np.random.default_rng(n).random((n, channels, height, width)) * scale
    X = {
        "gray": base[:, 0],
        "nchw": base,
        "nhwc": base.transpose(0, 2, 3, 1),
        "flat": base.reshape(n, channels * height * width),
    }[layout].astype(dtype)
    shape = (channels, height, width) if layout == "flat" else None
    try:
        out = as_images(X, image_shape=shape)
    except (ValueError, TypeError):
        return
    assert out.ndim == 4 and out.shape[0] == n
    assert out.shape[1] in (1, 3)
    assert out.dtype in (torch.uint8, torch.float32)
    if out.dtype == torch.float32:
        assert out.min() >= 0 and out.max() <= 1


@settings(max_examples=40, deadline=None)
@given(
    height=st.one_of(st.just(8), st.integers(1, 12)),  # the fitted size, often
    width=st.one_of(st.just(8), st.integers(1, 12)),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES),
)
def test_fitted_detector_scores_or_raises_cleanly(fitted, height, width, layout, dtype):
    base = np.random.default_rng(0).random((3, 1, height, width))
    X = {"gray": base[:, 0], "nchw": base, "nhwc": base.transpose(0, 2, 3, 1),
         "flat": base.reshape(3, height * width)}[layout].astype(dtype)  # fmt: skip
    # what the 8x8 gray detector must take: its size (or 64 values a row), a real dtype
    fits = height * width == 64 if layout == "flat" else (height, width) == (8, 8)
    if not fits or dtype in ("int16", "complex64"):
        with pytest.raises((ValueError, TypeError)):
            fitted.score_samples(X)
        return
    scores = fitted.score_samples(X)
    assert scores.shape == (3,) and scores.dtype == np.float64 and np.isfinite(scores).all()
