import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import joblib
import numpy as np
import pytest
import torch
from helpers import pinned_data, tiny_detector

import con2
import con2._persistence as persistence_module
from con2 import Con2Detector, Con2Objective, GaussianScorer
from con2._utils import move
from con2.datasets import load_digits_images


@pytest.fixture(scope="module")
def fitted():
    """A fitted detector and test images. Read-only: tests must not refit it."""
    X, y = load_digits_images()
    det = tiny_detector().fit(X[y == 0])
    return det, X[y != 0][:50]


def all_tensors(obj, seen=None):
    """Every tensor reachable from obj through modules, containers and attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.state_dict().values()
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from all_tensors(value, seen)
    elif isinstance(obj, list | tuple):
        for value in obj:
            yield from all_tensors(value, seen)
    elif hasattr(obj, "__dict__"):
        yield from all_tensors(vars(obj), seen)


@pytest.mark.parametrize("scorer", ["nnd", "lh"])
@pytest.mark.slow
def test_joblib_round_trip_scores_identically_in_a_fresh_process(tmp_path, scorer):
    X, y = load_digits_images()
    det = tiny_detector(n_epochs=1, scorer=scorer).fit(X[y == 0])
    test = X[:40]
    np.save(tmp_path / "test.npy", test)
    joblib.dump(det, tmp_path / "det.joblib")
    script = textwrap.dedent(
        f"""
        import joblib, numpy as np
        det = joblib.load({str(tmp_path / "det.joblib")!r})
        test = np.load({str(tmp_path / "test.npy")!r})
        np.save({str(tmp_path / "scores.npy")!r}, det.score_samples(test))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), det.score_samples(test))


def test_pickle_does_not_alter_the_live_detector(fitted):
    det, test = fitted
    before = det.score_samples(test)
    state_keys = set(vars(det))
    restored = pickle.loads(pickle.dumps(det))
    assert set(vars(det)) == state_keys and det.encoder_ is not None
    np.testing.assert_array_equal(restored.score_samples(test), before)


def test_a_cuda_detector_pickles_its_weights_as_bytes_without_a_tensor(fitted, monkeypatch):
    """The mechanism, without a GPU: a detector of built-in components whose device_ is
    CUDA pickles its torch state as the bytes of its weights-only file (no tensor, module
    or device in the pickle), and keeps the live objects."""
    det, _ = fitted
    monkeypatch.setattr(det, "device_", torch.device("cuda"))
    state = det.__getstate__()
    assert not list(all_tensors(state)) and isinstance(state["_con2_weights"], bytes)
    assert state["device_"] == "cuda" and not set(persistence_module.TORCH_STATE) & set(state)
    assert vars(det)["encoder_"] is det.encoder_ and det.device_ == torch.device("cuda")


class UserScorer(GaussianScorer):
    """A user-written scorer (a subclass is not the built-in)."""


def test_a_detector_with_a_user_written_component_moves_its_tensors_to_the_cpu(monkeypatch):
    """Only pickle carries user-written code: such a detector pickles its objects, every
    tensor handed to ``move(..., "cpu")``."""
    X, y = load_digits_images()
    det = tiny_detector(scorer=UserScorer()).fit(X[y == 0])
    calls = []

    def spy(obj, device):
        calls.append((obj, device))
        return move(obj, device)

    monkeypatch.setattr(persistence_module, "move", spy)
    monkeypatch.setattr(det, "device_", torch.device("cuda"))
    state = det.__getstate__()
    assert len(calls) == 1 and calls[0][1] == "cpu"
    assert {id(x) for x in calls[0][0]} == {id(getattr(det, k))
                                            for k in persistence_module.TORCH_STATE}  # fmt: skip
    for key in persistence_module.TORCH_STATE:
        assert state[key] is not getattr(det, key)  # a CPU copy, the live object untouched
    assert all(t.device.type == "cpu" for t in all_tensors(state))


