"""``crossframe verify`` (check an artefact's manifest and signature) and ``crossframe keygen``."""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.command("verify")
@click.argument("target", type=click.Path())
@click.option("--public-key", type=click.Path(dir_okay=False), metavar="FILE",
              help="The signer's ed25519 public key (default: $CROSSFRAME_VERIFY_KEY_FILE).")
def verify_command(target: str, public_key: str | None) -> None:
    """Check TARGET (a run directory, a checkpoint or export directory, or a file in one) against its
    sha256 manifest and, when signed, its ed25519 signature; exit 2 naming what does not match."""
    from crossframe.errors import UsageError
    from crossframe.security.keys import VERIFY_KEY_ENV, trusted_verify_key

    if public_key:
        os.environ[VERIFY_KEY_ENV] = public_key
    path = Path(target)
    if not path.exists():
        raise UsageError(f"verify: '{target}' does not exist")
    directories = _artefact_directories(path)
    if not directories:
        raise UsageError(f"verify: '{target}' holds no manifest.json (nothing to verify)")
    trusted = trusted_verify_key()
    for directory, only in directories:
        _verify_one(directory, only, trusted)


def _artefact_directories(path: Path) -> list[tuple[Path, list[str] | None]]:
    """``(directory, files to check or None for all)`` for every manifest at or under ``path``."""
    from crossframe.integrity import MANIFEST

    if path.is_file():
        return [(path.parent, [path.name])] if (path.parent / MANIFEST).is_file() else []
    return [(m.parent, None) for m in sorted(path.rglob(MANIFEST))
            if not any(part.startswith(".") for part in m.relative_to(path).parts)]


def _verify_one(directory: Path, only: list[str] | None, trusted: object) -> None:
    from crossframe.integrity import read_manifest, verify_manifest
    from crossframe.security.signing import read_signature

    verify_manifest(directory, only=only)  # the signature first (when signed or required), then every digest
    record = read_signature(directory)
    files = len(only) if only is not None else len(read_manifest(directory) or {})
    signed = f"signed by {record['key']}" if record else "unsigned"
    click.echo(f"ok  {directory}  ({files} file(s) match, {signed})")


@click.command("keygen")
@click.argument("directory", type=click.Path(file_okay=False))
def keygen_command(directory: str) -> None:
    """Write new keys into DIRECTORY: aes.key (encryption), signing.pem (private) and signing.pub.

    Keep aes.key and signing.pem secret (they are written owner-only); give signing.pub to whoever
    verifies. Point CROSSFRAME_KEY_FILE, CROSSFRAME_SIGNING_KEY_FILE and CROSSFRAME_VERIFY_KEY_FILE at them.
    """
    from crossframe.security.keys import fingerprint, read_verify_key, write_new_keys

    paths = write_new_keys(Path(directory))
    for name, path in paths.items():
        click.echo(f"{name:8s} {path}")
    click.echo(f"signing key fingerprint: {fingerprint(read_verify_key(paths['verify']))}")


COMMANDS = [verify_command, keygen_command]
