"""Compatibility between crossframe and its plugins, and the plugins a config requires.

- A plugin declares the crossframe versions it supports the standard way: a requirement on
  ``crossframe`` in its distribution metadata (``dependencies = ["crossframe>=0.1,<0.2"]``).
  One whose range excludes the running crossframe is reported as ``incompatible`` and skipped
  before its module is imported.
- A config lists the plugin distributions it needs: ``requires: ["crossframe-mlflow>=0.1"]``;
  :func:`check_requirements` checks them before a run, with one line naming what is missing.
- A hook that is renamed keeps working under its old name for one minor version, with a
  warning naming the plugin, file and line (:data:`RENAMED_HOOKS`).
"""

from __future__ import annotations

import inspect
import re
import warnings
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from crossframe.errors import ConfigError, PluginError

#: old hook name -> (new hook name, the crossframe version that stops accepting the old name)
RENAMED_HOOKS: dict[str, tuple[str, str]] = {}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def incompatibility(dist: metadata.Distribution | None, version: str) -> str:
    """Why ``dist`` cannot run on crossframe ``version``, or an empty string if it can."""
    if dist is None or _normalise(dist.metadata["Name"] or "") == "crossframe":
        return ""
    for line in dist.requires or ():
        if not re.match(r"^\s*crossframe\s*(?:[\[<>=!~;(]|$)", line, re.IGNORECASE):
            continue
        from packaging.requirements import InvalidRequirement, Requirement

        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            return f"declares an unreadable requirement on crossframe: '{line}'"
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            return f"needs crossframe{requirement.specifier}, this is crossframe {version}"
    return ""


def check_requirements(requires: Iterable[str], plugin_records: dict[str, Any]) -> None:
    """Fail with one line unless every required plugin distribution is installed, in range and loaded."""
    from packaging.requirements import InvalidRequirement, Requirement

    by_dist: dict[str, list[Any]] = {}
    for record in plugin_records.values():
        by_dist.setdefault(_normalise(record.distribution), []).append(record)
    for i, line in enumerate(requires):
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            raise ConfigError(f"requires.{i}: '{line}' is not a requirement like 'crossframe-mlflow>=0.1'") from None
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            raise PluginError(f"requires: '{requirement.name}' is not installed "
                              f"(pip install '{requirement}')") from None
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            raise PluginError(f"requires: {requirement.name} {installed} is installed, the config needs "
                              f"{requirement.name}{requirement.specifier}")
        for record in by_dist.get(_normalise(requirement.name), []):
            if record.status != "loaded":
                raise PluginError(f"requires: {requirement.name} is installed but its plugin '{record.name}' "
                                  f"is {record.describe_status()}")


def apply_renames(plugin: Any, plugin_name: str, is_hookimpl: Any) -> Any:
    """Return ``plugin`` or, if it implements renamed hooks, a view of it under the new names."""
    old = [attr for attr in RENAMED_HOOKS if is_hookimpl(plugin, attr)]
    if not old:
        return plugin
    view = type(f"{plugin_name}_hooks", (), {})()
    for attr in dir(plugin):
        if is_hookimpl(plugin, attr):
            setattr(view, attr, getattr(plugin, attr))
    for attr in old:
        new, removed_in = RENAMED_HOOKS[attr]
        function = getattr(plugin, attr)
        where = _location(function)
        warnings.warn(f"plugin '{plugin_name}' ({where}) implements '{attr}', renamed to '{new}'; "
                      f"the old name stops working in crossframe {removed_in}", FutureWarning, stacklevel=2)
        delattr(view, attr)
        setattr(view, new, function)
    view.__name__ = getattr(plugin, "__name__", plugin_name)  # type: ignore[attr-defined]
    return view


def _location(function: Any) -> str:
    target = inspect.unwrap(function)
    try:
        return f"{inspect.getsourcefile(target)}:{target.__code__.co_firstlineno}"
    except (TypeError, AttributeError):
        return repr(function)
