"""Every module is imported under one name: running ``python workflows/<script>.py`` must not make a stage such as
``workflows/training`` a second, top-level ``training`` (two copies of its globals, and a shadow of any other package
of that name, on Ray workers too)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
SCRIPTS = sorted(p.name for p in WORKFLOWS.glob("*.py") if p.name != "__init__.py")
# What Python would find in workflows/ under a top-level name if that folder stayed on sys.path.
PACKAGES = {p.parent.name for p in WORKFLOWS.glob("*/__init__.py")}
SHADOWS = sorted(PACKAGES | {p.stem for p in WORKFLOWS.glob("*.py")} - {"__init__"})


def test_the_scripts_folder_leaves_sys_path_when_workflows_is_imported():
    # sys.path as `python workflows/train.py` starts it: the script's folder first.
    probe = (
        f"import sys; sys.path.insert(0, {str(WORKFLOWS)!r}); import importlib.util; "
        f"assert importlib.util.find_spec('training') is not None, 'the probe did not put workflows/ on sys.path'; "
        "import workflows; "
        f"print([name for name in {SHADOWS!r} if importlib.util.find_spec(name) is not None])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_script_imports_each_module_once(script, tmp_path):
    # -X importtime lists every module the process imports, by the name it was imported under.
    run = subprocess.run(
        [sys.executable, "-X", "importtime", str(WORKFLOWS / script), "--help"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    imported = {m.group(1).strip() for m in re.finditer(r"^import time:.*\|\s*(\S+)\s*$", run.stderr, re.M)}
    assert "workflows" in imported
    top_level_twins = sorted(name for name in imported if name.split(".")[0] in SHADOWS)
    assert not top_level_twins, top_level_twins
