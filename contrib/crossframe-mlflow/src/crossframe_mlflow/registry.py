"""The ``mlflow`` model registry backend: crossframe model versions in MLflow's Model Registry.

``crossframe models register RUN --name N --registry mlflow:http://host:5000`` (or
``CROSSFRAME_REGISTRY=mlflow:URI``) does what the SQLite registry does, against MLflow:

- one MLflow run per registered version, in the experiment ``crossframe-models``: the flattened
  resolved config as params, the evaluation metrics as metrics, the lineage as tags, and the
  version's files (``config.yaml``, the latest checkpoint, ``tokenizer/``, ``exports/``,
  reports) as artifacts under ``model/``, laid out as a run directory;
- a model version whose source is that ``model/`` folder, with tags: the lineage (backend, model,
  step, data fingerprint, framework versions, parent run, metrics), ``crossframe.lineage`` (all
  of it as JSON, without the config) and ``crossframe.artifacts`` (``{path: sha256}``);
- aliases through MLflow's alias API; ``staging``, ``production`` and ``archived`` also set the
  tag ``crossframe.stage`` (MLflow's own stages are deprecated), archiving the previous holder.

:meth:`MlflowRegistry.checkout` downloads a version's files into a local cache and checks each
against the sha256 recorded at registration, so ``crossframe serve models:/NAME@ALIAS`` serves
exactly the files that were registered.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crossframe.registry.location import user_data_dir
from crossframe.registry.store import (
    STAGES,
    ModelVersion,
    RegistryError,
    check_name,
    registration,
    split_ref,
    stage_files,
)
from crossframe_mlflow.logger import flatten, safe_name, truncate

#: the experiment that holds one run per registered version
EXPERIMENT = "crossframe-models"
#: the artifact folder of that run that holds the version's files (the version's source)
MODEL_DIR = "model"
#: where checked-out versions are cached: ``$CROSSFRAME_MLFLOW_CACHE``, else the user's data directory
CACHE_ENV = "CROSSFRAME_MLFLOW_CACHE"
TAG = "crossframe."
#: MLflow's limits (``mlflow.utils.validation``) for params, tags and batches
PARAM_VALUE_LIMIT, TAG_VALUE_LIMIT, BATCH = 6000, 8000, 100


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def open_registry(location: str) -> MlflowRegistry:
    """The factory behind ``mlflow:LOCATION``: ``LOCATION`` is a tracking URI (empty: MLflow's own
    default, ``$MLFLOW_TRACKING_URI``)."""
    return MlflowRegistry(location or None)


#: MLflow's client retries an unreachable server 7 times with exponential backoff (about 4 minutes);
#: a command line gives up after 3 (about 15 s) unless ``$MLFLOW_HTTP_REQUEST_MAX_RETRIES`` says otherwise
RETRIES_ENV, CLI_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3"


class MlflowRegistry:
    """A :class:`crossframe.registry.backends.ModelRegistry` on MLflow's Model Registry."""

    def __init__(self, tracking_uri: str | None = None) -> None:
        os.environ.setdefault(RETRIES_ENV, CLI_RETRIES)  # read by MLflow per request; the user's value wins
        import mlflow
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()  # $MLFLOW_TRACKING_URI or MLflow's default
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self.where = f"mlflow:{self.tracking_uri}"

    # ------------------------------------------------------------------ plumbing

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """MLflow's exceptions as one-line RegistryErrors naming the registry."""
        from mlflow.exceptions import MlflowException

        waiting = logging.getLogger("mlflow.store.model_registry.abstract_store")  # "Waiting up to 300 s..."
        level = waiting.level
        waiting.setLevel(logging.WARNING)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # MLflow prints run links: keep stdout for --json
                yield
        except MlflowException as exc:
            code = getattr(exc, "error_code", "")
            if "Max retries exceeded" in str(exc) or "Connection refused" in str(exc):
                raise RegistryError(f"{self.where}: {what}: cannot reach the tracking server") from None
            if code == "RESOURCE_DOES_NOT_EXIST":
                raise RegistryError(f"{what} is not in {self.where}: {_first_line(exc)}") from None
            raise RegistryError(f"{self.where}: {what}: {_first_line(exc)}") from None
        except OSError as exc:  # requests' ConnectionError is an OSError
            raise RegistryError(f"{self.where}: {what}: cannot reach the tracking server "
                                f"({type(exc).__name__})") from None
        finally:
            waiting.setLevel(level)

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(EXPERIMENT)
        except MlflowException:  # another process created it first
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def cache_dir(self, name: str, version: int) -> Path:
        """Where :meth:`checkout` puts ``name`` version ``version`` of this tracking server."""
        root = Path(os.environ.get(CACHE_ENV) or user_data_dir() / "mlflow-models").expanduser()
        server = hashlib.sha256(self.tracking_uri.encode()).hexdigest()[:16]
        return root / server / name / str(version)

    def _version(self, mv: Any, aliases: list[str] | None = None) -> ModelVersion:
        """crossframe's view of an MLflow ``ModelVersion`` (``aliases``: where the listing lacks them)."""
        tags = dict(mv.tags or {})
        try:
            info = json.loads(tags.get(f"{TAG}lineage", "{}"))
            artifacts = json.loads(tags.get(f"{TAG}artifacts", "{}"))
        except ValueError:
            raise RegistryError(f"{self.where}: model '{mv.name}' version {mv.version} has a "
                                "crossframe tag that is not JSON: it was not registered by crossframe") from None
        return ModelVersion(mv.name, int(mv.version), mv.creation_timestamp / 1000, info.get("run_dir", ""),
                            tags.get(f"{TAG}stage", "none"), self.cache_dir(mv.name, int(mv.version)),
                            sorted(mv.aliases or aliases or []), info, artifacts, source=mv.source)

    # ------------------------------------------------------------------ writes

    def register(self, run_dir: str | Path, name: str, aliases: tuple[str, ...] | list[str] = (),
                 description: str = "", include_optimizer: bool = False) -> ModelVersion:
        """Register ``run_dir``'s latest checkpoint (and its exports) as the next version of ``name``.

        The run's files are checked against their manifests and hashed in a staging directory, logged
        as the artifacts of a new MLflow run, and that run's ``model/`` folder becomes the version.
        """
        from mlflow.entities import Metric, Param

        run_dir, files, info = registration(run_dir, name, aliases, include_optimizer)
        config = info.pop("config")
        with tempfile.TemporaryDirectory(prefix="crossframe-mlflow-") as tmp:
            staging = Path(tmp) / MODEL_DIR
            digests = stage_files(files, staging)
            info["artifacts_count"] = len(digests)
            tags = _lineage_tags(info)
            with self._errors(f"registering '{name}'"):
                run = self.client.create_run(self._experiment_id(), run_name=run_dir.resolve().name,
                                             tags={**tags, "mlflow.note.content": description} if description
                                             else tags)
                run_id = run.info.run_id
                params = [Param(safe_name(k), truncate(v, PARAM_VALUE_LIMIT)) for k, v in flatten(config).items()]
                metrics = [Metric(safe_name(k), float(v), 0, int(info.get("step") or 0))
                           for k, v in info["metrics"].items()]
                for start in range(0, max(len(params), len(metrics)), BATCH):
                    self.client.log_batch(run_id, metrics=metrics[start:start + BATCH],
                                          params=params[start:start + BATCH])
                self.client.log_artifacts(run_id, str(staging), MODEL_DIR)
                self.client.log_dict(run_id, {**info, "config": config, "artifacts": digests},
                                     "crossframe/lineage.json")
                self.client.set_terminated(run_id)
                with contextlib.suppress(Exception):  # it exists already (or another process made it)
                    self.client.create_registered_model(name, description=description or None)
                if description:
                    self.client.update_registered_model(name, description=description)
                version_tags = {**tags, f"{TAG}lineage": json.dumps(info, default=str),
                                f"{TAG}artifacts": json.dumps(digests), f"{TAG}stage": "none"}
                mv = self.client.create_model_version(name, f"{run.info.artifact_uri}/{MODEL_DIR}", run_id,
                                                      tags=version_tags, description=description or None)
                self.client.set_tag(run_id, f"{TAG}registered_as", f"models:/{name}/{mv.version}")
        for alias in aliases:
            self.promote(f"{name}@{mv.version}", alias)
        return self.get(name, int(mv.version))

    def promote(self, ref: str, alias: str) -> ModelVersion:
        """Point ``alias`` at the version ``ref`` names (MLflow's alias API); a stage alias (``staging``,
        ``production``, ``archived``) also sets ``crossframe.stage``, archiving the version that held it."""
        check_name(alias, "alias")
        name, selector = split_ref(ref)
        target = self.get(name, selector)
        with self._errors(f"alias '{alias}' of model '{name}'"):
            previous = None
            if alias in STAGES:
                with contextlib.suppress(RegistryError):
                    previous = self.get(name, alias)
            self.client.set_registered_model_alias(name, alias, str(target.version))
            if alias in STAGES:
                if previous is not None and previous.version != target.version and previous.stage == alias:
                    self.client.set_model_version_tag(name, str(previous.version), f"{TAG}stage", "archived")
                self.client.set_model_version_tag(name, str(target.version), f"{TAG}stage", alias)
        return self.get(name, target.version)

    def remove(self, ref: str) -> list[int]:
        """Delete a version (``name@3``, ``name@alias``) or, for a bare ``name``, the registered model;
        returns the version numbers removed (the MLflow runs and their artifacts are kept)."""
        name, selector = split_ref(ref)
        if selector is None:
            gone = [v.version for v in self.versions(name)]
            with self._errors(f"model '{name}'"):
                self.client.delete_registered_model(name)
        else:
            gone = [self.get(name, selector).version]
            with self._errors(f"model '{name}' version {gone[0]}"):
                self.client.delete_model_version(name, str(gone[0]))
        for version in gone:
            shutil.rmtree(self.cache_dir(name, version), ignore_errors=True)
        return gone

    # ------------------------------------------------------------------ reads

    def get(self, name: str, selector: str | int | None = None) -> ModelVersion:
        """The version ``selector`` names (a number, an alias, ``latest``; None: the latest)."""
        check_name(name, "model")
        selector = None if selector is None else str(selector)
        if selector is None or selector == "latest":
            versions = self.versions(name)
            if not versions:
                raise RegistryError(f"model '{name}' has no versions in {self.where}")
            return versions[-1]
        if selector.isdigit():
            with self._errors(f"model '{name}' version {selector}"):
                return self._version(self.client.get_model_version(name, selector))
        with self._errors(f"alias '{selector}' of model '{name}'"):
            return self._version(self.client.get_model_version_by_alias(name, selector))

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        check_name(name, "model")
        with self._errors(f"model '{name}'"):
            model = self.client.get_registered_model(name)
            found = self.client.search_model_versions(f"name = '{name}'")
        held: dict[int, list[str]] = {}  # a search leaves the versions' aliases out; the model has them
        for alias, number in (model.aliases or {}).items():
            held.setdefault(int(number), []).append(alias)
        return sorted((self._version(mv, held.get(int(mv.version))) for mv in found), key=lambda v: v.version)

    def models(self) -> list[dict[str, Any]]:
        """Each registered model: name, description, created, version count, latest, aliases."""
        rows = []
        with self._errors("listing models"):
            for model in self.client.search_registered_models():
                numbers = [int(mv.version) for mv in self.client.search_model_versions(f"name = '{model.name}'")]
                aliases = {a: int(v) for a, v in sorted((model.aliases or {}).items())}
                rows.append({"name": model.name, "description": model.description or "",
                             "created": model.creation_timestamp / 1000, "versions": len(numbers),
                             "latest": max(numbers, default=None), "aliases": aliases})
        return sorted(rows, key=lambda r: r["name"])

    def verify(self, version: ModelVersion) -> None:
        """Check the checked-out files of ``version`` against the sha256 recorded at registration."""
        _verify(version.path, version)

    def checkout(self, version: ModelVersion) -> Path:
        """``version``'s files in the local cache, downloaded if needed (into a staging directory renamed
        into place), every file checked against the sha256 recorded at registration."""
        if not version.artifacts:
            raise RegistryError(f"{self.where}: {version.uri} records no files (crossframe.artifacts): "
                                "it was not registered by crossframe")
        target = version.path
        with contextlib.suppress(RegistryError):
            _verify(target, version)
            return target
        shutil.rmtree(target, ignore_errors=True)  # a partial or stale copy
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{version.version}-"))
        try:
            with self._errors(f"downloading {version.uri}"):
                mv = self.client.get_model_version(version.name, str(version.version))
                with _no_progress_bar():
                    got = Path(self.client.download_artifacts(mv.run_id, MODEL_DIR, str(staging)))
            _verify(got, version, where=version.source)
            with contextlib.suppress(OSError):  # a concurrent checkout got there first: keep it
                got.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _verify(target, version)
        return target


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """MLflow's download progress bar off (it reads ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` per call)."""
    name = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def _verify(root: Path, version: ModelVersion, where: str = "") -> None:
    """Every file ``version`` records, under ``root``, with its sha256 (one line naming the first that is
    missing or differs; ``where`` names the artifact location it came from)."""
    from crossframe.integrity import sha256_file

    for rel, digest in version.artifacts.items():
        path = root / rel
        shown = f"{where.rstrip('/')}/{rel}" if where else str(path)
        if not path.is_file():
            raise RegistryError(f"{shown}: registered file of {version.uri} is missing")
        if sha256_file(path) != digest:
            raise RegistryError(f"{shown}: sha256 does not match the registry record of {version.uri}")


def _lineage_tags(info: dict[str, Any]) -> dict[str, str]:
    """The lineage as readable tags: backend, model, step, data fingerprint, versions, parent, metrics."""
    tags = {f"{TAG}{key}": str(info[key]) for key in ("backend", "model", "step", "data_fingerprint",
                                                         "parent_run", "run_dir", "trained_with")
            if info.get(key) is not None}
    tags.update({f"{TAG}version.{safe_name(dist)}": str(v) for dist, v in info.get("versions", {}).items()})
    tags.update({f"{TAG}metric.{safe_name(k)}": repr(float(v)) for k, v in info.get("metrics", {}).items()})
    if info.get("compress"):
        tags[f"{TAG}compress"] = ",".join(str(step.get("name", "?")) for step in info["compress"])
    return {k: truncate(v, TAG_VALUE_LIMIT) for k, v in tags.items()}

