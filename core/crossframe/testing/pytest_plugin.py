"""pytest plugin (entry point ``pytest11``): fixtures for testing crossframe plugins.

- ``crossframe_plugins``: a fresh plugin manager for the test; ``.register(obj, name)`` adds an
  in-process plugin for this test only.
- ``crossframe_cli``: runs the CLI in-process, returning exit code, stdout and stderr.
- ``hook_recorder``: a plugin that records every lifecycle hook call, already registered.

Importing this module imports no ML framework.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from crossframe import hookimpl


@dataclass
class CliResult:
    """What an in-process CLI call returned and printed."""

    exit_code: int
    stdout: str
    stderr: str


@dataclass
class HookRecorder:
    """Records lifecycle hook calls as ``(hook_name, kwargs)``."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def names(self) -> list[str]:
        """The hook names in call order."""
        return [name for name, _ in self.calls]

    @hookimpl
    def on_run_start(self, run: Any) -> None:
        """Record."""
        self.calls.append(("on_run_start", {"run": run}))

    @hookimpl
    def on_step_end(self, run: Any, step: int, batch: dict, logs: dict | None) -> None:
        """Record."""
        self.calls.append(("on_step_end", {"step": step, "logs": logs}))

    @hookimpl
    def on_eval_end(self, run: Any, step: int, metrics: dict) -> None:
        """Record."""
        self.calls.append(("on_eval_end", {"step": step, "metrics": metrics}))

    @hookimpl
    def on_checkpoint_saved(self, run: Any, step: int, path: Any) -> None:
        """Record."""
        self.calls.append(("on_checkpoint_saved", {"step": step, "path": path}))

    @hookimpl
    def on_run_end(self, run: Any, status: str, metrics: dict) -> None:
        """Record."""
        self.calls.append(("on_run_end", {"status": status, "metrics": metrics}))


@pytest.fixture
def crossframe_plugins() -> Iterator[Any]:
    """A fresh, fully loaded plugin manager for this test (restored afterwards)."""
    from crossframe import plugins

    saved = plugins._manager
    plugins._manager = None
    try:
        yield plugins.get_plugin_manager()
    finally:
        plugins._manager = saved


@pytest.fixture
def crossframe_cli(crossframe_plugins: Any) -> Callable[..., CliResult]:
    """Call as ``crossframe_cli("run", "cfg.yaml", "--quiet")``; plugins registered on
    ``crossframe_plugins`` stay registered for the call."""
    from crossframe.cli.main import main

    def invoke(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args), keep_plugins=True)
        return CliResult(code, out.getvalue(), err.getvalue())

    return invoke


@pytest.fixture
def hook_recorder(crossframe_plugins: Any) -> Iterator[HookRecorder]:
    """A :class:`HookRecorder` registered for this test."""
    recorder = HookRecorder()
    crossframe_plugins.register(recorder, "hook-recorder")
    yield recorder
    crossframe_plugins.unregister("hook-recorder")
