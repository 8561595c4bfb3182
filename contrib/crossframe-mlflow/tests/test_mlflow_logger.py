"""The ``mlflow`` logger, in-process, with crossframe's pytest fixtures (``crossframe_plugins``,
``crossframe_cli``). Tests that need MLflow itself are skipped where it is not installed.

Run: ``python -m pytest contrib/crossframe-mlflow/tests`` with the plugin installed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import crossframe_mlflow
import pytest
from crossframe_mlflow import MlflowParams
from crossframe_mlflow.logger import RUN_FILE, flatten, safe_name, scalar, truncate

from crossframe import hookimpl

needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="MLflow is not installed")


@pytest.fixture
def plugins(crossframe_plugins: Any) -> Any:
    """The test's plugin manager with this plugin in it (through its entry point, or registered here)."""
    record = crossframe_plugins.records.get("mlflow")
    if record is None or record.status != "loaded":
        crossframe_plugins.register(crossframe_mlflow, "mlflow")
    return crossframe_plugins


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs land in ``tmp_path/runs``; no tracking server from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_ASYNC_LOGGING", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module: creating MLflow's tables takes seconds, so pay it once."""
    return f"sqlite:///{(tmp_path_factory.mktemp('store') / 'mlflow.db').as_posix()}"


def tiny(experiment: str, store: str, **train: Any) -> dict[str, Any]:
    """A run of a second or so, logging to ``experiment`` in ``store``."""
    return {
        "name": experiment,
        "backend": "torch",
        "device": "cpu",
        "seed": 1,
        "data": {"name": "synthetic", "samples": 200, "features": 6, "classes": 3},
        "model": {"name": "mlp", "hidden": [8]},
        "train": {"steps": 20, "batch_size": 16, "log_every": 5, "eval_every": 10,
                  "optimizer": {"name": "adamw", "lr": 0.01}, **train},
        "loggers": [{"name": "mlflow", "tracking_uri": store, "experiment": experiment}],
    }


def only_run(store: str, experiment: str) -> Any:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment '{experiment}' in {store}"
    runs = client.search_runs([found.experiment_id])
    assert len(runs) == 1, f"expected one run in '{experiment}', found {len(runs)}"
    return client, runs[0]


