"""Cross-framework comparison: the same job on several backends, one report.

``crossframe.compare(config, backends=["torch", "jax", "tensorflow"])`` (see
:func:`crossframe.compare.api.compare`) and ``crossframe compare CONFIG``. Modules: ``child``
(one backend in its own process), ``runner`` (the subprocesses and progress), ``measure`` (figures
from metrics), ``plots``, ``report`` and ``schema`` (the JSON Schema of ``results.json``).

``crossframe.compare`` names both this package and the function: once a submodule has been
imported, Python binds the package to ``crossframe.compare``, so the package itself is callable
and forwards to :func:`crossframe.compare.api.compare`.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def compare(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one config on several backends; see :func:`crossframe.compare.api.compare`."""
    from crossframe.compare.api import compare as _compare

    return _compare(*args, **kwargs)


class _CallablePackage(types.ModuleType):
    """This package, callable as :func:`compare`."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Run one config on several backends; see :func:`crossframe.compare.api.compare`."""
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = ["compare"]
