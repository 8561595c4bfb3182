"""Reading config files (YAML, TOML, JSON), applying overrides, resolving and saving configs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from crossframe.config.schema import ComponentConfig, RunConfig
from crossframe.errors import ConfigError, UsageError, did_you_mean
from crossframe.files import atomic_write_bytes, atomic_write_text  # noqa: F401 (re-exported for old callers)
from crossframe.validation import describe, validate_params

DEFAULT_CONFIG = "quickstart.yaml"


def default_config_text() -> str:
    """The built-in quickstart config (also ``examples/quickstart.yaml``)."""
    return resources.files("crossframe.presets").joinpath(DEFAULT_CONFIG).read_text()


def preset_names() -> list[str]:
    """Names of the built-in presets (``quickstart``, ``digits-mlp``, ...), usable in place of a config file."""
    return sorted(entry.name[: -len(".yaml")] for entry in resources.files("crossframe.presets").iterdir()
                  if entry.name.endswith(".yaml"))


def _preset(source: str | os.PathLike) -> str | None:
    """The preset's text when ``source`` is a bare preset name and no such file exists."""
    text = os.fspath(source)
    if Path(text).exists() or os.sep in text or "/" in text or text not in preset_names():
        return None
    return resources.files("crossframe.presets").joinpath(f"{text}.yaml").read_text()


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML, TOML or JSON file (or name a built-in preset) into a dict; errors name the file."""
    preset = _preset(path)
    if preset is not None:
        return yaml.safe_load(preset) or {}
    path = Path(path)
    if not path.is_file():
        hint = did_you_mean(path.name, preset_names()) if not path.suffix else ""
        raise UsageError(f"config file '{path}' not found (built-in presets: {', '.join(preset_names())}){hint}")
    text = path.read_text()
    suffix = path.suffix.lower()
    try:
        if suffix in {".yaml", ".yml"}:
            data = yaml.safe_load(text)
        elif suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            raise UsageError(f"config file '{path}': unknown format '{suffix}'; use .yaml, .yml, .toml or .json")
    except (yaml.YAMLError, json.JSONDecodeError, ValueError) as exc:
        raise ConfigError(f"config file '{path}': not valid {suffix[1:].upper()}: {_parse_problem(exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}': the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _parse_problem(exc: Exception) -> str:
    """Where and what, in one line, for a YAML / TOML / JSON parse error."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return " ".join(str(exc).split())


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: numbers, lists, booleans).

    A numeric part indexes a list; the index one past the end appends, so ``compress.0.name=prune``
    starts a ``compress`` list in a config that has none.
    """
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set '{item}': expected KEY=VALUE, e.g. train.steps=300")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = _list_item(node, part, ".".join(parts[: i + 1]))
                continue
            child = node.get(part)
            if child is None:
                child = node[part] = [] if parts[i + 1].isdigit() else {}
            elif not isinstance(child, (dict, list)):
                raise UsageError(f"--set '{item}': '{'.'.join(parts[: i + 1])}' is a value, not a section")
            node = child
        if isinstance(node, list):
            index = _list_index(node, parts[-1], key)
            if index == len(node):
                node.append(value)
            else:
                node[index] = value
        else:
            node[parts[-1]] = value
    return data


def _list_index(items: list, part: str, where: str) -> int:
    """A list index from 0 to ``len(items)`` (which appends)."""
    if not part.isdigit() or int(part) > len(items):
        raise UsageError(f"--set: '{where}' needs an index from 0 to {len(items)} ({len(items)} appends)")
    return int(part)


def _list_item(items: list, part: str, where: str) -> Any:
    index = _list_index(items, part, where)
    if index == len(items):
        items.append({})
    return items[index]


def parse_config(data: Mapping[str, Any]) -> RunConfig:
    """Validate a raw mapping against :class:`RunConfig` (components not yet resolved)."""
    try:
        return RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(describe(exc, RunConfig)) from None


def _resolved(component: ComponentConfig, kind: str, where: str, cls: type = ComponentConfig) -> Any:
    from crossframe.plugins import component as lookup

    comp = lookup(kind, component.name, f"{where}.name")
    validated = validate_params(comp.schema, component.params, where)
    values = validated.model_dump() if isinstance(validated, BaseModel) else {}
    fixed = {k: v for k, v in component.model_dump().items() if k not in (component.model_extra or {})}
    return cls.model_validate({**fixed, **values})


def resolve(config: RunConfig) -> RunConfig:
    """Check every component against its plugin's schema and fill in their defaults."""
    from crossframe.compat import check_requirements
    from crossframe.plugins import component as lookup
    from crossframe.plugins import get_plugin_manager

    check_requirements(config.requires, get_plugin_manager().records)
    lookup("backend", config.backend, "backend")
    out = config.model_copy(deep=True)
    out.data = _resolved(config.data, "dataset", "data", type(config.data))
    out.model = _resolved(config.model, "model", "model")
    out.train.optimizer = _resolved(config.train.optimizer, "optimizer", "train.optimizer")
    out.train.schedule = _resolved(config.train.schedule, "schedule", "train.schedule")
    out.text.tokenizer = _resolved(config.text.tokenizer, "tokenizer", "text.tokenizer")
    out.loggers = [_resolved(lg, "logger", f"loggers.{i}") for i, lg in enumerate(config.loggers)]
    for i, name in enumerate(config.train.metrics or []):
        lookup("metric", name, f"train.metrics.{i}")
    return out


def load_config(
    source: str | os.PathLike | Mapping[str, Any] | RunConfig | None = None,
    overrides: Iterable[str] = (),
    *,
    backend: str | None = None,
    resolve_components: bool = True,
) -> RunConfig:
    """Load, override and validate a config.

    ``source`` is a path, a mapping, a :class:`RunConfig` or ``None`` for the built-in
    quickstart. ``overrides`` are ``a.b=c`` strings; ``backend`` replaces ``backend``.
    """
    if source is None:
        data = yaml.safe_load(default_config_text())
    elif isinstance(source, RunConfig):
        data = source.model_dump(exclude_none=True)
    elif isinstance(source, Mapping):
        data = json.loads(json.dumps(source))  # a deep copy that rejects non-JSON values early
    else:
        data = read_config_file(source)
    data = apply_overrides(data, overrides)
    if backend:
        data["backend"] = backend
    config = parse_config(data)
    return resolve(config) if resolve_components else config


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The config as plain data, ``None`` values dropped."""
    return config.model_dump(mode="json", exclude_none=True)


def dump_yaml(config: RunConfig) -> str:
    """The config as YAML text, in field order."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)
