"""The packages form layers: each imports only those below it, so a stage is read and used without those above."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: the data format, the model, one Train run, using a trained model, PBT, the jobs, the scripts.
LAYERS = ["data", "resnet", "training", "serving", "tuning", "jobs", "workflows"]


def imported_packages(path: Path) -> set[str]:
    """The project packages a module imports (at any depth of the file: local imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found & set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_a_package_imports_only_lower_layers(package):
    higher = set(LAYERS[LAYERS.index(package) + 1 :])
    upward = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / package).rglob("*.py"))
        for name in imported_packages(path) & higher
    }
    assert not upward, sorted(upward)


def test_every_package_is_in_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks", "docs"}
    assert packages == set(LAYERS)
