"""A study's plan: everything a worker needs to run its trials, saved as ``study.json`` in the
study directory so that worker processes and ``--resume`` read the very same thing."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.config.loading import atomic_write_text
from crossframe.errors import UsageError
from crossframe.tune.schema import TuneConfig, parse_tune

PLAN_FILE = "study.json"
TRIALS_DIR = "trials"
#: how a worker process receives a storage URL that may hold a password (never written to disk)
STORAGE_ENV = "CROSSFRAME_TUNE_STORAGE"


def shown_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for files and messages)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy can parse: nothing to hide in it either
        return url


@dataclass
class Plan:
    """A study: its directory and name, the storage URL, the base run config and the ``tune`` section.

    ``base`` is the raw run config (command-line overrides applied, ``tune`` removed); each trial
    sets its sampled values on a copy of it. ``default_storage`` says the storage is the study's own
    SQLite file (so a resume owns every trial in it; it moves with the directory). Another URL is
    saved without its password; worker processes receive it whole through ``CROSSFRAME_TUNE_STORAGE``.
    """

    study_dir: Path
    name: str
    storage: str
    base: dict[str, Any]
    tune: TuneConfig
    seed: int
    total_steps: int | None
    default_storage: bool = True

    @property
    def trials_dir(self) -> Path:
        """Where the trials' run directories go: ``<study_dir>/trials/NNNN``."""
        return self.study_dir / TRIALS_DIR

    def to_json(self) -> dict[str, Any]:
        """The plan as plain data."""
        return {"name": self.name, "storage": None if self.default_storage else shown_url(self.storage),
                "base": self.base,
                "tune": self.tune.model_dump(mode="json"), "seed": self.seed, "total_steps": self.total_steps,
                "default_storage": self.default_storage}

    def save(self) -> Path:
        """Write ``study.json`` atomically."""
        path = self.study_dir / PLAN_FILE
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, study_dir: str | Path) -> Plan:
        """Read the plan of the study in ``study_dir``."""
        directory = Path(study_dir)
        path = directory / PLAN_FILE
        if not path.is_file():
            raise UsageError(f"--resume: '{directory}' is not a study directory (no {PLAN_FILE})")
        from crossframe.tune.study import default_storage

        data = json.loads(path.read_text())
        default = bool(data.get("default_storage", True))
        storage = default_storage(directory) if default else os.environ.get(STORAGE_ENV) or data["storage"]
        return cls(directory, data["name"], storage, data["base"], parse_tune(data["tune"]),
                   int(data["seed"]), data.get("total_steps"), default)
