"""The JSON Schema of ``compare/results.json``, and a validator that needs no extra package.

:data:`RESULTS_SCHEMA` is plain data (draft 2020-12). :func:`validate_results` uses the
``jsonschema`` package when it is installed and otherwise :func:`check`, a small checker of the
subset of JSON Schema this file uses (``type``, ``properties``, ``required``, ``items``,
``additionalProperties``, ``enum``, ``minimum``, ``$ref`` to ``$defs``).
"""

from __future__ import annotations

import math
from typing import Any

from crossframe.errors import CrossframeError

SCHEMA_VERSION = 1

NUM = {"type": ["number", "null"]}
INT = {"type": ["integer", "null"]}
STR = {"type": ["string", "null"]}

#: the status of one backend's row
STATUSES = ("ok", "unavailable", "failed", "oom", "crashed")

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://crossframe.dev/schemas/compare-results-v1.json",
    "title": "crossframe compare results",
    "type": "object",
    "required": ["schema_version", "crossframe_version", "config", "backends", "results", "loss_divergence",
                 "overhead", "machine", "created"],
    "additionalProperties": False,
    "properties": {
        "schema_version": {"type": "integer", "enum": [SCHEMA_VERSION]},
        "crossframe_version": {"type": "string"},
        "created": {"type": "string"},
        "config": {"type": "object"},
        "backends": {"type": "array", "items": {"type": "string"}},
        "results": {"type": "array", "items": {"$ref": "#/$defs/backend"}},
        "loss_divergence": {"type": "array", "items": {"$ref": "#/$defs/pair"}},
        "overhead": {"$ref": "#/$defs/overhead"},
        "machine": {"type": "object"},
        "files": {"type": "object", "additionalProperties": {"type": "string"}},
        "threads": {"type": "object", "required": ["per_backend", "reason"], "additionalProperties": False,
                    "properties": {"per_backend": {"type": "integer", "minimum": 1}, "reason": {"type": "string"}}},
        "contended": {"type": "array", "items": {"type": "string"}},
    },
    "$defs": {
        "backend": {
            "type": "object",
            "required": ["backend", "status", "error", "framework_version", "device", "run_dir", "steps",
                         "parity", "throughput", "first_step_s", "memory", "mfu", "eval", "loss_curve",
                         "export", "timings"],
            "additionalProperties": False,
            "properties": {
                "backend": {"type": "string"},
                "status": {"type": "string", "enum": list(STATUSES)},
                "error": STR,
                "framework_version": STR,
                "device": STR,
                "run_dir": STR,
                "run_status": STR,
                "steps": INT,
                "parity": {
                    "type": "object", "required": ["max_abs_diff"], "additionalProperties": False,
                    "properties": {"max_abs_diff": NUM, "reference_max_abs": NUM, "samples": INT},
                },
                "throughput": {
                    "type": "object", "required": ["samples_per_sec", "windows"], "additionalProperties": False,
                    "properties": {"samples_per_sec": NUM, "tokens_per_sec": NUM, "steps_per_sec": NUM,
                                   "windows": {"type": "integer", "minimum": 0},
                                   "includes_warmup": {"type": "boolean"}},
                },
                "first_step_s": NUM,
                "memory": {
                    "type": "object", "required": ["peak_host_mb", "peak_device_mb"], "additionalProperties": False,
                    "properties": {"peak_host_mb": NUM, "peak_device_mb": NUM},
                },
                "mfu": NUM,
                "eval": {"type": "object", "additionalProperties": {"type": "number"}},
                "loss_curve": {
                    "type": "array",
                    "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
                },
                "export": {"type": "array", "items": {"$ref": "#/$defs/export"}},
                "timings": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"process_start_s": NUM, "backend_load_s": NUM, "data_s": NUM, "parity_s": NUM,
                                   "run_wall_s": NUM, "child_wall_s": NUM, "finish_s": NUM},
                },
                "load": {"$ref": "#/$defs/load"},
            },
        },
        "load": {
            "type": ["object", "null"], "required": ["threads", "cores", "other_cores", "contended", "why"],
            "additionalProperties": False,
            "properties": {"threads": {"type": "integer", "minimum": 1}, "cores": {"type": "integer", "minimum": 1},
                           "load_avg_start": NUM, "load_avg_end": NUM, "child_cpu_cores": NUM,
                           "other_cores": NUM, "contended": {"type": "boolean"}, "why": STR},
        },
        "export": {
            "type": "object", "required": ["format"], "additionalProperties": False,
            "properties": {"format": {"type": "string"}, "name": STR, "metric": STR, "metric_after": NUM,
                           "size_bytes": INT, "latency_p50_ms": NUM,
                           "latency_p99_ms": NUM, "status": STR, "error": STR},
        },
        "pair": {
            "type": "object", "required": ["a", "b", "max_abs_diff", "common_steps"], "additionalProperties": False,
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "max_abs_diff": NUM,
                           "at_step": INT, "common_steps": {"type": "integer", "minimum": 0}},
        },
        "overhead": {
            "type": "object", "required": ["total_s", "backends_s", "overhead_s"], "additionalProperties": False,
            "properties": {"total_s": {"type": "number", "minimum": 0}, "backends_s": {"type": "number", "minimum": 0},
                           "overhead_s": {"type": "number"}, "data_prepare_s": {"type": "number", "minimum": 0},
                           "per_backend": {"type": "object", "additionalProperties": {"type": "number"}}},
        },
    },
}


class SchemaError(CrossframeError):
    """``results.json`` does not match :data:`RESULTS_SCHEMA` (the message names the path)."""


_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def check(instance: Any, schema: dict[str, Any] = RESULTS_SCHEMA, root: dict[str, Any] | None = None,
          path: str = "$") -> None:
    """Raise :class:`SchemaError` naming the first place ``instance`` breaks ``schema``."""
    root = schema if root is None else root
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return check(instance, root["$defs"][name], root, path)
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](instance) for t in names):
            raise SchemaError(f"{path}: expected {' or '.join(names)}, got {type(instance).__name__} {instance!r:.60}")
    if "enum" in schema and instance not in schema["enum"]:
        raise SchemaError(f"{path}: {instance!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(instance, (int, float)) and instance < schema["minimum"]:
        raise SchemaError(f"{path}: {instance} is below the minimum {schema['minimum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                raise SchemaError(f"{path}: missing '{key}'")
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, value in instance.items():
            if key in props:
                check(value, props[key], root, f"{path}.{key}")
            elif extra is False:
                raise SchemaError(f"{path}: unexpected key '{key}'")
            elif isinstance(extra, dict):
                check(value, extra, root, f"{path}.{key}")
    if isinstance(instance, list):
        if "minItems" in schema and len(instance) < schema["minItems"]:
            raise SchemaError(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(instance) > schema["maxItems"]:
            raise SchemaError(f"{path}: more than {schema['maxItems']} items")
        if "items" in schema:
            for i, item in enumerate(instance):
                check(item, schema["items"], root, f"{path}[{i}]")
    return None


def validate_results(results: dict[str, Any]) -> None:
    """Validate ``results`` against :data:`RESULTS_SCHEMA` (with ``jsonschema`` when installed)."""
    try:
        import jsonschema
    except ImportError:
        check(results)
        return
    try:
        jsonschema.validate(results, RESULTS_SCHEMA)
    except jsonschema.ValidationError as exc:
        where = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in exc.absolute_path)
        raise SchemaError(f"{where}: {exc.message}") from None
