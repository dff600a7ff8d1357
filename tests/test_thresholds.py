"""Calibrated thresholds: calibration scores, p-values, moving the threshold, versions."""

import numpy as np
import pytest
import torch
from helpers import tiny_detector
from sklearn.exceptions import NotFittedError

import con2


@pytest.fixture(scope="module", params=["nnd", "lh"])
def fitted(request, digits):
    """A fitted tiny detector per scorer; read-only for the tests that use it."""
    return tiny_detector(scorer=request.param).fit(digits[0])


def test_calibration_scores_are_the_leave_one_out_training_scores(fitted, digits):
    train = digits[0]
    scores = fitted.calibration_scores_
    assert scores.shape == (100,) and scores.dtype == np.float64
    np.testing.assert_array_equal(fitted.score_samples(train), scores)  # recognised: left out
    # each image scored with itself in the training set: always more normal than left out
    embeddings = torch.from_numpy(fitted.embed(train, views="all"))
    in_sample = fitted.scorer_.score_samples(embeddings).numpy()
    assert (scores < in_sample).all()
    assert fitted.offset_ == np.percentile(scores, 1)  # contamination="auto" = 0.01
    np.testing.assert_array_equal(fitted.fit_predict(train), fitted.predict(train))


def naive_p_values(calibration, scores):
    return np.array([(1 + np.sum(calibration <= s)) / (len(calibration) + 1) for s in scores])


def test_p_values_follow_the_conformal_formula(fitted, digits):
    X = np.concatenate(digits[:2])
    p = fitted.p_values(X)
    expected = naive_p_values(fitted.calibration_scores_, fitted.score_samples(X))
    np.testing.assert_array_equal(p, expected)
    assert ((p > 0) & (p <= 1)).all()
    assert np.median(p[178:]) < np.median(p[100:178])  # ones look less normal than zeros


@pytest.mark.parametrize("fpr", [0.05, 0.1, 0.25, 1 / 101])
def test_set_threshold_flags_exactly_the_images_with_small_p_values(digits, fpr):
    det = tiny_detector(scorer="lh").fit(digits[0])
    assert det.set_threshold(fpr) is det
    X = np.concatenate(digits[:2])
    np.testing.assert_array_equal(det.predict(X) == -1, det.p_values(X) <= fpr)
    np.testing.assert_array_equal(det.decision_function(X), det.score_samples(X) - det.offset_)
    flagged = np.mean(det.calibration_scores_ < det.offset_)
    assert flagged <= fpr  # of the calibration images themselves, at most fpr


def test_set_threshold_refuses_rates_it_cannot_resolve(fitted):
    with pytest.raises(ValueError, match=r"fpr=0.005 is below 1/\(n\+1\) = 0.0099.*100 calib"):
        fitted.set_threshold(0.005)
    for bad in (0, 1, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="fpr must be a number in"):
            fitted.set_threshold(bad)
    with pytest.raises(NotFittedError):
        tiny_detector().set_threshold(0.1)


def test_thresholds_survive_saving_and_a_version_change_warns(digits, tmp_path):
    det = tiny_detector(scorer="lh").fit(digits[0]).set_threshold(0.2)
    det.save(tmp_path / "m.con2")
    loaded = con2.load(tmp_path / "m.con2")
    np.testing.assert_array_equal(loaded.calibration_scores_, det.calibration_scores_)
    assert loaded.offset_ == det.offset_
    np.testing.assert_array_equal(loaded.predict(digits[1]), det.predict(digits[1]))
    payload = torch.load(tmp_path / "m.con2", weights_only=True)
    payload["con2_version"] = "0.0.9"
    torch.save(payload, tmp_path / "old.con2")
    with pytest.warns(UserWarning, match=r"written by con2 0\.0\.9; this is con2 0\.1"):
        con2.load(tmp_path / "old.con2")
