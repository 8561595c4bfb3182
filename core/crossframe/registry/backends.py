"""Which model registry a command talks to, and what every registry backend provides.

A registry value (``--registry``, a config's ``registry``, ``$CROSSFRAME_REGISTRY``) is either a
directory, for the built-in SQLite registry, or ``NAME:LOCATION`` (or the bare ``NAME``) for a
backend a plugin registers through the ``register_model_registries`` hook, e.g.
``mlflow:http://127.0.0.1:5000`` from ``crossframe-mlflow``. With no value at all the SQLite
registry in the user's data directory is used.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from crossframe.registry.store import ModelVersion

#: ``mlflow:http://host:5000`` -> ("mlflow", "http://host:5000"); two letters at least, so a Windows
#: drive (``C:\\reg``) stays a path
_SPEC = re.compile(r"^(?P<name>[A-Za-z][A-Za-z0-9_.+-]+):(?P<location>.*)$", re.DOTALL)


@runtime_checkable
class ModelRegistry(Protocol):
    """What ``crossframe models`` and ``models:/`` URIs need from a registry backend.

    :class:`crossframe.registry.Registry` (SQLite) is the reference implementation; refs are
    ``NAME``, ``NAME@VERSION`` or ``NAME@ALIAS``, and errors are one-line
    :class:`crossframe.errors.CrossframeError` subclasses.
    """

    def register(self, run_dir: str | Path, name: str, aliases: tuple[str, ...] | list[str] = (),
                 description: str = "", include_optimizer: bool = False) -> ModelVersion:
        """Register ``run_dir``'s latest checkpoint, exports and lineage as the next version of ``name``."""
        ...

    def get(self, name: str, selector: str | int | None = None) -> ModelVersion:
        """The version ``selector`` names (a number, an alias, ``latest``; None: the latest)."""
        ...

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        ...

    def models(self) -> list[dict[str, Any]]:
        """Each model: name, description, created, versions, latest, aliases (``alias -> version``)."""
        ...

    def promote(self, ref: str, alias: str) -> ModelVersion:
        """Point ``alias`` at the version ``ref`` names; stage aliases also set the stage."""
        ...

    def remove(self, ref: str) -> list[int]:
        """Delete a version or (bare ``NAME``) a whole model; returns the version numbers removed."""
        ...

    def checkout(self, version: ModelVersion) -> Path:
        """A local directory with ``version``'s files laid out as a run directory, each file checked
        against the sha256 recorded at registration (one line naming a file that differs)."""
        ...


def split_spec(value: str) -> tuple[str, str] | None:
    """``("mlflow", "http://h:5000")`` for ``mlflow:http://h:5000``; None for a plain path."""
    match = _SPEC.match(value)
    return (match["name"], match["location"]) if match else None


def open_registry(explicit: str | os.PathLike | None = None, config_value: str | None = None) -> ModelRegistry:
    """The registry a command should use: ``explicit`` (a flag), then ``config_value`` (a config's
    ``registry``), then ``$CROSSFRAME_REGISTRY``, then the SQLite registry in the user's data directory.

    ``NAME:LOCATION`` or a bare registered ``NAME`` opens that plugin's backend (an unknown ``NAME:``
    is one line listing the backends installed); anything else is a directory for SQLite.
    """
    from crossframe.plugins import get_plugin_manager
    from crossframe.registry.location import ENV_VAR, registry_dir
    from crossframe.registry.store import Registry

    value = next((str(v) for v in (explicit, config_value, os.environ.get(ENV_VAR)) if v), None)
    if value is None:
        return Registry(registry_dir())
    manager = get_plugin_manager()
    spec = split_spec(value)
    if spec is None and manager.has("model_registry", value):
        spec = (value, "")
    if spec is None:
        return Registry(Path(value).expanduser())
    name, location = spec
    factory = manager.get("model_registry", name, field_name="registry").obj
    return factory(location)
