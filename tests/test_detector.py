import warnings

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

import con2._training as training_module
from con2 import Con2Detector, GaussianScorer
from con2.datasets import load_digits_images
from con2.networks import ResNet18


@pytest.fixture(scope="module")
def digits():
    """Digit 0 (normal) for training; held-out 0s and 1s for testing. Read-only."""
    X, y = load_digits_images()
    zeros, ones = X[y == 0], X[y == 1]
    test = np.concatenate([zeros[100:], ones[:80]])
    labels = np.r_[np.ones(len(zeros) - 100, dtype=int), -np.ones(80, dtype=int)]
    return zeros[:100], test, labels


def test_fit_returns_self_with_the_documented_fitted_state(digits, tiny):
    X, _, _ = digits
    det = Con2Detector(**tiny)
    assert det.fit(X) is det
    assert det.image_shape_ == (1, 8, 8) and det.n_features_in_ == 64
    assert len(det.loss_curve_) == tiny["n_epochs"] and all(np.isfinite(det.loss_curve_))
    assert det.device_ == torch.device("cpu") and len(det.contexts_) == 1
    assert len(det.views_) == tiny["n_test_augmentations"]
    assert det.views_.view_contexts.tolist() == [0, 0, 1, 1]  # half in each context


@pytest.mark.parametrize("method", ["score_samples", "decision_function", "predict", "embed"])
def test_unfitted_detector_raises_not_fitted(method, digits):
    with pytest.raises(NotFittedError):
        getattr(Con2Detector(), method)(digits[0])


@pytest.mark.parametrize("scorer", ["nnd", "lh"])
def test_anomalies_score_lower_and_predict_follows_the_sign(digits, tiny, scorer):
    X, test, labels = digits
    det = Con2Detector(scorer=scorer, random_state=0, **tiny).fit(X)
    scores = det.score_samples(test)
    assert scores.dtype == np.float64
    assert roc_auc_score(labels, scores) > 0.9  # +1 normal, -1 anomaly: higher = normal
    np.testing.assert_array_equal(det.decision_function(test), scores - det.offset_)
    np.testing.assert_array_equal(det.predict(test), np.where(scores - det.offset_ < 0, -1, 1))


def test_same_random_state_gives_bitwise_identical_scores(digits, tiny):
    X, test, _ = digits
    det = Con2Detector(random_state=3, **tiny).fit(X)
    again = clone(det).fit(X)
    np.testing.assert_array_equal(det.score_samples(test), again.score_samples(test))
    other = Con2Detector(random_state=4, **tiny).fit(X)
    assert not np.array_equal(det.score_samples(test), other.score_samples(test))


def test_fit_leaves_global_random_state_and_threads_alone(digits, tiny):
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002 - the global state is the subject
    threads = torch.get_num_threads()
    Con2Detector(random_state=0, **tiny).fit(digits[0]).score_samples(digits[1])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002
    assert torch.get_num_threads() == threads


def test_training_images_are_scored_leave_one_out(digits, tiny):
    X, _, _ = digits
    det = Con2Detector(random_state=0, **tiny)
    fit_labels = det.fit_predict(X)
    np.testing.assert_array_equal(fit_labels, det.predict(X))
    assert det.score_samples(X).max() < 1.0  # no image is its own nearest neighbour


@pytest.mark.parametrize("contamination, expected", [("auto", 0.01), (0.2, 0.2)])
def test_contamination_sets_the_share_of_flagged_training_images(
    digits, tiny, contamination, expected
):
    X, _, _ = digits
    det = Con2Detector(contamination=contamination, random_state=0, **tiny).fit(X)
    flagged = int((det.predict(X) == -1).sum())
    assert flagged >= 1
    assert abs(flagged - expected * len(X)) <= 1


def test_grid_search_with_roc_auc_over_context_and_scorer(digits, tiny):
    X, test, labels = digits
    data = np.concatenate([X, test])
    y = np.r_[np.ones(len(X), dtype=int), labels]
    train_only_normals = [(np.arange(len(X)), np.arange(len(X), len(data)))]
    search = GridSearchCV(
        Con2Detector(random_state=0, **tiny),
        {"context": ["invert", None], "scorer": ["nnd", "lh"]},
        scoring="roc_auc",
        cv=train_only_normals,
    ).fit(data, y)
    assert search.best_score_ > 0.9
    assert set(search.cv_results_["param_scorer"]) == {"nnd", "lh"}


def test_pipeline_with_flattened_rows_and_value_range(tiny):
    from sklearn.datasets import load_digits

    digits = load_digits()  # 64 features per row, grey levels 0..16
    normal = digits.data[digits.target == 0]
    pipe = make_pipeline(
        FunctionTransformer(np.sqrt),
        Con2Detector(image_shape=(1, 8, 8), value_range=(0, 4), random_state=0, **tiny),
    )
    pipe.fit(normal)
    assert pipe.predict(digits.data[:10]).shape == (10,)


