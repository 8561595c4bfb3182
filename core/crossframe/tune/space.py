"""The search space: drawing a trial's values through Optuna, turning them into config overrides,
and checking every range against the config schema before any trial starts."""

from __future__ import annotations

import copy
import json
from typing import Any

from crossframe.config.loading import apply_overrides, load_config
from crossframe.errors import ConfigError, CrossframeError
from crossframe.tune.schema import Param

PRIMITIVE = (bool, int, float, str, type(None))


def _encoded(choices: list[Any]) -> tuple[list[Any], bool]:
    """Optuna's categorical choices must be primitives: lists and mappings travel as JSON text."""
    if all(isinstance(c, PRIMITIVE) for c in choices):
        return list(choices), False
    return [json.dumps(c) for c in choices], True


def suggest(trial: Any, key: str, param: Param) -> Any:
    """Draw ``key``'s value for ``trial`` (an ``optuna.Trial``) from ``param``."""
    kind = param.kind
    if kind == "choice":
        choices, encoded = _encoded(param.choice or [])
        value = trial.suggest_categorical(key, choices)
        return json.loads(value) if encoded else value
    low, high = getattr(param, kind)
    if kind == "int":
        return trial.suggest_int(key, int(low), int(high), step=int(param.step or 1), log=param.log)
    if kind == "log_uniform":
        return trial.suggest_float(key, float(low), float(high), log=True)
    return trial.suggest_float(key, float(low), float(high), step=param.step)


def decode(key: str, value: Any, space: dict[str, Param]) -> Any:
    """A value as Optuna stored it (``trial.params``) back into the config's own type."""
    param = space.get(key)
    if param is not None and param.kind == "choice" and _encoded(param.choice or [])[1]:
        return json.loads(value)
    return value


def grid(space: dict[str, Param]) -> dict[str, list[Any]]:
    """The grid sampler's space: every choice, and every value of each int range."""
    out: dict[str, list[Any]] = {}
    for key, param in space.items():
        if param.kind == "choice":
            out[key] = _encoded(param.choice or [])[0]
        elif param.kind == "int" and not param.log:
            low, high = param.int or (0, 0)
            out[key] = list(range(int(low), int(high) + 1, int(param.step or 1)))
        else:
            raise ConfigError(f"tune.space.{key}: the grid sampler needs choice or int ranges, not {param.kind}; "
                              "use sampler: tpe or random, or list the values with choice")
    return out


def with_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the raw config ``base`` with ``values`` set at their dotted keys (as ``--set``)."""
    data = copy.deepcopy(base)
    return apply_overrides(data, [f"{key}={json.dumps(value)}" for key, value in values.items()])


def check_space(base: dict[str, Any], space: dict[str, Param]) -> None:
    """Check each key exists in the config schema and both ends of each range (every choice) are valid there.

    ``base`` is the raw config (``tune`` removed, command-line overrides applied). Raises
    :class:`ConfigError` naming ``tune.space.<key>`` and the schema's complaint.
    """
    for key, param in space.items():
        for what, value in param.probes():
            try:
                load_config(with_values(base, {key: value}))
            except CrossframeError as exc:
                raise ConfigError(f"tune.space.{key}: {param.kind} {what} {value!r} is not allowed by the config "
                                  f"schema ({exc})") from None
