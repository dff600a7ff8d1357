import os
import subprocess
import sys
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

import con2
from con2 import Con2Detector, Con2Objective, GaussianScorer
from con2._training import resolve_precision
from con2.networks import ResNet18


def test_fit_returns_self_with_the_documented_fitted_state(digits, tiny):
    X, _, _ = digits
    det = Con2Detector(**tiny)
    assert det.fit(X) is det
    assert det.image_shape_ == (1, 8, 8) and det.n_features_in_ == 64
    assert len(det.loss_curve_) == tiny["n_epochs"] and all(np.isfinite(det.loss_curve_))
    assert det.device_ == torch.device("cpu") and len(det.contexts_) == 1
    assert len(det.views_) == tiny["n_test_augmentations"]
    assert det.views_.view_contexts.tolist() == [0, 0, 1, 1]  # half in each context
    assert isinstance(det.objective_, Con2Objective) and det.objective == "con2"
    assert len(det.epoch_seconds_) == tiny["n_epochs"] and min(det.epoch_seconds_) > 0


@pytest.mark.parametrize(
    "method",
    ["score_samples", "decision_function", "predict", "embed", "find_training_images", "project"],
)
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


def test_fit_leaves_global_random_state_and_threads_alone(digits, tiny, monkeypatch):
    reseeded = []  # the CUDA generators: fork_rng(devices=[]) would not restore them
    monkeypatch.setattr(torch.cuda, "manual_seed_all", reseeded.append)
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()  # noqa: NPY002 - the global state is the subject
    threads = torch.get_num_threads()
    Con2Detector(random_state=0, **tiny).fit(digits[0]).score_samples(digits[1])
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002
    assert torch.get_num_threads() == threads
    assert reseeded == []


def test_warnings_point_at_the_line_that_called_the_library(digits, tiny, tmp_path):
    """Past scikit-learn's fit wrapper and con2's own frames, whatever the path taken."""
    with pytest.warns(UserWarning, match="Context check failed") as record:
        det = Con2Detector(**{**tiny, "context": "equalize"}).fit(digits[0])  # 8x8: identity
    assert {w.filename for w in record} == {__file__}
    det.set_params(random_state=np.random.RandomState(0))
    with pytest.warns(UserWarning, match="RandomState instance") as record:
        det.save(tmp_path / "m.con2")
    assert [w.filename for w in record] == [__file__]


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
    assert set(det.encoder_.heads) == ({"content"} if context is None else {"context", "content"})


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


