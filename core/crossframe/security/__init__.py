"""Protection at rest: AES-256-GCM encryption of weights and ed25519 signatures over artefact manifests.

Ground floor: :mod:`crossframe.checkpoint` and :mod:`crossframe.integrity` call in here; keys come from
files named by environment variables (``CROSSFRAME_KEY_FILE``, ``CROSSFRAME_SIGNING_KEY_FILE``,
``CROSSFRAME_VERIFY_KEY_FILE``) or the CLI's ``--key-file``, and are never written into a run.
See docs/security.md for the threat model.
"""

from crossframe.security.errors import SecurityError
from crossframe.security.protection import Protection, active, protecting

__all__ = ["Protection", "SecurityError", "active", "protecting"]
