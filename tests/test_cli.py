"""The `con2` command line, end to end through subprocesses, and its parts in process."""

import csv
import io as stdio
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import TINY, gradient, write

import con2
from con2 import Con2Detector, cli
from con2 import io as con2_io

FIT_OPTIONS = [
    "--context",
    "invert",
    "--base-width",
    "4",
    "--n-epochs",
    "2",
    "--batch-size",
    "16",
    "--n-test-augmentations",
    "4",
    "--device",
    "cpu",
    "--precision",
    "float32",
    "--random-state",
    "0",
]  # fmt: skip (helpers.TINY, spelled with dashes)


def run(*args, check=True):
    done = subprocess.run([sys.executable, "-m", "con2", *map(str, args)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    if check and done.returncode != 0:
        raise AssertionError(done.stderr)
    return done


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A folder of training PNGs, one of new PNGs, and a model fitted by `con2 fit`.

    Read-only for the tests that use it.
    """
    root = tmp_path_factory.mktemp("cli")
    for i in range(24):
        write(root / "train" / f"{i:02d}.png", gradient(16, seed=i))
    for i in range(6):
        image = gradient(16, seed=50 + i)
        write(root / "new" / f"{i}.png", image if i % 2 else image[::-1])
    model = root / "model.con2"
    done = run("fit", root / "train", "--out", model, *FIT_OPTIONS)
    return root, model, done


def read_csv(text):
    return list(csv.DictReader(stdio.StringIO(text)))


@pytest.mark.slow
def test_fit_trains_saves_and_reports_progress_on_stderr(fitted):
    _, model, done = fitted
    assert model.stat().st_size > 0 and done.stdout == ""
    assert "Con2 fit" in done.stderr and "trained on 24 images of shape (1, 16, 16)" in done.stderr


@pytest.mark.slow
def test_score_writes_the_csv_that_python_computes(fitted, tmp_path):
    root, model, _ = fitted
    done = run("score", model, root / "new")
    rows = read_csv(done.stdout)
    paths = con2_io.list_images(root / "new")
    assert [r["path"] for r in rows] == paths
    assert list(rows[0]) == ["path", "score", "decision", "label"]
    loaded = con2.load(model)
    scores = loaded.score_samples(paths)
    np.testing.assert_array_equal([float(r["score"]) for r in rows], scores)
    decisions = [float(r["decision"]) for r in rows]
    np.testing.assert_array_equal(decisions, loaded.decision_function(paths))
    labels = {1: "normal", -1: "anomaly"}
    assert [r["label"] for r in rows] == [labels[v] for v in loaded.predict(paths)]
    # ... and equal to the same fit done in Python on the CPU
    in_python = Con2Detector(**{**TINY, "random_state": 0}).fit(root / "train")
    np.testing.assert_array_equal(in_python.score_samples(paths), scores)
    out = tmp_path / "r.csv"
    assert run("score", model, *paths[:2], "--out", out).stdout == ""
    assert [r["path"] for r in read_csv(out.read_text())] == paths[:2]


@pytest.mark.slow
def test_unreadable_files_stop_scoring_or_become_rows(fitted, tmp_path):
    _, model, _ = fitted
    good = write(tmp_path / "a.png", gradient(16))
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not a png")
    done = run("score", model, good, bad, check=False)
    assert done.returncode == 1 and done.stdout.count("\n") <= 1
    assert done.stderr.strip() == f"con2: error: {bad}: not an image file Pillow can read."
    rows = read_csv(run("score", model, good, bad, "--skip-unreadable").stdout)
    assert rows[0]["error"] == "" and float(rows[0]["score"]) == pytest.approx(
        con2.load(model).score_samples([good])[0], abs=0
    )
    assert rows[1]["score"] == "" and rows[1]["error"] == "not an image file Pillow can read."
    debug = run("--debug", "score", model, bad, check=False)
    assert "Traceback" in debug.stderr and debug.returncode != 0


@pytest.mark.slow
def test_bad_options_are_one_line_errors_from_the_estimator_itself(fitted, tmp_path):
    root, _, _ = fitted
    done = run("fit", root / "train", "--out", tmp_path / "m", "--n-epochs", "0", check=False)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("con2: error: The --n-epochs option must be")
    assert len(done.stderr.strip().splitlines()) == 1
    missing = run("score", tmp_path / "nothing.con2", root / "new", check=False)
    assert missing.returncode == 1 and "nothing.con2" in missing.stderr


@pytest.mark.slow
def test_check_context_and_info_print_tables(fitted):
    root, model, _ = fitted
    table = run("check-context", root / "train", "--context", "vflip", "--context", "invert")
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["context", "images", "distinctiveness", "alignment", "verdict"]
    assert [line.split()[0] for line in lines[1:]] == ["vflip", "invert"]
    assert all(line.split()[1] == "24" for line in lines[1:])
    info = run("info", model).stdout
    for text in (f"con2 {con2.__version__}", "ColorInvert", "NearestNeighborScorer",
                 "(1, 16, 16)", "offset_ = ", "training images  24", "epochs trained   2",
                 "base_width = 4"):  # fmt: skip
        assert text in info


@pytest.mark.slow
def test_export_and_info_of_the_exported_file(fitted, tmp_path):
    pytest.importorskip("onnxruntime")
    _, model, _ = fitted
    done = run("export", model, "--format", "onnx", "--out", tmp_path / "m.onnx")
    assert "input `images`: N x 1x16x16" in done.stderr
    info = run("info", tmp_path / "m.onnx").stdout
    assert "con2_version" in info and '"base_width": 4' in info and "threshold" in info


@pytest.mark.slow
def test_every_estimator_parameter_is_a_documented_fit_option():
    parser = cli.build_parser()
    fit_help = parser._subparsers._group_actions[0].choices["fit"].format_help()
    for name in Con2Detector().get_params():
        assert f"--{name.replace('_', '-')}" in fit_help
    assert "Passes over the training images" in fit_help  # from the class docstring
    for command in ("score", "check-context", "info", "export"):
        assert run(command, "--help").returncode == 0


def test_the_maps_method_option_offers_every_method_of_anomaly_maps():
    from con2.maps import METHODS  # the CLI lists them itself: it loads torch after --help

    score = cli.build_parser()._subparsers._group_actions[0].choices["score"]
    (option,) = [a for a in score._actions if "--maps-method" in a.option_strings]
    assert tuple(option.choices) == METHODS


def test_option_docs_are_read_whatever_the_docstring_layout():
    expected = cli._parameter_docs(Con2Detector.__doc__)
    assert sorted(expected) == sorted(Con2Detector().get_params())
    assert all(expected.values())
    assert expected["context"].startswith("The context augmentation(s).")  # not the type line
    deeper = "Summary.\n\n" + textwrap.indent(Con2Detector.__doc__.split("\n\n", 1)[1], "    ")
    assert cli._parameter_docs(deeper) == expected
    flush = "Summary.\n\n" + textwrap.dedent(Con2Detector.__doc__.split("\n\n", 1)[1])
    assert cli._parameter_docs(flush) == expected


@pytest.mark.parametrize(
    ("text", "value"),
    [("3,224,224", (3, 224, 224)), ("0,65535", (0, 65535)), ("none", None), ("auto", "auto"),
     ("0.05", 0.05), ("12", 12), ("true", True), ("vflip,invert", ("vflip", "invert"))],
)  # fmt: skip
def test_option_values_are_parsed_into_python_values(text, value):
    assert cli.parse_value(text) == value


@pytest.mark.slow
def test_main_returns_an_exit_status_without_a_subprocess(fitted, capsys):
    root, model, _ = fitted
    assert cli.main(["info", str(model)]) == 0
    assert "image shape" in capsys.readouterr().out
    assert cli.main(["score", str(model), str(root / "absent")]) == 1
    assert "absent: no such file or folder" in capsys.readouterr().err
