"""Keys from files: a 256-bit AES key, an ed25519 signing (private) key, an ed25519 verifying (public) key.

Key files hold text: 64 hex digits (or base64) for the AES key; PEM (PKCS8 / SubjectPublicKeyInfo) or
64 hex digits of the raw key for ed25519. ``crossframe keygen`` writes all three. A file that is
missing, unreadable or not a key is one :class:`SecurityError` line naming it; a key's bytes never
appear in a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from pathlib import Path
from typing import Any

from crossframe.security.errors import SecurityError

KEY_FILE_ENV = "CROSSFRAME_KEY_FILE"
SIGNING_KEY_ENV = "CROSSFRAME_SIGNING_KEY_FILE"
VERIFY_KEY_ENV = "CROSSFRAME_VERIFY_KEY_FILE"
AES_KEY_BYTES = 32


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SecurityError(f"{what} '{path}' cannot be read: {exc.strerror or exc}") from None


def _raw32(text: bytes) -> bytes | None:
    """32 bytes from 64 hex digits or base64, else None."""
    stripped = text.strip()
    try:
        raw = binascii.unhexlify(stripped)
    except (binascii.Error, ValueError):
        try:
            raw = base64.b64decode(stripped, validate=True)
        except (binascii.Error, ValueError):
            return None
    return raw if len(raw) == AES_KEY_BYTES else None


def read_aes_key(path: Path) -> bytes:
    """The 256-bit key in ``path`` (64 hex digits or base64)."""
    raw = _raw32(_read(path, "key file"))
    if raw is None:
        raise SecurityError(f"key file '{path}' must hold a 256-bit key: 64 hex digits or base64 of 32 bytes "
                            "(crossframe keygen writes one)")
    return raw


def encryption_key(required: bool = False, why: str = "") -> bytes | None:
    """The AES key named by ``CROSSFRAME_KEY_FILE`` (``--key-file`` sets it); None when unset, unless ``required``."""
    path = os.environ.get(KEY_FILE_ENV)
    if not path:
        if required:
            raise SecurityError(f"{why}: needs the encryption key; set {KEY_FILE_ENV} or pass --key-file")
        return None
    return read_aes_key(Path(path))


def read_signing_key(path: Path) -> Any:
    """The ed25519 private key in ``path`` (PEM, or 64 hex digits of its raw seed)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = _read(path, "signing key file")
    raw = _raw32(data)
    if raw is not None:
        return Ed25519PrivateKey.from_private_bytes(raw)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        key = None
    if not isinstance(key, Ed25519PrivateKey):
        raise SecurityError(f"signing key file '{path}' must hold an ed25519 private key (PEM or 64 hex digits)")
    return key


def read_verify_key(path: Path) -> Any:
    """The ed25519 public key in ``path`` (PEM, or 64 hex digits); a private key file gives its public half."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    data = _read(path, "public key file")
    if b"PRIVATE KEY" in data:
        return read_signing_key(path).public_key()
    raw = _raw32(data)
    if raw is not None:
        return Ed25519PublicKey.from_public_bytes(raw)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        key = None
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise SecurityError(f"public key file '{path}' must hold an ed25519 public key (PEM or 64 hex digits)")
    return key


def signing_key(required: bool = False, why: str = "") -> Any:
    """The ed25519 private key named by ``CROSSFRAME_SIGNING_KEY_FILE``; None when unset, unless ``required``."""
    path = os.environ.get(SIGNING_KEY_ENV)
    if not path:
        if required:
            raise SecurityError(f"{why}: needs a signing key; set {SIGNING_KEY_ENV} (crossframe keygen writes one)")
        return None
    return read_signing_key(Path(path))


def trusted_verify_key() -> Any:
    """The public key artefacts must be signed by: ``CROSSFRAME_VERIFY_KEY_FILE``, else the public half of
    ``CROSSFRAME_SIGNING_KEY_FILE``; None when neither is set."""
    path = os.environ.get(VERIFY_KEY_ENV)
    if path:
        return read_verify_key(Path(path))
    key = signing_key()
    return None if key is None else key.public_key()


def public_bytes(public_key: Any) -> bytes:
    """The raw 32 bytes of an ed25519 public key."""
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(public_key: Any) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    return hashlib.sha256(public_bytes(public_key)).hexdigest()[:16]


def write_new_keys(directory: Path) -> dict[str, Path]:
    """Write a fresh AES key (``aes.key``), an ed25519 key pair (``signing.pem``, ``signing.pub``) with
    owner-only permissions on the secrets; refuses to overwrite existing files."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"aes": directory / "aes.key", "signing": directory / "signing.pem", "verify": directory / "signing.pub"}
    for path in paths.values():
        if path.exists():
            raise SecurityError(f"keygen: '{path}' exists; keys are never overwritten")
    private = Ed25519PrivateKey.generate()
    contents = {
        "aes": binascii.hexlify(os.urandom(AES_KEY_BYTES)) + b"\n",
        "signing": private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()),
        "verify": private.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for name, data in contents.items():
        mode = 0o644 if name == "verify" else 0o600
        fd = os.open(paths[name], os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    return paths
