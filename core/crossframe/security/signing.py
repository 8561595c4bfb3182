"""ed25519 signatures over an artefact directory's sha256 manifest.

``manifest.sig`` beside ``manifest.json`` is ``{"algorithm": "ed25519", "key": <fingerprint>,
"public_key": <hex>, "signature": <hex>}``; the signature covers the manifest's exact bytes, and the
manifest holds the sha256 of every file, so one signature vouches for the whole directory. The
public key inside the file only says *who claims* to have signed; verification uses a key the
reader trusts (``CROSSFRAME_VERIFY_KEY_FILE`` or ``--public-key``), never that one.
"""

from __future__ import annotations

import binascii
import json
from pathlib import Path
from typing import Any

from crossframe.security.errors import SecurityError
from crossframe.security.keys import VERIFY_KEY_ENV, fingerprint, public_bytes

SIGNATURE = "manifest.sig"
MANIFEST = "manifest.json"


def sign_directory(directory: Path, private_key: Any) -> Path:
    """Sign ``directory/manifest.json`` with ``private_key``; writes ``manifest.sig`` atomically."""
    from crossframe.files import atomic_write_text

    directory = Path(directory)
    manifest = (directory / MANIFEST).read_bytes()
    public = private_key.public_key()
    record = {"algorithm": "ed25519", "key": fingerprint(public), "public_key": public_bytes(public).hex(),
              "signature": private_key.sign(manifest).hex()}
    atomic_write_text(directory / SIGNATURE, json.dumps(record, indent=2) + "\n")
    return directory / SIGNATURE


def read_signature(directory: Path) -> dict[str, str] | None:
    """The signature record of ``directory``, or None when it is not signed."""
    path = Path(directory) / SIGNATURE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if record.get("algorithm") != "ed25519" or not isinstance(record.get("signature"), str):
            raise ValueError("not an ed25519 signature record")
        return record
    except (OSError, ValueError, AttributeError) as exc:
        raise SecurityError(f"'{path}' is unreadable: {' '.join(str(exc).split())[:100]}") from None


def verify_directory(directory: Path, trusted: Any, required: bool = False) -> str | None:
    """Check ``directory``'s manifest signature against the ``trusted`` public key.

    Returns the signer's fingerprint, or None for an unsigned directory when signatures are not
    ``required``. A signature by another key, a changed manifest, or (when ``required``) a missing
    signature is one :class:`SecurityError` line.
    """
    from cryptography.exceptions import InvalidSignature

    directory = Path(directory)
    record = read_signature(directory)
    if record is None:
        if required:
            raise SecurityError(f"'{directory}' is not signed, and signatures are required (a trusted key is set)")
        return None
    if trusted is None:
        raise SecurityError(f"'{directory}' is signed by key {record.get('key', '?')}; set {VERIFY_KEY_ENV} (or pass "
                            "--public-key) to the signer's public key to load it")
    want = fingerprint(trusted)
    try:
        signature = binascii.unhexlify(record["signature"])
        trusted.verify(signature, (directory / MANIFEST).read_bytes())
    except (InvalidSignature, binascii.Error, ValueError):
        who = record.get("key", "?")
        why = (f"signed by key {who}, not the trusted key {want}" if who != want
               else "the signature does not match the manifest (it was changed)")
        raise SecurityError(f"'{directory}': {why}") from None
    except OSError as exc:
        raise SecurityError(f"'{directory / MANIFEST}' cannot be read: {exc.strerror or exc}") from None
    return want
