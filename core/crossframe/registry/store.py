"""The embedded model registry: SQLite (stdlib) plus one directory of files per version.

Layout::

    <registry>/registry.db                      # models, versions, artifacts, aliases
    <registry>/artifacts/<name>/<version>/      # a copy of the run's files, laid out as a run directory

Every write is one transaction opened with ``BEGIN IMMEDIATE``, so two processes registering at
once serialise on SQLite's write lock: each gets its own version number, none is lost or given
twice. A version's files are copied into a staging directory first and renamed into place inside
the transaction, so a version row always has its files.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossframe.errors import CrossframeError, UsageError, did_you_mean
from crossframe.log import get_logger

log = get_logger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: aliases that also set a version's stage (a stage moving on archives the version that held it)
STAGES = ("staging", "production", "archived")
DB_FILE = "registry.db"
ARTIFACTS = "artifacts"

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL REFERENCES models(name) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    created REAL NOT NULL,
    run_dir TEXT NOT NULL,
    stage TEXT NOT NULL DEFAULT 'none',
    lineage TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS artifacts (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (name, version, path),
    FOREIGN KEY (name, version) REFERENCES versions(name, version) ON DELETE CASCADE
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions(name, version) ON DELETE CASCADE
);
"""


class RegistryError(CrossframeError):
    """A model, version or alias is unknown, or a registry file does not match its record."""

    exit_code = 2


@dataclass
class ModelVersion:
    """One registered version: its number, stage, aliases, lineage and files (relative path -> sha256)."""

    name: str
    version: int
    created: float
    run_dir: str
    stage: str
    path: Path
    aliases: list[str] = field(default_factory=list)
    lineage: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    #: where a remote registry keeps the files (e.g. an MLflow artifact URI); empty for SQLite
    source: str = ""

    @property
    def uri(self) -> str:
        """``models:/<name>/<version>``."""
        return f"models:/{self.name}/{self.version}"

    def to_json(self) -> dict[str, Any]:
        """A plain dict (for ``--json``)."""
        return {"name": self.name, "version": self.version, "created": self.created, "run_dir": self.run_dir,
                "stage": self.stage, "path": str(self.path), "aliases": self.aliases, "uri": self.uri,
                "lineage": self.lineage, "artifacts": self.artifacts,
                **({"source": self.source} if self.source else {})}


def check_name(value: str, what: str) -> str:
    """``value`` if it is a valid model name or alias, else a one-line UsageError."""
    if not NAME_PATTERN.match(value or "") or (value.isdigit() and what == "alias"):
        allowed = "letters, digits, . _ - (starting with a letter or digit)"
        raise UsageError(f"{what}: '{value}' is not allowed ({allowed}{'; not all digits' * (what == 'alias')})")
    return value


def registration(run_dir: str | Path, name: str, aliases: tuple[str, ...] | list[str],
                 include_optimizer: bool = False) -> tuple[Path, list[Any], dict[str, Any]]:
    """What every registry backend checks and reads before it registers ``run_dir`` as ``name``: the name
    and aliases (one line each when bad), the run's artefacts (checked against their manifests) and its
    lineage. Returns ``(run_dir, artefacts, lineage)``."""
    from crossframe.registry.lineage import collect_artifacts, lineage

    check_name(name, "--name")
    for alias in aliases:
        check_name(alias, "alias")
    run_dir = Path(run_dir)
    return run_dir, collect_artifacts(run_dir, include_optimizer), lineage(run_dir)


