"""Observers of a run (lifecycle hooks and metric loggers), called so that one that raises cannot end it.

An observer that raises is reported in one line naming its plugin, marked failed in the plugin
manager (so ``crossframe plugins`` in the same process shows why), and not called again for the
rest of the run; the run goes on. With ``CROSSFRAME_STRICT_PLUGINS=1`` the failure is kept in
:attr:`Observers.fatal` instead and the run is asked to stop: the loop checkpoints and raises it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from crossframe.errors import RunError

Say = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def plugin_of(obj: Any) -> str:
    """The name of the loaded plugin whose module defines ``obj``'s class (else that module's name)."""
    from crossframe.plugins import get_plugin_manager

    module = type(obj).__module__
    for record in get_plugin_manager().records.values():
        root = record.module.split(":", 1)[0]
        if root and (module == root or module.startswith(root.rsplit(".", 1)[0] + ".")):
            return record.name
    return module


class Observers:
    """Guarded calls of lifecycle hooks and loggers for one run."""

    def __init__(self, hook: Any, loggers: list[Any] | None = None, *, strict: bool | None = None,
                 say: Say = _stderr) -> None:
        self.hook = hook
        self.loggers = loggers if loggers is not None else []
        self.say = say
        self.strict = strict
        self.disabled: set[str] = set()
        self.fatal: RunError | None = None
        self.run: Any = None  # set by the loop, so strict mode can ask the run to stop

    def _is_strict(self) -> bool:
        if self.strict is None:
            from crossframe.plugins import get_plugin_manager

            self.strict = get_plugin_manager().strict
        return self.strict

    def call(self, hook_name: str, **kwargs: Any) -> None:
        """Call each enabled implementation of ``hook_name`` (in pluggy's order: last registered first)."""
        for impl in reversed(getattr(self.hook, hook_name).get_hookimpls()):
            if impl.plugin_name in self.disabled:
                continue
            try:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames if arg in kwargs})
            except Exception as exc:
                self._failed(impl.plugin_name, hook_name, exc)

    def implemented(self, hook_name: str) -> bool:
        """Whether some enabled plugin implements ``hook_name`` (the loop skips a per-step call that reaches none)."""
        return any(impl.plugin_name not in self.disabled for impl in getattr(self.hook, hook_name).get_hookimpls())

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Hand ``metrics`` to every logger that has not failed."""
        for logger in list(self.loggers):
            try:
                logger.log_metrics(step, metrics)
            except Exception as exc:
                self.loggers.remove(logger)
                self._failed(plugin_of(logger), f"logger {type(logger).__name__}.log_metrics", exc)

    def _failed(self, plugin: str, where: str, exc: Exception) -> None:
        self.disabled.add(plugin)
        why = f"{where} raised {type(exc).__name__}: {bounded_line(str(exc))}"
        mark_failed(plugin, why)
        if self._is_strict():
            if self.fatal is None:
                self.fatal = RunError(f"plugin '{plugin}': {why}; the run stopped "
                                      "(CROSSFRAME_STRICT_PLUGINS is set)")
            if self.run is not None:
                self.run.should_stop = True
            return
        self.say(f"crossframe: plugin '{plugin}' {why}; it is disabled for the rest of this run")


def mark_failed(plugin: str, why: str) -> None:
    """Record in the plugin manager that ``plugin`` failed (``crossframe plugins`` lists it so)."""
    from crossframe.plugins import get_plugin_manager

    record = get_plugin_manager().records.get(plugin)
    if record is not None:
        record.status, record.error = "failed", why


def close_loggers(loggers: list[Any], say: Say = _stderr) -> None:
    """Close every logger; one that raises is reported by plugin and the others still close."""
    for logger in loggers:
        try:
            logger.close()
        except Exception as exc:
            why = f"logger {type(logger).__name__}.close raised {type(exc).__name__}: {bounded_line(str(exc))}"
            mark_failed(plugin_of(logger), why)
            say(f"crossframe: plugin '{plugin_of(logger)}' {why}")


def bounded_line(text: str, limit: int = 200) -> str:
    """The first line of ``text``, cut to ``limit`` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
