"""sha256 manifests: every checkpoint and export directory lists its files with their digests.

``manifest.json`` is ``{"algorithm": "sha256", "files": {"model.safetensors": "<hex>", ...}}`` with
paths relative to the directory. It is written last, atomically, and checked before a load: a
file whose digest differs is refused in one line naming it. A directory written before manifests
existed (no ``manifest.json``) still loads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from crossframe.errors import CheckpointError
from crossframe.log import get_logger

log = get_logger(__name__)

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class IntegrityError(CheckpointError):
    """A file's sha256 differs from its manifest, or a file the manifest lists is missing."""


def sha256_file(path: Path) -> str:
    """The hex sha256 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    """Files under ``directory`` (recursively), skipping the manifest and hidden temporaries."""
    return sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST
                  and not any(part.startswith(".") for part in p.relative_to(directory).parts))


def write_manifest(directory: Path) -> dict[str, str]:
    """Hash every file under ``directory`` and write ``manifest.json`` there atomically; returns the digests."""
    from crossframe.files import atomic_write_text

    directory = Path(directory)
    digests = {p.relative_to(directory).as_posix(): sha256_file(p) for p in _files(directory)}
    atomic_write_text(directory / MANIFEST, json.dumps({"algorithm": "sha256", "files": digests}, indent=2) + "\n")
    from crossframe.security import active

    protection = active()
    if protection is not None and protection.signer is not None:  # security.sign: ed25519 over the manifest
        from crossframe.security.signing import sign_directory

        sign_directory(directory, protection.signer)
    return digests


def read_manifest(directory: Path) -> dict[str, str] | None:
    """The digests of ``directory``'s manifest, or None when it has none (written before manifests)."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text())["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{path}: unreadable manifest ({exc})") from None


def verify_manifest(directory: Path, only: Iterable[str] | None = None) -> bool:
    """Check the files of ``directory`` against its manifest (or just the relative paths in ``only``).

    Returns False when there is no manifest (an older directory: nothing to check), True when every
    file matches; raises :class:`IntegrityError` naming the first file that is missing or differs.
    """
    directory = Path(directory)
    _check_signature(directory)
    digests = read_manifest(directory)
    if digests is None:
        log.debug("%s has no %s (written before manifests): not checked", directory, MANIFEST)
        return False
    wanted = digests if only is None else {k: digests[k] for k in only if k in digests}
    for name, expected in wanted.items():
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in {MANIFEST} but missing")
        if sha256_file(path) != expected:
            raise IntegrityError(f"{path}: sha256 does not match {MANIFEST} (the file was changed or corrupted)")
    log.debug("%s: %d file(s) match %s", directory, len(wanted), MANIFEST)
    return True


def _check_signature(directory: Path) -> None:
    """A signed directory must verify against the trusted key (``CROSSFRAME_VERIFY_KEY_FILE``, else the
    signing key's public half); with ``CROSSFRAME_VERIFY_KEY_FILE`` set, an unsigned one is refused."""
    import os

    from crossframe.security.keys import VERIFY_KEY_ENV
    from crossframe.security.signing import SIGNATURE, verify_directory

    required = bool(os.environ.get(VERIFY_KEY_ENV))
    if not required and not (directory / SIGNATURE).is_file():
        return  # the common case: nothing signed, nothing pinned (no key file is read)
    if not (directory / MANIFEST).is_file():
        from crossframe.security import SecurityError

        raise SecurityError(f"'{directory}' has no {MANIFEST} to check its signature against")
    from crossframe.security.keys import trusted_verify_key

    verify_directory(directory, trusted_verify_key(), required=required)
