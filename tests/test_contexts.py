from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch

from con2.contexts import (
    CONTEXTS,
    ColorInvert,
    ContextAugmentation,
    HistogramEqualize,
    Rotate90,
    Rotate180,
    Rotate270,
    VerticalFlip,
    check_context,
    resolve_contexts,
)


@pytest.mark.parametrize("name", sorted(CONTEXTS))
@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (5, 3, 17, 40)])
def test_builtin_contexts_keep_shape_dtype_device_and_are_deterministic(name, shape):
    context = CONTEXTS[name]()
    assert isinstance(context, ContextAugmentation)
    x = torch.rand(shape)
    if name in ("rot90", "rot270") and shape[-1] != shape[-2]:
        with pytest.raises(ValueError, match="needs square images; got height 17 and width 40"):
            context(x)
        return
    y = context(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.equal(y, context(x))
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("context", [VerticalFlip(), ColorInvert()])
def test_flip_and_invert_are_involutions(context):
    x = torch.rand(4, 3, 9, 9)
    torch.testing.assert_close(context(context(x)), x)


def test_equalize_stretches_a_low_contrast_32x32_image():
    x = 0.4 + 0.2 * torch.rand(1, 1, 32, 32)
    y = HistogramEqualize()(x)
    assert float(y.max() - y.min()) > 0.9


def test_equalize_is_the_identity_on_8x8_images_and_check_context_says_so():
    x = 0.4 + 0.2 * torch.rand(50, 1, 8, 8)
    assert torch.allclose(HistogramEqualize()(x), x, atol=1 / 255)
    report = check_context(x, "equalize")
    assert report.distinctiveness == pytest.approx(0.5, abs=0.05)
    assert not report.distinctive and not report.passed


@pytest.mark.parametrize("name", ["vflip", "invert"])
def test_isometries_measure_perfect_alignment_on_any_data(name):
    x = np.random.default_rng(1).random((80, 3, 20, 20))
    assert check_context(x, name).alignment == pytest.approx(1.0)


def test_check_context_separates_visible_from_invisible_contexts():
    rng = np.random.default_rng(2)
    ramp = np.linspace(0, 1, 24)[:, None]
    upright = np.clip(ramp + 0.2 * rng.standard_normal((100, 24, 24)), 0, 1)
    symmetric = np.clip(0.5 + 0.2 * rng.standard_normal((100, 24, 24)), 0, 1)
    assert check_context(upright, "vflip").distinctiveness > 0.95
    assert check_context(symmetric, "vflip").distinctiveness < 0.65
    reports = check_context(upright, ["vflip", "invert"])
    assert [type(r.context) for r in reports] == [VerticalFlip, ColorInvert]
    assert "distinctiveness" in str(reports[0])


@pytest.mark.parametrize(("option", "error"), [
    ({"max_samples": 2.5}, TypeError), ({"max_samples": None}, TypeError),
    ({"max_samples": 2}, ValueError), ({"min_distinctiveness": 1.5}, ValueError),
    ({"min_alignment": "high"}, TypeError),
])  # fmt: skip
def test_check_context_refuses_bad_options_by_name(option, error):
    x = np.random.default_rng(0).random((20, 8, 8))
    with pytest.raises(error, match=next(iter(option))):
        check_context(x, "vflip", **option)


def test_check_context_subsamples_reproducibly():
    x = np.random.default_rng(3).random((700, 8, 8))
    a = check_context(x, "vflip", max_samples=100, random_state=0)
    b = check_context(x, "vflip", max_samples=100, random_state=0)
    assert a.n_samples == 100 and a == b


@dataclass(frozen=True)
class Transpose:
    """A user-written context: swap height and width (square images)."""

    distinctive: ClassVar[bool] = True
    aligned: ClassVar[bool] = True

    def __call__(self, x):
        return x.transpose(-2, -1)


def test_user_contexts_satisfy_the_protocol_and_are_measured():
    assert isinstance(Transpose(), ContextAugmentation)
    assert resolve_contexts([Transpose(), "invert"])[0] == Transpose()
    x = np.random.default_rng(4).random((60, 16, 16)) * np.linspace(0, 1, 16)[:, None]
    assert check_context(x, Transpose()).passed


def test_a_context_that_changes_the_shape_is_refused():
    class Crop:
        distinctive = True
        aligned = True

        def __call__(self, x):
            return x[..., 1:, :]

    with pytest.raises(ValueError, match="same shape and dtype"):
        check_context(np.random.default_rng(5).random((10, 8, 8)), Crop())


def test_resolve_contexts_errors_are_clear():
    assert resolve_contexts(None) == ()
    with pytest.raises(ValueError, match="Unknown context 'hflip'"):
        resolve_contexts("hflip")
    with pytest.raises(ValueError, match="empty"):
        resolve_contexts([])
    with pytest.raises(TypeError, match="ContextAugmentation"):
        resolve_contexts(VerticalFlip)  # the class, not an instance
    with pytest.raises(ValueError, match="needs a context"):
        check_context(np.zeros((5, 4, 4)), None)


def test_rotations_turn_counter_clockwise_and_compose_to_the_identity():
    x = torch.rand(3, 2, 9, 9)
    quarter, half, three = Rotate90(), Rotate180(), Rotate270()
    torch.testing.assert_close(quarter(x)[..., 0, :], x[..., :, -1])  # right column to top row
    torch.testing.assert_close(quarter(quarter(x)), half(x))
    torch.testing.assert_close(three(quarter(x)), x)
    torch.testing.assert_close(half(half(x)), x)
