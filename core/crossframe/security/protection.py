"""What a run protects, and how: the active :class:`Protection` that checkpoint and manifest writers consult.

``security: {encrypt: true, sign: true}`` in a run's config becomes a Protection holding the keys
(read once, from the files the environment names); the runner makes it active for the run, so every
``save_tensors`` seals its file and every ``write_manifest`` signs its manifest, in checkpoints,
compressed steps and exports alike. Reading needs no activation: a sealed file is recognised by its
magic and opened with ``CROSSFRAME_KEY_FILE``; a signed directory is checked against the trusted key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from crossframe.security.keys import encryption_key, signing_key


@dataclass(frozen=True)
class Protection:
    """Keys for writing: ``key`` (AES-256) seals weights, ``signer`` (ed25519) signs manifests."""

    key: bytes | None = None
    signer: Any = None

    @classmethod
    def from_config(cls, security: Any) -> Protection | None:
        """From a config's ``security`` section (None: nothing to protect); a missing key is one line."""
        if security is None or not (security.encrypt or security.sign):
            return None
        try:
            import cryptography  # noqa: F401
        except ImportError:
            from crossframe.security.errors import SecurityError

            raise SecurityError("security: encryption and signatures need the cryptography package; "
                                "pip install 'crossframe[security]'") from None
        key = encryption_key(required=True, why="security.encrypt") if security.encrypt else None
        signer = signing_key(required=True, why="security.sign") if security.sign else None
        return cls(key, signer)


_ACTIVE: list[Protection] = []


def active() -> Protection | None:
    """The protection writers apply now (the innermost :func:`protecting`), or None."""
    return _ACTIVE[-1] if _ACTIVE else None


@contextlib.contextmanager
def protecting(protection: Protection | None) -> Iterator[None]:
    """Make ``protection`` the active one inside the block (None: leave things as they are)."""
    if protection is None:
        yield
        return
    _ACTIVE.append(protection)
    try:
        yield
    finally:
        _ACTIVE.remove(protection)
