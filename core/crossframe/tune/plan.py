"""A study's plan: everything a worker needs to run its trials, saved as ``study.json`` in the
study directory so that worker processes and ``--resume`` read the very same thing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossframe.config.loading import atomic_write_text
from crossframe.errors import UsageError
from crossframe.tune.schema import TuneConfig, parse_tune

PLAN_FILE = "study.json"
TRIALS_DIR = "trials"


@dataclass
class Plan:
    """A study: its directory and name, the storage URL, the base run config and the ``tune`` section.

    ``base`` is the raw run config (command-line overrides applied, ``tune`` removed); each trial
    sets its sampled values on a copy of it. ``default_storage`` says the storage is the study's own
    SQLite file (so a resume owns every trial in it).
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
        return {"name": self.name, "storage": self.storage, "base": self.base,
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
        data = json.loads(path.read_text())
        return cls(directory, data["name"], data["storage"], data["base"], parse_tune(data["tune"]),
                   int(data["seed"]), data.get("total_steps"), bool(data.get("default_storage", True)))
