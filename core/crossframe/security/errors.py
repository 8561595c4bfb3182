"""The one error of this package: a key that is missing or wrong, or a sealed or signed file that was changed."""

from __future__ import annotations

from crossframe.errors import CheckpointError


class SecurityError(CheckpointError):
    """Decryption or signature verification failed, or the key it needs is missing (bad input: exit 2)."""
