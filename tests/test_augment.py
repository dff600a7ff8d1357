import math

import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from scipy.stats import ks_2samp

from con2.augment import AugmentParams, SimCLRAugment

AUGMENT = SimCLRAugment()


def draw(n, size=(32, 32), seed=0, device="cpu"):
    return AUGMENT.sample(n, size, torch.Generator(device).manual_seed(seed))


def binomial_ok(hits, n, p, sigmas=5):
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_parameters_are_per_sample_random():
    params = draw(64)
    assert params.crop.unique(dim=0).shape[0] > 50
    assert 0 < params.flip.sum() < 64
    assert params.factors[:, 0].unique().numel() == 64


def test_same_seed_same_views_and_other_seed_other_views():
    x = torch.rand(16, 3, 32, 32)
    a = AUGMENT.apply(x, draw(16, seed=1))
    b = AUGMENT.apply(x, draw(16, seed=1))
    c = AUGMENT.apply(x, draw(16, seed=2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sampling_never_touches_the_global_random_state():
    before = torch.get_rng_state()
    draw(100)
    assert torch.equal(before, torch.get_rng_state())


def reference_crops(n, size, seed):
    """Crops drawn one image at a time by torchvision's RandomResizedCrop rule."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        image = torch.zeros(1, *size)
        return torch.tensor(
            [T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(n)],
            dtype=torch.float32,
        )


@pytest.mark.parametrize("size", [(32, 32), (28, 28), (8, 8), (24, 40)])
def test_crops_follow_the_per_image_reference_distribution(size):
    n = 20000
    fast = draw(n, size, seed=1).crop
    reference = reference_crops(n, size, seed=2)
    area = size[0] * size[1]
    for name, column in [
        ("area", lambda c: c[:, 2] * c[:, 3] / area),
        ("aspect ratio", lambda c: c[:, 3] / c[:, 2]),
        ("relative top", lambda c: c[:, 0] / (size[0] - c[:, 2] + 1)),
        ("relative left", lambda c: c[:, 1] / (size[1] - c[:, 3] + 1)),
    ]:
        result = ks_2samp(column(fast).numpy(), column(reference).numpy())
        assert result.pvalue > 1e-3, f"{name} differs from the reference: {result}"
    assert (fast[:, 0] + fast[:, 2] <= size[0]).all() and (fast[:, 1] + fast[:, 3] <= size[1]).all()


def test_flip_jitter_and_gray_rates_and_ranges_match_the_specification():
    n = 20000
    params = draw(n)
    assert binomial_ok(int(params.flip.sum()), n, 0.5)
    assert binomial_ok(int(params.jitter.sum()), n, 0.8)
    assert binomial_ok(int(params.gray.sum()), n, 0.2)
    low = torch.tensor([0.6, 0.6, 0.6, -0.1])
    high = torch.tensor([1.4, 1.4, 1.4, 0.1])
    assert ((params.factors >= low) & (params.factors <= high)).all()
    uniform = ks_2samp(
        ((params.factors - low) / (high - low)).flatten().numpy(), torch.rand(4 * n).numpy()
    )
    assert uniform.pvalue > 1e-3
    assert (params.order.sort(dim=1).values == torch.arange(4)).all()
    first = torch.bincount(params.order[:, 0], minlength=4)
    assert all(binomial_ok(int(c), n, 0.25) for c in first)


def single(crop, flip=False, jitter=False, factors=(1.0, 1.0, 1.0, 0.0), order=(0, 1, 2, 3)):
    return AugmentParams(
        crop=torch.tensor([crop], dtype=torch.float32),
        flip=torch.tensor([flip]),
        jitter=torch.tensor([jitter]),
        factors=torch.tensor([factors]),
        order=torch.tensor([order]),
        gray=torch.tensor([False]),
    )


@pytest.mark.parametrize("crop", [(0, 0, 32, 32), (3, 5, 10, 20), (10, 0, 22, 17), (0, 31, 1, 1)])
@pytest.mark.parametrize("flip", [False, True])
def test_resized_crop_matches_torchvision(crop, flip):
    x = torch.rand(1, 3, 32, 32)
    expected = TF.resized_crop(x, *crop, size=[32, 32], antialias=False)
    if flip:
        expected = TF.horizontal_flip(expected)
    got = AUGMENT.apply(x, single(crop, flip=flip))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (2, 0, 3, 1)])
def test_color_jitter_matches_torchvision_in_the_drawn_order(order):
    x = torch.rand(1, 3, 16, 16)
    factors = (1.3, 0.7, 1.2, 0.07)
    expected = x
    ops = [
        lambda y: TF.adjust_brightness(y, factors[0]),
        lambda y: TF.adjust_contrast(y, factors[1]),
        lambda y: TF.adjust_saturation(y, factors[2]),
        lambda y: TF.adjust_hue(y, factors[3]),
    ]
    for index in order:
        expected = ops[index](expected)
    got = AUGMENT.apply(x, single((0, 0, 16, 16), jitter=True, factors=factors, order=order))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_grayscale_matches_torchvision_and_is_a_no_op_on_one_channel():
    params = single((0, 0, 8, 8))
    params.gray[:] = True
    x = torch.rand(1, 3, 8, 8)
    expected = TF.rgb_to_grayscale(x, num_output_channels=3)
    torch.testing.assert_close(AUGMENT.apply(x, params), expected, atol=1e-6, rtol=0)
    gray = torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(AUGMENT.apply(gray, params), gray)


def test_one_channel_images_get_brightness_and_contrast_only():
    x = torch.rand(1, 1, 8, 8)
    params = single((0, 0, 8, 8), jitter=True, factors=(1.0, 1.0, 0.5, 0.1))
    torch.testing.assert_close(AUGMENT.apply(x, params), x)  # saturation and hue: no-ops


def test_tiny_and_one_row_images_are_handled():
    x = torch.rand(8, 1, 1, 5)
    params = draw(8, size=(1, 5))
    assert (params.crop[:, 2] == 1).all()  # height 1: the fallback crop keeps the row
    out = AUGMENT.apply(x, params)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="requires CUDA")
def test_cuda_sampling_and_application():
    params = draw(32, device="cuda")
    assert params.crop.device.type == "cuda"
    out = AUGMENT.apply(torch.rand(32, 3, 32, 32, device="cuda"), params)
    assert out.device.type == "cuda"


def test_a_batch_is_each_image_augmented_as_torchvision_would_alone():
    """Every image of a batch gets its own crop, flip, jitter order and grayscale."""
    x = torch.rand(24, 3, 20, 20)
    params = draw(24, size=(20, 20), seed=3)
    assert params.jitter.any() and params.gray.any() and not params.gray.all()
    got = AUGMENT.apply(x, params)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in range(24):
        top, left, h, w = (int(v) for v in params.crop[i])
        expected = TF.resized_crop(x[i : i + 1], top, left, h, w, size=[20, 20], antialias=False)
        if params.flip[i]:
            expected = TF.horizontal_flip(expected)
        if params.jitter[i]:
            for index in params.order[i].tolist():
                expected = ops[index](expected, float(params.factors[i, index]))
        if params.gray[i]:
            expected = TF.rgb_to_grayscale(expected, num_output_channels=3)
        torch.testing.assert_close(got[i : i + 1], expected, atol=1e-5, rtol=0)
    assert torch.equal(got[5:6], AUGMENT.apply(x[5:6], params.map(lambda t: t[5:6])))
