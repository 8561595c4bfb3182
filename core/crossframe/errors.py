"""The error family: every expected failure carries one line a person can act on.

The CLI prints ``str(error)`` without a traceback (``--debug`` shows one) and exits with
``error.exit_code``: 2 for bad input (usage, configuration, a checkpoint that cannot be read),
1 for a run that failed, 130 for an interrupted run (see docs/errors.md).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CrossframeError(Exception):
    """Base class: a one-line message naming the field or file and what is allowed."""

    exit_code: int = 1


class ConfigError(CrossframeError):
    """A config file, a ``--set`` override or a component's params are invalid."""

    exit_code = 2


class UsageError(CrossframeError):
    """The command line itself is wrong (a missing file, a bad flag value)."""

    exit_code = 2


class PluginError(CrossframeError):
    """A plugin failed to load or register, or a needed component is not provided."""

    exit_code = 2


class CapabilityError(CrossframeError):
    """The run asks a backend for something it cannot do (a device, a precision, a model)."""

    exit_code = 2


class DataError(CrossframeError):
    """A data file is missing, unreadable or has the wrong shape."""

    exit_code = 2


class CheckpointError(CrossframeError):
    """A checkpoint (or export) given as input is missing, unreadable, or does not match the model.

    Bad input, so exit 2; failing to *write* one is a :class:`RunError` (exit 1).
    """

    exit_code = 2


class RunError(CrossframeError):
    """A run failed while training (non-finite loss, a backend error)."""

    exit_code = 1


class ExportError(CrossframeError):
    """An export failed or its artefact did not match the native model (names backend, format, op)."""

    exit_code = 1


class DistributedError(CrossframeError):
    """A multi-worker job could not start, or a worker died or timed out."""

    exit_code = 1


class Interrupted(CrossframeError):
    """A run stopped by Ctrl-C or SIGTERM; the message says whether a checkpoint was written."""

    exit_code = 130


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def one_of(choices: Iterable[str]) -> str:
    """Format allowed choices as ``'a', 'b' or 'c'`` for messages."""
    items = [f"'{c}'" for c in sorted(choices)]
    if not items:
        return "(none available)"
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " or " + items[-1]