def test_image_shape_mismatch_at_predict_names_both_shapes(digits, tiny):
    det = Con2Detector(**tiny).fit(digits[0])
    with pytest.raises(ValueError, match=r"fitted on \(1, 8, 8\)"):
        det.predict(np.zeros((2, 1, 9, 9), dtype=np.uint8))
    with pytest.raises(ValueError, match="X has 81 features"):
        det.predict(np.zeros((2, 81)))


def test_equalize_on_8x8_images_warns(digits, tiny):
    with pytest.warns(UserWarning, match="Context check failed: HistogramEqualize"):
        Con2Detector(**{**tiny, "context": "equalize"}).fit(digits[0])


def test_a_suitable_context_fits_without_warning(digits, tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Con2Detector(**tiny).fit(digits[0])


@pytest.mark.parametrize("context", [None, ["vflip", "invert"]])
def test_no_context_and_several_contexts(digits, tiny, context):
    det = Con2Detector(random_state=0, **{**tiny, "context": context, "n_test_augmentations": 6})
    det.fit(digits[0])
    n_contexts = 1 if context is None else 3
    assert sorted(set(det.views_.view_contexts.tolist())) == list(range(n_contexts))
    assert (det.encoder_.head_context is None) == (context is None)


def test_too_few_test_time_views_for_the_contexts(digits, tiny):
    det = Con2Detector(**{**tiny, "context": ["vflip", "invert"], "n_test_augmentations": 2})
    with pytest.raises(ValueError, match="fewer than the 3 contexts"):
        det.fit(digits[0])


def test_scorer_object_is_cloned_not_modified(digits, tiny):
    scorer = GaussianScorer(shrinkage=0.5)
    det = Con2Detector(scorer=scorer, **tiny).fit(digits[0])
    assert det.scorer_ is not scorer and not hasattr(scorer, "mean_")
    assert float(det.scorer_.shrinkage_[0]) == 0.5


def test_custom_backbone_callable_and_a_wrong_one(digits, tiny):
    det = Con2Detector(backbone=lambda shape: ResNet18(shape[0], 2), **tiny).fit(digits[0])
    assert det.embed(digits[1][:3]).shape == (3, 16)

    class Flat(torch.nn.Module):
        embed_dim = 10

        def forward(self, x):
            return x.flatten(1)

    with pytest.raises(ValueError, match="embed_dim=10"):
        Con2Detector(backbone=lambda shape: Flat(), **tiny).fit(digits[0])


def test_embed_returns_unit_vectors(digits, tiny):
    det = Con2Detector(**tiny).fit(digits[0])
    z = det.embed(digits[1][:5])
    assert z.shape == (5, 32) and z.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1, rtol=1e-5)


def test_verbose_reports_progress_and_default_is_silent(digits, tiny, capsys):
    Con2Detector(**tiny).fit(digits[0])
    assert capsys.readouterr().err == ""
    Con2Detector(verbose=2, **tiny).fit(digits[0])
    err = capsys.readouterr().err
    assert "Con2 fit" in err and "epoch 2/2: loss" in err


def test_non_finite_loss_names_the_epoch_and_keeps_the_previous_state(digits, tiny, monkeypatch):
    det = Con2Detector(random_state=0, **tiny).fit(digits[0])
    encoder, offset = det.encoder_, det.offset_

    class NanLoss(torch.nn.Module):
        def __init__(self, temperature):
            super().__init__()

        def forward(self, z_context, z_content, *args):
            return z_content.sum() * float("nan")

    monkeypatch.setattr(training_module, "Con2Loss", NanLoss)
    with pytest.raises(FloatingPointError, match=r"epoch 1.*learning_rate"):
        det.fit(digits[0])
    assert det.encoder_ is encoder and det.offset_ == offset


def test_too_few_images_and_single_pixels_are_refused(tiny):
    with pytest.raises(ValueError, match="n_samples=1"):
        Con2Detector(**tiny).fit(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="n_features=1"):
        Con2Detector(**tiny).fit(np.zeros((5, 1)))


def test_compiled_training_gives_a_working_plain_encoder(digits, tiny):
    det = Con2Detector(compile=True, random_state=0, **{**tiny, "n_epochs": 1}).fit(digits[0])
    assert type(det.encoder_).__name__ == "Encoder"  # not the compiled wrapper
    assert np.isfinite(det.loss_curve_).all()
    assert det.score_samples(digits[1][:5]).shape == (5,)


def test_embeddings_do_not_depend_on_the_batch_and_scores_only_in_rounding(digits, tiny):
    X = digits[0]
    det = Con2Detector(**tiny, random_state=0).fit(X)
    alone = np.concatenate([det.embed(X[i : i + 1]) for i in range(7)])
    np.testing.assert_array_equal(alone, det.embed(X[:7]))  # padded forward passes
    scores = np.array([det.score_samples(X[i : i + 1])[0] for i in range(7)])
    np.testing.assert_allclose(scores, det.score_samples(X[:7]), rtol=1e-13)