def test_non_finite_loss_names_the_epoch_and_keeps_the_previous_state(digits, tiny):
    det = Con2Detector(random_state=0, **tiny).fit(digits[0])
    encoder, offset = det.encoder_, det.offset_

    class NanObjective(Con2Objective):
        def loss(self, projections, *args):
            return projections["content"].sum() * float("nan")

    with pytest.raises(FloatingPointError, match=r"epoch 1.*learning_rate") as error:
        det.set_params(objective=NanObjective()).fit(digits[0])
    assert det.encoder_ is encoder and det.offset_ == offset
    assert "precision='float32'" not in str(error.value)  # tiny trains in float32
    with (
        pytest.raises(FloatingPointError, match=r"learning_rate.*or train in float32"),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", "precision='bfloat16' on a CPU without")
        det.set_params(precision="bfloat16").fit(digits[0])


def test_too_few_images_and_single_pixels_are_refused(tiny):
    with pytest.raises(ValueError, match="n_samples=1"):
        Con2Detector(**tiny).fit(np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="n_features=1"):
        Con2Detector(**tiny).fit(np.zeros((5, 1)))


@pytest.mark.slow
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


def test_a_failed_refit_leaves_every_fitted_attribute_as_it_was(digits, tiny):
    det = Con2Detector(**tiny).fit(digits[0])
    before = dict(vars(det))
    with pytest.raises(ValueError, match="n_samples=1"):
        det.fit(np.zeros((1, 4, 4), dtype=np.uint8))  # differently shaped, and refused
    assert det.n_features_in_ == 64 and det.image_shape_ == (1, 8, 8)
    assert vars(det).keys() == before.keys()
    assert all(vars(det)[k] is v for k, v in before.items())


def test_feature_names_follow_the_last_successful_fit(tiny):
    pd = pytest.importorskip("pandas")
    rows = np.random.default_rng(0).random((40, 16))
    frame = pd.DataFrame(rows, columns=[f"p{i}" for i in range(16)])
    det = Con2Detector(**{**tiny, "image_shape": (1, 4, 4)}).fit(frame)
    assert list(det.feature_names_in_) == list(frame.columns)
    det.fit(rows)  # an array has no names: the old ones go
    assert not hasattr(det, "feature_names_in_") and det.n_features_in_ == 16


def test_embed_gives_the_test_time_views_the_scorer_sees(digits, tiny):
    det = Con2Detector(**tiny, random_state=0).fit(digits[0])
    test = digits[1][:9]
    every = det.embed(test, views="all")
    assert every.shape == (4, 9, 32) and every.dtype == np.float32
    scores = det.scorer_.score_samples(torch.from_numpy(every)).numpy()
    np.testing.assert_allclose(scores, det.score_samples(test), rtol=1e-12)
    np.testing.assert_array_equal(det.embed(test, views=[3, 0]), every[[3, 0]])
    for bad in ("some", [4], [[0]], []):
        with pytest.raises(ValueError, match="view"):
            det.embed(test, views=bad)


def test_find_training_images_names_the_identical_training_image(digits, tiny):
    det = Con2Detector(**tiny).fit(digits[0])
    mixed = np.concatenate([digits[0][[5, 2]], digits[1][:3]])
    assert det.find_training_images(mixed).tolist() == [5, 2, -1, -1, -1]


def test_project_gives_what_the_objective_sees_of_held_out_images(digits, tiny):
    det = Con2Detector(**tiny, random_state=0).fit(digits[0])
    projections, contexts, instances = det.project(digits[1][:6], random_state=1)
    assert sorted(projections) == ["content", "context"]
    assert projections["content"].shape == (24, 128)  # 6 images x 2 contexts x 2 draws
    assert contexts.tolist() == [0] * 6 + [1] * 6 + [0] * 6 + [1] * 6
    assert instances.tolist() == list(range(6)) * 4
    loss = det.objective_.loss(projections, contexts, instances, progress=1.0)
    assert torch.isfinite(loss) and loss > 0
    again = det.project(digits[1][:6], random_state=1)[0]
    assert torch.equal(again["content"], projections["content"])
    other = det.project(digits[1][:6], random_state=2)[0]
    assert not torch.equal(other["content"], projections["content"])


@pytest.mark.filterwarnings("ignore:precision='bfloat16' on a CPU without")
def test_bfloat16_training_is_reproducible_and_leaves_float32_weights(digits, tiny, tmp_path):
    det = Con2Detector(**{**tiny, "precision": "bfloat16"}, random_state=0).fit(digits[0])
    assert det.precision_ == "bfloat16"
    assert all(p.dtype == torch.float32 and p.is_contiguous() for p in det.encoder_.parameters())
    assert all(np.isfinite(det.loss_curve_))
    again = clone(det).fit(digits[0])
    np.testing.assert_array_equal(det.score_samples(digits[1]), again.score_samples(digits[1]))
    float32 = Con2Detector(**{**tiny, "precision": "float32"}, random_state=0).fit(digits[0])
    assert float32.precision_ == "float32"
    assert not np.array_equal(det.score_samples(digits[1]), float32.score_samples(digits[1]))
    det.save(tmp_path / "m.con2")
    assert con2.load(tmp_path / "m.con2").precision_ == "bfloat16"


def test_tables_too_narrow_for_bfloat16_train_in_float32_or_are_refused(tiny):
    """The CPU's bfloat16 weight gradient of a strided convolution on maps one pixel wide
    is garbage (NaN) on some CPUs (``bfloat16_faulty_convolutions``): a table of two
    features, read as 1 x 2 images, reaches them in layer3 and layer4."""
    X = np.random.default_rng(0).random((40, 2))
    det = Con2Detector(**{**tiny, "precision": "auto", "n_epochs": 1}, random_state=0).fit(X)
    assert det.precision_ == "float32" and all(np.isfinite(det.loss_curve_))
    with pytest.raises(ValueError, match=r"cannot train.*layer3\.0\.conv1.*5 pixels wide"):
        Con2Detector(**{**tiny, "precision": "bfloat16"}, random_state=0).fit(X)
    # five features are wide enough: "auto" is then what it is for any image on this CPU
    wide = det.fit(X[:, [0, 1, 0, 1, 0]])
    assert wide.precision_ == resolve_precision("auto", torch.device("cpu")).name


@pytest.mark.slow
def test_compiled_float32_training_at_a_small_width_on_48_px_images_does_not_crash(tmp_path):
    """torch 2.14's CPU backward of float32 channels-last convolutions corrupts memory at
    width 8 from 48 px, and inductor's layout optimisation makes convolutions channels-last:
    a compiled float32 fit on the CPU must go without it (in a subprocess: a crash kills)."""
    script = (
        "import numpy as np, warnings\n"
        "from con2 import Con2Detector\n"
        "warnings.simplefilter('ignore')\n"
        "X = np.random.default_rng(0).integers(0, 256, (64, 48, 48, 3), dtype=np.uint8)\n"
        "det = Con2Detector(base_width=8, n_epochs=2, batch_size=32, n_test_augmentations=2,\n"
        "                   device='cpu', precision='float32', compile=True, random_state=0)\n"
        "print(np.isfinite(det.fit(X).loss_curve_).all())\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "True", done.stderr[-2000:]