class Registry:
    """A model registry in ``root`` (created on first use)."""

    def __init__(self, root: str | Path, timeout: float = 60.0) -> None:
        self.root = Path(root)
        self.timeout = timeout
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / ARTIFACTS).mkdir(exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.root / DB_FILE, timeout=self.timeout, isolation_level=None)
        try:
            db.execute("PRAGMA foreign_keys = ON")
            db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start (``BEGIN IMMEDIATE``)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def version_dir(self, name: str, version: int) -> Path:
        """Where the files of ``name`` version ``version`` live."""
        return self.root / ARTIFACTS / name / str(version)

    # ------------------------------------------------------------------ writes

    def register(self, run_dir: str | Path, name: str, aliases: tuple[str, ...] | list[str] = (),
                 description: str = "", include_optimizer: bool = False) -> ModelVersion:
        """Register ``run_dir``'s latest checkpoint (and its exports) as the next version of ``name``.

        The run's files are checked against their sha256 manifests, copied and hashed before the
        transaction starts; inside it the next version number is taken, the rows are written and the
        staged copy is renamed into place.
        """
        run_dir, files, info = registration(run_dir, name, aliases, include_optimizer)
        staging = Path(tempfile.mkdtemp(dir=self.root / ARTIFACTS, prefix=".staging-"))
        try:
            digests = stage_files(files, staging)
            info["artifacts"] = digests
            now = time.time()
            with self._write() as db:
                row = db.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?", (name,))
                version = int(row.fetchone()[0])
                db.execute("INSERT OR IGNORE INTO models (name, created, description) VALUES (?, ?, ?)",
                           (name, now, description))
                if description:
                    db.execute("UPDATE models SET description = ? WHERE name = ?", (description, name))
                db.execute("INSERT INTO versions (name, version, created, run_dir, lineage) VALUES (?, ?, ?, ?, ?)",
                           (name, version, now, info["run_dir"], json.dumps(info, default=str)))
                db.executemany("INSERT INTO artifacts (name, version, path, sha256, size) VALUES (?, ?, ?, ?, ?)",
                               [(name, version, rel, digest, (staging / rel).stat().st_size)
                                for rel, digest in digests.items()])
                for alias in aliases:
                    self._set_alias(db, name, alias, version)
                target = self.version_dir(name, version)
                if target.exists():  # left by a transaction that rolled back after its rename
                    shutil.rmtree(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("registered %s version %d from %s (%d files)", name, version, run_dir, len(digests))
        return self.get(name, version)

    def _set_alias(self, db: sqlite3.Connection, name: str, alias: str, version: int) -> None:
        previous = db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        db.execute("INSERT INTO aliases (name, alias, version) VALUES (?, ?, ?) "
                   "ON CONFLICT (name, alias) DO UPDATE SET version = excluded.version", (name, alias, version))
        if alias in STAGES:
            if previous and previous[0] != version:
                db.execute("UPDATE versions SET stage = 'archived' WHERE name = ? AND version = ? AND stage = ?",
                           (name, previous[0], alias))
            db.execute("UPDATE versions SET stage = ? WHERE name = ? AND version = ?", (alias, name, version))

    def promote(self, ref: str, alias: str) -> ModelVersion:
        """Point ``alias`` of the model at the version ``ref`` names (``name@3``, ``name@staging``);
        a stage alias (``staging``, ``production``, ``archived``) also sets the version's stage."""
        check_name(alias, "alias")
        name, selector = split_ref(ref)
        with self._write() as db:
            version = self._resolve(db, name, selector)
            self._set_alias(db, name, alias, version)
        log.info("%s@%s -> version %d", name, alias, version)
        return self.get(name, version)

    def remove(self, ref: str) -> list[int]:
        """Delete a version (``name@3``, ``name@alias``) or, for a bare ``name``, the whole model;
        returns the version numbers removed (their files go too)."""
        name, selector = split_ref(ref)
        with self._write() as db:
            if selector is None:
                self._require_model(db, name)
                gone = [r[0] for r in db.execute("SELECT version FROM versions WHERE name = ?", (name,))]
                db.execute("DELETE FROM models WHERE name = ?", (name,))
            else:
                gone = [self._resolve(db, name, selector)]
                db.execute("DELETE FROM versions WHERE name = ? AND version = ?", (name, gone[0]))
        for version in gone:
            shutil.rmtree(self.version_dir(name, version), ignore_errors=True)
        if selector is None:
            shutil.rmtree(self.root / ARTIFACTS / name, ignore_errors=True)
        log.info("removed %s version(s) %s", name, gone)
        return gone

    # ------------------------------------------------------------------ reads

    def _require_model(self, db: sqlite3.Connection, name: str) -> None:
        if db.execute("SELECT 1 FROM models WHERE name = ?", (name,)).fetchone() is None:
            names = [r[0] for r in db.execute("SELECT name FROM models")]
            raise RegistryError(f"model '{name}' is not registered in {self.root}{did_you_mean(name, names)}")

    def _resolve(self, db: sqlite3.Connection, name: str, selector: str | None) -> int:
        """The version number ``selector`` names: a number, an alias, ``latest`` or None (latest)."""
        self._require_model(db, name)
        if selector is None or selector == "latest":
            row = db.execute("SELECT MAX(version) FROM versions WHERE name = ?", (name,)).fetchone()
            if row[0] is None:
                raise RegistryError(f"model '{name}' has no versions")
            return int(row[0])
        if selector.isdigit():
            row = db.execute("SELECT version FROM versions WHERE name = ? AND version = ?",
                             (name, int(selector))).fetchone()
            if row is None:
                raise RegistryError(f"model '{name}' has no version {selector}")
            return int(row[0])
        row = db.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, selector)).fetchone()
        if row is None:
            known = [r[0] for r in db.execute("SELECT alias FROM aliases WHERE name = ?", (name,))]
            raise RegistryError(f"model '{name}' has no alias '{selector}' "
                                f"(aliases: {', '.join(sorted(known)) or 'none'}){did_you_mean(selector, known)}")
        return int(row[0])

    def get(self, name: str, selector: str | int | None = None) -> ModelVersion:
        """The version ``selector`` names (a number, an alias, ``latest``; None: the latest)."""
        with self._connect() as db:
            version = self._resolve(db, name, None if selector is None else str(selector))
            created, run_dir, stage, lineage = db.execute(
                "SELECT created, run_dir, stage, lineage FROM versions WHERE name = ? AND version = ?",
                (name, version)).fetchone()
            aliases = [r[0] for r in db.execute(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias", (name, version))]
            artifacts = dict(db.execute(
                "SELECT path, sha256 FROM artifacts WHERE name = ? AND version = ? ORDER BY path", (name, version)))
        return ModelVersion(name, version, created, run_dir, stage, self.version_dir(name, version), aliases,
                            json.loads(lineage), artifacts)

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        with self._connect() as db:
            self._require_model(db, name)
            numbers = [r[0] for r in db.execute("SELECT version FROM versions WHERE name = ? ORDER BY version",
                                                (name,))]
        return [self.get(name, n) for n in numbers]

    def models(self) -> list[dict[str, Any]]:
        """Each model: name, description, version count, latest version, aliases (``alias -> version``)."""
        with self._connect() as db:
            rows = db.execute("SELECT m.name, m.description, m.created, COUNT(v.version), MAX(v.version) "
                              "FROM models m LEFT JOIN versions v ON v.name = m.name GROUP BY m.name "
                              "ORDER BY m.name").fetchall()
            aliases: dict[str, dict[str, int]] = {}
            for name, alias, version in db.execute("SELECT name, alias, version FROM aliases ORDER BY alias"):
                aliases.setdefault(name, {})[alias] = version
        return [{"name": n, "description": d, "created": c, "versions": count, "latest": latest,
                 "aliases": aliases.get(n, {})} for n, d, c, count, latest in rows]

    def checkout(self, version: ModelVersion) -> Path:
        """``version``'s own directory, after :meth:`verify` (the files already live here)."""
        self.verify(version)
        return version.path

    def verify(self, version: ModelVersion) -> None:
        """Check every file of ``version`` against the sha256 recorded at registration (one line naming a
        file that is missing or differs)."""
        from crossframe.integrity import sha256_file

        for rel, digest in version.artifacts.items():
            path = version.path / rel
            if not path.is_file():
                raise RegistryError(f"{path}: registered file of {version.uri} is missing")
            if sha256_file(path) != digest:
                raise RegistryError(f"{path}: sha256 does not match the registry record of {version.uri}")


def open_sqlite(location: str) -> Registry:
    """The factory behind ``sqlite:DIR``: the registry in ``DIR`` (empty: the default directory)."""
    from crossframe.registry.location import registry_dir

    return Registry(Path(location).expanduser() if location else registry_dir())


def split_ref(ref: str) -> tuple[str, str | None]:
    """``name@3`` -> ``("name", "3")``; ``name@production`` -> ``("name", "production")``;
    ``name`` -> ``("name", None)``."""
    name, _, selector = ref.partition("@")
    check_name(name, "model")
    if "@" in ref and not selector:
        raise UsageError(f"'{ref}': expected NAME, NAME@VERSION or NAME@ALIAS")
    return name, selector or None


def stage_files(files: list[Any], staging: Path) -> dict[str, str]:
    """Copy each artifact into ``staging`` at its relative path; returns ``relpath -> sha256`` of the copies."""
    from crossframe.integrity import sha256_file

    digests: dict[str, str] = {}
    for artifact in files:
        target = staging / artifact.relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        if artifact.content is not None:
            target.write_bytes(artifact.content)
        else:
            shutil.copyfile(artifact.source, target)
        digests[artifact.relpath] = sha256_file(target)
    return digests
