"""The packages form layers: each imports only those below it, so a stage is read and used without those above."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lowest first: the data format, the model, one Train run, using a trained model, PBT, the jobs, the entry scripts.
LAYERS = [
    "data",
    "resnet",
    "workflows.training",
    "workflows.serving",
    "workflows.tuning",
    "workflows.jobs",
    "workflows",
]
# The import names the project installs (pyproject.toml); everything else lives inside one of them.
TOP_LEVEL = {"data", "resnet", "workflows"}


def layer_of(module: str) -> str | None:
    """The layer a dotted module name belongs to: its longest layer prefix."""
    matches = [layer for layer in LAYERS if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def layer_files(layer: str) -> list[Path]:
    """The modules of one layer (a subpackage's files are not its parent's)."""
    folder = ROOT / layer.replace(".", "/")
    if layer == "workflows":
        return sorted(folder.glob("*.py"))
    return sorted(folder.rglob("*.py"))


def imported_layers(path: Path) -> set[str]:
    """The project layers a module imports (at any depth of the file: local imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {layer for layer in map(layer_of, found) if layer}


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_a_stage_imports_only_lower_layers(layer):
    higher = set(LAYERS[LAYERS.index(layer) + 1 :])
    upward = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in layer_files(layer)
        for name in imported_layers(path) & higher
    }
    assert not upward, sorted(upward)


def test_the_top_level_is_the_cards():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks", "docs", "examples"}
    assert packages == TOP_LEVEL
    stages = {p.parent.name for p in (ROOT / "workflows").glob("*/__init__.py")}
    assert {f"workflows.{name}" for name in stages} == set(LAYERS) - TOP_LEVEL - {"workflows"}
