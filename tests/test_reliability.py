"""Faults during training, long runs, untrusted files, determinism and threads."""

import os
import subprocess
import sys
import textwrap
import warnings
import zipfile

import joblib
import numpy as np
import pytest
import torch
from helpers import tiny_detector as tiny

import con2
import con2._engine as engine_module
import con2._training as training_module
from con2._utils import resolve_device

# Faults during training


def test_keyboard_interrupt_leaves_an_unfitted_detector_unfitted(digits, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training_module, "train_epoch", interrupted)
    det = tiny()
    with pytest.raises(KeyboardInterrupt):
        det.fit(digits[0])
    assert not hasattr(det, "encoder_") and not hasattr(det, "offset_")


def test_keyboard_interrupt_keeps_the_previous_fit(digits, monkeypatch):
    det = tiny().fit(digits[0])
    before = det.score_samples(digits[1])
    calls = []

    def interrupted_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = training_module.train_epoch
    monkeypatch.setattr(training_module, "train_epoch", interrupted_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        det.set_params(random_state=5).fit(digits[0])
    np.testing.assert_array_equal(det.score_samples(digits[1]), before)


def test_cuda_out_of_memory_while_scoring_retries_with_smaller_chunks(digits, monkeypatch):
    det = tiny().fit(digits[0])
    expected = det.score_samples(digits[1])
    original = engine_module.embed_views

    def tight_memory(encoder, images, views, forward_size, device, **kwargs):
        if len(images) > 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(encoder, images, views, forward_size, device, **kwargs)

    monkeypatch.setattr(engine_module, "embed_views", tight_memory)
    with pytest.warns(UserWarning, match="ran out of memory"):
        scores = det.score_samples(digits[1])
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


# Long runs


def test_warm_start_continues_training_for_more_epochs(digits):
    det = tiny(n_epochs=2).fit(digits[0])
    first = list(det.loss_curve_)
    det.set_params(warm_start=True, n_epochs=3).fit(digits[0])
    assert len(det.loss_curve_) == 5 and det.loss_curve_[:2] == first
    cold = tiny(n_epochs=3).fit(digits[0])
    assert not np.array_equal(det.score_samples(digits[1]), cold.score_samples(digits[1]))


def test_warm_start_refuses_another_image_shape(digits):
    det = tiny(warm_start=True).fit(digits[0])
    with pytest.raises(ValueError, match="warm_start continues a model fitted on images"):
        det.fit(np.zeros((20, 9, 9), dtype=np.uint8))


def test_a_resumed_run_ends_in_the_same_state_as_an_uninterrupted_one(
    digits, tmp_path, monkeypatch
):
    uninterrupted = tiny(n_epochs=4).fit(digits[0])

    path = tmp_path / "fit.ckpt"
    calls = []
    original = training_module.train_epoch

    def crash_in_epoch_three(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("power cut")
        return original(*args, **kwargs)

    monkeypatch.setattr(training_module, "train_epoch", crash_in_epoch_three)
    det = tiny(n_epochs=4, checkpoint_path=path, checkpoint_every=1)
    with pytest.raises(RuntimeError, match="power cut"):
        det.fit(digits[0])
    assert path.exists() and not hasattr(det, "encoder_")
    monkeypatch.setattr(training_module, "train_epoch", original)

    epochs_run = []
    monkeypatch.setattr(
        training_module, "train_epoch",
        lambda *a, **k: epochs_run.append(1) or original(*a, **k),
    )  # fmt: skip
    det.fit(digits[0])  # resumes after epoch 2
    assert len(epochs_run) == 2
    assert det.loss_curve_ == uninterrupted.loss_curve_
    for key, value in uninterrupted.encoder_.state_dict().items():
        assert torch.equal(det.encoder_.state_dict()[key], value), key
    np.testing.assert_array_equal(
        det.score_samples(digits[1]), uninterrupted.score_samples(digits[1])
    )


def test_a_checkpoint_of_another_fit_is_not_resumed(digits, tmp_path):
    path = tmp_path / "fit.ckpt"
    tiny(checkpoint_path=path).fit(digits[0])
    with pytest.warns(UserWarning, match="belongs to another fit"):
        det = tiny(checkpoint_path=path, random_state=1).fit(digits[0])
    fresh = tiny(random_state=1).fit(digits[0])
    np.testing.assert_array_equal(det.score_samples(digits[1]), fresh.score_samples(digits[1]))


def test_a_warm_start_with_a_checkpoint_trains_on(digits, tmp_path):
    """The warm fit must not resume the cold fit's finished checkpoint (and train nothing)."""
    path = tmp_path / "fit.ckpt"
    det = tiny(warm_start=True, checkpoint_path=path).fit(digits[0])
    with pytest.warns(UserWarning, match="belongs to another fit"):
        det.fit(digits[0])  # and replaces the cold fit's checkpoint
    reference = tiny(warm_start=True).fit(digits[0])
    reference.fit(digits[0])
    assert len(det.loss_curve_) == 4 and det.loss_curve_ == reference.loss_curve_
    np.testing.assert_array_equal(det.score_samples(digits[1]), reference.score_samples(digits[1]))


def test_a_checkpoint_of_the_same_pixels_in_another_shape_is_not_resumed(digits, tmp_path):
    path = tmp_path / "fit.ckpt"
    rows = digits[0].reshape(len(digits[0]), -1)
    tiny(image_shape=(1, 8, 8), checkpoint_path=path).fit(rows)
    with pytest.warns(UserWarning, match="belongs to another fit"):
        det = tiny(image_shape=(1, 4, 16), checkpoint_path=path).fit(rows)
    fresh = tiny(image_shape=(1, 4, 16)).fit(rows)
    assert det.loss_curve_ == fresh.loss_curve_


DESCRIBE = textwrap.dedent("""
    import functools
    from con2._persistence import _describe

    def backbone(image_shape, width=8):
        return width

    class Blur:  # a user context: a plain class with a default repr
        def __init__(self):
            self.size = 3
            self.kernel = functools.partial(max, 1)

    width = 16
    print(_describe([backbone, lambda shape: width, Blur(), {"a": Blur}]))
""")


def test_a_fit_is_described_alike_in_every_process():
    """A checkpoint of a user backbone or context must be recognised by the next process."""
    runs = [subprocess.run([sys.executable, "-c", DESCRIBE], capture_output=True, text=True,
                           check=True).stdout for _ in range(2)]  # fmt: skip
    assert runs[0] == runs[1] and "0x" not in runs[0] and "Blur" in runs[0]


def test_a_fit_with_another_function_is_described_otherwise():
    from con2._persistence import _describe

    def make(width):
        return lambda shape: width

    assert _describe(make(8)) != _describe(make(16))  # the same code, other closures
    assert _describe(lambda shape: 8) != _describe(lambda shape: [8])  # same name, other code


def test_an_empty_file_at_the_checkpoint_path_is_no_checkpoint(digits, tmp_path):
    path = tmp_path / "fit.ckpt"
    path.touch()
    det = tiny(checkpoint_path=path).fit(digits[0])
    assert path.stat().st_size > 0
    assert det.loss_curve_ == tiny().fit(digits[0]).loss_curve_


@pytest.mark.parametrize("content", [b"notes of the run", b"PK\x03\x04 not a zip", "zip"])
def test_a_file_that_is_not_a_checkpoint_is_refused_not_overwritten(digits, tmp_path, content):
    path = tmp_path / "fit.ckpt"
    if content == "zip":  # an archive, not written by torch
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "not a checkpoint")
        content = path.read_bytes()
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a con2 checkpoint"):
        tiny(checkpoint_path=path).fit(digits[0])
    assert path.read_bytes() == content


# Untrusted files


@pytest.mark.parametrize("scorer", ["nnd", "lh"])
def test_weights_only_save_and_load_round_trip(digits, tmp_path, scorer):
    det = tiny(scorer=scorer).fit(digits[0])
    det.save(tmp_path / "det.con2")
    loaded = con2.load(tmp_path / "det.con2")
    assert loaded.get_params()["scorer"].get_params() == det.scorer_.get_params()
    np.testing.assert_array_equal(loaded.score_samples(digits[1]), det.score_samples(digits[1]))
    np.testing.assert_array_equal(loaded.predict(digits[0]), det.predict(digits[0]))  # LOO kept


def test_load_takes_the_device_parameter_of_the_estimator(digits, tmp_path):
    tiny(n_epochs=1).fit(digits[0]).save(tmp_path / "det.con2")
    assert con2.load(tmp_path / "det.con2", device="auto").device_ == resolve_device("auto")
    with pytest.raises(ValueError, match="device must be"):
        con2.load(tmp_path / "det.con2", device="tpu")


def test_loading_a_file_with_a_pickle_payload_refuses_without_running_it(tmp_path):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.con2"
    torch.save({"format": "con2-weights", "format_version": 1, "params": Payload()}, path)
    with pytest.raises(ValueError, match="refuses"):
        con2.load(path)
    assert not marker.exists()


def test_a_file_of_another_format_version_is_refused(digits, tmp_path):
    path = tmp_path / "det.con2"
    tiny().fit(digits[0]).save(path)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(ValueError, match="format version 99"):
        con2.load(path)


def test_user_written_components_are_not_saved_weights_only(digits, tmp_path):
    class Rotate:
        distinctive = True
        aligned = True

        def __call__(self, x):
            return torch.rot90(x, 1, dims=(-2, -1))

    det = tiny(context=Rotate()).fit(digits[0])
    with pytest.raises(TypeError, match="joblib"):
        det.save(tmp_path / "det.con2")


# Determinism and threads


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "auto"])  # auto: bfloat16 on some CPUs
def test_scores_are_bitwise_identical_across_processes(digits, tmp_path, precision):
    np.save(tmp_path / "train.npy", digits[0])
    np.save(tmp_path / "test.npy", digits[1])
    detector = tiny(precision=precision)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from con2 import Con2Detector
        det = Con2Detector(**{detector.get_params()!r})
        det.fit(np.load({str(tmp_path / "train.npy")!r}))
        test = np.load({str(tmp_path / "test.npy")!r})
        np.save({str(tmp_path / "scores.npy")!r}, det.score_samples(test))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    here = detector.fit(digits[0]).score_samples(digits[1])
    np.testing.assert_array_equal(np.load(tmp_path / "scores.npy"), here)


