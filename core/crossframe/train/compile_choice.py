"""``train.compile``: ``true``, ``false``, or ``auto``, the setting measured faster for this backend and device.

``auto`` resolves, in order:

1. the backend's rule when it is a constraint (:class:`~crossframe.backend.CompilePreference` with
   ``measurable=False``: jax always jit-compiles; torch's ``fully_sharded`` and tensorflow's
   ``data_parallel`` cannot compile);
2. a measurement of this machine, cached in ``<cache dir>/compile.json`` (``CROSSFRAME_CACHE_DIR``, see
   :func:`crossframe.perf.cache_dir`) by ``python -m benchmarks --only compile_choice``, keyed by backend,
   framework version, device and CPU model: steady steps/s compiled and not, and the extra seconds the
   compiled run's first steps take; compiling is chosen when ``overhead + steps / compiled`` beats
   ``steps / eager`` for the run's number of steps (a short run never pays for a long compilation);
3. the backend's documented rule (docs/compile.md, backed by that benchmark's committed figures).

The run logs which setting it chose and why, in one line.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.backend import Backend
from crossframe.files import atomic_write_text
from crossframe.perf import cache_dir, cpu_model

CACHE_FILE = "compile.json"


@dataclass(frozen=True)
class CompileChoice:
    """The resolved ``train.compile``: whether to compile, and why (one line for the log)."""

    enabled: bool
    reason: str

    def describe(self, setting: bool | str) -> str:
        """``train.compile: auto -> true (why)`` (or the explicit setting)."""
        value = "true" if self.enabled else "false"
        return f"train.compile: {setting} -> {value} ({self.reason})" if setting == "auto" else \
            f"train.compile: {value} ({self.reason})"


def choice_key(backend: str, framework_version: str, device: str) -> str:
    """What a measured choice depends on: the backend, its framework's version, the device and the CPU."""
    return f"{backend}|{framework_version}|{device}|{cpu_model()}"


def _cache_path() -> Path:
    return cache_dir() / CACHE_FILE


def read_measurements() -> dict[str, Any]:
    """The cached table (empty when there is none, or it cannot be read)."""
    try:
        data = json.loads(_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record_measurement(key: str, compiled_steps_per_s: float, eager_steps_per_s: float, what: str,
                       overhead_s: float = 0.0) -> bool:
    """Cache a measurement for ``key`` (``what``: the workload measured; ``overhead_s``: the extra seconds
    compilation adds to the first steps); returns whether it was written (a cache that cannot be written
    is not an error)."""
    table = read_measurements()
    table[key] = {"compiled_steps_per_s": compiled_steps_per_s, "eager_steps_per_s": eager_steps_per_s,
                  "overhead_s": max(0.0, overhead_s), "workload": what,
                  "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        _cache_path().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(_cache_path(), json.dumps(table, indent=1, sort_keys=True))
    except OSError:
        return False
    return True


def _measured(entry: Any, steps: int) -> CompileChoice | None:
    if not isinstance(entry, dict):
        return None
    compiled, eager = entry.get("compiled_steps_per_s"), entry.get("eager_steps_per_s")
    overhead = entry.get("overhead_s", 0.0)
    if not all(isinstance(v, (int, float)) and v > 0 for v in (compiled, eager)) or \
            not isinstance(overhead, (int, float)) or overhead < 0:
        return None
    with_compile, without = overhead + steps / compiled, steps / eager
    return CompileChoice(with_compile < without,
                         f"measured on this machine: {compiled:.0f} steps/s compiled after {overhead:.1f} s of "
                         f"compilation, {eager:.0f} not; {steps} steps take ~{with_compile:.1f} s against "
                         f"~{without:.1f} s ({entry.get('workload', 'a benchmark')})")


def choose_compile(setting: bool | str, name: str, backend: Backend, device: str, strategy: str,
                   steps: int = 1000) -> CompileChoice:
    """Resolve ``train.compile`` (``True``, ``False`` or ``"auto"``) for backend ``name`` on ``device`` and a
    run of ``steps`` optimizer steps."""
    if isinstance(setting, bool):
        return CompileChoice(setting, "set in the config")
    if not backend.capabilities().compile:
        return CompileChoice(False, f"backend '{name}' cannot compile steps")
    rule = backend.compile_preference(device, strategy)
    if rule.measurable:
        found = _measured(read_measurements().get(choice_key(name, backend.framework_version(), device)), steps)
        if found is not None:
            return found
    return CompileChoice(rule.enabled, rule.reason)
