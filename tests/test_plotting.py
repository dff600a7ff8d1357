import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from helpers import write

from con2 import Con2Detector
from con2.datasets import load_digits_images
from con2.plotting import context_embeddings, plot_embeddings, plot_loss_curve, plot_score_histogram


@pytest.fixture(scope="module")
def setup():
    X, y = load_digits_images()
    det = Con2Detector(context="invert", base_width=4, n_epochs=2, batch_size=16,
                       n_test_augmentations=4, device="cpu", precision="float32",
                       random_state=0)  # fmt: skip
    det.fit(X[y == 0][:80])
    return det, X[y == 0][:80], X[y == 0][80:], X[y == 1]


def test_context_embeddings_shape_and_first_context_is_embed(setup):
    det, train, _, _ = setup
    z = context_embeddings(det, train[:10])
    assert z.shape == (2, 10, 32)
    np.testing.assert_allclose(z[0], det.embed(train[:10]), atol=1e-6)


def test_context_embeddings_and_the_figure_take_files(setup, tmp_path):
    det, train, normal, anomalous = setup
    folders = []
    for name, images in (
        ("train", train[:6]),
        ("normal", normal[:5]),
        ("anomalous", anomalous[:4]),
    ):
        for i, image in enumerate(images):
            write(tmp_path / name / f"{i}.png", image)
        folders.append(str(tmp_path / name))
    np.testing.assert_array_equal(context_embeddings(det, folders[1]),
                                  context_embeddings(det, normal[:5]))  # fmt: skip
    axes = plot_embeddings(det, *folders, max_points=3)
    assert [len(ax.lines) for ax in axes] == [3, 3]
    plt.close("all")


def test_embedding_figure_draws_both_panels_with_pair_lines(setup, tmp_path):
    det, train, normal, anomalous = setup
    axes = plot_embeddings(det, train, normal, anomalous, max_points=30)
    for ax, n_test in zip(axes, (len(normal[:30]), 30), strict=True):
        assert len(ax.lines) == n_test  # one line joins each test image's two contexts
        assert len(ax.collections) == 4  # train and test points in two contexts
    axes[0].figure.savefig(tmp_path / "embeddings.png")
    assert (tmp_path / "embeddings.png").stat().st_size > 1000
    plt.close("all")


def test_score_histogram_marks_the_threshold(setup):
    det, _, normal, anomalous = setup
    ax = plot_score_histogram(det, normal, anomalous)
    threshold = [line for line in ax.lines if line.get_label() == "threshold (offset_)"]
    assert threshold and threshold[0].get_xdata()[0] == det.offset_
    plt.close("all")


def test_loss_curve_has_one_point_per_epoch(setup):
    det = setup[0]
    ax = plot_loss_curve(det)
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), det.loss_curve_)
    plt.close("all")


def test_embedding_figure_needs_a_context(setup):
    X, y = load_digits_images()
    det = Con2Detector(context=None, base_width=4, n_epochs=1, batch_size=16,
                       n_test_augmentations=2, device="cpu").fit(X[y == 0][:40])  # fmt: skip
    with pytest.raises(ValueError, match="with a context"):
        plot_embeddings(det, X[:5], X[:5], X[:5])