def _fit_and_score(train, test, seed):
    """Fit and score with every warning raised as an error; report the threads used."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return tiny(random_state=seed).fit(train).score_samples(test), torch.get_num_threads()


@pytest.mark.slow
def test_parallel_fits_match_serial_ones_without_oversubscription_warnings(digits):
    threads = torch.get_num_threads()
    parallel = joblib.Parallel(n_jobs=2)(
        joblib.delayed(_fit_and_score)(*digits[:2], seed) for seed in (0, 1)
    )
    worker_threads = {n for _, n in parallel}
    # loky gives each of the 2 workers cpu_count // 2 threads, so nothing is oversubscribed
    # (or the OMP_NUM_THREADS of this process, where it is set: pytest -n sets it)
    expected = int(os.environ.get("OMP_NUM_THREADS", max(1, joblib.cpu_count() // 2)))
    assert worker_threads == {expected}
    # float32 kernels split reductions over threads: compare at the workers' thread count
    torch.set_num_threads(worker_threads.pop())
    try:
        serial = [_fit_and_score(*digits[:2], seed)[0] for seed in (0, 1)]
    finally:
        torch.set_num_threads(threads)
    for expected, (got, _) in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert torch.get_num_threads() == threads


def test_loaded_detector_keeps_its_scorer_parameter_unfitted(digits, tmp_path):
    tiny().fit(digits[0]).save(tmp_path / "det.con2")
    loaded = con2.load(tmp_path / "det.con2")
    assert loaded.scorer_ is not loaded.scorer and not hasattr(loaded.scorer, "bank_")
