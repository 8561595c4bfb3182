"""Naming runs: ``runs/NAME@latest`` is the newest run of that name.

A second run named ``quickstart`` lands in ``runs/quickstart-1`` (nothing is overwritten), so a
path that names the run by its name alone would keep reading the first one. Every command that
takes a run directory accepts ``DIR/NAME@latest``: the most recently started of ``NAME`` and
``NAME-<n>`` (by the time its resolved config was written).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from crossframe.errors import ConfigError

LATEST_SUFFIX = "@latest"
#: The file every run writes first; its modification time is when the run started.
STARTED_MARKER = "config.yaml"


def runs_named(parent: Path, name: str) -> list[Path]:
    """The run directories ``parent/name`` and ``parent/name-<n>`` that exist."""
    pattern = re.compile(re.escape(name) + r"(-\d+)?")
    if not parent.is_dir():
        return []
    return [p for p in parent.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]


def _started(run: Path) -> float:
    marker = run / STARTED_MARKER
    return marker.stat().st_mtime if marker.is_file() else run.stat().st_mtime


def resolve_run_dir(path: str | os.PathLike) -> Path:
    """``path`` itself, or for ``.../NAME@latest`` the newest run of that name (one-line error if none)."""
    path = Path(path)
    if not path.name.endswith(LATEST_SUFFIX):
        return path
    name = path.name[: -len(LATEST_SUFFIX)]
    found = runs_named(path.parent, name)
    if not found:
        raise ConfigError(f"'{path}': no run named '{name}' in '{path.parent}'")
    return max(found, key=lambda p: (_started(p), p.name))


__all__ = ["LATEST_SUFFIX", "resolve_run_dir", "runs_named"]
