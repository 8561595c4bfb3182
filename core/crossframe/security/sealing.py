"""AES-256-GCM at rest: a sealed file is ``MAGIC || nonce (12 bytes) || ciphertext || tag (16 bytes)``.

The file's name (``model.safetensors``) is bound in as associated data, so a sealed file renamed to
another's name, truncated, or changed in one bit fails to open: one :class:`SecurityError` line,
never garbage weights. Each write draws a fresh random nonce (96 bits: safe for far more writes
than a key will see). The plaintext never touches the disk.
"""

from __future__ import annotations

import os
from pathlib import Path

from crossframe.security.errors import SecurityError

MAGIC = b"CFSEAL1\x00"  # eight bytes: a safetensors file starts with a little-endian header length instead
NONCE_BYTES = 12


def is_sealed(path: Path) -> bool:
    """Whether ``path`` starts with the sealed-file magic."""
    try:
        with Path(path).open("rb") as handle:
            return handle.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def seal(data: bytes, key: bytes, name: str) -> bytes:
    """``data`` encrypted and authenticated under ``key``, bound to the file ``name``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(NONCE_BYTES)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, data, MAGIC + name.encode())


def unseal(blob: bytes, key: bytes, name: str, where: Path | str) -> bytes:
    """The plaintext of a sealed ``blob``; a wrong key or any change is one line naming ``where``."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + NONCE_BYTES + 16:
        raise SecurityError(f"'{where}' is not a sealed file (or is truncated)")
    nonce = blob[len(MAGIC):len(MAGIC) + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, blob[len(MAGIC) + NONCE_BYTES:], MAGIC + name.encode())
    except InvalidTag:
        raise SecurityError(f"'{where}' cannot be decrypted: wrong key, or the file was changed") from None


def read_sealed(path: Path, key: bytes) -> bytes:
    """Read and open the sealed file at ``path``."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"'{path}' cannot be read: {exc.strerror or exc}") from None
    return unseal(blob, key, path.name, path)
