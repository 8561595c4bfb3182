"""API keys: a JSON file of salted SHA-256 hashes, and a per-key rate limit.

The file (``crossframe serve keys add FILE NAME`` writes it) never holds a key itself::

    {"version": 1, "keys": [{"name": "alice", "salt": "<hex>", "sha256": "<hex>",
                             "revoked": false, "rate_per_minute": 60}]}

A key is ``cf-`` plus 32 random URL-safe characters; it is shown once when added. The server
re-reads the file when it changes, so a revoked key stops working without a restart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.config.loading import atomic_write_text
from crossframe.errors import ConfigError, UsageError

KEY_PREFIX = "cf-"


def hash_key(key: str, salt: str) -> str:
    """The hex SHA-256 of ``salt`` then ``key``."""
    return hashlib.sha256(bytes.fromhex(salt) + key.encode()).hexdigest()


def read_key_file(path: Path) -> list[dict[str, Any]]:
    """The key records of ``path`` (none when the file does not exist yet)."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        records = data["keys"]
        for r in records:
            if not all(isinstance(r.get(f), str) for f in ("name", "salt", "sha256")):
                raise ValueError("each key needs string 'name', 'salt' and 'sha256'")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"--api-keys: '{path}' is not a crossframe key file: {exc}") from None
    return list(records)


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"version": 1, "keys": records}, indent=2) + "\n")
    path.chmod(0o600)


def add_key(path: Path, name: str, rate_per_minute: int | None = None) -> str:
    """Add a key called ``name`` to ``path`` and return it (the only time it is seen)."""
    records = read_key_file(path)
    if any(r["name"] == name and not r.get("revoked") for r in records):
        raise UsageError(f"keys add: '{name}' already has a key in '{path}'; revoke it first")
    if rate_per_minute is not None and rate_per_minute < 1:
        raise UsageError(f"--rate: must be >= 1 requests per minute (got {rate_per_minute})")
    key = KEY_PREFIX + secrets.token_urlsafe(24)
    salt = secrets.token_hex(16)
    records.append({"name": name, "salt": salt, "sha256": hash_key(key, salt), "revoked": False,
                    "rate_per_minute": rate_per_minute, "created": int(time.time())})
    _write(path, records)
    return key


def revoke_key(path: Path, name: str) -> int:
    """Mark every key called ``name`` revoked; returns how many were."""
    records = read_key_file(path)
    hits = [r for r in records if r["name"] == name and not r.get("revoked")]
    if not hits:
        raise UsageError(f"keys revoke: no active key named '{name}' in '{path}'")
    for r in hits:
        r["revoked"] = True
    _write(path, records)
    return len(hits)


@dataclass
class Caller:
    """Who a valid key belongs to."""

    name: str
    rate_per_minute: int | None


class KeyStore:
    """Checks bearer keys against the file, re-reading it whenever it changes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"--api-keys: '{self.path}' does not exist; create it with "
                             f"`crossframe serve keys add {self.path} NAME`")
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._records: list[dict[str, Any]] = []
        self._reload()

    def _reload(self) -> None:
        stat = self.path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            self._records = read_key_file(self.path)
            self._stamp = stamp

    def check(self, key: str | None) -> Caller | None:
        """The caller ``key`` belongs to, or ``None`` for a missing, unknown or revoked key."""
        if not key:
            return None
        with self._lock:
            with contextlib.suppress(OSError, ConfigError):  # keep the last good keys meanwhile
                self._reload()
            records = self._records
        for r in records:
            if hmac.compare_digest(hash_key(key, r["salt"]), r["sha256"]):
                return None if r.get("revoked") else Caller(r["name"], r.get("rate_per_minute"))
        return None


class RateLimiter:
    """A token bucket per caller: ``rate_per_minute`` requests, refilled continuously."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, caller: Caller, now: float | None = None) -> float:
        """0 when the request may go ahead, else the seconds until it may."""
        if caller.rate_per_minute is None:
            return 0.0
        now = time.monotonic() if now is None else now
        capacity = float(caller.rate_per_minute)
        with self._lock:
            tokens, last = self._buckets.get(caller.name, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * capacity / 60.0)
            if tokens >= 1.0:
                self._buckets[caller.name] = (tokens - 1.0, now)
                return 0.0
            self._buckets[caller.name] = (tokens, now)
            return (1.0 - tokens) * 60.0 / capacity
