"""Sealed exports: an exporter's bytes are sealed in memory before they are written, and opened in memory.

An exported file (``model.onnx``, ``model.pt2``, ``model.stablehlo``, ``model.tflite``) is written by
:func:`write_artifact`: sealed under the active :class:`~crossframe.security.Protection`'s key when a
run (or ``crossframe export``) has ``security.encrypt``, plain otherwise. Its runtime then opens it
through :func:`artifact_bytes` or :func:`artifact_source`, which decrypt into memory: ONNX Runtime's
``InferenceSession``, ``torch.export.load``, ``jax.export.deserialize`` and the TFLite interpreter all
take the model's bytes, so the plaintext never reaches the disk. A sealed artefact without the key, or
with a changed byte, is one :class:`SecurityError` line. Formats a runtime can only open from files
(a SavedModel directory, ONNX Runtime's quantiser) are refused under encryption by
:func:`refuse_unsealable`.
"""

from __future__ import annotations

import os
from pathlib import Path

from crossframe.security.errors import SecurityError
from crossframe.security.protection import active
from crossframe.security.sealing import is_sealed, seal, unseal


def encrypting() -> bool:
    """Whether what is written now is sealed (an active protection holds an AES key)."""
    protection = active()
    return protection is not None and protection.key is not None


#: why each export that can only be opened from files is refused under encryption, by exporter name
UNSEALABLE = {"saved-model": "TensorFlow loads a SavedModel only from files",
              "onnx-int8-dynamic": "its quantiser reads and writes model files",
              "onnx-int8-static": "its quantiser reads and writes model files",
              "tflite-int8": "its quantiser reads and writes model files",
              "torch-int8": "its quantiser reads and writes model files",
              "hf": "transformers loads a Hugging Face directory only from plain files"}


def unsealable(what: str, why: str) -> SecurityError:
    """The one line for an artefact ``what`` that cannot be written sealed, because ``why``."""
    return SecurityError(f"{what}: cannot be encrypted ({why}); use onnx, or turn security.encrypt off for it")


def refuse_unsealable(what: str, why: str) -> None:
    """Raise one :class:`SecurityError` line when encrypting: ``what`` cannot be written sealed, because ``why``."""
    if encrypting():
        raise unsealable(what, why)


def write_artifact(path: Path, data: bytes, name: str | None = None) -> None:
    """Write ``data`` to ``path``: sealed and bound to file ``name`` (default: ``path``'s own name; an
    exporter writing a temporary passes the final name) when encrypting, plain otherwise. The bytes
    go straight from memory to the file (synced); nothing else is written."""
    protection = active()
    path = Path(path)
    if protection is not None and protection.key is not None:
        data = seal(bytes(data), protection.key, name or path.name)
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def artifact_bytes(path: Path) -> bytes:
    """The plaintext bytes of an exported file: decrypted in memory when sealed (needs
    ``CROSSFRAME_KEY_FILE``, one line without it or when the file was changed), read as is otherwise."""
    from crossframe.security.keys import encryption_key

    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise SecurityError(f"'{path}' cannot be read: {exc.strerror or exc}") from None
    if not is_sealed(path):
        return blob
    key = encryption_key(required=True, why=f"'{path}' is encrypted")
    assert key is not None
    return unseal(blob, key, path.name, path)


def artifact_source(path: Path) -> str | bytes:
    """What a runtime that takes a path *or* bytes should open: the plaintext bytes of a sealed file,
    else the path itself (so a plain ONNX file keeps its external data beside it)."""
    path = Path(path)
    return artifact_bytes(path) if is_sealed(path) else str(path)


__all__ = ["UNSEALABLE", "artifact_bytes", "artifact_source", "encrypting", "refuse_unsealable", "unsealable",
           "write_artifact"]
