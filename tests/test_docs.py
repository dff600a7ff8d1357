"""The README's commands are the ones CI and users run, and its examples run."""

import doctest
import re
import subprocess
import sys
from pathlib import Path

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


def test_quickstart_runs_top_to_bottom_in_its_fast_setting():
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--fast"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert "AUROC" in result.stdout and "IsolationForest" in result.stdout


def test_readme_examples_print_what_the_readme_says():
    failures, attempted = doctest.testfile(
        str(ROOT / "README.md"), module_relative=False, optionflags=doctest.ELLIPSIS
    )
    assert attempted > 0 and failures == 0
