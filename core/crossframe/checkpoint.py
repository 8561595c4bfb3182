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
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.errors import CheckpointError, RunError
from crossframe.files import atomic_write_text
from crossframe.integrity import verify_manifest, write_manifest

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST = "latest"
#: names the hand-written ``gpt`` gave its two tables before it became a graph of neutral layers; a
#: checkpoint that still uses them is renamed on load (weights and optimizer slots ``<slot>/<name>``)
LEGACY_NAMES = {"wte": "wte.weight", "wpe": "wpe.weight"}


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
    """Write ``tensors`` as safetensors at ``path`` and sync it to disk (callers rename it into place).

    Under ``security.encrypt`` (an active :class:`crossframe.security.Protection` with a key) the
    file is sealed with AES-256-GCM; the plaintext never reaches the disk.
    """
    from crossframe.security import active

    protection = active()
    if protection is not None and protection.key is not None:
        from safetensors.numpy import save

        from crossframe.security.sealing import seal

        data = seal(save({k: np.ascontiguousarray(v) for k, v in tensors.items()}), protection.key, path.name)
        with path.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        return
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file, sealed (opened with ``CROSSFRAME_KEY_FILE``) or plain; every
    problem is one :class:`CheckpointError` line naming the file."""
    from safetensors import SafetensorError
    from safetensors.numpy import load, load_file

    from crossframe.security.keys import encryption_key
    from crossframe.security.sealing import is_sealed, read_sealed

    try:
        if is_sealed(path):
            key = encryption_key(required=True, why=f"'{path}' is encrypted")
            assert key is not None
            return load(read_sealed(path, key))
        check_safetensors(path)
        return load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise CheckpointError(f"'{path}' is unreadable: {' '.join(str(exc).split())[:160]}") from None


def save_checkpoint(root: Path, step: int, weights: dict[str, np.ndarray],
                    optimizer_state: dict[str, np.ndarray], state: dict[str, Any], keep: int) -> Path:
    """Write ``step_<step>`` under ``root`` atomically, point ``latest`` at it, keep the last ``keep``.

    A full disk or a permission problem is a one-line :class:`RunError`; the previous checkpoint
    and ``latest`` are untouched.
    """
    from safetensors import SafetensorError

    final = root / f"step_{step}"
    try:
        return _save_checkpoint(root, final, weights, optimizer_state, state, keep)
    except OSError as exc:
        where = f" ('{exc.filename}')" if exc.filename else ""
        raise RunError(f"could not write checkpoint '{final}': {exc.strerror or exc}{where}; "
                       "the previous checkpoint is intact") from None
    except SafetensorError as exc:  # safetensors reports a failed write (a full disk) as its own error
        why = " ".join(str(exc).split())[:160]
        raise RunError(f"could not write checkpoint '{final}': {why}; the previous checkpoint is intact") from None


def _save_checkpoint(root: Path, final: Path, weights: dict[str, np.ndarray],
                     optimizer_state: dict[str, np.ndarray], state: dict[str, Any], keep: int) -> Path:
    step = int(final.name.split("_", 1)[1])
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step_{step}.", suffix=".tmp"))
    try:
        save_tensors(weights, tmp / MODEL_FILE)
        save_tensors(optimizer_state, tmp / OPTIMIZER_FILE)
        atomic_write_text(tmp / STATE_FILE, json.dumps({**state, "step": step}, indent=2, default=json_default))
        write_manifest(tmp)  # sha256 of each file, checked by load_checkpoint
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


def remove_stale_temporaries(root: Path) -> list[Path]:
    """Delete the ``.step_N.*.tmp`` / ``.step_N.old`` directories a killed save left under ``root``.

    Only one process writes a run's checkpoints, so at the start of a run none is in progress.
    Returns what was removed.
    """
    if not root.is_dir():
        return []
    stale = [p for p in root.glob(".step_*") if p.is_dir() and p.name.endswith((".tmp", ".old"))]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)``: numpy scalars and arrays as numbers and lists, anything else
    (paths, a plugin compressor's summary objects) as its string form."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


_STEP_DIR = re.compile(r"^step_(\d+)$")
#: a safetensors header larger than this is refused before it is read (real ones are kilobytes)
MAX_HEADER_BYTES = 100 * 2**20


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` (links followed) lies inside ``root``."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under ``root`` (``step_<N>`` directories inside it), oldest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir() and _inside(p, root)
             and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_", 1)[1]))


def prune(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (never the one ``latest`` names)."""
    latest = _read_pointer(root) or ""
    for path in list_checkpoints(root)[:-keep]:
        if path.name != latest:
            shutil.rmtree(path, ignore_errors=True)


