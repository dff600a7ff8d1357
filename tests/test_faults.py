"""Nothing lost, every error clear: killed runs, full disks, wrong files, the command line."""

import csv
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, gradient, tiny_detector, write

import con2
import con2._utils as utils_module
from con2 import cli

FIT = ["--context", "invert", "--base-width", "4", "--batch-size", "16",
       "--n-test-augmentations", "4", "--device", "cpu", "--random-state", "0"]  # fmt: skip


def run(*args, check=False, timeout=300, **kwargs):
    return subprocess.run([sys.executable, "-m", "con2", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, check=check, **kwargs)  # fmt: skip


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """40 grayscale 16x16 PNGs (dark at the top) in one folder."""
    root = tmp_path_factory.mktemp("images")
    for i in range(40):
        write(root / f"img{i:03d}.png", gradient(16, seed=i))
    return root


@pytest.fixture(scope="module")
def model(folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.con2"
    tiny_detector().fit(str(folder)).save(path)
    return path


# Outputs are checked before any work


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fit", "{folder}", "--out", "{tmp}/nodir/model.con2"], "does not exist; create it"),
        (["fit", "{folder}", "--out", "{tmp}"], "is a folder; give a file name"),
        (["score", "{model}", "{folder}", "--out", "{tmp}/no/scores.csv"], "does not exist"),
        (["export", "{model}", "--out", "{tmp}/nodir/m.onnx"], "does not exist"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(folder, model, tmp_path,
                                                                      args, message):  # fmt: skip
    given = [a.format(folder=folder, model=model, tmp=tmp_path) for a in args]
    started = time.perf_counter()
    done = run(*given, *([*FIT, "--n-epochs", "500"] if given[0] == "fit" else []))
    assert done.returncode == 1 and message in done.stderr
    assert done.stderr.count("\n") == 1  # one line
    assert time.perf_counter() - started < 60  # 500 epochs were not trained first


def test_an_output_without_write_permission_is_refused(tmp_path, monkeypatch):
    from con2 import _persistence

    # root may write anywhere, so the permission the check asks about is taken away here
    denied = {tmp_path / "locked"}
    real = os.access

    def access(path, mode):
        return Path(path) not in denied and real(path, mode)

    monkeypatch.setattr(_persistence.os, "access", access)
    (tmp_path / "locked").mkdir()
    with pytest.raises(PermissionError, match=r"the model \(--out\) .*locked/m.con2 cannot be"):
        _persistence.check_output(tmp_path / "locked" / "m.con2", "the model (--out)")
    _persistence.check_output(tmp_path / "m.con2", "the model (--out)")  # allowed: no error


def test_a_checkpoint_path_that_cannot_be_written_is_refused_before_reading(tmp_path):
    det = tiny_detector(checkpoint_path=tmp_path / "nodir" / "run.ckpt")
    with pytest.raises(ValueError, match=r"folder of checkpoint_path.*does not exist"):
        det.fit("no/such/folder")  # the folder would be the next error, not this one


def test_a_model_that_cannot_be_saved_after_training_is_rescued(folder, monkeypatch, capsys):
    det = tiny_detector().fit(str(folder))
    real = type(det).save

    def full_disk(self, path):
        if "rescued" not in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, path)

    monkeypatch.setattr(type(det), "save", full_disk)
    with pytest.raises(OSError, match=r"No space left on device.*the trained model is in (\S+)"):
        cli._save_or_rescue(det, "/somewhere/model.con2")
    rescued = Path(f"{__import__('tempfile').gettempdir()}/con2-rescued-{os.getpid()}.con2")
    assert rescued.exists()
    np.testing.assert_array_equal(con2.load(rescued).calibration_scores_, det.calibration_scores_)
    rescued.unlink()


def test_a_failed_save_leaves_the_previous_file_whole(folder, tmp_path, monkeypatch):
    det = tiny_detector().fit(str(folder))
    path = tmp_path / "model.con2"
    det.save(path)
    before = path.read_bytes()

    def fail(payload, file):
        Path(file).write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match=r"could not write the model .*previous model.con2 is intact"):
        det.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.con2"]  # no temporary left


# Scores: nothing overwritten by a failure, and interrupted runs resume


def read_csv(path):
    return list(csv.reader(Path(path).read_text().splitlines()))


def test_a_failed_scoring_leaves_the_existing_csv_untouched(model, folder, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(folder, images)
    (images / "zz_truncated.png").write_bytes((folder / "img000.png").read_bytes()[:40])
    out = tmp_path / "scores.csv"
    out.write_text("the previous results\n")
    done = run("score", model, images, "--out", out)
    assert done.returncode == 1 and "zz_truncated.png" in done.stderr
    assert out.read_text() == "the previous results\n"


def test_an_interrupted_scoring_resumes_to_the_same_file(model, folder, tmp_path, monkeypatch):
    whole = tmp_path / "whole.csv"
    assert cli.main(["score", str(model), str(folder), "--out", str(whole)]) == 0
    out = tmp_path / "scores.csv"
    monkeypatch.setattr(cli, "_SCORE_BATCH", 8)
    calls = []
    real = cli._score_batch

    def interrupted(detector, paths, skip):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(detector, paths, skip)

    monkeypatch.setattr(cli, "_score_batch", interrupted)
    assert cli.main(["score", str(model), str(folder), "--out", str(out)]) == 130
    partial = Path(f"{out}.partial")
    assert not out.exists() and len(read_csv(partial)) == 1 + 16  # two batches written
    with open(partial, "a") as f:
        f.write(f"{folder}/img016.png,0.12")  # a row cut in the middle by the kill
    monkeypatch.setattr(cli, "_score_batch", real)
    assert cli.main(["score", str(model), str(folder), "--out", str(out), "--resume"]) == 0
    assert out.read_text() == whole.read_text() and not partial.exists()


def test_resume_refuses_the_partial_file_of_another_command(model, folder, tmp_path):
    out = tmp_path / "scores.csv"
    Path(f"{out}.partial").write_text("path,score,decision,label\nelsewhere.png,1,1,normal\n")
    done = run("score", model, folder, "--out", out, "--resume")
    assert done.returncode == 1 and "holds other files" in done.stderr


# Kills: caches removed, checkpoints valid, the same command resumes


def caches(folder: Path) -> list:
    return sorted(p.name for p in folder.glob("con2-*"))


@pytest.mark.slow
@pytest.mark.parametrize("number", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_fit_leaves_no_cache_and_resumes_from_its_checkpoint(folder, tmp_path,
                                                                          number):  # fmt: skip
    cache, checkpoint, out = tmp_path / "cache", tmp_path / "run.ckpt", tmp_path / "m.con2"
    cache.mkdir()
    command = [sys.executable, "-m", "con2", "fit", str(folder), "--out", str(out), *FIT,
               "--n-epochs", "40", "--checkpoint-path", str(checkpoint), "--checkpoint-every",
               "1", "--cache-dir", str(cache), "--verbose", "0"]  # fmt: skip
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.01)  # the signal comes epochs before the 40th, even on a fast machine
    assert caches(cache), "the fit decodes its files into a cache"
    process.send_signal(number)
    assert process.wait(timeout=60) == 130
    assert "interrupted" in process.stderr.read()
    assert caches(cache) == [] and not out.exists()
    state = torch.load(checkpoint, weights_only=True)  # whole, and this fit's
    assert 1 <= len(state["losses"]) < 40
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert len(con2.load(out).loss_curve_) == 40 and caches(cache) == []


@pytest.mark.slow
def test_a_killed_fit_s_cache_is_swept_by_the_next_and_a_live_one_is_not(folder, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    script = ("import sys\nfrom helpers import tiny_detector\n"
              f"tiny_detector(n_epochs=int(sys.argv[1]), cache_dir={str(cache)!r})"
              f".fit({str(folder)!r})\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    long = subprocess.Popen([sys.executable, "-c", script, "2000"], env=env)
    deadline = time.monotonic() + 120
    while not caches(cache) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    owned = caches(cache)
    assert len(owned) == 1
    # a second fit in the same folder while the first trains: the live cache stays
    subprocess.run([sys.executable, "-c", script, "1"], env=env, check=True, timeout=300)
    assert caches(cache) == owned
    long.kill()  # SIGKILL: no chance to clean up
    long.wait(timeout=60)
    assert caches(cache) == owned  # left behind
    subprocess.run([sys.executable, "-c", script, "1"], env=env, check=True, timeout=300)
    assert caches(cache) == []  # swept by the next fit, which cleaned up its own


def test_a_terminated_fit_from_python_removes_its_cache(folder, tmp_path, monkeypatch):
    """The decode cache turns SIGTERM into an exception while it exists (here raised by
    a step of the training loop, as the handler would)."""
    cache = tmp_path / "cache"
    cache.mkdir()
    import con2._engine as engine_module

    def terminated(*args, **kwargs):
        assert caches(cache)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread
        time.sleep(5)  # the handler raises before this returns
        raise AssertionError("SIGTERM was not turned into an exception")

    monkeypatch.setattr(engine_module, "fit_encoder", terminated)
    with pytest.raises(utils_module.Terminated, match="SIGTERM"):
        tiny_detector(cache_dir=cache).fit(str(folder))
    assert caches(cache) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back


# Full disks


def test_a_cache_folder_without_room_is_a_one_line_error_before_decoding(folder, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(utils_module.shutil, "disk_usage",
                        lambda path: usage._replace(free=1000))  # fmt: skip
    with pytest.raises(OSError, match=r"has 1 KiB free but the cache needs \d+ KiB.*--cache-dir"):
        tiny_detector(cache_dir=tmp_path).fit(str(folder))
    assert caches(tmp_path) == []


def test_a_reservation_the_disk_refuses_is_a_clear_error(tmp_path, monkeypatch):
    def no_room(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(utils_module.os, "posix_fallocate", no_room)
    with pytest.raises(OSError, match=r"has no room for 1 MiB of cache.*--cache-dir"):
        utils_module.allocate(tmp_path / "cache.u8", 2**20)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs, where the test may mount one (root, and a mount namespace allows it)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip() or 'not root'})")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_disk_keeps_the_previous_model_and_refuses_a_cache(small_disk, folder, tmp_path):
    det = tiny_detector().fit(str(folder))
    det.save(small_disk / "model.con2")
    before = (small_disk / "model.con2").read_bytes()
    (small_disk / "filler").write_bytes(b"\0" * (2**21 - len(before) - 4096 * 4))
    with pytest.raises(OSError, match="could not write the model"):
        det.set_params(base_width=16).fit(str(folder)).save(small_disk / "model.con2")
    assert (small_disk / "model.con2").read_bytes() == before
    big = tmp_path / "big"
    big.mkdir()
    for i in range(300):
        write(big / f"{i:03d}.png", np.full((64, 64), i % 256, dtype=np.uint8))
    with pytest.raises(OSError, match=r"cache needs .*--cache-dir"):
        tiny_detector(cache_dir=small_disk).fit(str(big))


# Wrong files say what they are


def test_files_that_are_not_models_say_what_they_are(model, folder, tmp_path, capsys):
    cases = {
        "empty.con2": (b"", "is empty (0 bytes)"),
        "truncated.con2": (model.read_bytes()[:5000], "damaged or truncated"),
        "image.con2": ((folder / "img000.png").read_bytes(), "is a PNG image"),
        "scores.csv": (b"path,score\na.png,0.5\n", "is a text file (CSV)"),
        "model.joblib": (b"\x80\x04\x95 pickled", "holds pickled objects"),
        "noise.bin": (bytes(range(256)) * 4, "unrecognised content"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=re.escape(message)):
            con2.load(tmp_path / name)
        # `con2 info` in this process: the same message, one line (the process's exit
        # status and stderr are tested by the subprocess tests of test_cli.py)
        assert cli.main(["info", str(tmp_path / name)]) == 1
        stderr = capsys.readouterr().err
        assert stderr.startswith("con2: error: ") and stderr.count("\n") == 1, stderr
        assert message.split(" (")[0] in stderr, stderr
    with pytest.raises(ValueError, match=r"is a folder, not a con2 model"):
        con2.load(folder)
    assert cli.main(["info", str(tmp_path / "image.con2")]) == 1
    assert "pickled objects" not in capsys.readouterr().err


def test_exports_point_to_their_runtimes(model, tmp_path):
    pytest.importorskip("onnxscript")
    assert cli.main(["export", str(model), "--out", str(tmp_path / "m.onnx")]) == 0
    with pytest.raises(ValueError, match=r"is an ONNX export.*ONNX Runtime"):
        con2.load(tmp_path / "m.onnx")
    pt2 = ["export", str(model), "--format", "pt2", "--out", str(tmp_path / "m.pt2")]
    assert cli.main(pt2) == 0
    with pytest.raises(ValueError, match=r"is a torch.export \(.pt2\) program"):
        con2.load(tmp_path / "m.pt2")


def test_swapped_score_arguments_are_named(model, folder):
    done = run("score", folder, model)
    assert done.returncode == 1 and "the arguments look swapped" in done.stderr


# The command line as people type it


def test_a_repeated_context_trains_with_every_context_given(folder, tmp_path):
    out = tmp_path / "m.con2"
    done = run("fit", folder, "--out", out, *FIT, "--context", "vflip", "--n-epochs", "1",
               "--n-test-augmentations", "6", "--verbose", "0")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [type(c).__name__ for c in con2.load(out).contexts_] == ["ColorInvert", "VerticalFlip"]


@pytest.mark.parametrize(
    ("given", "value"),
    [(["--compile"], True), (["--no-compile"], False), (["--compile", "yes"], True),
     (["--compile", "OFF"], False), (["--distributed", "auto"], "auto"),
     (["--no-distributed"], False)],
)  # fmt: skip
def test_boolean_options_are_flags_with_the_usual_spellings(given, value):
    args = cli.build_parser().parse_args(["fit", "x", "--out", "m", *given])
    name = given[0].removeprefix("--").removeprefix("no-").replace("-", "_")
    assert getattr(args, f"param_{name}") == value


def test_a_boolean_option_refuses_other_words():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["fit", "x", "--out", "m", "--compile", "maybe"])


def test_errors_name_the_options_as_they_are_typed(folder, tmp_path):
    done = run("fit", folder, "--out", tmp_path / "m.con2", "--batch-size", "1")
    assert "The --batch-size option must be" in done.stderr
    assert "'batch_size'" not in done.stderr
    done = run("fit", folder, "--out", tmp_path / "m.con2", "--image-shape", "2,8,8")
    assert "--image-shape" in done.stderr and "image_shape" not in done.stderr


def test_help_has_no_markup_and_answers_without_torch():
    for args in (["--help"], ["--version"], ["fit", "--help"]):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c",
                               "import sys, con2.cli as c\ntry:\n    c.main(sys.argv[1:])\n"
                               "except SystemExit:\n    pass\n"
                               "print('torch loaded' if 'torch' in sys.modules else 'no torch')",
                               *args], capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.stdout.strip().endswith("no torch"), (args, done.stdout[-200:])
        assert time.perf_counter() - started < 5  # a second or so with Python's start
        assert "``" not in done.stdout and ":class:" not in done.stdout


def test_a_closed_pipe_ends_quietly(model, folder):
    done = subprocess.run(f"{sys.executable} -m con2 score {model} {folder} | head -2",
                          shell=True, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert len(done.stdout.splitlines()) == 2
    assert "Broken pipe" not in done.stderr and "Traceback" not in done.stderr


# Safe formats of the ecosystem


def test_skops_saves_a_detector_alone_and_in_a_pipeline(folder, tmp_path):
    sio = pytest.importorskip("skops.io")
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    det = tiny_detector().fit(str(folder))
    X = np.stack([gradient(16, seed=100 + i) for i in range(12)])
    for name, estimator in (("alone", det), ("pipeline", make_pipeline(FunctionTransformer(),
                                                                      det))):  # fmt: skip
        path = tmp_path / f"{name}.skops"
        sio.dump(estimator, path)
        assert sio.get_untrusted_types(file=path) == ["con2._detector.Con2Detector"]
        loaded = sio.load(path, trusted=["con2._detector.Con2Detector"])
        np.testing.assert_array_equal(loaded.score_samples(X), estimator.score_samples(X))
        np.testing.assert_array_equal(loaded.predict(X), estimator.predict(X))


def test_pickles_carry_no_tensor_and_load_as_they_were(folder):
    import pickle

    det = tiny_detector(random_state=np.random.RandomState(3)).fit(str(folder))
    restored = pickle.loads(pickle.dumps(det))
    assert isinstance(restored.random_state, np.random.RandomState)  # parameters as they were
    X = np.stack([gradient(16, seed=100 + i) for i in range(5)])
    np.testing.assert_array_equal(restored.score_samples(X), det.score_samples(X))
    assert TINY["device"] == str(restored.device_)
