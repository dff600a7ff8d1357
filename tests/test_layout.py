"""The package map of docs/design-decisions.md: who may import whom."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# A module may import only from layers below its own (so there is no import cycle).
LAYERS = {
    "_compat": 0, "_utils": 0, "_version": 0, "_calibration": 0, "_distributed": 0,
    "augment": 0, "losses": 0, "networks": 0, "datasets": 0, "maps": 0,
    "io": 1, "scorers": 1,
    "_input": 2,
    "contexts": 3,
    "_embedding": 4, "objectives": 4,
    "_training": 5, "_persistence": 5,
    "export": 6,
    "_engine": 7,
    "_detector": 8, "plotting": 8,
    "cli": 9, "__init__": 9, "__main__": 10,
}  # fmt: skip


def con2_imports(path: Path) -> set:
    """Every con2 module ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("con2"):
            parts = node.module.split(".")
            found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("con2.")}
    return found & set(LAYERS)


def test_every_module_of_the_package_has_a_layer():
    assert {p.stem for p in (ROOT / "con2").glob("*.py")} == set(LAYERS)


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_modules_import_only_from_the_layers_below(module):
    upward = {
        m for m in con2_imports(ROOT / "con2" / f"{module}.py") if LAYERS[m] >= LAYERS[module]
    }
    assert not upward, f"con2.{module} imports {sorted(upward)} from its own layer or above"


def test_the_estimator_knows_few_modules():
    assert len(con2_imports(ROOT / "con2" / "_detector.py")) <= 7


def test_benchmarks_and_examples_use_the_public_api_only():
    for path in [*(ROOT / "benchmarks").glob("*.py"), *(ROOT / "examples").glob("*.py")]:
        private = [node.module for node in ast.walk(ast.parse(path.read_text()))
                   if isinstance(node, ast.ImportFrom) and node.module
                   and node.module.startswith("con2._")]  # fmt: skip
        private += [a.name for node in ast.walk(ast.parse(path.read_text()))
                    if isinstance(node, ast.Import) for a in node.names
                    if a.name.startswith("con2._")]  # fmt: skip
        assert not private, f"{path.name} imports {private}"