def artifact_paths(client: Any, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifact_paths(client, run_id, item.path) if item.is_dir else [item.path]
    return sorted(out)


def history(client: Any, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


# --------------------------------------------------------------------------- no MLflow needed


def test_importing_and_listing_the_plugin_does_not_import_mlflow() -> None:
    code = ("import json, sys, crossframe_mlflow\n"
            "from crossframe.plugins import get_plugin_manager\n"
            "manager = get_plugin_manager()\n"
            "if 'mlflow' not in manager.records:  # not installed: running from the source tree\n"
            "    manager.register(crossframe_mlflow, 'mlflow')\n"
            "assert 'mlflow' in manager.components('logger')\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & {'mlflow', 'sqlalchemy', 'alembic'})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_params_defaults_and_unknown_keys(plugins: Any, crossframe_cli: Any, workdir: Path) -> None:
    params = MlflowParams()
    assert (params.tracking_uri, params.experiment, params.run_name) == (None, "crossframe", None)
    assert params.log_artifacts is True and params.tags == {}
    assert plugins.get("logger", "mlflow").schema is MlflowParams

    result = crossframe_cli("run", "digits-mlp", "--quiet", "--set", "loggers=[{name: mlflow, experimnt: demo}]")
    assert result.exit_code == 2, result.stderr
    assert "loggers.0.experimnt" in result.stderr and "experiment" in result.stderr


def test_flatten_truncate_and_names() -> None:
    flat = flatten({"name": "q", "train": {"steps": 30, "optimizer": {"lr": 0.1}, "metrics": None},
                    "model": {"hidden": [8, 8]}, "tags": {}, "compile": False})
    assert flat == {"name": "q", "train.steps": "30", "train.optimizer.lr": "0.1", "train.metrics": "null",
                    "model.hidden": "[8, 8]", "tags": "{}", "compile": "false"}
    assert truncate("abc", 5) == "abc"
    assert truncate("x" * 10, 6) == "xxx..." and len(truncate("x" * 9000, 6000)) == 6000
    assert safe_name("train/loss") == "train/loss"
    assert safe_name("val/top-5 (%)") == "val/top-5 ___"
    assert safe_name("/a//b/") == "a/b" and safe_name("../x") == "_../x"
    assert safe_name("k" * 300) == "k" * 250


def test_scalar_detection() -> None:
    np = pytest.importorskip("numpy")
    assert scalar(1) == 1.0 and scalar(np.float32(0.5)) == 0.5 and scalar(np.array(2.0)) == 2.0
    assert scalar(True) == 1.0
    for value in (np.eye(2), [1.0], "0.5", None, {"a": 1}):
        assert scalar(value) is None


# --------------------------------------------------------------------------- with MLflow


@needs_mlflow
def test_a_run_is_recorded(plugins: Any, workdir: Path, store: str) -> None:
    import crossframe

    cfg = tiny("recorded", store, metrics=["accuracy", "confusion_matrix"])
    cfg["loggers"][0]["tags"] = {"team": "vision", "ticket": 42}
    result = crossframe.run(cfg, quiet=True)
    assert result.status == "completed"

    client, run = only_run(store, "recorded")
    assert run.info.status == "FINISHED"
    assert run.info.run_name == result.run_dir.name
    params, tags, metrics = run.data.params, run.data.tags, run.data.metrics
    assert params["train.steps"] == "20" and params["backend"] == "torch" and params["model.hidden"] == "[8]"
    assert (tags["backend"], tags["model"], tags["team"], tags["ticket"]) == ("torch", "mlp", "vision", "42")
    assert history(client, run.info.run_id, "train/loss") == [5, 10, 15, 20]
    assert history(client, run.info.run_id, "val/accuracy") == [10, 20]
    assert "val/confusion_matrix" not in metrics  # not a scalar: kept as an artifact
    assert artifact_paths(client, run.info.run_id) == [
        "array_metrics.json", "checkpoints/step_20/state.json", "config.yaml", "metrics.jsonl"]
    local = Path(client.download_artifacts(run.info.run_id, "array_metrics.json", str(workdir)))
    arrays = json.loads(local.read_text())
    assert [entry["step"] for entry in arrays["val/confusion_matrix"]] == [10, 20]
    assert len(arrays["val/confusion_matrix"][0]["value"]) == 3  # [C, C] with C = 3
    saved = json.loads((result.run_dir / RUN_FILE).read_text())
    assert saved["run_id"] == run.info.run_id and saved["tracking_uri"] == store


@needs_mlflow
@pytest.mark.parametrize(("error", "status"), [(RuntimeError, "FAILED"), (KeyboardInterrupt, "KILLED")])
def test_a_failed_or_interrupted_run_is_marked_so(plugins: Any, workdir: Path, store: str,
                                                  error: type[BaseException], status: str) -> None:
    import crossframe

    class Breaks:
        @hookimpl
        def on_step_end(self, run: Any, step: int) -> None:
            if step != 7:
                return
            if error is KeyboardInterrupt:
                raise error("broken on purpose")

            def broken(*args: Any, **kwargs: Any) -> Any:
                raise error("broken on purpose")

            run.backend.train_step = broken  # the next step fails (an observer's own error is contained)

    plugins.register(Breaks(), "breaks")
    experiment = f"ended-{status.lower()}"
    with pytest.raises(error, match="broken on purpose"):
        crossframe.run(tiny(experiment, store), quiet=True)
    client, run = only_run(store, experiment)
    assert run.info.status == status
    assert history(client, run.info.run_id, "train/loss") == [5]
    assert "config.yaml" in artifact_paths(client, run.info.run_id)


@needs_mlflow
def test_a_logger_never_closed_ends_its_run_as_failed_at_exit(workdir: Path, store: str) -> None:
    from crossframe_mlflow.logger import MlflowLogger

    logger = MlflowLogger(MlflowParams(tracking_uri=store, experiment="abandoned", log_artifacts=False), workdir)
    logger._abandoned()  # what atexit calls
    assert only_run(store, "abandoned")[1].info.status == "FAILED"


@needs_mlflow
def test_resume_continues_the_same_mlflow_run(plugins: Any, workdir: Path, store: str) -> None:
    import crossframe

    first = crossframe.run(tiny("resumed", store, steps=10), quiet=True)
    second = crossframe.run(None, ["train.steps=20"], resume=first.run_dir, quiet=True)
    assert second.run_dir == first.run_dir and second.steps == 20
    client, run = only_run(store, "resumed")
    assert run.info.status == "FINISHED"
    assert history(client, run.info.run_id, "train/loss") == [5, 10, 15, 20]
    assert run.data.params["train.steps"] == "10"  # params are write-once in MLflow
    assert run.data.tags["crossframe.resume.train.steps"] == "20"


@needs_mlflow
def test_the_logger_on_its_own(workdir: Path, store: str) -> None:
    import numpy as np
    from crossframe_mlflow.logger import MlflowLogger

    logger = MlflowLogger(MlflowParams(tracking_uri=store, experiment="direct", run_name="by-hand"), workdir)
    limit = logger.limits["MAX_PARAM_VAL_LENGTH"]
    logger.log_config({"backend": "jax", "model": {"name": "cnn"}, "long": "x" * (limit + 100),
                       "many": {f"k{i}": i for i in range(150)}})  # more than one batch of params
    logger.log_metrics(3, {"train/loss": np.float32(0.25), "val/top-5 (%)": 0.9, "matrix": np.eye(2), "note": "hi"})
    logger.close()
    logger.close()  # twice is harmless

    client, run = only_run(store, "direct")
    assert run.info.run_name == "by-hand" and run.info.status == "FINISHED"
    assert len(run.data.params["long"]) == limit and run.data.params["long"].endswith("...")
    assert run.data.params["many.k149"] == "149"
    assert run.data.metrics == {"train/loss": 0.25, "val/top-5 ___": 0.9}
    assert (run.data.tags["backend"], run.data.tags["model"]) == ("jax", "cnn")
    local = Path(client.download_artifacts(run.info.run_id, "array_metrics.json", str(workdir)))
    assert json.loads(local.read_text()) == {"matrix": [{"step": 3, "value": [[1.0, 0.0], [0.0, 1.0]]}],
                                             "note": [{"step": 3, "value": "hi"}]}
