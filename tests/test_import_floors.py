"""The house has floors: import-linter's contracts (pyproject.toml ``[tool.importlinter]``) hold."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import crossframe

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert found, "lint-imports (import-linter, in the dev extra) is not installed"
    return found


def test_the_floors_and_the_framework_ban_hold() -> None:
    core = str(Path(crossframe.__file__).resolve().parents[1])  # the crossframe this test imports
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([core, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    assert "0 broken" in report and "The core's floors: imports run downward KEPT" in report, report
    assert "The core imports no ML framework KEPT" in report, report


def test_a_config_file_names_every_floor_that_exists() -> None:
    """Every top-level module of the core sits on a floor, so none escapes the contract."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    layers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    named = {part.strip().strip("()") for layer in layers for part in layer.split(":")}
    package = Path(crossframe.__file__).parent
    present = {p.stem for p in package.glob("*.py") if p.stem != "__init__"}
    present |= {p.name for p in package.iterdir() if (p / "__init__.py").exists()}
    assert present - named == set()
