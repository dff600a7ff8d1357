import numpy as np
import pandas as pd
import pytest
import torch

from con2._input import as_images


def test_layouts_all_give_the_same_canonical_images():
    rng = np.random.default_rng(0)
    nchw = rng.random((4, 3, 6, 5)).astype(np.float32)
    expected = torch.from_numpy(nchw)
    assert torch.equal(as_images(nchw), expected)
    assert torch.equal(as_images(nchw.transpose(0, 2, 3, 1)), expected)  # channels last
    assert torch.equal(as_images(nchw.reshape(4, -1), image_shape=(3, 6, 5)), expected)
    assert torch.equal(as_images(torch.from_numpy(nchw)), expected)
    assert torch.equal(as_images(nchw.tolist()), expected)
    half = torch.from_numpy(nchw).bfloat16()  # no numpy dtype: read as float32
    assert torch.equal(as_images(half), half.float())


def test_grayscale_three_d_and_two_d_without_shape():
    x = np.random.default_rng(1).random((3, 7, 9))
    assert as_images(x).shape == (3, 1, 7, 9)
    assert as_images(x.reshape(3, -1)).shape == (3, 1, 1, 63)  # rows of height 1
    assert as_images(x.reshape(3, -1), image_shape=(7, 9)).shape == (3, 1, 7, 9)


def test_uint8_is_kept_and_bool_becomes_black_and_white():
    x = np.random.default_rng(2).integers(0, 256, (2, 1, 4, 4), dtype=np.uint8)
    assert as_images(x).dtype == torch.uint8
    binary = as_images(np.eye(4, dtype=bool)[None])
    assert binary.dtype == torch.uint8 and set(binary.unique().tolist()) == {0, 255}


def test_value_range_maps_linearly_to_the_unit_interval():
    x = np.array([[[0, 2048, 4095]]], dtype=np.uint16)
    out = as_images(x, value_range=(0, 4095))
    torch.testing.assert_close(out.flatten(), torch.tensor([0.0, 2048 / 4095, 1.0]))


def test_dataframe_rows_with_image_shape():
    frame = pd.DataFrame(np.random.default_rng(3).random((5, 12)))
    assert as_images(frame, image_shape=(1, 3, 4)).shape == (5, 1, 3, 4)


@pytest.mark.parametrize(
    "x, kwargs, message",
    [
        (np.zeros((2, 3, 8, 3)), {}, "ambiguous"),
        (np.zeros((2, 4, 8, 8)), {}, "1 or 3 channels"),
        (np.full((2, 8, 8), 2.0), {}, r"\[0, 1\].*8-bit"),
        (np.full((2, 8, 8), -0.5), {}, r"\[0, 1\].*value_range"),
        (np.zeros((2, 8, 8), dtype=np.int64), {}, "must be uint8"),
        (np.zeros((2, 8, 8)), {"value_range": (0, 1)}, None),
        (np.full((2, 8, 8), 5.0), {"value_range": (0, 4)}, "must lie in value_range"),
        (np.zeros((2, 10)), {"image_shape": (1, 3, 3)}, "10 features per row"),
        (np.zeros((2, 1, 2, 2, 2)), {}, "2-D, 3-D or 4-D"),
        (np.zeros((2, 3, 3)), {"image_shape": (3, 3, 3)}, "grayscale"),
        (np.zeros((2, 8, 8)), {"image_shape": (2, 8, 8)}, "1 or 3 channels"),
        (np.zeros((2, 8, 8)), {"value_range": (1, 0)}, "low < high"),
    ],
)
def test_bad_input_gets_a_precise_error(x, kwargs, message):
    if message is None:
        as_images(x, **kwargs)
        return
    with pytest.raises(ValueError, match=message):
        as_images(x, **kwargs)


def test_ambiguous_layout_is_resolved_by_image_shape():
    x = np.random.default_rng(4).random((2, 3, 8, 3))
    assert as_images(x, image_shape=(3, 3, 8)).shape == (2, 3, 3, 8)  # channels last
    assert as_images(x, image_shape=(3, 8, 3)).shape == (2, 3, 8, 3)  # channels first


def test_read_only_and_non_contiguous_arrays_are_copied_not_shared():
    x = np.random.default_rng(5).random((4, 1, 6, 6))
    x.setflags(write=False)
    out = as_images(x[:, :, ::2])
    assert out.shape == (4, 1, 3, 6) and out.is_contiguous()


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_arrays_with_negative_strides_are_read(dtype):
    x = np.random.default_rng(6).integers(0, 256, (4, 1, 6, 6)).astype(dtype)
    x = x / 255 if dtype == np.float32 else x
    expected = as_images(np.ascontiguousarray(x[::-1, :, :, ::-1]))
    assert torch.equal(as_images(x[::-1, :, :, ::-1]), expected)
