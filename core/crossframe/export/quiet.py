"""Quietening converters: their advisory log lines and warnings are noise next to a one-line result."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_converters(*logger_names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the named loggers to ``level`` and ignore warnings for the block; restore both after it.

    ``""`` names the root logger, which some converters log to with ``logging.warning(...)`` (ONNX
    Runtime's quantiser does). Such a call configures logging (a stderr handler on the root
    logger, for good) when the root logger has no handler; a :class:`logging.NullHandler` sits on
    it for the block to prevent that, and is removed after.
    """
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [lg.level for lg in loggers]
    root = logging.getLogger()
    guard = logging.NullHandler() if root in loggers and not root.handlers else None
    if guard is not None:
        root.addHandler(guard)
    for lg in loggers:
        lg.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)
        if guard is not None:
            root.removeHandler(guard)
