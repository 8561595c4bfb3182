"""Diagnostics go through the standard library's ``logging``, under the ``crossframe`` logger.

Libraries log and applications decide where it goes: the core only adds a ``NullHandler``, so a
program embedding crossframe configures ``logging.getLogger("crossframe")`` as it likes. The CLI
sends records to stderr at the level of ``$CROSSFRAME_LOG_LEVEL`` (``debug``, ``info``,
``warning``...; ``--debug`` means ``debug``), and shows nothing below ``warning`` otherwise.
"""

from __future__ import annotations

import logging
import os

ROOT = "crossframe"
ENV_VAR = "CROSSFRAME_LOG_LEVEL"
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def get_logger(name: str) -> logging.Logger:
    """The logger for module ``name`` (``crossframe.registry.store``), under ``crossframe``."""
    return logging.getLogger(name if name == ROOT or name.startswith(ROOT + ".") else f"{ROOT}.{name}")


def configure_cli_logging(debug: bool = False) -> None:
    """Send ``crossframe`` records to stderr at ``$CROSSFRAME_LOG_LEVEL`` (or DEBUG with ``--debug``);
    with neither, only warnings and errors. Called once by the CLI, never by the library."""
    logger = logging.getLogger(ROOT)
    if any(getattr(h, "_crossframe_cli", False) for h in logger.handlers):
        return
    name = "DEBUG" if debug else os.environ.get(ENV_VAR, "WARNING").upper()
    level = logging.getLevelName(name)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._crossframe_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level if isinstance(level, int) else logging.WARNING)
