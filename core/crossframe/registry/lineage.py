"""What a model version records about where it came from, and which files make it up."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from crossframe.errors import UsageError

#: distributions whose versions a version records, per backend (the first one installed wins)
FRAMEWORKS = {"torch": ("torch",), "jax": ("jax", "jaxlib"), "tensorflow": ("tensorflow", "tensorflow-cpu")}


@dataclass(frozen=True)
class Artifact:
    """A file to put into the registry at ``relpath``: a copy of ``source``, or ``content`` itself."""

    source: Path | None
    relpath: str
    content: bytes | None = None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def framework_versions(backend: str) -> dict[str, str]:
    """Installed versions of crossframe and of ``backend``'s framework (read from package metadata,
    without importing the framework)."""
    from crossframe import __version__

    found = {"crossframe": __version__, "python": platform.python_version()}
    for dist in FRAMEWORKS.get(backend, (backend,)):
        version = _version(dist)
        if version:
            found[dist] = version
    return found


def _sha256(path: Path) -> str:
    from crossframe.integrity import sha256_file

    return sha256_file(path)


def data_fingerprint(config: dict[str, Any]) -> str:
    """sha256 of the resolved ``data`` and ``text`` sections, plus the bytes of any file they name."""
    digest = hashlib.sha256()
    sections = {k: config.get(k) for k in ("data", "text", "seed")}
    digest.update(json.dumps(sections, sort_keys=True, default=str).encode())
    data = config.get("data") or {}
    for key in ("path", "paths", "files"):
        values = data.get(key)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, str) and Path(value).is_file():
                digest.update(_sha256(Path(value)).encode())
    return "sha256:" + digest.hexdigest()


def collect_artifacts(run_dir: Path, include_optimizer: bool = False) -> list[Artifact]:
    """The files a registered version keeps, laid out as a run directory: ``config.yaml``, the latest
    checkpoint (its manifest checked first), ``tokenizer/``, ``report.json`` and every export
    (manifests checked)."""
    from crossframe.checkpoint import LATEST, OPTIMIZER_FILE, find_checkpoint
    from crossframe.errors import CheckpointError
    from crossframe.integrity import verify_manifest

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"RUN: '{run_dir}' is not a run directory (no config.yaml)")
    try:
        ckpt = find_checkpoint(run_dir)
    except CheckpointError:
        raise UsageError(f"RUN: '{run_dir}' has no checkpoint to register") from None
    verify_manifest(ckpt)
    found = [Artifact(run_dir / "config.yaml", "config.yaml")]
    # the version's one checkpoint is checkpoints/step_N with a latest pointer, wherever it came
    # from (a run's checkpoints/step_N, or a compressed/N-name step directory)
    name = ckpt.name if ckpt.name.startswith("step_") else f"step_{_step_of(ckpt)}"
    for path in sorted(p for p in ckpt.iterdir() if p.is_file()):
        if path.name != OPTIMIZER_FILE or include_optimizer:
            found.append(Artifact(path, f"checkpoints/{name}/{path.name}"))
    found.append(Artifact(None, f"checkpoints/{LATEST}", f"{name}\n".encode()))
    for extra in ("report.json", "report.md"):
        if (run_dir / extra).is_file():
            found.append(Artifact(run_dir / extra, extra))
    for folder in ("tokenizer", "exports"):
        root = run_dir / folder
        if not root.is_dir():
            continue
        if folder == "exports":
            for export_dir in (p for p in root.iterdir() if p.is_dir()):
                verify_manifest(export_dir)
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if not any(part.startswith(".") for part in path.relative_to(root).parts):
                found.append(Artifact(path, path.relative_to(run_dir).as_posix()))
    return found


def _step_of(checkpoint: Path) -> int:
    try:
        return int(json.loads((checkpoint / "state.json").read_text()).get("step", 0))
    except (OSError, ValueError, TypeError):
        return 0


def lineage(run_dir: Path) -> dict[str, Any]:
    """The lineage of a run: resolved config, data fingerprint, versions, parent, compress steps, metrics."""
    from crossframe.runs.detail import exports, parent_of, read_config
    from crossframe.runs.summary import latest_state

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    state = latest_state(run_dir) or {}
    parent = parent_of(run_dir, config)
    backend = str(config.get("backend", state.get("backend", "?")))
    return {
        "run_dir": str(run_dir.resolve()),
        "config": config,
        "data_fingerprint": data_fingerprint(config),
        "versions": framework_versions(backend),
        "trained_with": state.get("crossframe_version"),
        "backend": backend,
        "model": (state.get("model") or {}).get("name") if isinstance(state.get("model"), dict) else None,
        "step": state.get("step"),
        "parent_run": str(parent.resolve()) if parent else None,
        "compress": config.get("compress") or [],
        "steps": [e for e in exports(run_dir)],
        "metrics": {k: v for k, v in (state.get("last_eval") or {}).items() if isinstance(v, (int, float))},
    }
