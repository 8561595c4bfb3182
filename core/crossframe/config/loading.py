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
        return safe_load_bounded(preset, f"preset '{path}'") or {}
    path = Path(path)
    if not path.is_file():
        hint = did_you_mean(path.name, preset_names()) if not path.suffix else ""
        raise UsageError(f"config file '{path}' not found (built-in presets: {', '.join(preset_names())}){hint}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file '{path}': not UTF-8 text (byte {exc.start}); is it a binary file?") from None
    except OSError as exc:
        raise UsageError(f"config file '{path}' cannot be read: {exc.strerror or exc}") from None
    if "\x00" in text:
        raise ConfigError(f"config file '{path}': contains NUL bytes; is it a binary file?")
    suffix = path.suffix.lower()
    try:
        if suffix in {".yaml", ".yml"}:
            data = safe_load_bounded(text, f"config file '{path}'")
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


#: a YAML document may expand (through aliases) to at most this many values
MAX_YAML_NODES = 100_000


def safe_load_bounded(text: str, what: str) -> Any:
    """``yaml.safe_load`` that refuses documents whose aliases expand past :data:`MAX_YAML_NODES`
    values (a few hundred bytes can otherwise expand to billions) or refer to themselves."""
    data = yaml.safe_load(text)
    expanded_size(data, what)
    return data


def expanded_size(value: Any, what: str, limit: int = MAX_YAML_NODES) -> int:
    """How many values ``value`` holds with shared parts counted each time they appear (memoised by
    identity, so this costs the number of distinct nodes); :class:`ConfigError` past ``limit``."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"{what}: a YAML alias refers to the value that contains it")
        active.add(key)
        children = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
        total = 1
        for child in children:
            total += size(child)
            if total > limit:
                raise ConfigError(f"{what}: YAML aliases expand to more than {limit} values; "
                                  "write the values out or use fewer aliases")
        active.discard(key)
        sizes[key] = total
        return total

    return size(value)


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
            value = safe_load_bounded(raw, f"--set '{key}'") if raw.strip() else ""
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


def merge_configs(base: Mapping[str, Any], *more: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge config mappings, later ones winning: sections (mappings) merge key by key; a
    value or a list (``loggers``, ``compress``) replaces the earlier one whole."""
    merged: dict[str, Any] = json.loads(json.dumps(dict(base)))
    for layer in more:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = merge_configs(merged[key], value)
            else:
                merged[key] = json.loads(json.dumps(value))
    return merged


#: environment variables with this prefix override config keys: ``CROSSFRAME_TRAIN__STEPS=300`` is
#: ``--set train.steps=300`` (``__`` separates sections; the value is parsed as YAML)
ENV_PREFIX = "CROSSFRAME_"


def env_overrides(environ: Mapping[str, str] | None = None) -> list[str]:
    """``KEY=VALUE`` overrides from ``CROSSFRAME_<SECTION>__<KEY>`` variables, sorted by name.

    Only variables whose first part names a top-level config key count (``CROSSFRAME_BACKEND``,
    ``CROSSFRAME_TRAIN__LOG_EVERY``); others, such as ``CROSSFRAME_DEBUG``, are left alone.
    """
    environ = os.environ if environ is None else environ
    fields = set(RunConfig.model_fields)
    found = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or not environ[name].strip():
            continue
        parts = name[len(ENV_PREFIX):].lower().split("__")
        if parts[0] in fields and all(parts):
            found.append(f"{'.'.join(parts)}={environ[name]}")
    return found


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
    out.model = _resolved(config.model, "model", "model", type(config.model))
    out.train.optimizer = _resolved(config.train.optimizer, "optimizer", "train.optimizer")
    out.train.schedule = _resolved(config.train.schedule, "schedule", "train.schedule")
    out.text.tokenizer = _resolved(config.text.tokenizer, "tokenizer", "text.tokenizer")
    out.loggers = [_resolved(lg, "logger", f"loggers.{i}") for i, lg in enumerate(config.loggers)]
    from crossframe.metrics.lookup import find_metric

    for i, name in enumerate(config.train.metrics or []):
        find_metric(name, f"train.metrics.{i}")
    return out


def load_config(
    source: str | os.PathLike | Mapping[str, Any] | RunConfig | None = None,
    overrides: Iterable[str] = (),
    *,
    backend: str | None = None,
    resolve_components: bool = True,
) -> RunConfig:
    """Load, override and validate a config.

    ``source`` is a path, a mapping, a :class:`RunConfig`, ``None`` for the built-in
    quickstart, or a list of paths and mappings merged in order (see :func:`merge_configs`).
    ``overrides`` are ``a.b=c`` strings; ``backend`` replaces ``backend``.
    """
    if source is None:
        data = yaml.safe_load(default_config_text())
    elif isinstance(source, RunConfig):
        data = source.model_dump(exclude_none=True)
    elif isinstance(source, Mapping):
        data = json.loads(json.dumps(source))  # a deep copy that rejects non-JSON values early
    elif isinstance(source, (list, tuple)):
        layers = [s if isinstance(s, Mapping) else read_config_file(s) for s in source]
        data = merge_configs(*layers) if layers else yaml.safe_load(default_config_text())
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
