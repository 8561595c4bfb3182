"""The ``mlflow`` logger: one crossframe run is one MLflow run.

- the constructor opens the tracking store (by default a SQLite file in the run directory),
  gets or creates the experiment and starts the run; a resumed crossframe run
  (``crossframe run --resume``) continues the MLflow run recorded in ``mlflow_run.json``;
- ``log_config`` logs the flattened resolved config as params, and ``backend`` / ``model`` tags;
- ``log_metrics`` logs the scalar metrics of one step in one ``log_batch`` call (loggers are
  only called on log steps and after evaluations, never per training step); arrays (a
  confusion matrix) are kept and written as ``array_metrics.json`` at the end;
- ``close`` uploads the artifacts and ends the run: FINISHED, or FAILED / KILLED when the
  ``on_run_end`` hook has said the run failed or was interrupted.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import posixpath
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from crossframe.errors import CapabilityError, ConfigError, RunError

#: written in the run directory: which MLflow run this crossframe run is (for --resume)
RUN_FILE = "mlflow_run.json"
#: crossframe's end status -> MLflow's; "completed" and "stopped" are FINISHED
STATUS = {"failed": "FAILED", "interrupted": "KILLED"}
#: the artifact holding metrics that are not scalars, by name: [{"step": N, "value": ...}, ...]
ARRAYS_FILE = "array_metrics.json"

#: MLflow's limits, used if ``mlflow.utils.validation`` does not say (older or newer MLflow)
_DEFAULT_LIMITS = {
    "MAX_PARAM_VAL_LENGTH": 500,
    "MAX_TAG_VAL_LENGTH": 5000,
    "MAX_ENTITY_KEY_LENGTH": 250,
    "MAX_PARAMS_TAGS_PER_BATCH": 100,
    "MAX_METRICS_PER_BATCH": 1000,
}

_BAD_NAME_CHARS = re.compile(r"[^/\w.\- :]")

#: loggers not closed yet, so the ``on_run_end`` hook can reach those of its run
_open: set[MlflowLogger] = set()


# --------------------------------------------------------------------------- pure helpers


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"train": {"steps": 30}}`` -> ``{"train.steps": "30"}``.

    Nested mappings become dotted keys; every other value becomes its JSON text (lists stay
    whole: ``model.hidden`` -> ``[128, 64]``), strings stay as they are.
    """
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut."""
    if len(text) <= limit:
        return text
    return text[: limit - 3] + "..." if limit >= 3 else text[:limit]


def safe_name(name: str, limit: int = 250) -> str:
    """A metric or param name MLflow accepts: disallowed characters become ``_``, ``/`` is kept."""
    cleaned = _BAD_NAME_CHARS.sub("_", str(name))
    cleaned = posixpath.normpath(cleaned).lstrip("/") if cleaned else "_"
    if cleaned.startswith("."):  # '.', '..', '../x' would resolve to another name
        cleaned = "_" + cleaned
    return cleaned[:limit]


def scalar(value: Any) -> float | None:
    """``value`` as a float if it is a number (Python, NumPy or 0-d array), else ``None``."""
    if isinstance(value, (str, bytes)):
        return None
    shape = getattr(value, "shape", None)
    if shape is not None and tuple(shape) != ():
        return None
    if isinstance(value, (list, tuple, dict, set)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data (NumPy arrays and scalars to lists and numbers)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def default_tracking_uri(run_dir: Path) -> str:
    """A SQLite store inside the run directory (an absolute path: ``sqlite:////abs/mlflow.db``)."""
    return f"sqlite:///{(Path(run_dir).resolve() / 'mlflow.db').as_posix()}"


def note_run_status(run_dir: Any, status: str) -> None:
    """Record how the run in ``run_dir`` ended, for its logger's ``close()`` (called by the hook)."""
    where = Path(run_dir).resolve()
    for logger in list(_open):
        if logger.run_dir == where:
            logger.status = STATUS.get(status, "FINISHED")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


@contextlib.contextmanager
def _quiet_store_setup() -> Iterator[None]:
    """MLflow announces a new SQLite store's table creation at INFO; a ``--quiet`` run stays quiet."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# --------------------------------------------------------------------------- the logger


class MlflowLogger:
    """A crossframe logger writing to one MLflow run (see the module docstring)."""

    def __init__(self, params: Any, run_dir: Path) -> None:
        try:
            from mlflow.tracking import MlflowClient
            from mlflow.utils import validation
        except ImportError as exc:
            raise CapabilityError(f"loggers: 'mlflow' needs MLflow, which cannot be imported ({exc}); "
                                  "pip install crossframe-mlflow") from None
        self.limits = {k: getattr(validation, k, v) for k, v in _DEFAULT_LIMITS.items()}
        self.params = params
        self.run_dir = Path(run_dir).resolve()
        env_uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        local = not params.tracking_uri and not env_uri
        self.tracking_uri: str = params.tracking_uri or env_uri or default_tracking_uri(self.run_dir)
        self.status = "FINISHED"
        self.resumed = False
        self._arrays: dict[str, list[dict[str, Any]]] = {}
        self._pending: list[Any] = []  # futures of asynchronous logging (MLFLOW_ENABLE_ASYNC_LOGGING)
        self._names: dict[str, str] = {}
        self._closed = False
        try:
            with _quiet_store_setup():
                self.client = MlflowClient(tracking_uri=self.tracking_uri)
                artifacts = (self.run_dir / "mlartifacts").as_uri() if local else None
                experiment_id = self._experiment(params.experiment, artifacts)
                self.run_id = self._start_run(experiment_id)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"loggers: mlflow: cannot start a run in '{self.tracking_uri}': "
                              f"{_first_line(exc)}") from exc
        _open.add(self)
        atexit.register(self._abandoned)

    # ------------------------------------------------------------------ setup

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                return self.client.create_experiment(name, artifact_location=artifact_location)
            except MlflowException:  # another run created it in the meantime
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise ConfigError(f"loggers: mlflow: experiment '{name}' is deleted in '{self.tracking_uri}'; "
                              "restore it (mlflow experiments restore) or set another 'experiment'")
        return experiment.experiment_id

    def _start_run(self, experiment_id: str) -> str:
        """Continue the MLflow run of a resumed crossframe run, or create one."""
        from crossframe.config.loading import atomic_write_text

        saved = self._saved_run()
        if saved.get("tracking_uri") == self.tracking_uri and saved.get("run_id"):
            try:
                run = self.client.get_run(saved["run_id"])
            except Exception:
                run = None
            if run is not None and run.info.lifecycle_stage == "active" and run.info.experiment_id == experiment_id:
                self.client.update_run(run.info.run_id, status="RUNNING")
                self.resumed = True
                return run.info.run_id
        tags = {**_context_tags(), "crossframe.run_dir": str(self.run_dir),
                **{str(k): str(v) for k, v in self.params.tags.items()}}
        tag_limit = self.limits["MAX_TAG_VAL_LENGTH"]
        run = self.client.create_run(experiment_id, run_name=self.params.run_name or self.run_dir.name,
                                     tags={k: truncate(v, tag_limit) for k, v in tags.items()})
        record = {"tracking_uri": self.tracking_uri, "experiment_id": experiment_id, "run_id": run.info.run_id}
        atomic_write_text(self.run_dir / RUN_FILE, json.dumps(record, indent=2) + "\n")
        return run.info.run_id

    def _saved_run(self) -> dict[str, Any]:
        try:
            saved = json.loads((self.run_dir / RUN_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return saved if isinstance(saved, dict) else {}

    # ------------------------------------------------------------------ the logger interface

    def log_config(self, config: dict) -> None:
        """Log the flattened config as params (values cut to MLflow's limit) and a few tags."""
        from mlflow.entities import Param, RunTag

        key_limit, value_limit = self.limits["MAX_ENTITY_KEY_LENGTH"], self.limits["MAX_PARAM_VAL_LENGTH"]
        params = {safe_name(k, key_limit): truncate(v, value_limit) for k, v in flatten(config).items()}
        model = config.get("model")
        tags = {
            "backend": str(config.get("backend", "")),
            "model": str(model.get("name", "")) if isinstance(model, Mapping) else str(model or ""),
            "crossframe.version": _crossframe_version(),
        }
        if self.resumed:  # MLflow params are write-once: log the new keys, note the changed ones as tags
            existing = self.client.get_run(self.run_id).data.params
            tags.update({f"crossframe.resume.{k}": v for k, v in params.items() if k in existing and existing[k] != v})
            params = {k: v for k, v in params.items() if k not in existing}
        tag_limit = self.limits["MAX_TAG_VAL_LENGTH"]
        self._log(params=[Param(k, v) for k, v in params.items()],
                  tags=[RunTag(safe_name(k, key_limit), truncate(v, tag_limit)) for k, v in tags.items()])

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> None:
        """Log this step's scalar metrics in one batch; keep the others for ``array_metrics.json``."""
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        batch = []
        for name, value in metrics.items():
            number = scalar(value)
            if number is None:
                self._arrays.setdefault(str(name), []).append({"step": int(step), "value": plain(value)})
            else:
                batch.append(Metric(self._metric_name(name), number, timestamp, int(step)))
        if batch:
            try:
                self._log(metrics=batch)
            except Exception as exc:
                raise RunError(f"loggers: mlflow: logging metrics at step {step} to '{self.tracking_uri}' "
                               f"failed: {_first_line(exc)}") from exc

    def close(self) -> None:
        """Upload the artifacts and end the MLflow run (FINISHED, FAILED or KILLED).

        ``close`` runs in the core's ``finally``: raising here would hide the run's own error and
        leave the loggers after this one open, so problems are reported on stderr instead.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._abandoned)
        _open.discard(self)
        problems = []
        try:
            for operation in self._pending:
                operation.wait()
        except Exception as exc:
            problems.append(f"asynchronous logging failed: {_first_line(exc)}")
        if self.params.log_artifacts:
            try:
                self._upload_artifacts()
            except Exception as exc:
                problems.append(f"uploading artifacts failed: {_first_line(exc)}")
        try:
            self.client.set_terminated(self.run_id, status=self.status)
        except Exception as exc:
            problems.append(f"ending the run failed: {_first_line(exc)}")
        for problem in problems:
            print(f"crossframe-mlflow: run {self.run_id} in '{self.tracking_uri}': {problem}", file=sys.stderr)

    # ------------------------------------------------------------------ internals

    def _metric_name(self, name: str) -> str:
        if name not in self._names:
            self._names[name] = safe_name(name, self.limits["MAX_ENTITY_KEY_LENGTH"])
        return self._names[name]

    def _log(self, metrics: Sequence[Any] = (), params: Sequence[Any] = (), tags: Sequence[Any] = ()) -> None:
        """``log_batch`` within MLflow's per-request limits (one call for a normal log step)."""
        per_metrics, per_entities = self.limits["MAX_METRICS_PER_BATCH"], self.limits["MAX_PARAMS_TAGS_PER_BATCH"]
        calls = [{"metrics": metrics[i:i + per_metrics]} for i in range(0, len(metrics), per_metrics)]
        calls += [{"params": params[i:i + per_entities]} for i in range(0, len(params), per_entities)]
        calls += [{"tags": tags[i:i + per_entities]} for i in range(0, len(tags), per_entities)]
        for call in calls:
            operation = self.client.log_batch(self.run_id, **call)
            if operation is not None:  # MLFLOW_ENABLE_ASYNC_LOGGING=true: a future to wait for at close
                self._pending.append(operation)

    def _upload_artifacts(self) -> None:
        from crossframe.checkpoint import STATE_FILE, find_checkpoint
        from crossframe.errors import CheckpointError

        for name in ("config.yaml", "metrics.jsonl"):
            if (self.run_dir / name).is_file():
                self.client.log_artifact(self.run_id, str(self.run_dir / name))
        try:
            checkpoint = find_checkpoint(self.run_dir)
        except CheckpointError:
            checkpoint = None
        if checkpoint is not None and (checkpoint / STATE_FILE).is_file():
            self.client.log_artifact(self.run_id, str(checkpoint / STATE_FILE),
                                     artifact_path=f"checkpoints/{checkpoint.name}")
        if self._arrays:
            self.client.log_text(self.run_id, json.dumps(self._arrays), ARRAYS_FILE)

    def _abandoned(self) -> None:
        """At exit, a run whose logger was never closed (the run broke before training) is FAILED."""
        if not self._closed:
            if self.status == "FINISHED":
                self.status = "FAILED"
            self.close()


def _context_tags() -> dict[str, str]:
    """What MLflow's fluent API records about the context (user, source, git commit); {} if unknown."""
    try:
        from mlflow.tracking.context.registry import resolve_tags

        return {k: str(v) for k, v in resolve_tags().items()}
    except Exception:
        return {}


def _crossframe_version() -> str:
    from crossframe import __version__

    return __version__
