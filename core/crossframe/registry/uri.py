"""``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` URIs, for commands that take a run directory."""

from __future__ import annotations

import os
from pathlib import Path

from crossframe.errors import UsageError

SCHEME = "models:/"


def is_model_uri(value: str | os.PathLike) -> bool:
    """Whether ``value`` is a ``models:/`` URI rather than a path."""
    return str(value).startswith(SCHEME)


def parse_model_uri(uri: str) -> tuple[str, str | None]:
    """``models:/gpt@production`` -> ``("gpt", "production")``; ``models:/gpt/3`` -> ``("gpt", "3")``;
    ``models:/gpt`` -> ``("gpt", None)`` (the latest version)."""
    if not is_model_uri(uri):
        raise UsageError(f"'{uri}' is not a model URI (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    rest = uri[len(SCHEME):].strip("/")
    if "/" in rest:
        name, _, version = rest.partition("/")
        if not version.isdigit() or "@" in name:
            raise UsageError(f"'{uri}': expected models:/NAME/VERSION with a version number")
        return name, version
    name, _, selector = rest.partition("@")
    if not name or ("@" in rest and not selector):
        raise UsageError(f"'{uri}': expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, selector or None


def resolve_model_uri(uri: str, registry: str | os.PathLike | None = None, verify: bool = True) -> Path:
    """Resolve a ``models:/`` URI to the registered version's directory.

    The directory is laid out as a run directory (``config.yaml``, ``checkpoints/step_N/``,
    ``tokenizer/``, ``exports/``), so anything that takes a run directory (``serve``, ``generate``,
    ``eval``, ``export``) can take it. ``registry`` is the registry directory (default: see
    :func:`crossframe.registry.location.registry_dir`). With ``verify`` every file is checked against
    the sha256 recorded at registration first, and a mismatch is one line naming the file.
    ``registry`` may also name a plugin's backend (``mlflow:http://host:5000``, see
    :func:`crossframe.registry.backends.open_registry`); its files are fetched into a local
    directory and always checked.
    """
    from crossframe.registry.backends import open_registry
    from crossframe.registry.store import Registry

    name, selector = parse_model_uri(uri)
    store = open_registry(registry)
    version = store.get(name, selector)
    if isinstance(store, Registry) and not verify:
        return version.path
    return store.checkout(version)


def resolve_run_path(value: str | os.PathLike, registry: str | os.PathLike | None = None) -> Path:
    """A run directory from either a path or a ``models:/`` URI (see :func:`resolve_model_uri`)."""
    return resolve_model_uri(str(value), registry) if is_model_uri(value) else Path(value)
