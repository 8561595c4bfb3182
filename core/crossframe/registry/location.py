"""Where the registry lives: ``--registry``, a config's ``registry`` key, ``$CROSSFRAME_REGISTRY``, or
the user's data directory (``$XDG_DATA_HOME/crossframe/registry``, ``~/Library/Application Support``
on macOS, ``%LOCALAPPDATA%`` on Windows)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ENV_VAR = "CROSSFRAME_REGISTRY"


def user_data_dir() -> Path:
    """The platform's per-user data directory for crossframe."""
    if sys.platform == "win32":  # pragma: no cover - not exercised on Linux CI
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":  # pragma: no cover
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "crossframe"


def registry_dir(explicit: str | os.PathLike | None = None, config_value: str | None = None) -> Path:
    """The registry directory: ``explicit`` (a flag), then ``config_value`` (a config's ``registry``),
    then ``$CROSSFRAME_REGISTRY``, then ``<user data dir>/registry``."""
    for choice in (explicit, config_value, os.environ.get(ENV_VAR)):
        if choice:
            return Path(choice).expanduser()
    return user_data_dir() / "registry"
