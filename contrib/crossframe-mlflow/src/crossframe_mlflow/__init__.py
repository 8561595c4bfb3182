"""crossframe-mlflow: log crossframe runs to MLflow, as the logger ``mlflow``, and register model
versions in MLflow's Model Registry, as the registry backend ``mlflow``.

```yaml
loggers:
  - name: mlflow
    experiment: demo
registry: mlflow:http://127.0.0.1:5000     # or CROSSFRAME_REGISTRY=mlflow:URI, or --registry
```

Importing this module is cheap (it is imported by ``crossframe --help`` and ``crossframe
plugins``): MLflow is imported only when a run actually uses the logger.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from crossframe import hookimpl

__version__ = "0.1.0"


class MlflowParams(BaseModel):
    """``loggers: [{name: mlflow, ...}]``."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(
        None, description="where runs are recorded; default: $MLFLOW_TRACKING_URI if set, "
                          "else sqlite:///<run_dir>/mlflow.db")
    experiment: str = Field("crossframe", min_length=1, description="MLflow experiment name")
    run_name: str | None = Field(None, description="MLflow run name; default: the run directory's name")
    log_artifacts: bool = Field(True, description="upload config.yaml, metrics.jsonl, the last "
                                                  "checkpoint's state.json and array metrics at the end")
    tags: dict[str, str | int | float | bool] = Field(default_factory=dict, description="extra run tags")


def make_logger(params: MlflowParams, run_dir: Path) -> Any:
    """The logger factory: imports MLflow only now."""
    from crossframe_mlflow.logger import MlflowLogger

    return MlflowLogger(params, run_dir)


@hookimpl
def register_loggers(register: Any) -> None:
    """Register ``mlflow``."""
    register("mlflow", make_logger, schema=MlflowParams,
             description="MLflow tracking: params, metrics, artifacts")


def make_registry(location: str) -> Any:
    """The registry factory (``mlflow:TRACKING_URI``): imports MLflow only now."""
    from crossframe_mlflow.registry import open_registry

    return open_registry(location)


@hookimpl
def register_model_registries(register: Any) -> None:
    """Register ``mlflow``: MLflow's Model Registry at a tracking URI."""
    register("mlflow", make_registry, description="MLflow Model Registry: versions, lineage tags, aliases")


@hookimpl
def on_run_end(run: Any, status: str) -> None:
    """Tell this run's open MLflow logger how the run ended (FAILED / KILLED runs).

    The loggers get no status of their own; on a failed or interrupted run the core calls this
    hook before it closes the loggers, so ``close()`` can end the MLflow run accordingly.
    """
    logger_module = sys.modules.get("crossframe_mlflow.logger")  # not imported: no logger is open
    if logger_module is not None:
        logger_module.note_run_status(run.run_dir, status)


__all__ = ["MlflowParams", "__version__", "make_logger", "make_registry"]
