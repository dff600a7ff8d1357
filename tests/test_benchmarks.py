"""The benchmark scripts run end to end at toy sizes and write what their READMEs show.

The README blocks regenerate byte for byte from the committed results, and the committed
tables, rerun by their own commands, have nothing left to run.
"""

import importlib
import json
import os
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_idx

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RESULTS = BENCHMARKS / "results"
# The toy detector: trains in well under a second on the toy data below.
TOY = dict(base_width=2, n_epochs=1, batch_size=8, n_test_augmentations=2)


@pytest.fixture
def benchmarks(monkeypatch, tmp_path):
    """Import the scripts with their README pointed at a scratch copy."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import oneclass
    import throughput

    readme = tmp_path / "bench"
    readme.mkdir()
    (readme / "README.md").write_text(
        "before\n<!-- oneclass-toy -->\nstale table\n<!-- oneclass-toy -->\nafter\n"
    )
    for module in (oneclass, throughput):
        monkeypatch.setattr(module, "ROOT", readme)
    return oneclass, throughput, readme / "README.md"


@pytest.fixture
def harness(monkeypatch):
    """The benchmarks' shared modules, ``_harness`` and ``_protocol``."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("_harness"), importlib.import_module("_protocol")


def toy_fashion_mnist(folder, rng):
    """Two classes of 28x28 images that differ in brightness, in IDX files.

    Class 0 is dark (pixels 0 to 119), class 1 bright (120 to 239): every detector here
    should tell them apart, so AUROCs near 1 are expected (they are 0.97 to 1.0).
    """
    for prefix, n in (("train", 24), ("t10k", 16)):
        labels = np.arange(n) % 2
        images = rng.integers(0, 120, (n, 28, 28)) + 120 * labels[:, None, None]
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))


