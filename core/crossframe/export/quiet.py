"""Quietening converters: their advisory log lines and warnings are noise next to a one-line result."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_converters(*logger_names: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise the named loggers to ``level`` and ignore warnings for the block; restore both after it."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(level)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, old in zip(loggers, levels, strict=True):
            lg.setLevel(old)
