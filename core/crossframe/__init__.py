"""crossframe: one framework-agnostic layer for data, training, compression, export, comparison.

``import crossframe`` is cheap: it imports no ML framework and not even numpy. The public API
below loads on first attribute access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations: ``@crossframe.hookimpl``.
hookimpl = pluggy.HookimplMarker("crossframe")

_LAZY = {
    "run": ("crossframe.train.runner", "run"),
    "compare": ("crossframe.compare.api", "compare"),
    "evaluate": ("crossframe.train.evaluate", "evaluate"),
    "load_config": ("crossframe.config.loading", "load_config"),
    "RunConfig": ("crossframe.config.schema", "RunConfig"),
    "Backend": ("crossframe.backend", "Backend"),
    "Capabilities": ("crossframe.backend", "Capabilities"),
    "ModelSpec": ("crossframe.models.spec", "ModelSpec"),
    "ParamSpec": ("crossframe.models.spec", "ParamSpec"),
    "Dataset": ("crossframe.data.dataset", "Dataset"),
    "get_plugin_manager": ("crossframe.plugins", "get_plugin_manager"),
    "CrossframeError": ("crossframe.errors", "CrossframeError"),
}

__all__ = ["__version__", "hookimpl", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from crossframe.backend import Backend, Capabilities
    from crossframe.compare.api import compare
    from crossframe.config.loading import load_config
    from crossframe.config.schema import RunConfig
    from crossframe.data.dataset import Dataset
    from crossframe.errors import CrossframeError
    from crossframe.models.spec import ModelSpec, ParamSpec
    from crossframe.plugins import get_plugin_manager
    from crossframe.train.evaluate import evaluate
    from crossframe.train.runner import run


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'crossframe' has no attribute '{name}'")
