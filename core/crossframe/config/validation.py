"""Turning pydantic's errors into one line: the helpers live on the ground floor
(:mod:`crossframe.validation`) so models and text use them without importing config; this path stays."""

from crossframe.validation import _short, describe, validate_params  # noqa: F401 (_short: the tests' bound)

__all__ = ["describe", "validate_params"]
