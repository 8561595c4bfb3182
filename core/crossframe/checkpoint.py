"""Checkpoints: safetensors of canonical weights and optimizer state, plus JSON; never pickle.

Layout::

    <run_dir>/checkpoints/step_<N>/model.safetensors
                                   optimizer.safetensors
                                   state.json
    <run_dir>/checkpoints/latest          # text: "step_<N>"

A checkpoint directory is written under a temporary name, synced and renamed into place, and
only then does ``latest`` move (atomically), so a crash never leaves a torn checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.errors import CheckpointError
from crossframe.files import atomic_write_text

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path
    weights: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    state: dict[str, Any]

    @property
    def step(self) -> int:
        """Optimizer steps done when it was written."""
        return int(self.state["step"])


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_tensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    """Write ``tensors`` as safetensors at ``path`` and sync it to disk (callers rename it into place)."""
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(root: Path, step: int, weights: dict[str, np.ndarray],
                    optimizer_state: dict[str, np.ndarray], state: dict[str, Any], keep: int) -> Path:
    """Write ``step_<step>`` under ``root`` atomically, point ``latest`` at it, keep the last ``keep``."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step_{step}.", suffix=".tmp"))
    try:
        save_tensors(weights, tmp / MODEL_FILE)
        save_tensors(optimizer_state, tmp / OPTIMIZER_FILE)
        atomic_write_text(tmp / STATE_FILE, json.dumps({**state, "step": step}, indent=2, default=json_default))
        if final.exists():  # re-saving the same step (e.g. after a resume): swap the old one out
            old = root / f".step_{step}.old"
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, final.name + "\n")
    prune(root, keep)
    return final


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)``: numpy scalars and arrays as numbers and lists, anything else
    (paths, a plugin compressor's summary objects) as its string form."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_", 1)[1]))


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (never the one ``latest`` names)."""
    latest = (root / LATEST).read_text().strip() if (root / LATEST).is_file() else ""
    for path in list_checkpoints(root)[:-keep]:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)


def find_checkpoint(path: Path) -> Path:
    """Resolve a run directory, a ``checkpoints`` directory or a ``step_N`` directory."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        pointer = root / LATEST
        if pointer.is_file():
            target = root / pointer.read_text().strip()
            if (target / STATE_FILE).is_file():
                return target
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise CheckpointError(f"no checkpoint found in '{path}' (expected a run directory or checkpoints/step_N)")


def load_checkpoint(path: Path) -> Checkpoint:
    """Load weights, optimizer state and JSON state from a checkpoint (see :func:`find_checkpoint`)."""
    from safetensors.numpy import load_file

    where = find_checkpoint(path)
    try:
        state = json.loads((where / STATE_FILE).read_text())
        weights = load_file(str(where / MODEL_FILE))
        optimizer = load_file(str(where / OPTIMIZER_FILE)) if (where / OPTIMIZER_FILE).is_file() else {}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint '{where}' is unreadable: {exc}") from None
    return Checkpoint(where, weights, optimizer, state)
