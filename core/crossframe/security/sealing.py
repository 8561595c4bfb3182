"""AES-256-GCM at rest: a sealed file is ``MAGIC || nonce (12 bytes) || ciphertext || tag (16 bytes)``.

The file's name (``model.safetensors``) is bound in as associated data, so a sealed file renamed to
another's name, truncated, or changed in one bit fails to open: one :class:`SecurityError` line,
never garbage weights. Each write draws a fresh random nonce (96 bits: safe for far more writes
than a key will see). The plaintext never touches the disk.
"""

from __future__ import annotations

import io
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


class SealingWriter(io.RawIOBase):
    """A file that encrypts as it is written: the same ``MAGIC || nonce || ciphertext || tag`` as
    :func:`seal`, produced in chunks (AES-GCM is a stream cipher plus a tag at the end), so a large
    file is sealed with bounded memory and its plaintext never reaches the disk. ``close()`` writes
    the tag and syncs; :func:`unseal` / :func:`read_sealed` open the result."""

    def __init__(self, path: Path, key: bytes, name: str) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        super().__init__()
        nonce = os.urandom(NONCE_BYTES)
        self._encryptor = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
        self._encryptor.authenticate_additional_data(MAGIC + name.encode())
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self._file.write(MAGIC + nonce)

    def writable(self) -> bool:
        """Always: this is a write-only file."""
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Encrypt ``data`` and append it; returns its length."""
        view = memoryview(data).cast("B")
        self._file.write(self._encryptor.update(view))
        return view.nbytes

    def fileno(self) -> int:
        """The descriptor of the file being written (its ciphertext)."""
        return self._file.fileno()

    def close(self) -> None:
        """Append the authentication tag, sync and close (once)."""
        if self.closed:
            return
        try:
            self._file.write(self._encryptor.finalize() + self._encryptor.tag)
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
            super().close()


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