def _read_pointer(root: Path) -> str | None:
    """The ``step_<N>`` name ``root/latest`` holds, None if there is no pointer; anything else is an error."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    try:
        text = pointer.read_bytes()[:64].decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        text = "?"
    if not _STEP_DIR.match(text):
        raise CheckpointError(f"'{pointer}' must hold a checkpoint name like 'step_100', got {_clip(text)}")
    return text


def _clip(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def find_checkpoint(path: Path) -> Path:
    """Resolve a run directory (``NAME@latest`` too), a ``checkpoints`` directory or a ``step_N`` directory.

    The ``latest`` pointer must name a complete ``step_N`` directory inside its own root; without a
    pointer (a run killed before its first pointer write), the newest complete checkpoint is used.
    """
    from crossframe.rundirs import resolve_run_dir

    path = resolve_run_dir(path)
    if not path.exists():
        raise CheckpointError(f"'{path}' does not exist (expected a run directory or checkpoints/step_N)")
    if not path.is_dir():
        raise CheckpointError(f"'{path}' is a file; expected a run directory or checkpoints/step_N")
    if (path / STATE_FILE).is_file():
        return path
    for root in (path / "checkpoints", path):
        name = _read_pointer(root)
        if name is not None:
            target = root / name
            if not _inside(target, root):
                raise CheckpointError(f"'{root / LATEST}' names '{name}', which leads outside '{root}'")
            if not (target / STATE_FILE).is_file():
                raise CheckpointError(f"'{root / LATEST}' names '{name}', which is missing or incomplete "
                                      f"(complete: {', '.join(p.name for p in list_checkpoints(root)) or 'none'})")
            return target
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise CheckpointError(f"no checkpoint found in '{path}' (expected a run directory or checkpoints/step_N)")


def check_safetensors(path: Path) -> None:
    """Raise :class:`CheckpointError` unless ``path`` is a whole safetensors file: a sane header length,
    a JSON header, and every tensor's bytes inside the file (checked before anything is loaded)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CheckpointError(f"'{path}' is truncated ({size} bytes; not a safetensors file)")
            length = int.from_bytes(head, "little")
            if length > MAX_HEADER_BYTES or 8 + length > size:
                raise CheckpointError(f"'{path}' declares a {length}-byte header in a {size}-byte file "
                                      "(truncated or not a safetensors file)")
            header = json.loads(handle.read(length))
    except OSError as exc:
        raise CheckpointError(f"'{path}' cannot be read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"'{path}' has a header that is not JSON (not a safetensors file)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"'{path}' has a header that is not a JSON object")
    body = size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= body):
            raise CheckpointError(f"'{path}': tensor {_clip(name)} lies outside the file's {body} data bytes "
                                  "(the file is truncated)")


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
    except OSError as exc:
        raise CheckpointError(f"'{path}' cannot be read: {exc.strerror or exc}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{path}' is not valid JSON: {' '.join(str(exc).split())[:120]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"'{path}' must hold a JSON object, got {type(state).__name__}")
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"'{path}' needs 'step', a whole number >= 0 (got {_clip(repr(step))})")
    return state


def rename_legacy(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``tensors`` with :data:`LEGACY_NAMES` renamed, as parameters (``wte``) and as optimizer slots (``m/wte``).

    Only a bare name is renamed: every graph parameter's name has a dot (``path.local``), so none can clash.
    """
    def renamed(key: str) -> str:
        slot, sep, name = key.rpartition("/")
        return f"{slot}{sep}{LEGACY_NAMES[name]}" if name in LEGACY_NAMES else key

    return {renamed(key): value for key, value in tensors.items()}


def load_checkpoint(path: Path) -> Checkpoint:
    """Load weights, optimizer state and JSON state from a checkpoint (see :func:`find_checkpoint`).

    An adapter-only LoRA checkpoint comes back with whole weights: its base rebuilt from the source it names
    and checked against its fingerprint (:func:`crossframe.nn.lora_checkpoint.restore_base`); its optimizer
    state is the adapters' (a resume adds the frozen weights' zeros: ``lora_checkpoint.FrozenSlots``).

    Every problem is a :class:`CheckpointError` naming the file: nothing is read past a bad header.
    """
    where = find_checkpoint(path)
    # one line naming a tampered file; a checkpoint without a manifest still loads; the optimizer
    # state is optional (a registered model version keeps only the weights)
    verify_manifest(where, only=[f for f in (MODEL_FILE, STATE_FILE, OPTIMIZER_FILE, "masks.safetensors")
                                 if f in (MODEL_FILE, STATE_FILE) or (where / f).is_file()])
    state = _read_state(where / STATE_FILE)
    files = [where / MODEL_FILE] + [where / OPTIMIZER_FILE] * (where / OPTIMIZER_FILE).is_file()
    loaded = []
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"checkpoint '{where}' has no {file.name}")
        loaded.append(load_tensors(file))
    weights, optimizer_state = loaded[0], loaded[1] if len(loaded) > 1 else {}
    if any(name in weights for name in LEGACY_NAMES):
        weights, optimizer_state = rename_legacy(weights), rename_legacy(optimizer_state)
    if "lora_base" in state:  # adapters only: the base is rebuilt from its source and checked
        from crossframe.nn.lora_checkpoint import restore_base

        weights = restore_base(where, state, weights)
    return Checkpoint(where, weights, optimizer_state, state)