def test_move_remaps_every_tensor_of_modules_scorers_and_views(fitted):
    det, _ = fitted
    state = tuple(getattr(det, k) for k in persistence_module.TORCH_STATE)
    on_meta = move(state, "meta")
    tensors = list(all_tensors(on_meta))
    assert len(tensors) > 50
    assert all(t.device.type == "meta" for t in tensors)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_loading_a_cuda_model_on_a_cpu_machine_falls_back_with_a_warning(fitted):
    det, test = fitted
    state = det.__getstate__()
    state["device_"] = "cuda"  # as written by a GPU machine
    restored = Con2Detector.__new__(Con2Detector)
    with pytest.warns(UserWarning, match="CUDA is not available here"):
        restored.__setstate__(state)
    assert restored.device_ == torch.device("cpu")
    np.testing.assert_array_equal(restored.score_samples(test), det.score_samples(test))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="requires CUDA")
def test_cuda_fit_pickles_cpu_tensors_only():
    X, y = load_digits_images()
    det = tiny_detector(n_epochs=1, device="cuda").fit(X[y == 0])
    state = det.__getstate__()
    assert all(t.device.type == "cpu" for t in all_tensors(state))
    assert det.encoder_.backbone.conv1.weight.device.type == "cuda"


DATA = Path(__file__).parent / "data"


def test_a_file_of_format_version_1_loads_and_scores_as_when_it_was_written(tmp_path,
                                                                          one_thread):  # fmt: skip
    """``model-format1.con2`` was saved by con2 at 3b8e24a, before the objective seam."""
    recorded = json.loads((DATA / "model-format1.json").read_text())
    det = con2.load(DATA / "model-format1.con2")
    assert isinstance(det.objective_, Con2Objective) and det.objective == "con2"
    assert list(det.encoder_.heads) == ["context", "content"]
    assert len(det.epoch_seconds_) == len(det.loss_curve_)
    assert all(np.isnan(det.epoch_seconds_))  # not recorded by format 1
    train, test = pinned_data()
    # 1e-5: recorded on an AVX512 CPU, whose float32 kernels round differently from
    # another's (5e-7 of a score on AVX2, measured); a wrongly loaded weight moves far more
    np.testing.assert_allclose(det.score_samples(test), recorded["test_scores"], rtol=1e-5)
    np.testing.assert_allclose(det.score_samples(train[:8]), recorded["train_scores"], rtol=1e-5)
    # saved again, it is a file of the current version with the same scores
    det.save(tmp_path / "again.con2")
    assert torch.load(tmp_path / "again.con2", weights_only=True)["format_version"] == 2
    again = con2.load(tmp_path / "again.con2")
    np.testing.assert_array_equal(again.score_samples(test), det.score_samples(test))
    with pytest.raises(ValueError, match=r"keeps no reference images .* refit"):
        again.anomaly_maps(test[:2])  # format 1 kept no images to draw maps against


@pytest.mark.parametrize(
    "objective", ["simclr", Con2Objective(temperature=0.3, alpha_max=0.5)], ids=["name", "object"]
)
def test_saved_files_record_the_objective(digits, tmp_path, objective):
    context = None if objective == "simclr" else "invert"
    det = tiny_detector(objective=objective, context=context).fit(digits[0])
    det.save(tmp_path / "m.con2")
    loaded = con2.load(tmp_path / "m.con2")
    if isinstance(objective, str):
        assert loaded.objective == objective
    else:
        assert loaded.objective.get_params() == objective.get_params()
    assert type(loaded.objective_) is type(det.objective_)
    assert loaded.objective_.get_params() == det.objective_.get_params()
    assert loaded.epoch_seconds_ == det.epoch_seconds_
    np.testing.assert_array_equal(loaded.score_samples(digits[1]), det.score_samples(digits[1]))


def test_a_user_written_objective_cannot_be_saved_weights_only(digits, tmp_path):
    class Mine(Con2Objective):
        pass

    det = tiny_detector(objective=Mine()).fit(digits[0])
    with pytest.raises(TypeError, match="user-written objective"):
        det.save(tmp_path / "m.con2")
