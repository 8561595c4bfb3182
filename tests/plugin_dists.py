"""Helpers that lay out installed-looking plugin distributions on a directory for ``sys.path``."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent


def make_distribution(root: Path, dist: str, entry_name: str, module: str, source: str,
                      version: str = "0.1.0", requires: tuple[str, ...] = ()) -> Path:
    """Write ``module.py`` and a ``<dist>-<version>.dist-info`` registering it under ``crossframe``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    requirement_lines = "".join(f"Requires-Dist: {r}\n" for r in requires)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n{requirement_lines}")
    (info / "entry_points.txt").write_text(f"[crossframe]\n{entry_name} = {module}\n")
    return root


BROKEN = """
raise RuntimeError("this plugin is broken on purpose")
"""

MISSPELT = """
from crossframe import hookimpl

@hookimpl
def register_model(register):
    pass
"""

GOOD_DATASET = """
import numpy as np
from crossframe import hookimpl
from crossframe.data import Dataset


def load_blobs(params):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = rng.normal(0, 0.3, (200, 4)) + y[:, None] * 2.0
    return Dataset(x, y, "classification")


@hookimpl
def register_datasets(register):
    register("blobs", load_blobs, description="two blobs")
"""

FAILS_TO_REGISTER = """
from crossframe import hookimpl

@hookimpl
def register_models(register):
    raise ValueError("cannot register today")
"""

RENAMED_HOOK = """
from crossframe import hookimpl

@hookimpl
def on_training_start(run):
    run.config.name  # touch it: the hook really runs
    STARTED.append(run.step)

STARTED = []
"""
