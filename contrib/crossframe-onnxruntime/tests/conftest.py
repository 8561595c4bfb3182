"""Make the plugin importable and registered even when it is not pip-installed (a checkout)."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PLUGIN_ROOT = Path(__file__).resolve().parents[1]

if importlib.util.find_spec("crossframe_onnxruntime") is None:
    sys.path.insert(0, str(PLUGIN_ROOT))


@pytest.fixture(autouse=True)
def onnxruntime_plugin() -> Iterator[None]:
    """Register the plugin in-process unless its entry point already did."""
    import crossframe_onnxruntime

    from crossframe import plugins

    manager = plugins.get_plugin_manager()
    if "onnxruntime" in manager.components("backend"):
        yield
        return
    manager.register(crossframe_onnxruntime, "onnxruntime")
    try:
        yield
    finally:
        manager.unregister("onnxruntime")
