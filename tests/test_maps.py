"""Anomaly maps: where an image looks anomalous (Con2Detector.anomaly_maps, con2 score --maps)."""

import csv
import pickle
import warnings

import numpy as np
import pytest
import torch
from helpers import tiny_detector, write
from PIL import Image

from con2 import load
from con2.cli import main
from con2.maps import METHODS, REFERENCES, ReferenceSet, heat, maps_of, overlay


def centre_textures(n: int, seed: int = 0) -> np.ndarray:
    """16x16 images: a random grey texture in the centre 8x8, black around it."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 16, 16), np.uint8)
    images[:, 4:12, 4:12] = rng.integers(80, 120, (n, 8, 8))
    return images


def with_square(images: np.ndarray) -> np.ndarray:
    """The images with a white 4x4 square in the background, rows 10-13, columns 1-4."""
    marked = images.copy()
    marked[:, 10:14, 1:5] = 255
    return marked


@pytest.fixture(scope="module")
def fitted():
    """A detector of centre textures (fits in about a second) and five images with a square."""
    det = tiny_detector(context="vflip", base_width=8, batch_size=64, random_state=0)
    with pytest.warns(UserWarning, match="Context check"):
        det.fit(centre_textures(200))
    return det, with_square(centre_textures(5, seed=1))


@pytest.mark.parametrize("reference", REFERENCES)
@pytest.mark.parametrize("method", METHODS)
def test_maps_peak_inside_a_bright_square(fitted, method, reference):
    det, images = fitted
    maps = det.anomaly_maps(images, method=method, reference=reference)
    assert maps.shape == (5, 16, 16) and maps.dtype == np.float32
    assert maps.min() >= 0  # higher = more anomalous; no negative gain
    for found in maps:
        row, col = np.unravel_index(found.argmax(), found.shape)
        assert 10 <= row < 14 and 1 <= col < 5, (method, reference, row, col)
    inside = maps[:, 10:14, 1:5].mean()
    outside = np.delete(maps.reshape(5, -1), np.ravel_multi_index(
        np.mgrid[10:14, 1:5].reshape(2, -1), (16, 16)), axis=1).mean()  # fmt: skip
    assert inside > 5 * outside


def test_a_normal_image_maps_cooler_than_the_same_image_with_a_square(fitted):
    det, images = fitted
    clean = centre_textures(5, seed=1)
    assert det.anomaly_maps(clean).sum() < det.anomaly_maps(images).sum()


@pytest.mark.parametrize("method", METHODS)
def test_maps_do_not_depend_on_the_batch_and_repeat(fitted, method):
    det, images = fitted
    together = det.anomaly_maps(images, method=method)
    for i in range(len(images)):
        assert np.array_equal(det.anomaly_maps(images[i : i + 1], method=method)[0], together[i])
    assert np.array_equal(det.anomaly_maps(images[::-1], method=method)[::-1], together)
    assert np.array_equal(det.anomaly_maps(images, method=method), together)


def test_every_input_form_gives_the_same_maps(fitted, tmp_path):
    det, images = fitted
    expected = det.anomaly_maps(images)
    paths = [write(tmp_path / "in" / f"{i}.png", image) for i, image in enumerate(images)]
    assert np.array_equal(det.anomaly_maps(torch.from_numpy(images)), expected)
    assert np.array_equal(det.anomaly_maps(paths), expected)
    assert np.array_equal(det.anomaly_maps(str(tmp_path / "in")), expected)
    assert np.array_equal(det.anomaly_maps(images[:, :, :, None]), expected)  # channels last
    with pytest.raises(ValueError, match="0 sample"):  # as score_samples
        det.anomaly_maps(images[:0])


def test_bad_arguments_are_named(fitted):
    det, images = fitted
    with pytest.raises(ValueError, match="method must be one of"):
        det.anomaly_maps(images, method="gradcam")
    with pytest.raises(ValueError, match="reference must be one of"):
        det.anomaly_maps(images, reference="median")
    with pytest.raises(ValueError, match="16, 16"):
        det.anomaly_maps(np.zeros((2, 8, 8), np.uint8))


def test_maps_survive_save_and_pickle(fitted, tmp_path):
    det, images = fitted
    expected = det.anomaly_maps(images)
    det.save(tmp_path / "model.con2")
    loaded = load(tmp_path / "model.con2")
    assert np.array_equal(loaded.reference_images_, det.reference_images_)
    assert np.array_equal(loaded.anomaly_maps(images), expected)
    assert np.array_equal(pickle.loads(pickle.dumps(det)).anomaly_maps(images), expected)


def test_a_detector_without_references_says_to_refit(fitted):
    det, images = fitted
    old = pickle.loads(pickle.dumps(det))
    del old.reference_images_
    with pytest.raises(ValueError, match="refit"):
        old.anomaly_maps(images)


def test_reference_images_are_a_bounded_sample_of_the_training_images(fitted):
    det, _ = fitted
    references = det.reference_images_
    assert references.shape == (200, 1, 16, 16) and references.dtype == np.uint8
    training = centre_textures(200)[:, None]
    assert np.array_equal(references, training)  # 200 images: all of them, in order


@pytest.mark.parametrize(
    "params",
    [
        dict(context="invert"),
        dict(context="equalize"),
        dict(context=["rot90", "rot180", "rot270"]),
        dict(context=None),
        dict(scorer="lh"),
        dict(objective="simclr", context=None),
        dict(objective="csi", context=None, scorer="csi"),
        dict(objective="firm", context=None),
    ],
    ids=["invert", "histeq", "rotations", "no context", "lh", "simclr", "csi", "firm"],
)
def test_every_context_scorer_and_objective_draws_maps(params, digits):
    train, test, _ = digits
    if params.get("context") == "equalize":  # equalizing leaves images of 16x16 or less alone
        train, test = (np.kron(x, np.ones((1, 3, 3), np.uint8)) for x in (train, test))
    det = tiny_detector(**params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the context check's verdicts
        det.fit(train[:40])
    for method in ("gradient", "occlusion"):
        maps = det.anomaly_maps(test[:3], method=method)
        height, width = det.image_shape_[1:]
        assert maps.shape == (3, height, width) and np.isfinite(maps).all() and maps.min() >= 0
        assert maps.max() > 0, method  # something in these digits moves the score


def test_a_scorer_without_a_head_is_refused_clearly(digits, tmp_path):
    class PlainScorer:
        def fit(self, embeddings):
            self.mean_ = embeddings.mean(dim=(0, 1))
            return self

        def score_samples(self, embeddings, exclude=None):
            return (embeddings.mean(dim=0) @ self.mean_).double()

    train, test, _ = digits
    det = tiny_detector(scorer=PlainScorer()).fit(train[:40])
    with pytest.raises(TypeError, match=r"no head\(\) module, so its model cannot be mapped"):
        det.anomaly_maps(test[:2])
    with pytest.raises(TypeError, match="cannot be exported"):
        det.export(tmp_path / "m.onnx")


def test_overlay_leaves_zero_map_pixels_unchanged_and_colours_one_scale():
    image = np.full((4, 4), 0.5)
    values = np.zeros((4, 4))
    values[0, 0], values[1, 1] = 2.0, 1.0
    picture = overlay(image, values, scale=2.0)
    assert picture.shape == (4, 4, 3) and picture.dtype == np.uint8
    assert (picture[2:, 2:] == 128).all()  # 0.5 * 255, rounded
    assert tuple(picture[0, 0]) != tuple(picture[1, 1])
    # one scale: the same value looks the same in another map whose maximum is larger
    other = values.copy()
    other[3, 3] = 2.0
    assert tuple(overlay(image, other, scale=2.0)[1, 1]) == tuple(picture[1, 1])
    assert tuple(heat(np.array([0.0, 1.0]))[0]) == (0.0, 0.0, 0.0)
    assert tuple(heat(np.array([0.0, 1.0]))[1]) == (1.0, 1.0, 1.0)


def test_cli_writes_maps_pictures_and_a_map_column(fitted, tmp_path, capsys):
    det, images = fitted
    det.save(tmp_path / "model.con2")
    big = [np.kron(image, np.ones((2, 3), np.uint8)) for image in images]  # 32x48 files
    paths = [write(tmp_path / "in" / "a" / "x.png", big[0]),
             write(tmp_path / "in" / "b" / "x.png", big[1]),
             write(tmp_path / "in" / "b" / "y.png", big[2])]  # fmt: skip
    out = tmp_path / "scores.csv"
    maps = tmp_path / "maps"
    assert main(["score", str(tmp_path / "model.con2"), str(tmp_path / "in"), "--out", str(out),
                 "--maps", str(maps)]) == 0  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == paths
    assert [r["map"] for r in rows] == [str(maps / "a" / "x.png.map.png"),
                                        str(maps / "b" / "x.png.map.png"),
                                        str(maps / "b" / "y.png.map.png")]  # fmt: skip
    for row in rows:
        with Image.open(row["map"]) as picture:
            assert picture.size == (48, 32) and picture.mode == "RGB"  # the file's size
        raw = np.load(row["map"].removesuffix(".png") + ".npy")
        assert raw.shape == (16, 16) and raw.dtype == np.float32
    # the raw maps are the detector's maps of the files as the model reads them
    assert np.array_equal(np.load(maps / "b" / "y.png.map.npy"), det.anomaly_maps([paths[2]])[0])
    scale = float((maps / "legend.txt").read_text().split(":")[1].split()[0])
    assert scale == pytest.approx(
        max(
            np.load(maps / p).max()
            for p in ["a/x.png.map.npy", "b/x.png.map.npy", "b/y.png.map.npy"]
        )
    )
    assert (maps / "legend.png").exists()
    assert "colour scale" in capsys.readouterr().err


def test_cli_maps_scale_is_fixed_when_given(fitted, tmp_path):
    det, images = fitted
    det.save(tmp_path / "model.con2")
    path = write(tmp_path / "in" / "x.png", images[0])
    for scale, name in ((1e-9, "low"), (1e9, "high")):
        assert main(["score", str(tmp_path / "model.con2"), path, "--out",
                     str(tmp_path / f"{name}.csv"), "--maps", str(tmp_path / name),
                     "--maps-scale", str(scale)]) == 0  # fmt: skip
    with Image.open(tmp_path / "high" / "x.png.map.png") as high:
        assert np.array_equal(np.asarray(high)[..., 0], images[0])  # a huge scale: no colour
    with Image.open(tmp_path / "low" / "x.png.map.png") as low:
        assert not np.array_equal(np.asarray(low)[..., 0], images[0])


def test_cli_maps_refuses_a_file_and_a_bad_scale(fitted, tmp_path, capsys):
    det, images = fitted
    det.save(tmp_path / "model.con2")
    path = write(tmp_path / "x.png", images[0])
    assert main(["score", str(tmp_path / "model.con2"), path, "--maps", path]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "model.con2"), path, "--maps", str(tmp_path / "m"),
                 "--maps-scale", "0"]) == 1  # fmt: skip
    assert "--maps-scale must be a positive number" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "model.con2"), path, "--maps",
                 str(tmp_path / "no" / "such" / "m")]) == 1  # fmt: skip
    assert "does not exist" in capsys.readouterr().err


def test_plot_anomaly_maps_draws_images_over_maps_on_one_scale(fitted):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from con2.plotting import plot_anomaly_maps

    det, images = fitted
    axes = plot_anomaly_maps(det, images, max_images=3)
    assert axes.shape == (2, 3)
    colourbar = axes[0, 0].figure.axes[-1]
    assert colourbar.get_ylim()[1] == pytest.approx(float(det.anomaly_maps(images[:3]).max()))
    assert "anomaly" in axes[0, 0].get_title() or "normal" in axes[0, 0].get_title()


class Quadratic:
    """A stand-in scoring module: s(x) = -sum((x - c)^2), whose gradient is -2 (x - c)."""

    def __init__(self, centre):
        self.centre = centre

    def score_unit(self, x):
        return -((x - self.centre) ** 2).sum(dim=(1, 2, 3))


def test_the_gradient_map_is_the_regional_gain_times_the_change():
    rng = np.random.default_rng(0)
    x, reference, centre = (torch.from_numpy(rng.random((2, 2, 6, 7))) for _ in range(3))
    found = maps_of(Quadratic(centre), x, reference, "gradient", smooth=3).numpy()
    # by hand: per-pixel gain summed over channels, its positive part averaged over the
    # 3x3 neighbourhood that lies inside the image, square-rooted, times the summed
    # absolute change
    gain = ((reference - x) * -2 * (x - centre)).sum(dim=1).clamp_min(0).numpy()
    moved = (reference - x).abs().sum(dim=1).numpy()
    expected = np.zeros_like(gain)
    for i, j, k in np.ndindex(gain.shape):
        window = gain[i, max(0, j - 1) : j + 2, max(0, k - 1) : k + 2]
        expected[i, j, k] = np.sqrt(window.mean()) * moved[i, j, k]
    np.testing.assert_allclose(found, expected, rtol=1e-6)
    pixel = maps_of(Quadratic(centre), x, reference, "input-gradient").numpy()
    np.testing.assert_allclose(pixel, gain, rtol=1e-6)
    with pytest.raises(ValueError, match="odd number"):
        maps_of(Quadratic(centre), x, reference, "gradient", smooth=4)


def test_the_nearest_reference_is_the_euclidean_nearest_alone_or_in_a_batch():
    generator = torch.Generator().manual_seed(0)
    references = torch.rand(50, 1, 5, 5, generator=generator)
    x = torch.rand(7, 1, 5, 5, generator=generator)
    found = ReferenceSet(references).nearest(x)
    expected = torch.cdist(x.flatten(1).double(), references.flatten(1).double()).argmin(dim=1)
    assert torch.equal(found, references[expected])
    alone = torch.cat([ReferenceSet(references).nearest(x[i : i + 1]) for i in range(7)])
    assert torch.equal(alone, found)
