"""The README's commands are the ones CI and users run, and its examples run."""

import doctest
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    block = re.search(r"```(?:bash|sh)\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_exactly_the_readme_test_command():
    install_and_run, install_and_test = readme_commands()
    assert "examples/quickstart.py" in install_and_run
    assert "pytest" in install_and_test
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install_and_test in ci_lines


def aurocs(out: str) -> list:
    """Every AUROC an example printed, in order (``AUROC 0.947`` or ``name   0.871``)."""
    return [float(x) for x in re.findall(r"AUROC[^0-9\n]*([01]\.\d+)", out)]


def run_example(name, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), "--fast", *args],
        capture_output=True, text=True, check=True, timeout=300,
    ).stdout  # fmt: skip


@pytest.mark.slow
def test_quickstart_runs_top_to_bottom_in_its_fast_setting():
    out = run_example("quickstart.py")
    # its table: Con2, then the two pixel baselines, each well above chance at 3 epochs
    scores = dict(re.findall(r"^  (Con2 \(vflip, nnd\)|IsolationForest|OneClassSVM).*?(0\.\d+)$",
                             out, re.M))  # fmt: skip
    assert len(scores) == 3 and all(float(v) > 0.8 for v in scores.values()), out


@pytest.mark.slow
def test_grid_search_example_ranks_all_six_settings():
    out = run_example("pipeline_gridsearch.py")
    rows = [line.split() for line in out.splitlines() if " nnd " in line or " lh " in line]
    assert len(rows) == 6
    means = [float(row[2]) for row in rows]
    assert means == sorted(means, reverse=True) and means[-1] > 0.7  # ranked, all useful
    assert aurocs(out) == [pytest.approx(means[0], abs=5e-4)]  # "best: ..." is the top row


@pytest.mark.slow
def test_custom_context_example_checks_and_trains():
    out = run_example("custom_context.py")
    assert re.search(r"digits 7: Rotate90\(\) on .*distinctiveness 1\.000 \(ok\)", out)
    assert re.search(r"noise: +Rotate90\(\) on .*\(FAILS\)", out)  # invisible on noise
    assert aurocs(out)[0] > 0.85


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").exists(),
    reason="needs the Fashion-MNIST IDX files (apt-get install -y dataset-fashion-mnist)",
)
@pytest.mark.slow
def test_fashion_mnist_example_saves_its_figures(tmp_path):
    out = run_example("fashion_mnist.py", "--out", str(tmp_path))
    assert aurocs(out)[0] > 0.9  # sneakers against the nine other classes
    for name in ("embeddings", "scores", "loss"):
        assert (tmp_path / f"fashion_mnist_{name}.png").stat().st_size > 5000


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist").exists(),
    reason="needs the Fashion-MNIST IDX files (apt-get install -y dataset-fashion-mnist)",
)
@pytest.mark.slow
def test_folders_example_trains_from_files_and_scores_with_the_cli(tmp_path):
    out = run_example("folders.py", "--out", str(tmp_path))
    assert aurocs(out)[0] > 0.9 and "scores equal the 8-bit PNG model's: True" in out
    header = (tmp_path / "scores.csv").read_text().splitlines()[0]
    assert header == "path,score,decision,label"
    assert len(list((tmp_path / "train_tif16").glob("*.tif"))) == 64


@pytest.mark.slow
def test_distributed_example_gives_every_rank_the_same_auroc_under_torchrun(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "examples" / "distributed.py"), "--fast"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines = sorted(line for line in done.stdout.splitlines() if line.startswith("rank "))
    assert [line.split(":")[0] for line in lines] == ["rank 0 of 2", "rank 1 of 2"]
    assert lines[0].split(":")[1] == lines[1].split(":")[1]  # same AUROC and threshold


@pytest.mark.slow
def test_dask_example_searches_and_scores_on_a_local_cluster():
    pytest.importorskip("distributed")
    out = run_example("dask_search.py")
    assert re.search(r"scored \d+ images on 2 workers", out)
    found = aurocs(out)
    assert len(found) == 4 and min(found) > 0.8


def test_readme_examples_print_what_the_readme_says():
    failures, attempted = doctest.testfile(
        str(ROOT / "README.md"), module_relative=False, optionflags=doctest.ELLIPSIS
    )
    assert attempted > 0 and failures == 0