@pytest.mark.filterwarnings("ignore:n_neighbors .* is greater than")  # LOF on 12 images
def test_oneclass_runs_every_configuration_and_renders_its_table(benchmarks, tmp_path, monkeypatch):
    oneclass, _, readme = benchmarks
    toy_fashion_mnist(tmp_path, np.random.default_rng(0))
    monkeypatch.setitem(oneclass.PRESETS, "toy", TOY)
    monkeypatch.setitem(oneclass.PRESET_N_TRAIN, "toy", None)
    out = tmp_path / "oneclass-toy.json"
    results = oneclass.main(
        preset="toy", classes=(0, 1), seeds=(0, 1), contexts=("vflip", None),
        data=str(tmp_path), out=str(out), write_readme=True,
    )  # fmt: skip
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert [(r["class"], r["seed"]) for r in results["rows"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for row in results["rows"]:
        assert row["n_train"] == 12
        for method in ("vflip", "None"):
            # the toy classes differ in brightness: every fit tells them apart
            assert row[method]["nnd"] > 0.9 and row[method]["lh"] > 0.9
            # two classes: the one anomaly class alone is the whole test set's AUROC
            other = str(1 - row["class"])
            for scorer in ("nnd", "lh"):
                assert row[method]["per_anomaly"][scorer] == {other: row[method][scorer]}
        for baseline in oneclass.BASELINES:
            assert row[baseline] > 0.9
        assert set(row["checks"]) == {"vflip"}
    assert "--preset toy --classes 0 1 --seeds 0 1" in results["command"]
    text = readme.read_text()
    assert text.startswith("before\n<!-- oneclass-toy -->\nRun ") and text.endswith("after\n")
    assert "stale table" not in text and results["command"] in text
    assert "| vflip nnd | vflip lh | SimCLR nnd | SSD-like lh | IsolationForest |" in text
    mean = np.mean([r["vflip"]["lh"] for r in results["rows"]])
    assert "| **mean** | " in text and f"{100 * mean:.1f}" in text
    assert "| std over seeds (mean over classes) |" in text  # every class has two seeds
    assert "**Partial:** not yet run on classes 2, 3, 4, 5, 6, 7, 8, 9; the means" in text


@pytest.fixture
def toy_oneclass(benchmarks, tmp_path, monkeypatch):
    """oneclass.main at toy size on toy data, and a record of the fits it runs."""
    oneclass, _, _ = benchmarks
    toy_fashion_mnist(tmp_path, np.random.default_rng(0))
    monkeypatch.setitem(oneclass.PRESETS, "toy", TOY)
    monkeypatch.setitem(oneclass.PRESET_N_TRAIN, "toy", None)
    fits = []
    real = oneclass.run_con2

    def recording(X_train, X_test, is_normal, context, settings, seed, **kwargs):
        fits.append((int(is_normal[1] == 1), seed, oneclass.context_name(context)))  # class
        return real(X_train, X_test, is_normal, context, settings, seed, **kwargs)

    monkeypatch.setattr(oneclass, "run_con2", recording)

    def run(out, **kwargs):
        args = dict(preset="toy", classes=(0, 1), seeds=(0,), contexts=("vflip", None))
        return oneclass.main(**{**args, **kwargs}, data=str(tmp_path), out=str(out))

    return run, fits, oneclass


@pytest.mark.filterwarnings("ignore:n_neighbors .* is greater than")
def test_oneclass_resumes_an_interrupted_table_and_skips_finished_fits(toy_oneclass, tmp_path):
    run, fits, oneclass = toy_oneclass
    whole = run(tmp_path / "whole.json")
    assert len(fits) == 4
    fits.clear()
    # Interrupt the second run in its third fit: the file keeps the two finished ones.
    calls = []
    real = oneclass.run_con2

    def interrupted(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    oneclass.run_con2 = interrupted
    out = tmp_path / "resumed.json"
    with pytest.raises(KeyboardInterrupt):
        run(out)
    saved = json.loads(out.read_text())
    done = [(r["class"], k) for r in saved["rows"] for k in ("vflip", "None") if k in r]
    assert len(done) == 2 and all("IsolationForest" not in r for r in saved["rows"][1:])
    # Class 1 was started (its row holds its context checks) but has no fit: its README
    # table leaves it out and says so, and the means are over class 0.
    oneclass.render_readme(saved)
    text = (oneclass.ROOT / "README.md").read_text().split("<!-- resumed -->")[1]
    assert "| 1 " not in text and "| **mean** | -" not in text
    assert f"| **mean** | {100 * saved['rows'][0]['vflip']['nnd']:.1f} |" in text
    assert "**Partial:** not yet run on classes 1, 2, 3, 4, 5, 6, 7, 8, 9;" in text
    oneclass.run_con2 = real
    fits.clear()
    resumed = run(out)
    assert len(fits) == 2  # only the two fits the interrupted run had not finished
    for a, b in zip(whole["rows"], resumed["rows"], strict=True):
        for key in ("vflip", "None"):  # CPU fits are bit-reproducible: same AUROCs
            assert a[key]["nnd"] == b[key]["nnd"] and a[key]["lh"] == b[key]["lh"]
        assert a["IsolationForest"] == b["IsolationForest"]
    fits.clear()
    saved = out.read_bytes()
    again = run(out)  # the same command once more: nothing left to run, nothing rewritten
    assert fits == [] and again["rows"] == resumed["rows"] and out.read_bytes() == saved
    more = run(out, seeds=(1,), classes=(1,))  # another seed joins the same table
    assert fits == [(1, 1, "vflip"), (1, 1, "None")]
    assert [(r["class"], r["seed"]) for r in more["rows"]] == [(0, 0), (1, 0), (1, 1)]
    assert len(more["commands"]) == 2
    # class 0 has one seed now: the spread is over the classes that have two
    oneclass.render_readme(more)
    text = (oneclass.ROOT / "README.md").read_text().split("<!-- resumed -->")[1]
    assert "| std over seeds (mean over classes with 2+ seeds) |" in text


@pytest.mark.filterwarnings("ignore:n_neighbors .* is greater than")
def test_a_fit_killed_mid_training_resumes_from_its_checkpoint(toy_oneclass, tmp_path,
                                                                monkeypatch):  # fmt: skip
    run, _, oneclass = toy_oneclass
    monkeypatch.setitem(oneclass.PRESETS, "toy", {**TOY, "n_epochs": 3})
    whole = run(tmp_path / "whole.json", classes=(0,), contexts=("vflip",))
    import con2._training as training

    real, epochs = training.train_epoch, []

    def killed_in_the_third_epoch(*args, **kwargs):
        epochs.append(args[4])  # the epoch's index
        if len(epochs) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", killed_in_the_third_epoch)
    out = tmp_path / "killed.json"
    with pytest.raises(KeyboardInterrupt):
        run(out, classes=(0,), contexts=("vflip",))
    checkpoints = tmp_path / "killed.checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["0-0-vflip.ckpt"]
    assert not out.exists()  # the Con2 fit runs first: nothing was finished
    epochs.clear()
    resumed = run(out, classes=(0,), contexts=("vflip",))
    assert epochs == [2]  # only the epoch the kill interrupted
    before, after = whole["rows"][0]["vflip"], resumed["rows"][0]["vflip"]
    assert after["resumed"] is True and "resumed" not in before
    assert (after["nnd"], after["lh"]) == (before["nnd"], before["lh"])  # the same state
    assert after["train_seconds"] > 0 and len(after) == len(before) + 1
    assert not checkpoints.exists()  # removed once the result is saved


def test_the_hardware_names_the_cpus_instruction_set_and_threads(harness, one_thread):
    harness, _ = harness
    described = harness.hardware("cpu")
    assert f"({torch.backends.cpu.get_cpu_capability()}), 1 threads (CPU)" in described


def test_a_table_built_at_several_commits_names_each_one(harness, tmp_path, monkeypatch):
    harness, _ = harness
    commits = iter(["aaa", "aaa", "bbb", "ccc", "ddd"])
    monkeypatch.setattr(harness, "git_commit", lambda: next(commits))
    path = tmp_path / "t.json"
    for run, command in enumerate(("first", "first", "first", "second")):
        results = harness.ResultsFile(path, {"preset": "p"})
        results.start_run(command)
        results.add_row((run, 0), n_train=1)
        results.add((run, 0), "vflip", {"lh": 0.5})
        assert results.finish() == json.loads(path.read_text())
    saved = json.loads(path.read_text())
    assert saved["command_commits"] == {"first": ["aaa", "bbb"], "second": ["ccc"]}
    assert saved["commit"] == "ccc"  # the latest run's, as before
    assert [(r["class"], r["seed"], r["vflip"]["lh"]) for r in saved["rows"]] == [
        (k, 0, 0.5) for k in range(4)
    ]
    assert harness.code_at(saved) == "code at commits aaa, bbb, ccc (each command's below)"
    assert harness.run_header(saved).endswith(", code at commits aaa, bbb, ccc (each command's "
                                              "below)")  # fmt: skip
    assert harness.command_lines(saved) == ["    first  # at aaa, bbb", "    second  # at ccc"]
    # a run that adds nothing records nothing: its command and commit are not the table's
    results = harness.ResultsFile(path, {"preset": "p"})
    results.start_run("third")
    assert results.has((3, 0), "vflip") and not results.has((3, 0), "invert")
    results.finish()
    assert json.loads(path.read_text()) == saved
    # one commit (or a file from before commits were kept per command): as it was
    saved.update(command_commits={"first": ["aaa"], "second": ["aaa"]}, commit="aaa")
    assert harness.code_at(saved) == "code at commit aaa"
    del saved["command_commits"]
    assert harness.command_lines(saved) == ["    first", "    second"]
    # a file from before commits were recorded at all: its header names none
    del saved["commit"], saved["updated"], saved["hardwares"]
    assert harness.run_header({**saved, "hardware": "h"}) == f"Run {saved['date']} on h"


def test_a_table_trained_on_several_machines_names_each_one(harness, tmp_path, monkeypatch):
    harness, _ = harness
    monkeypatch.setattr(harness, "git_commit", lambda: "aaa")
    path = tmp_path / "t.json"
    # a file from before the machines were kept: its one machine comes first
    path.write_text(json.dumps({"rows": [], "command": "c", "hardware": "EPYC (AVX2)",
                                "date": "2026-12-06"}))  # fmt: skip
    for run, machine in enumerate(("Xeon (AVX512)", "EPYC (AVX2)", "Xeon (AVX512)")):
        monkeypatch.setattr(harness, "hardware", lambda device=None, machine=machine: machine)
        results = harness.ResultsFile(path)
        results.start_run("c")
        results.add_row((run, 0), n_train=1)
        results.add((run, 0), "vflip", {"lh": 0.5})
        results.finish()
    saved = json.loads(path.read_text())
    assert saved["hardwares"] == ["EPYC (AVX2)", "Xeon (AVX512)"]
    assert saved["hardware"] == "Xeon (AVX512)"  # the latest run's, as before
    assert harness.run_header(saved).startswith(
        f"Run 2026-12-06 to {saved['updated']} on EPYC (AVX2) and on Xeon (AVX512), code at"
    )
    # a run that adds nothing does not name its machine
    monkeypatch.setattr(harness, "hardware", lambda device=None: "ARM")
    results = harness.ResultsFile(path)
    results.start_run("c")
    results.finish()
    assert json.loads(path.read_text())["hardwares"] == ["EPYC (AVX2)", "Xeon (AVX512)"]
    # a file without the list names its one machine
    del saved["hardwares"]
    assert " on Xeon (AVX512), code at" in harness.run_header(saved)


def test_a_table_from_before_commits_were_kept_per_command_keeps_its_own(harness, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    harness, _ = harness
    monkeypatch.setattr(harness, "git_commit", lambda: "new")
    path = tmp_path / "t.json"
    rows = {"0": {"vflip": 0.9}}
    path.write_text(json.dumps({"settings": {}, "rows": rows, "command": "old", "commit": "aaa"}))
    results = harness.ResultsFile(path, {"settings": {}}, rows="dict")
    results.start_run("later")
    assert results.has(0, "vflip") and not results.has(1)
    results.add(1, "vflip", 0.8)
    saved = json.loads(path.read_text())
    assert saved["rows"] == {"0": {"vflip": 0.9}, "1": {"vflip": 0.8}}
    assert saved["commands"] == ["old", "later"]
    assert saved["command_commits"] == {"old": ["aaa"], "later": ["new"]}
    assert harness.code_at(saved) == "code at commits aaa, new (each command's below)"


def test_a_results_file_is_replaced_atomically_and_never_half_written(harness, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    harness, _ = harness
    path = tmp_path / "m.json"
    path.write_text('{"rows": "an older measurement"}')
    results = harness.ResultsFile(path, resume=False)  # a measurement: not continued
    results.start_run("python benchmarks/m.py --n 1")
    results.data["rows"] = {"a": 1.0}

    def crash(source, target):
        raise OSError("disk full")

    with monkeypatch.context() as patched, pytest.raises(OSError, match="disk full"):
        patched.setattr(os, "replace", crash)
        results.save()
    assert json.loads(path.read_text()) == {"rows": "an older measurement"}  # untouched
    results.save()
    saved = json.loads(path.read_text())
    assert saved["rows"] == {"a": 1.0} and saved["command"] == "python benchmarks/m.py --n 1"
    assert set(saved) == {"rows", "command", "date", "hardware", "commit"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


def test_a_command_line_writes_each_option_as_the_scripts_parse_it(harness):
    harness, _ = harness
    command = harness.command_line(
        "x.py", (None, ["a.json", "b.json"]), ("--classes", (0, 1)), ("--budget", 120.0),
        ("--minutes", None), ("--levels", '"base" "batch 64"'), ("--fast", True),
        ("--slow", False), ("--n-train", 2000),
    )  # fmt: skip
    assert command == ('python benchmarks/x.py a.json b.json --classes 0 1 --budget 120 '
                       '--levels "base" "batch 64" --fast --n-train 2000')  # fmt: skip


def test_oneclass_refuses_to_mix_two_tables_in_one_file(toy_oneclass, tmp_path, monkeypatch):
    run, _, oneclass = toy_oneclass
    out = tmp_path / "t.json"
    run(out, classes=(0,), contexts=("vflip",))
    monkeypatch.setitem(oneclass.PRESETS, "toy", {**TOY, "base_width": 3})
    with pytest.raises(ValueError, match="holds another table"):
        run(out, classes=(0,), contexts=("vflip",))


def test_throughput_measures_all_four_parts_as_ratios(benchmarks, tmp_path):
    _, throughput, _ = benchmarks
    result = throughput.main(
        device="cpu", width=2, batch_size=8, image_size=12, n_steps=1, repeats=1, workers=0,
        n_test=30, n_train=20, n_views=2, out=str(tmp_path / "t.json"),
    )  # fmt: skip
    training = result["training"]
    for key in ("con2_step_s", "backbone_step_s", "conventional_step_s"):
        assert training[key] > 0
    assert training["overhead_ratio"] == training["con2_step_s"] / training["backbone_step_s"]
    parts = result["step_parts_ms"]  # the training loop's own profiler ranges, each timed
    assert all(parts[k] > 0 for k in ("views", "forward", "loss", "backward", "optimizer"))
    steps = 2048 * (6000 // 8)  # the paper's budget, in steps of this batch size
    assert result["full_budget_hours"]["con2"] == pytest.approx(
        steps * training["con2_step_s"] / 3600
    )
    assert result["scoring"]["max |con2 nnd - sklearn|"] < 1e-5
    assert result["scoring"]["con2 lh (fit + score)"]["seconds"] > 0
    assert json.loads((tmp_path / "t.json").read_text()) == result


def test_the_precision_table_saves_each_case_and_a_rerun_measures_only_the_missing(
    benchmarks, tmp_path, monkeypatch
):
    _, throughput, readme = benchmarks
    measured = []

    def fake_case(case):  # no processes: the table's bookkeeping is what is tested
        measured.append((case["width"], case["threads"]))
        if case["width"] == 4 and case["threads"] == 2:
            raise KeyboardInterrupt  # the run is killed during its last case
        formats = {"float32 contiguous": 2.0, "float32 channels-last": 1.0,
                   "bfloat16 contiguous": 1.0, "bfloat16 channels-last": 0.5}  # fmt: skip
        fits = {"float32": 3.0, "bfloat16": 1.5, "float32, compile": 3.0,
                "bfloat16, compile": 1.0}  # fmt: skip
        return {"width": case["width"], "image": case["image"], "threads": case["threads"],
                "batch": 8, "formats": formats, "fits": fits}  # fmt: skip

    monkeypatch.setattr(throughput, "_run_case", fake_case)
    settings = dict(out=str(tmp_path / "p.json"), rounds=1, widths=(2, 4),
                    shapes={"12 px gray": (1, 12)})  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        throughput.precision_main(**settings)
    saved = json.loads((tmp_path / "p.json").read_text())
    assert list(saved["rows"]) == ["w2 12 px gray 1t", "w4 12 px gray 1t", "w2 12 px gray 2t"]
    assert saved["command"] == (
        "python benchmarks/throughput.py --precision-table --rounds 1 "
        f"--widths 2 4 --image-sizes 12 --out {tmp_path / 'p.json'}"
    )
    monkeypatch.setattr(throughput, "_run_case", lambda case: {
        **fake_case({**case, "width": 5}), "width": case["width"]})  # fmt: skip
    measured.clear()
    result = throughput.precision_main(**settings, write_readme=True)
    assert measured == [(5, 2)]  # only the case the kill interrupted
    assert len(result["rows"]) == 4
    block = readme.read_text().split("<!-- p -->")[1]  # the block is named after the file
    assert "| 2 | 12 px gray (8) | 1 | 2.00x | 2.00x | 4.00x | 2.00x | 1.00x | 3.00x |" in block


def test_the_views_table_profiles_a_real_fit_and_writes_its_share(benchmarks, tmp_path,
                                                                   monkeypatch):  # fmt: skip
    _, throughput, readme = benchmarks
    monkeypatch.setattr(throughput, "step_batch", lambda width, size: 8)  # not 256 at 128 px
    out = tmp_path / "v.json"
    result = throughput.views_main(str(out), write_readme=True, threads=(1,), widths=(2,))
    row = result["rows"]["w2 1t"]
    parts = row["profile"]["ms"]
    assert set(parts) == {"views", "forward", "loss", "backward", "optimizer"}
    assert all(ms > 0 for ms in parts.values())
    assert row["profile"]["views_share"] == pytest.approx(parts["views"] / sum(parts.values()))
    share = f"{100 * row['profile']['views_share']:.0f}% |"
    assert f"| 2 | 1 | {row['batch']} | " in readme.read_text() and share in readme.read_text()
    assert throughput.views_main(str(out), threads=(1,), widths=(2,)) == result  # all there


def test_cost_separates_epochs_from_the_fixed_cost_of_a_fit(benchmarks, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import cost

    monkeypatch.setattr(cost, "SETTINGS", {"toy": dict(base_width=2, n_test_augmentations=2)})
    out = tmp_path / "cost.json"
    results = cost.main(n_train=32, n_epochs=1, n_score=8, device="cpu", out=str(out))
    row = results["rows"]["toy"]
    assert row["seconds_per_1000_scored"] > 0 and row["seconds_per_step"] > 0
    # a 6000-image class is 23 steps of the default batch of 256, and the paper 2048 epochs
    assert row["seconds_per_epoch_6000"] == pytest.approx(23 * row["seconds_per_step"])
    assert row["hours_2048_epochs_6000"] == pytest.approx(
        2048 * row["seconds_per_epoch_6000"] / 3600
    )
    assert row["settings"] == {"base_width": 2, "batch_size": 256, "n_test_augmentations": 2}
    saved = json.loads(out.read_text())
    assert saved == results and saved["command"] == (
        "python benchmarks/cost.py --n-train 32 --n-epochs 1 --n-score 8 --device cpu"
    )


def test_sweep_trains_a_shared_setting_once_and_renders_both_tables(
    benchmarks, tmp_path, monkeypatch
):
    _, _, readme = benchmarks
    import _protocol
    import sweep

    monkeypatch.setattr(sweep, "ROOT", readme.parent)
    toy_fashion_mnist(tmp_path, np.random.default_rng(0))
    monkeypatch.setitem(_protocol.PRESETS, "toy", TOY)
    monkeypatch.setitem(_protocol.PRESET_N_TRAIN, "toy", None)
    sweeps = {"temperature": (0.2, 0.5), "n_test_augmentations": (2, 4)}
    monkeypatch.setattr(sweep, "SWEEPS", sweeps)
    fits = []
    real = _protocol.run_con2
    monkeypatch.setattr(sweep, "run_con2", lambda *a: fits.append(a[4]) or real(*a))
    results = sweep.main(preset="toy", classes=(1,), data=str(tmp_path),
                         out=str(tmp_path / "s.json"), write_readme=True)  # fmt: skip
    assert len(results["rows"]) == 4 and len(fits) == 3  # (0.2, 2 views) is trained once
    assert all(row["nnd"] > 0.9 and row["lh"] > 0.9 for row in results["rows"])
    assert results["n_train"] == 12 and results["commit"] is not None
    text = readme.read_text()
    assert "| class | temperature=0.2 | temperature=0.5 |" in text
    assert "| class | n_test_augmentations=2 | n_test_augmentations=4 |" in text
    assert results["command"] in text


@pytest.fixture
def toy_frontier(benchmarks, tmp_path, monkeypatch):
    """frontier.main's arguments at toy size on toy data (two levels priced 1 s and 2 s)."""
    _, _, readme = benchmarks
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import frontier

    monkeypatch.setattr(frontier, "ROOT", readme.parent)
    toy_fashion_mnist(tmp_path, np.random.default_rng(0))
    monkeypatch.setattr(frontier, "BASE", dict(context="vflip", base_width=2, batch_size=8,
                                               n_test_augmentations=4))  # fmt: skip
    monkeypatch.setattr(frontier, "VIEW_COUNTS", (2,))
    monkeypatch.setattr(frontier, "LEVELS", {"base": ({}, "a"), "wide": ({"base_width": 3}, "b")})
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"rows": {"a": {"seconds_per_epoch_6000": 1.0},
                                          "b": {"seconds_per_epoch_6000": 2.0}}}))  # fmt: skip
    args = dict(classes=(1,), seeds=(0,), levels=("base", "wide"), budget=2.0,
                costs=str(costs), data=str(tmp_path), out=str(tmp_path / "study.json"))  # fmt: skip
    return frontier, args, readme


def test_frontier_study_prices_levels_by_measured_cost_and_resumes(toy_frontier, monkeypatch):
    frontier, args, readme = toy_frontier
    results = frontier.main(**args, write_readme=True)
    assert results["levels"]["base"]["n_epochs"] == 2 and results["levels"]["wide"]["n_epochs"] == 1
    row = results["rows"][0]
    assert row["wide"]["n_epochs"] == 1 and set(row["base"]["views=2"]) == {"nnd", "lh"}
    assert set(row["base"]["fpr"]) == {"nnd leave-one-out", "lh in-sample", "lh leave-one-out"}
    text = readme.read_text()
    assert "<!-- frontier-study -->" in text and "| wide | 1 |" in text and "| 1 (0) |" in text
    assert "Partial" not in text
    calls = []
    monkeypatch.setattr(frontier, "run_con2", lambda *a: calls.append(a))
    frontier.main(**args)  # everything is in the file already
    assert calls == []
    # a run of one level keeps what the file records of the others
    frontier.main(**{**args, "levels": ("wide",)})
    assert set(json.loads(Path(args["out"]).read_text())["levels"]) == {"base", "wide"}
    # an unfinished study: the README block says which levels are not finished
    saved = json.loads(Path(args["out"]).read_text())
    del saved["rows"][0]["wide"]
    Path(args["out"]).write_text(json.dumps(saved))
    frontier.main(out=args["out"], readme_only=True)
    text = readme.read_text()
    assert calls == [] and "**Partial:** the study has not run (or not finished)" in text
    assert "every (class, seed): wide." in text and "| wide |" not in text


def test_frontier_study_block_shows_a_difference_that_flips_sign_between_seeds(toy_frontier):
    frontier, _, _ = toy_frontier

    def fit(lh):
        return {"nnd": lh, "lh": lh, "fit_seconds": 1.0, "views=2": {"nnd": lh, "lh": lh}}

    # "wide" is 2 points ahead of the base on seed 0 and 2 behind on seed 1: a mean over
    # seeds of +0.0 that the block must not present as "no effect on every seed"
    rows = [{"class": c, "seed": s, "base": fit(0.90), "wide": fit(0.92 if s == 0 else 0.88)}
            for c in (1, 2) for s in (0, 1)]  # fmt: skip
    rows[1]["wide"] = fit(0.87)  # class 1, seed 1: -3
    results = {
        "date": "d",
        "updated": "u",
        "hardware": "h",
        "commit": "c",
        "settings": {"budget_seconds": 2.0},
        "commands": ["cmd"],
        "levels": {"base": {"n_epochs": 2}, "wide": {"n_epochs": 1}},
        "rows": rows,
    }
    text = frontier.readme_text(results)
    assert "paired difference, seed by seed" in text
    assert "| wide | 1 | 1 | 89.8 (-0.3 ± 1.3) |" in text
    assert "seed 0: +2.0, seed 1: -2.5 | 4 (0, 1) |" in text
    # a level that ran on seed 0 only says so; its per-seed difference is seed 0's
    for row in rows:
        if row["seed"] == 1:
            del row["wide"]
    text = frontier.readme_text(results)
    assert "| seed 0: +2.0 | 2 (0) |" in text and "**Partial:**" in text
    # one seed: no per-seed column
    results["rows"] = [r for r in rows if r["seed"] == 0]
    text = frontier.readme_text(results)
    assert "seed by seed" not in text and "| wide | 1 | 1 | 92.0 (+2.0 ± 0.0) |" in text


@pytest.mark.slow  # starts a local Dask cluster: worker processes
def test_frontier_study_runs_its_fits_on_a_local_dask_cluster(toy_frontier, tmp_path,
                                                              one_thread):  # fmt: skip
    pytest.importorskip("distributed")
    frontier, args, _ = toy_frontier
    serial = frontier.main(**args)
    # the workers get the levels and view counts from here, not from their own import
    on_cluster = frontier.main(**{**args, "out": str(tmp_path / "dask.json")}, dask="local")
    for level in ("base", "wide"):
        here, there = serial["rows"][0][level], on_cluster["rows"][0][level]
        assert here["lh"] == there["lh"] and here["views=2"] == there["views=2"]
        assert here["n_epochs"] == there["n_epochs"]


@pytest.mark.slow  # starts a local Dask cluster: worker processes
def test_local_dask_workers_train_with_one_thread_and_glibc_s_own_mmap_threshold(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _harness

    names = ("OMP_NUM_THREADS", "MALLOC_TRIM_THRESHOLD_")
    found = [env for _, env in _harness.fan_out(_harness.worker_environment, [names], "local")]
    assert found == [{"OMP_NUM_THREADS": "1", "MALLOC_TRIM_THRESHOLD_": None}]


@pytest.mark.slow  # starts a local Dask cluster: worker processes
@pytest.mark.filterwarnings("ignore:n_neighbors .* is greater than")
def test_oneclass_fans_its_fits_out_on_a_local_dask_cluster(toy_oneclass, tmp_path, one_thread):
    pytest.importorskip("distributed")
    run, _, _ = toy_oneclass
    serial = run(tmp_path / "serial.json")
    environ = dict(os.environ)
    on_cluster = run(tmp_path / "dask.json", dask="local")
    assert dict(os.environ) == environ  # the nanny's OMP_NUM_THREADS=1 does not leak out
    assert "--dask local" not in on_cluster["command"]  # how it ran does not name the table
    for a, b in zip(serial["rows"], on_cluster["rows"], strict=True):
        assert a["vflip"]["lh"] == b["vflip"]["lh"] and a["None"]["nnd"] == b["None"]["nnd"]
        assert a["IsolationForest"] == b["IsolationForest"]


@pytest.fixture
def toy_hard_classes(benchmarks, tmp_path, monkeypatch):
    """hard_classes.main's arguments at toy size on toy data."""
    _, _, readme = benchmarks
    import _protocol
    import hard_classes

    monkeypatch.setattr(hard_classes, "ROOT", readme.parent)
    # in place: hard_classes.py and probe.py share the one dict
    for key, value in {**TOY, "scorer": "lh", "random_state": 0}.items():
        monkeypatch.setitem(_protocol.HELD_OUT_SETTINGS, key, value)
    toy_fashion_mnist(tmp_path, np.random.default_rng(0))
    return hard_classes, dict(classes=(0, 1), data=str(tmp_path)), readme


@pytest.mark.filterwarnings("ignore::UserWarning")  # a toy class of 10 training images
def test_hard_classes_records_both_contexts_and_resumes_an_interrupted_run(
    toy_hard_classes, tmp_path, monkeypatch
):
    hard_classes, args, readme = toy_hard_classes
    whole = hard_classes.main(**args, out=str(tmp_path / "whole.json"), write_readme=True)
    for cls in ("0", "1"):
        row = whole["rows"][cls]
        assert set(row) == {"vflip", "invert", "combined"}
        for context in ("vflip", "invert"):
            record = row[context]
            assert record["per_anomaly"] == {str(1 - int(cls)): record["auroc"]}
            assert record["auroc"] > 0.9  # the toy classes differ in brightness
            # held-out views are told apart by context better than chance (0.62 to 0.88)
            assert record["context_accuracy"] > 0.5
            # the scores see how bright an image is, and little else here (0.69 to 0.81)
            assert record["intensity_rho"] > 0.5
        assert row["combined"]["auroc"] > 0.9
    assert not (tmp_path / "whole.partial").exists()  # scores kept only while a class is open
    text = readme.read_text()
    assert "| 0 T-shirt/top |" in text and "| 1 Trouser |" in text
    assert "context_accuracy" in text and "of 2" in text
    better = [max(("vflip", "invert"), key=lambda c: whole["rows"][k][c]["auroc"]) for k in "01"]
    assert f"; always vflip {better.count('vflip')} of 2 and always invert " in text
    assert "**Partial:** not yet run on classes 2, 3, 4, 5, 6, 7, 8, 9." in text
    pixels = whole["pixels"]["0"]
    assert pixels["intensity_auroc"] == 1.0  # mean brightness alone separates the toy classes
    assert pixels["mean"] < 0.5 < whole["pixels"]["1"]["mean"]
    assert f"| {better[0]} | 100.0 |" in text  # the better context, then intensity alone
    v, i = (whole["rows"]["0"][c] for c in ("vflip", "invert"))
    assert f"| {100 * v['per_anomaly']['1']:.0f} / {100 * i['per_anomaly']['1']:.0f} |" in text
    # interrupted after its first fit: the file keeps that fit and its scores wait
    out = tmp_path / "cut.json"
    real, calls = hard_classes.fit_context, []

    def stop_after_one(cls, context, data):
        if calls:
            raise KeyboardInterrupt
        calls.append((cls, context))
        return real(cls, context, data)

    monkeypatch.setattr(hard_classes, "fit_context", stop_after_one)
    with pytest.raises(KeyboardInterrupt):
        hard_classes.main(**args, out=str(out))
    assert list(json.loads(out.read_text())["rows"]) == ["0"]
    assert (tmp_path / "cut.partial" / "0-vflip.npy").exists()
    # the same command continues with the three fits left and combines class 0 as before
    monkeypatch.setattr(hard_classes, "fit_context", real)
    resumed = hard_classes.main(**args, out=str(out))
    for cls in ("0", "1"):
        assert resumed["rows"][cls]["combined"] == whole["rows"][cls]["combined"]
        assert resumed["rows"][cls]["vflip"]["auroc"] == whole["rows"][cls]["vflip"]["auroc"]
    monkeypatch.setattr(hard_classes, "fit_context", lambda *a: calls.append(a))
    monkeypatch.setattr(sys.modules["_harness"], "git_commit", lambda: "a-later-commit")
    # everything is in the file already: nothing runs, and the file keeps its run's commit
    hard_classes.main(**args, out=str(out), write_readme=True)
    assert calls == [(0, "vflip")]
    assert f"Code at commit {resumed['commit']}," in readme.read_text()
    assert resumed["commit"] != "a-later-commit"


def test_a_linear_probe_tells_separable_features_from_noise(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import probe

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 50)
    is_normal = np.where(labels == 0, 1, -1)
    features = rng.normal(size=(150, 4))
    features[labels == 1, 0] += 10.0  # class 1 differs from the normal class along one axis
    found = probe.probe_aurocs(features, is_normal, labels)
    assert set(found) == {"1", "2"}
    assert found["1"] == 1.0 and 0.2 < found["2"] < 0.8  # class 2 is the normal class's noise


@pytest.mark.filterwarnings("ignore::UserWarning")  # a toy class of 10 training images
def test_probe_trains_as_hard_classes_does_and_resumes(toy_hard_classes, tmp_path, monkeypatch):
    hard_classes, args, readme = toy_hard_classes
    import probe

    monkeypatch.setattr(probe, "ROOT", readme.parent)
    results = probe.main(**args, out=str(tmp_path / "probe.json"), write_readme=True)
    assert json.loads((tmp_path / "probe.json").read_text()) == json.loads(json.dumps(results))
    reference = hard_classes.main(**args, out=str(tmp_path / "hard.json"))
    for cls in ("0", "1"):
        row, other = results["rows"][cls], str(1 - int(cls))
        for context in ("vflip", "invert"):
            # the same detector as hard_classes.py's: with one anomaly class, its Gaussian
            # AUROC against that class is the whole test set's
            assert row[context]["lh"] == {other: reference["rows"][cls][context]["auroc"]}
            assert set(row[context]["nnd"]) == set(row[context]["probe"]) == {other}
        # the toy classes differ in brightness: the probe on pixels separates them, and
        # IsolationForest on pixels tells them apart
        assert row["pixels"]["pixel_probe"] == {other: 1.0}
        assert row["pixels"]["isolation_forest"][other] > 0.9
    text = readme.read_text()
    assert "Normal class 0 T-shirt/top:" in text and "| 1 Trouser | " in text
    assert "| anomaly class | vflip lh | vflip nnd | vflip probe | invert lh |" in text
    monkeypatch.setattr(probe, "fit_context", lambda *a: pytest.fail("refitted a finished fit"))
    monkeypatch.setattr(sys.modules["_harness"], "git_commit", lambda: "a-later-commit")
    # nothing left to fit: the file, and the block rendered from it, keep the run's commit
    assert probe.main(**args, out=str(tmp_path / "probe.json"), write_readme=True) == results
    assert results["commit"] != "a-later-commit"
    assert f"Code at commit {results['commit']}," in readme.read_text()


def test_budget_curve_is_drawn_from_complete_tables_only(benchmarks, tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _, _, readme = benchmarks
    import budget

    monkeypatch.setattr(budget, "ROOT", readme.parent)
    files = []
    for minutes, epochs, auroc, n_classes in (
        (1, 3, 0.90, 10),
        (5, 15, 0.93, 10),
        (20, 60, 0.95, 9),
    ):
        rows = [{"class": c, "seed": 0, "vflip": {"lh": auroc + 0.001 * c, "nnd": 0.5,
                                                  "fit_seconds": 60.0 * minutes}}
                for c in range(n_classes)]  # fmt: skip
        if minutes == 1:  # the pixel baseline, where a table has it for every class
            for row in rows:
                row["IsolationForest"] = 0.91
        path = tmp_path / f"t{minutes}.json"
        command = f"python benchmarks/oneclass.py --minutes {minutes}"
        path.write_text(json.dumps({"settings": {"n_epochs": epochs}, "rows": rows,
                                    "command": command}))  # fmt: skip
        files.append(str(path))
    table = json.loads(Path(files[1]).read_text())  # the 5-minute table in bfloat16
    bf16 = {
        **table,
        "settings": {"n_epochs": 25, "precision": "bfloat16"},
        "rows": [{**r, "vflip": {**r["vflip"], "lh": 0.96}} for r in table["rows"]],
    }
    (tmp_path / "b5.json").write_text(json.dumps(bf16))
    # and at float32's epochs: precisions compared at equal epochs, no budget
    (tmp_path / "e5.json").write_text(json.dumps({**bf16, "command": bf16["command"]
                                                  + " --epochs-of float32"}))  # fmt: skip
    files += [str(tmp_path / "b5.json"), str(tmp_path / "e5.json")]
    found = budget.main(tuple(files), out=str(tmp_path / "curve.png"), write_readme=True)
    assert [(p["budget_minutes"], p["precision"]) for p in found] == [
        (1, "float32"),
        (5, "float32"),
        (5, "bfloat16"),
    ]  # the 9-class table is no point
    assert found[1]["mean_auroc"] == pytest.approx(0.9345) and found[0]["epochs"] == 3
    assert found[0]["isolation_forest"] == pytest.approx(0.91)
    assert found[1]["isolation_forest"] is None and found[1]["other_scorer"] == 0.5
    assert (tmp_path / "curve.png").stat().st_size > 5000
    text = readme.read_text()
    assert "| float32 | 1 | 3 | 1.0 | 90.5 | 90.0 | 50.0 | 91.0 | [0] |" in text
    assert "| float32 | 5 | 15 | 5.0 | 93.5 | 93.0 | 50.0 | - | [0] |" in text
    assert "| bfloat16 | 5 | 25 | 5.0 | 96.0 | 96.0 | 50.0 | - | [0] |" in text
    assert "curve.png" in text
    files = files[:3]

    # A second seed on one class moves that class's mean unless the curve keeps seed 0.
    table = json.loads(Path(files[1]).read_text())
    extra = {**table["rows"][0], "seed": 1, "vflip": {**table["rows"][0]["vflip"], "lh": 0.83}}
    Path(files[1]).write_text(json.dumps({**table, "rows": table["rows"] + [extra]}))
    assert budget.points(files[1:2], "vflip")[0]["mean_auroc"] == pytest.approx(0.9295)
    kept = budget.points(files[1:2], "vflip", seeds=[0])[0]
    assert kept["mean_auroc"] == pytest.approx(0.9345) and kept["seeds"] == [0]
    table = json.loads(Path(files[0]).read_text())  # the baseline follows the same seeds
    extra = {**table["rows"][0], "seed": 1, "IsolationForest": 0.51}
    Path(files[0]).write_text(json.dumps({**table, "rows": table["rows"] + [extra]}))
    assert budget.points(files[:1], "vflip")[0]["isolation_forest"] == pytest.approx(0.89)
    seed_0 = budget.points(files[:1], "vflip", seeds=[0])[0]
    assert seed_0["isolation_forest"] == pytest.approx(0.91)


def test_oneclass_prices_a_budget_in_epochs_from_the_cost_table(benchmarks, tmp_path):
    oneclass, _, _ = benchmarks
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps({"rows": {"w8": {"seconds_per_epoch_6000": 15.0}}}))
    assert oneclass.epochs_for("cpu-6000", 20, costs) == 80
    assert oneclass.epochs_for("cpu-6000", 0.1, costs) == 1


def test_the_frontier_preset_trains_for_twenty_minutes_as_priced(benchmarks):
    oneclass, _, _ = benchmarks
    preset = oneclass.PRESETS["cpu-frontier"]
    costs_file = BENCHMARKS / "results" / "cost-cpu-frontier.json"
    assert oneclass.epochs_for("cpu-frontier", 20, costs_file) == preset["n_epochs"]
    costs = json.loads(costs_file.read_text())
    priced = costs["rows"][oneclass.PRESET_COST_ROW["cpu-frontier"]]["settings"]
    assert {k: preset[k] for k in ("base_width", "batch_size")} == {
        k: priced[k] for k in ("base_width", "batch_size")
    }


def test_the_estimate_of_what_remains_counts_fits_that_run_at_once(harness, monkeypatch):
    harness, _ = harness
    todo = [(0, 0, "a"), (1, 0, "a"), (2, 0, "a"), (3, 0, "b")]
    assert harness.Eta(todo).tick("a", 120.0).endswith("3 fits left, about 6 min")
    assert harness.Eta(todo, parallel=2).tick("a", 120.0).endswith("3 fits left, about 3 min")
    last = harness.Eta(todo[:2], parallel=2)
    assert last.tick("a", 120.0).endswith("1 fits left, about 2 min")  # one fit: no sharing
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 7)
    assert harness.parallel_fits("local") == 7 and harness.parallel_fits(None) == 1
    monkeypatch.setattr(harness.os, "cpu_count", lambda: None)  # unknown: one at a time
    assert harness.parallel_fits("local") == 1


def test_the_recorded_commit_is_dirty_for_code_changes_not_for_results(harness, tmp_path):
    import subprocess

    harness, _ = harness
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "con2").mkdir()
    (repo / "con2" / "code.py").write_text("x = 1\n")
    (repo / "benchmarks" / "results" / "table.json").write_text("{}\n")

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                       check=True, capture_output=True)  # fmt: skip

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    clean = harness.git_commit(repo / "benchmarks")
    assert clean and not clean.endswith("+dirty")
    (repo / "benchmarks" / "results" / "table.json").write_text('{"rows": []}\n')
    (repo / "benchmarks" / "results" / "new.json").write_text("{}\n")
    (repo / "benchmarks" / "run.log").write_text("fit 1\n")
    assert harness.git_commit(repo / "benchmarks") == clean  # what a run writes is not code
    (repo / "con2" / "code.py").write_text("x = 2\n")
    assert harness.git_commit(repo / "benchmarks") == clean + "+dirty"


def committed(name: str) -> dict:
    """A committed results file of ``benchmarks/results``."""
    return json.loads((RESULTS / f"{name}.json").read_text())


def readme_block(text: str, name: str) -> str:
    """The text between a README's two ``<!-- name -->`` markers, without their newlines."""
    parts = text.split(f"<!-- {name} -->")
    assert len(parts) == 3, f"{name}: {len(parts) - 1} markers"
    return parts[1].removeprefix("\n").removesuffix("\n")


def budget_block(budget) -> str:
    """budget.py's block, from the files its committed command names (seed 0)."""
    names = [f"oneclass-cpu-frontier-{m}min.json" for m in (1, 2, 6)] + [
        "oneclass-frontier.json",
        "oneclass-cpu-frontier-6min-bfloat16.json",
    ]
    found = budget.points([str(RESULTS / n) for n in names], "vflip", "lh", (0,))
    return budget.readme_text(found, "vflip", "lh", BENCHMARKS / "figures" / "budget-cpu.png", (0,))


# Every block of benchmarks/README.md: the script that renders it, and how, from what is
# committed in benchmarks/results/ (each under its block's name, except budget.py's).
BLOCKS = {
    **{name: ("oneclass", None) for name in
       ("oneclass-cpu", "oneclass-cpu-vflip", "oneclass-frontier",
        "oneclass-cpu-frontier-6min-bfloat16-float32-epochs")},
    **{name: ("throughput", None) for name in ("throughput-cpu-w16", "throughput-cpu-w64")},
    "sweep-cpu": ("sweep", None),
    "frontier-study": ("frontier", None),
    "hard-classes": ("hard_classes", None),
    "probe": ("probe", None),
    "calibration-cpu": ("calibration", None),
    "calibration-cpu-bfloat16": ("calibration", None),
    "deploy-cpu": ("deploy", None),
    "scaling-cpu": ("scaling", None),
    "files-cpu": ("files", None),
    "budget-cpu": ("budget", budget_block),
    "gpu-check": ("gpu_check", None),
    "maps-cpu-2min": ("maps", None),
    "objectives-cpu-6min": ("objectives", None),
    "objectives-cpu-20min": ("objectives", None),
    **{name: ("throughput", lambda throughput, name=name: throughput.precision_text(
        committed(name))) for name in ("throughput-precision-cpu", "throughput-precision-cpu-amx")},
    "throughput-views-cpu": ("throughput", lambda throughput: throughput.views_text(
        committed("throughput-views-cpu"))),
}  # fmt: skip


def test_every_block_of_the_benchmarks_readme_is_rendered_by_a_script():
    text = (BENCHMARKS / "README.md").read_text()
    names = {line[5:-4] for line in text.splitlines() if line.startswith("<!-- ")}
    assert names == set(BLOCKS)


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_each_readme_block_regenerates_from_the_committed_results(name, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    script, render = BLOCKS[name]
    module = importlib.import_module(script)
    body = render(module) if render else module.readme_text(committed(name))
    readme = BENCHMARKS / "README.md"
    assert body == readme_block(readme.read_text(), name)
    # and the writer puts it back where it was: the whole file is unchanged
    copy = tmp_path / "README.md"
    copy.write_bytes(readme.read_bytes())
    importlib.import_module("_harness").render_block(copy, name, body)
    assert copy.read_bytes() == readme.read_bytes()


# The scripts whose tables a rerun continues (the others measure afresh every run).
RESUMABLE = ("oneclass.py", "frontier.py", "hard_classes.py", "probe.py", "calibration.py",
             "objectives.py")  # fmt: skip
# What a committed table lacks for its own command: the frontier study is partial, as its
# README block says (class 5 has no "batch 512" fit on seed 0).
UNFINISHED = {("frontier-study.json", "--classes 2 5 6 --seeds 0 --budget 120"): 1}


def committed_commands():
    """(script, results file, arguments) of every command a committed table records."""
    for path in sorted(RESULTS.glob("*.json")):
        results = json.loads(path.read_text())
        if "rows" not in results or "command" not in results:
            continue
        for command in results.get("commands") or [results["command"]]:
            script, options = command.split()[1], command.split(maxsplit=2)[2]
            if script.removeprefix("benchmarks/") in RESUMABLE:
                yield pytest.param(script, path.name, options, id=f"{path.stem}: {options}")


@pytest.mark.parametrize(("script", "table", "options"), list(committed_commands()))
def test_each_committed_table_rerun_by_its_own_command_runs_only_what_it_lacks(
    script, table, options, monkeypatch, tmp_path, capsys
):
    copy = tmp_path / table
    copy.write_bytes((RESULTS / table).read_bytes())
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    # No data: a fit that starts fails at once instead of training for minutes.
    arguments = [*shlex.split(options), "--out", str(copy), "--data", str(tmp_path / "none")]
    monkeypatch.setattr(sys, "argv", [script, *arguments])
    left = UNFINISHED.get((table, options), 0)
    if left:
        with pytest.raises(FileNotFoundError, match="Fashion-MNIST file"):
            runpy.run_path(str(BENCHMARKS.parent / script), run_name="__main__")
        assert f"; {left} to run" in capsys.readouterr().out
    else:
        runpy.run_path(str(BENCHMARKS.parent / script), run_name="__main__")
    assert copy.read_bytes() == (RESULTS / table).read_bytes()  # nothing recorded


def best_by_class(rows: list, name: str) -> tuple[str, list]:
    """An objective's scorer of the best mean over the ten classes, and its AUROCs (%) by
    class, each the mean over the seeds of ``rows`` (worked out here, not by the script)."""
    mine = [row for row in rows if name in row]

    def per_class(scorer):
        return [np.mean([100 * r[name][scorer] for r in mine if r["class"] == c])
                for c in range(10)]  # fmt: skip

    scorers = [s for s in ("nnd", "lh", "own") if s in mine[0][name]]
    best = max(scorers, key=lambda s: np.mean(per_class(s)))
    return best, per_class(best)


def test_the_readme_summaries_quote_the_committed_numbers():
    """The top-level README's summaries are written by hand: their numbers must be these."""
    text = (BENCHMARKS.parent / "README.md").read_text()
    maps_rows = committed("maps-cpu-2min")["rows"]

    def mean_of(name, metric):  # over the kinds, then over the classes, in %
        kinds = [row["kinds"].values() for row in maps_rows]
        return 100 * np.mean([np.mean([kind["maps"][name][metric] for kind in each])
                              for each in kinds])  # fmt: skip

    summary = " ".join(readme_block(text, "maps-summary").split())
    for name in ("gradient (nearest)", "|x - nearest|", "|x - mean|"):
        quoted = f"{mean_of(name, 'pixel_auroc'):.1f} / {mean_of(name, 'aupro'):.1f}"
        assert quoted in summary, (name, quoted)
    cost = np.mean([kind["seconds"]["gradient (nearest)"] / kind["seconds"]["score_samples"]
                    for row in maps_rows for kind in row["kinds"].values()])  # fmt: skip
    assert f"{cost:.1f} times" in summary
    rows = committed("calibration-cpu")["rows"].values()
    table = readme_block(text, "calibration-summary").splitlines()
    for rule, label in (("nnd leave-one-out", "`nnd`, leave-one-out"),
                        ("lh in-sample", "`lh`, in-sample"),
                        ("lh leave-one-out", "`lh`, leave-one-out"),
                        ("lh split", "`lh`, 400 held-out")):  # fmt: skip
        means = [np.mean([row[rule]["test"][c] for row in rows]) for c in ("0.01", "0.05", "0.1")]
        line = next(line for line in table if line.startswith(f"| {label}"))
        assert line.endswith(" | ".join(["", *(f"{m:.3f}" for m in means)]) + " |")
    summary = " ".join(readme_block(text, "precision-summary").split())
    bf16 = committed("oneclass-cpu-frontier-6min-bfloat16-float32-epochs")["rows"]
    f32 = {(r["class"], r["seed"]): r for r in committed("oneclass-cpu-frontier-6min")["rows"]}
    pairs = [(r["vflip"], f32[r["class"], r["seed"]]["vflip"]) for r in bf16]
    assert len(pairs) == 6
    differences = [np.mean([a[s] - b[s] for a, b in pairs]) for s in ("nnd", "lh")]
    assert ("mean difference {:+.1f} points for `nnd` and {:+.1f} for `lh`".format(
        *(100 * d for d in differences))) in summary  # fmt: skip
    rows = committed("calibration-cpu-bfloat16")["rows"].values()
    ratios = [np.mean([row["lh leave-one-out"]["test"][c] for row in rows]) / float(c)
              for c in ("0.01", "0.05", "0.1")]  # fmt: skip
    assert "leave-one-out: {:.2f}, {:.2f} and {:.2f} times".format(*ratios) in summary
    deploy = committed("deploy-cpu")["rows"]
    summary = " ".join(readme_block(text, "deploy-cpu-summary").split())
    speed = {k: f"{v:.0f}" for k, v in deploy["nnd"]["images_per_s"].items()}
    assert (f"(nnd: {speed['ONNX Runtime, 1 thread']} against {speed['score_samples, 1 thread']}"
            f" images/s on one thread, {speed['ONNX Runtime, all threads']} against "
            f"{speed['score_samples, all threads']} on two)") in summary  # fmt: skip
    ratios = [row["images_per_s"][f"ONNX Runtime, {t}"] / row["images_per_s"][f"score_samples, {t}"]
              for row in deploy.values() for t in ("1 thread", "all threads")]  # fmt: skip
    low, high = summary.split(" times as many")[0].split()[-3::2]
    assert (low, high) == (f"{min(ratios):.1f}", f"{max(ratios):.1f}")  # the range at 0.1
    difference = max(row["max_relative_difference"] for row in deploy.values())
    assert f"scores equal to {difference:.0e}".replace("e-0", "e-") in summary
    assert (
        f"({deploy['lh']['file_mib']['onnx']:.1f} MiB with `lh`, "
        f"{deploy['nnd']['file_mib']['onnx']:.1f} MiB with a 2000-image `nnd` bank)"
    ) in summary
    objectives = committed("objectives-cpu-6min")
    summary = " ".join(readme_block(text, "objectives-summary").split())
    # seeds 0 and 1, as the summary says: by class the mean over the seeds, then over classes
    rows = objectives["rows"]
    by_class, means, seed_means = [{} for _ in range(10)], {}, {}
    for name in ("con2", "simclr", "csi", "firm", "con2-outliers"):  # each with its best scorer
        mine = [row for row in rows if name in row]
        seeds = sorted({row["seed"] for row in mine})
        assert seeds == ([0] if name == "con2-outliers" else [0, 1])
        assert sorted(row["class"] for row in mine) == sorted(list(range(10)) * len(seeds))
        best, per_class = best_by_class(mine, name)
        means[name] = np.mean(per_class)
        for scores, score in zip(by_class, per_class, strict=True):
            scores[name] = score
        seed_means[name] = [np.mean([100 * r[name][best] for r in mine if r["seed"] == seed])
                            for seed in seeds]  # fmt: skip
    outliers = means.pop("con2-outliers")
    spread = max(means.values()) - min(means.values())
    apart = max(max(m) - min(m) for m in seed_means.values())
    assert f"mean AUROCs over the ten classes lie within {spread:.1f} points" in summary
    assert ", ".join(f"{name} {mean:.1f}" for name, mean in means.items()) in summary
    assert f"two seeds (up to {apart:.1f} apart)" in summary and apart > spread
    assert (f"outliers (seed 0) reached {outliers:.1f}, no better than Con2 alone "
            f"({seed_means['con2'][0]:.1f} on that seed)") in summary  # fmt: skip
    assert round(outliers, 1) <= round(seed_means["con2"][0], 1)
    assert "(dresses: csi {csi:.1f} against con2's {con2:.1f})".format(**by_class[3]) in summary
    assert "shirts (csi {csi:.1f}, firm {firm:.1f}, simclr {simclr:.1f}, con2 {con2:.1f})".format(
        **by_class[6]) in summary  # fmt: skip
    assert set(sorted(means, key=means.get)[-2:]) == {"csi", "firm"}
    # 20 minutes, seeds 0 and 1: by class the mean over the seeds, then over the classes
    rows = committed("objectives-cpu-20min")["rows"]
    at20, best20, seeds20 = {}, {}, {}
    for name in ("con2", "csi", "firm"):  # each with its best scorer
        mine = [row for row in rows if name in row]
        assert sorted(row["class"] for row in mine) == sorted(list(range(10)) * 2)
        best20[name], at20[name] = best_by_class(mine, name)
        seeds20[name] = [np.mean([100 * r[name][best20[name]] for r in mine if r["seed"] == seed])
                         for seed in (0, 1)]  # fmt: skip
    mean20 = {name: np.mean(by) for name, by in at20.items()}
    assert (f"CSI and FIRM, the two highest means at 6 minutes, reached {mean20['csi']:.1f} and "
            f"{mean20['firm']:.1f} over the ten classes, against Con2's {mean20['con2']:.1f}"
            ) in summary  # fmt: skip
    by_seed = ", ".join("{} {:.1f} and {:.1f}".format(name, *seeds20[name])
                        for name in ("csi", "firm", "con2"))  # fmt: skip
    assert f"(seed by seed: {by_seed}): our 95.0 goal, on both seeds" in summary
    assert min(seeds20["csi"] + seeds20["firm"]) >= 95.0 > max(seeds20["con2"])
    assert mean20["csi"] > mean20["firm"] > mean20["con2"]  # "the highest mean and FIRM the next"
    headline = " ".join(text.split("**Measured so far**")[1].split("\n\n")[0].split())
    assert (f"the mean is **{mean20['csi']:.1f}** over two seeds ({seeds20['csi'][0]:.1f} and "
            f"{seeds20['csi'][1]:.1f}; `\"firm\"` {mean20['firm']:.1f})") in headline  # fmt: skip
    for name, word in (("csi", "CSI"), ("firm", "FIRM")):  # fit by fit: same class and seed
        gains = [100 * (r[name][best20[name]] - r["con2"][best20["con2"]]) for r in rows]
        error = np.std(gains, ddof=1) / np.sqrt(len(gains))
        assert len(gains) == 20 and f"{word} {np.mean(gains):+.1f} ± {error:.1f}" in summary
        assert 0 < np.mean(gains) < 2 * error  # "a small lead, under two standard errors"
    assert "(bags: csi {:.1f} against con2's {:.1f}; dresses: {:.1f} against {:.1f})".format(
        at20["csi"][8], at20["con2"][8], at20["csi"][3], at20["con2"][3]) in summary  # fmt: skip
    assert "shirts stayed near 85 (csi {:.1f}, firm {:.1f}, con2 {:.1f})".format(
        *(at20[name][6] for name in ("csi", "firm", "con2"))) in summary  # fmt: skip
    scaling = committed("scaling-cpu")
    per_s, ratio = scaling["images_per_s"], scaling["efficiency"]["2"]
    summary = " ".join(readme_block(text, "scaling-summary").split())
    assert (
        f"trains {per_s['1']:.0f} images/s, two processes with one thread each "
        f"{per_s['2']:.0f}, a ratio of {ratio:.2f}"
    ) in summary


def test_the_readme_quotes_each_machines_range_of_bfloat16_fit_speed_ups():
    """The README's precision paragraph gives, per machine, the lowest and highest speed-up
    of the library's bfloat16 fit over its float32 one: those of the committed tables."""
    text = " ".join((BENCHMARKS.parent / "README.md").read_text().split())
    for name, words in (
        ("throughput-precision-cpu", "AMD EPYC (AVX512-BF16) a bfloat16 fit ran"),
        ("throughput-precision-cpu-amx", "AMX (two threads, 28 and 64 px)"),
    ):
        rows = committed(name)["rows"].values()
        ratios = [row["fits"]["float32"] / row["fits"]["bfloat16"] for row in rows]
        assert f"{words} {min(ratios):.1f}x to {max(ratios):.1f}x" in text, name


def test_objectives_trains_each_objective_for_the_epochs_its_minutes_buy(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import objectives

    toy_fashion_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "results").mkdir()
    frontier = {"rows": {"w8 b64": {"seconds_per_epoch_6000": 6.0}}}  # 10 epochs a minute
    per_epoch = {"con2": 4.0, "simclr": 2.0, "csi": 8.0, "firm": 8.0}
    costs = {"rows": {k: {"seconds_per_epoch_6000": v} for k, v in per_epoch.items()}}
    (tmp_path / "results" / "cost-cpu-frontier.json").write_text(json.dumps(frontier))
    (tmp_path / "results" / "cost-cpu-objectives.json").write_text(json.dumps(costs))
    (tmp_path / "README.md").write_text("")
    monkeypatch.setattr(objectives, "ROOT", tmp_path)
    monkeypatch.setattr(objectives, "RESULTS", tmp_path / "results")
    monkeypatch.setitem(objectives.PRESETS, "cpu-frontier",
                        dict(base_width=2, batch_size=8, n_test_augmentations=4))  # fmt: skip
    run = dict(minutes=0.2, classes=(0, 1), seeds=(0,), data=str(tmp_path), write_readme=True)
    results = objectives.main(**run)
    # Con2: the minutes' epochs (0.2 x 10 = 2); the others in proportion to their cost
    epochs = {o: results["rows"][0][o]["n_epochs"] for o in objectives.LITERATURE}
    assert epochs == {"con2": 2, "simclr": 4, "csi": 1, "firm": 1}
    assert not any("con2-outliers" in row for row in results["rows"])  # asked for by name
    for row in results["rows"]:
        for objective in objectives.LITERATURE:
            assert row[objective]["nnd"] > 0.9 and row[objective]["lh"] > 0.9  # toy classes
        assert 0.5 < row["csi"]["own"] <= 1.0 and row["firm"]["own"] > 0.9
        assert "own" not in row["con2"] and set(row["csi"]["per_anomaly"]) == {"nnd", "lh", "own"}
    block = (tmp_path / "README.md").read_text()
    assert "| class | con2 (" in block and "csi (" in block and "firm (" in block
    assert "epochs: con2 2, simclr 4, csi 1, firm 1" in block
    assert "| GEOM, reported | ARNet, reported |" in block and "| 0 T-shirt/top |" in block
    assert "**mean of classes 0, 1** |" in block  # the toy table has two of the ten classes
    assert "not run yet: con2 seed 0 on classes 2, 3, 4, 5, 6, 7, 8, 9;" in block
    # Con2 on all ten classes, the others on two: a ten-class mean for Con2 alone, and the
    # mean of the two classes every objective ran on
    con2 = {k: v for k, v in results["rows"][0]["con2"].items() if k != "per_anomaly"}
    extra = [{"class": c, "seed": 0, "con2": con2} for c in range(2, 10)]
    lines = objectives.readme_text({**results, "rows": results["rows"] + extra}).splitlines()
    ten = next(line for line in lines if line.startswith("| **mean** |")).split(" | ")
    assert ten[1] != "-" and ten[2:5] == ["-", "-", "-"]
    assert any(line.startswith("| **mean of classes 0, 1** |") for line in lines)
    # A second seed under way: kept out of the cells until it has the first seed's classes
    lower = {**con2, "nnd": con2["nnd"] - 0.2, "lh": con2["lh"] - 0.2}
    second = {"class": 0, "seed": 1, "con2": lower}
    partly = objectives.readme_text({**results, "rows": results["rows"] + [second]})
    cell = next(line for line in partly.splitlines() if line.startswith("| 0 T-shirt"))
    assert cell == next(line for line in block.splitlines() if line.startswith("| 0 T-shirt"))
    assert "con2 seed 1 on classes 1, 2, 3, 4, 5, 6, 7, 8, 9; simclr seed 0" in partly
    assert "left out so far: con2 seed 1 (classes 0)." in partly and "seeds [0]." in partly
    both = [second, {"class": 1, "seed": 1, "con2": results["rows"][1]["con2"]}]
    lines = objectives.readme_text({**results, "rows": results["rows"] + both}).splitlines()
    header = next(line for line in lines if line.startswith("| class |"))
    scorer = header.split(" | ")[1].removeprefix("con2 (").removesuffix(")")  # con2's best
    cell = next(line for line in lines if line.startswith("| 0 T-shirt")).split(" | ")[1]
    assert cell.strip("*") == f"{100 * (con2[scorer] - 0.1):.1f}"  # the mean of the two seeds
    assert "seeds con2 [0, 1], simclr [0], csi [0], firm [0]." in "\n".join(lines)
    threads = torch.get_num_threads()  # each fit records what its seconds are seconds of
    assert {row[o]["threads"] for row in results["rows"] for o in row if o in epochs} == {threads}
    assert f"ran on {threads} thread" in block
    before = (tmp_path / "results" / "objectives-cpu-0.2min.json").read_text()
    again = objectives.main(**{**run, "write_readme": False})  # a finished table: nothing runs
    assert again == results
    assert (tmp_path / "results" / "objectives-cpu-0.2min.json").read_text() == before


def test_the_objectives_block_gives_means_by_seed_and_differences_paired_with_con2(
    monkeypatch,
):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import objectives

    def fit(lh):
        return {"nnd": 0.5, "lh": lh}

    # simclr - con2 over the four (class, seed): +1, +3, +2, +2 points
    rows = [
        {"class": c, "seed": s, "con2": fit(0.90), "simclr": fit(0.90 + d / 100)}
        for (c, s), d in zip([(0, 0), (1, 0), (0, 1), (1, 1)], [1, 3, 2, 2], strict=True)
    ]
    names, best = ["con2", "simclr"], {"con2": "lh", "simclr": "lh"}
    text = objectives.spread_text(rows, names, best)
    error = np.std([1, 3, 2, 2], ddof=1) / 2  # 0.41 points
    assert "seed by seed: con2 90.0, 90.0; simclr 92.0, 92.0." in text
    assert f"simclr +2.0 ± {error:.1f} (4 pairs)." in text and "con2 +" not in text
    assert objectives.spread_text(rows[:1], names, best) == ""  # one pair: nothing to say


def test_a_table_at_float32_epochs_is_compared_with_the_float32_fits(benchmarks, tmp_path):
    oneclass, _, _ = benchmarks

    def row(cls, seed, nnd, lh):
        return {"class": cls, "seed": seed, "vflip": {"nnd": nnd, "lh": lh}, "LOF": 0.5}

    float32 = tmp_path / "oneclass-p-6min.json"
    float32.write_text(json.dumps({"rows": [row(2, 0, 0.90, 0.80), row(2, 1, 0.92, 0.81),
                                            row(5, 0, 0.70, 0.60)]}))  # fmt: skip
    path = tmp_path / "oneclass-p-6min-bfloat16-float32-epochs.json"
    results = oneclass.ResultsFile(path, {"settings": {"precision": "bfloat16"}})
    for r in (row(2, 0, 0.91, 0.80), row(2, 1, 0.95, 0.79), row(7, 0, 0.5, 0.5)):
        results.add_row((r["class"], r["seed"]), vflip=r["vflip"])
    results.save()
    oneclass.keep_float32_fits(results, float32)
    saved = json.loads(path.read_text())  # the comparison comes from this file alone
    assert saved["float32_fits"]["rows"][1] == {"class": 2, "seed": 1,
                                                "vflip": {"nnd": 0.92, "lh": 0.81}}  # fmt: skip
    lines = oneclass.precision_comparison(saved)
    assert "(`oneclass-p-6min.json`)" in lines[1]
    assert "| 2 Pullover | 1 | vflip | 95.0 | 92.0 | 79.0 | 81.0 |" in lines
    assert not any(line.startswith("| 7 ") for line in lines)  # no float32 fit to compare
    # differences nnd +1, +3 (mean +2); lh 0, -2 (mean -1); spreads over class 2's seeds
    assert lines[-1].endswith(
        "nnd +2.00 (+3.00), spread bfloat16 4.00, float32 2.00; "
        "lh -1.00 (-2.00), spread bfloat16 1.00, float32 1.00 points."
    )
    before = path.stat().st_mtime_ns
    oneclass.keep_float32_fits(results, float32)  # unchanged: the file is not rewritten
    assert path.stat().st_mtime_ns == before
    assert oneclass.precision_comparison({k: v for k, v in saved.items()
                                          if k != "float32_fits"}) == []  # fmt: skip


def test_objectives_copy_con2_fits_of_the_same_setting_only(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import objectives

    toy_fashion_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "results").mkdir()
    costs = {"rows": {k: {"seconds_per_epoch_6000": 4.0} for k in objectives.OBJECTIVES}}
    (tmp_path / "results" / "cost-cpu-frontier.json").write_text(
        json.dumps({"rows": {"w8 b64": {"seconds_per_epoch_6000": 6.0}}}))  # fmt: skip
    (tmp_path / "results" / "cost-cpu-objectives.json").write_text(json.dumps(costs))
    (tmp_path / "README.md").write_text("")
    monkeypatch.setattr(objectives, "ROOT", tmp_path)
    monkeypatch.setattr(objectives, "RESULTS", tmp_path / "results")
    preset = dict(base_width=2, batch_size=8, n_test_augmentations=4)
    monkeypatch.setitem(objectives.PRESETS, "cpu-frontier", preset)
    fit = {"nnd": 0.25, "lh": 0.5, "per_anomaly": {}, "fit_seconds": 1.0}
    table = {"settings": {**preset, "n_epochs": 2}, "n_train": None,
             "rows": [{"class": 0, "seed": 0, "vflip": fit}]}  # fmt: skip
    source = tmp_path / "results" / "oneclass-toy.json"
    source.write_text(json.dumps(table))
    run = dict(
        minutes=0.2,
        classes=(0, 1),
        seeds=(0,),
        objectives=("con2",),
        data=str(tmp_path),
        con2_from=source.name,
        write_readme=True,
    )  # in results/
    results = objectives.main(**run)
    copied, trained = (row["con2"] for row in results["rows"])
    assert copied == {**fit, "n_epochs": 2, "copied_from": "oneclass-toy.json"}
    assert "copied_from" not in trained and trained["nnd"] > 0.9  # class 1: trained here
    assert ("Con2's fits copied by `--con2-from` (the same setting, trained once) from "
            "`oneclass-toy.json`, seed 0 on class 0; its other fits were trained here."
            ) in (tmp_path / "README.md").read_text()  # fmt: skip
    source.write_text(json.dumps({**table, "settings": {**preset, "n_epochs": 3}}))
    with pytest.raises(ValueError, match="n_epochs': 3"):  # another setting: nothing copied
        objectives.main(**{**run, "out": str(tmp_path / "other.json")})
    assert not (tmp_path / "other.json").exists()


def test_objectives_tables_say_which_con2_fits_were_copied(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import objectives

    def row(cls, seed, source=None):
        return {"class": cls, "seed": seed, "csi": {},
                "con2": {"copied_from": source} if source else {}}  # fmt: skip

    every = [row(c, s, "a.json") for c in range(3) for s in (0, 1)]
    assert objectives.copied_text(every) == (
        "Con2's fits are those of `a.json` (the same setting, trained once, copied by "
        "`--con2-from`).")  # fmt: skip
    assert objectives.copied_text([row(0, 0), {"class": 1, "seed": 0, "csi": {}}]) == ""
    mixed = [row(0, 0, "a.json"), row(1, 0, "a.json"), row(0, 1, "a.json"), row(1, 1),
             row(2, 1, "a.json")]  # fmt: skip
    assert objectives.copied_text(mixed) == (
        "Con2's fits copied by `--con2-from` (the same setting, trained once) from "
        "`a.json`, seed 0 on every class and seed 1 on classes 0, 2; its other fits were "
        "trained here.")  # fmt: skip


def test_shirts_per_anomaly_come_from_every_fit_that_recorded_them(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import objectives

    def fit(value):
        return {"nnd": 0.8, "lh": 0.9, "per_anomaly": {"lh": {str(k): value for k in range(10)}}}

    rows = [{"class": 6, "seed": 0, "con2": {"nnd": 0.8, "lh": 0.9}, "csi": fit(0.5)},
            {"class": 6, "seed": 1, "con2": fit(0.7), "csi": fit(0.6)}]  # fmt: skip
    lines = objectives.shirts_text(rows, ["con2", "csi"], {"con2": "lh", "csi": "lh"})
    assert lines[4:] == ["| con2 (lh) | 1 | " + " | ".join(["70.0"] * 9) + " |",
                         "| csi (lh) | 0 | " + " | ".join(["50.0"] * 9) + " |",
                         "| csi (lh) | 1 | " + " | ".join(["60.0"] * 9) + " |"]  # fmt: skip
    assert objectives.shirts_text(rows[:1], ["con2"], {"con2": "lh"}) == []


def test_objectives_price_bfloat16_epochs_with_the_bfloat16_costs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import objectives

    def write(name, rows):
        rows = {k: {"seconds_per_epoch_6000": v} for k, v in rows.items()}
        (tmp_path / f"{name}.json").write_text(json.dumps({"rows": rows}))

    write("cost-cpu-frontier", {"w8 b64": 6.0})  # float32: 10 epochs a minute
    write("cost-cpu-precision", {"w8 b64": 6.0, "w8 b64 bf16": 3.0})  # bfloat16: 20
    write("cost-cpu-objectives", {"con2": 4.0, "csi": 8.0})  # float32 costs: unused below
    write("cost-cpu-objectives-bfloat16", {"con2": 4.0, "csi": 16.0})
    monkeypatch.setattr(objectives, "RESULTS", tmp_path)
    assert objectives.epochs_of("con2", 1, "bfloat16") == 20
    assert objectives.epochs_of("csi", 1, "bfloat16") == 5  # a quarter of Con2's
    assert objectives.epochs_of("csi", 1) == 5  # float32: 10 x 4 / 8
    # an objective measured beside Con2 in a group of its own is priced from that group
    write("cost-cpu-objectives-outliers", {"con2": 5.0, "con2-outliers": 10.0})
    assert objectives.epochs_of("con2-outliers", 1) == 5


@pytest.mark.filterwarnings("ignore:Context check failed")  # vflip on toy images
def test_con2_with_outliers_joins_the_table_of_its_minutes(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import objectives

    toy_fashion_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "results").mkdir()
    for name, rows in (
        ("frontier", {"w8 b64": 6.0}),
        ("objectives-outliers", {"con2": 4.0, "con2-outliers": 8.0}),
    ):
        rows = {k: {"seconds_per_epoch_6000": v} for k, v in rows.items()}
        (tmp_path / "results" / f"cost-cpu-{name}.json").write_text(json.dumps({"rows": rows}))
    monkeypatch.setattr(objectives, "ROOT", tmp_path)
    monkeypatch.setattr(objectives, "RESULTS", tmp_path / "results")
    monkeypatch.setitem(objectives.PRESETS, "cpu-frontier",
                        dict(base_width=2, batch_size=8, n_test_augmentations=4))  # fmt: skip
    results = objectives.main(minutes=0.2, classes=(0,), objectives=("con2-outliers",),
                              data=str(tmp_path))  # fmt: skip
    fit = results["rows"][0]["con2-outliers"]
    assert fit["n_epochs"] == 1 and fit["nnd"] > 0.9  # half of Con2's 2 epochs; toy classes
    assert results["command"].endswith("--objectives con2-outliers")
    assert "| class | con2-outliers (" in objectives.readme_text(results)


@pytest.mark.slow
def test_the_gpu_check_runs_its_code_paths_on_the_cpu_in_a_dry_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu_check

    result = gpu_check.main(dry_run=True, out=str(tmp_path / "gpu.json"))
    assert result["measured"] and result["command"] == "python benchmarks/gpu_check.py --dry-run"
    assert all(result["fit"][s]["auroc"] > 0.9 for s in ("nnd", "lh"))  # digit 0 stands out
    speed = result["throughput"]
    assert speed["step_images_per_s"] > 0 and speed["compiled_images_per_s"] > 0
    assert speed["backbone_images_per_s"] > 0  # which is faster is timing: benchmarks' business
    portable = result["portability"]
    assert portable["loaded_on"] == "cpu" and portable["cpu_max_relative_difference"] < 1e-6
    assert portable["onnx_max_relative_difference"] < 1e-4
    assert result["distributed"] == {"backend": "gloo", "world_size": 1, "finite_losses": True}
    assert "| torchrun, one process | gloo, world 1" in gpu_check.readme_text(result)


def test_aupro_of_a_two_region_example_computed_by_hand(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import maps

    # Region A: 2 pixels of image 1 (map 0.8, 0.4); region B: 1 pixel of image 2 (0.6);
    # 9 background pixels at 0.0 ... 0.45. Lowering the threshold: A half found at 0.8,
    # B at 0.6 (PRO 0.75, no false positive), the background's 0.45 (FPR 1/9), A whole
    # at 0.4 (PRO 1), 0.35 (FPR 2/9), 0.3 (FPR 3/9, past 0.3). Area up to 0.3:
    # 0.75 * 1/9 + 1 * (0.3 - 1/9), over 0.3.
    found = maps.aupro(
        np.array([[[0.8, 0.4, 0.1, 0.2, 0.3, 0.0]], [[0.05, 0.15, 0.25, 0.35, 0.45, 0.6]]]),
        np.array([[[1, 1, 0, 0, 0, 0]], [[0, 0, 0, 0, 0, 1]]], dtype=bool),
    )
    assert found == pytest.approx((0.75 / 9 + (0.3 - 1 / 9)) / 0.3, rel=1e-12)
    # two regions of one image, 8-connected: a diagonal neighbour joins a region
    diagonal = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 0]]], dtype=bool)
    first_only = np.array([[[1.0, 0, 0], [0, 0.5, 0], [0, 0, 0.2]]])
    assert maps.aupro(first_only, diagonal) == pytest.approx(1.0)  # one region, both found
    rng = np.random.default_rng(0)
    noise = maps.aupro(rng.random((200, 8, 8)), rng.random((200, 8, 8)) < 0.1)
    assert abs(noise - 0.15) < 0.02  # a random map: PRO equals the false-positive rate


def test_synthetic_anomalies_change_only_their_masks_on_the_object(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import maps

    rng = np.random.default_rng(1)
    normal = np.zeros((30, 28, 28), dtype=np.uint8)
    normal[:, 6:22, 8:20] = rng.integers(100, 200, (30, 16, 12))  # the object, on black
    others = rng.integers(0, 256, (10, 28, 28)).astype(np.uint8)
    for kind in maps.KINDS:
        images, masks = maps.synthetic_anomalies(normal, others, kind, seed=0)
        assert masks.any(axis=(1, 2)).all()  # every image got an anomaly
        np.testing.assert_array_equal(images[~masks], normal[~masks])
        assert (images[masks] != normal[masks]).all()
        centres = np.array([np.argwhere(m).mean(axis=0) for m in masks])
        on_object = (centres[:, 0] > 3) & (centres[:, 0] < 25) & (centres[:, 1] > 5)
        assert on_object.mean() > 0.9, kind
        again, _ = maps.synthetic_anomalies(normal, others, kind, seed=0)
        np.testing.assert_array_equal(again, images)  # reproducible from the seed


def test_the_maps_benchmark_runs_end_to_end_resumes_and_renders_its_table(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import maps

    toy_fashion_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "README.md").write_text("")
    monkeypatch.setattr(maps, "ROOT", tmp_path)
    monkeypatch.setitem(maps.PRESETS, "cpu-frontier",
                        dict(base_width=2, batch_size=8, n_test_augmentations=2))  # fmt: skip
    run = dict(minutes=0.05, classes=(0, 1), kinds=("blob",), methods=("gradient",),
               deletion_images=4, images=6, data=str(tmp_path), out=str(tmp_path / "m.json"),
               write_readme=True)  # fmt: skip
    results = maps.main(**run)
    assert [row["class"] for row in results["rows"]] == [0, 1] and results["images"] == 6
    for row in results["rows"]:
        blob = row["kinds"]["blob"]
        assert set(blob["maps"]) == {"gradient (nearest)", "gradient (mean)", "|x - mean|",
                                     "|x - nearest|", "random"}  # fmt: skip
        assert 0 < blob["mask_pixels"] < 0.2  # discs of radius 2 or 4 in 28x28 images
        assert set(blob["seconds"]) == {"score_samples", "gradient (nearest)", "gradient (mean)"}
        assert all("deletion" in found for found in blob["maps"].values())
    block = (tmp_path / "README.md").read_text()
    assert "on the first 6 of each class's 1000 normal test images" in block
    assert "| gradient (nearest) |" in block and "**Partial:** classes 0, 1 only." in block
    before = (tmp_path / "m.json").read_text()
    assert maps.main(**{**run, "write_readme": False}) == results  # nothing left to run
    assert (tmp_path / "m.json").read_text() == before
