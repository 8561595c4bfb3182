"""contrib/crossframe-mlflow, installed as a user would: pip into a fresh virtual environment.

The fresh environment sees this one's packages (crossframe, torch, pytest, setuptools, wheel)
through a ``.pth`` file, so nothing heavy is reinstalled: pip builds the plugin from a copy of
its folder (``--no-build-isolation``, with this environment's setuptools) and fetches only what
the plugin adds (mlflow-skinny, SQLAlchemy, Alembic) from the package index. Then the fresh
environment's ``crossframe`` lists the plugin, trains with ``loggers: [{name: mlflow}]``, and its
Python reads the MLflow store back.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

import crossframe

REPO = Path(__file__).resolve().parents[1]
CONTRIB = REPO / "contrib" / "crossframe-mlflow"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name == "nt", reason="POSIX venv layout")]

#: what would leak the outer environment in, or send the MLflow run elsewhere (CROSSFRAME_* too)
_SCRUB = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI",
          "MLFLOW_ENABLE_ASYNC_LOGGING")

READ_STORE = """
import json, sys
from mlflow.tracking import MlflowClient

client = MlflowClient(tracking_uri=sys.argv[1])

def artifacts(run_id, path=None):
    out = []
    for item in client.list_artifacts(run_id, path):
        out += artifacts(run_id, item.path) if item.is_dir else [item.path]
    return out

report = {"experiments": [e.name for e in client.search_experiments()], "runs": []}
experiment = client.get_experiment_by_name("crossframe")
for run in client.search_runs([experiment.experiment_id]) if experiment else []:
    run_id = run.info.run_id
    report["runs"].append({
        "status": run.info.status,
        "params": run.data.params,
        "tags": run.data.tags,
        "metrics": sorted(run.data.metrics),
        "loss_steps": sorted(m.step for m in client.get_metric_history(run_id, "train/loss")),
        "artifacts": sorted(artifacts(run_id)),
    })
print(json.dumps(report))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB and not k.startswith("CROSSFRAME_")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", PYTHONUNBUFFERED="1")
    return env


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def sh(args: list[str], what: str, *, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``args``; fail with its output (not a bare exit code) if it fails or hangs."""
    try:
        done = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"{what} timed out after {timeout:.0f}s\n--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}")
    assert done.returncode == 0, (f"{what} failed with exit code {done.returncode}\n"
                                  f"--- stdout\n{_tail(done.stdout)}\n--- stderr\n{_tail(done.stderr)}")
    return done


class FreshVenv:
    """A virtual environment with the plugin installed; ``timings`` in seconds per step."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "venv"
        self.python = self.path / "bin" / "python"
        self.crossframe = self.path / "bin" / "crossframe"
        self.source = root / "crossframe-mlflow"
        self.timings: dict[str, float] = {}

    def timed(self, what: str, args: list[str], timeout: float, cwd: Path | None = None) -> None:
        start = time.perf_counter()
        sh(args, what, cwd=cwd or self.root, timeout=timeout)
        self.timings[what] = round(time.perf_counter() - start, 1)

    def build(self) -> FreshVenv:
        # pip comes from this environment, through the .pth below: no ensurepip, no pip upgrade
        self.timed("create venv", [sys.executable, "-m", "venv", "--without-pip", self.path], 120)
        purelib = sh([self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     "asking the fresh venv for its site-packages", cwd=self.root, timeout=60).stdout.strip()
        outer = sysconfig.get_paths()["purelib"]
        lines = [f"import site; site.addsitedir({outer!r})"]  # runs this env's .pth files: editable finders too
        source_root = Path(crossframe.__file__).resolve().parents[1]  # core/ when installed editable
        if not source_root.is_relative_to(Path(outer).resolve()):
            lines.append(str(source_root))
        (Path(purelib) / "_crossframe_outer_env.pth").write_text("\n".join(lines) + "\n")
        # what pip would write for crossframe's console script, had it installed crossframe here
        self.crossframe.write_text(f"#!{self.python}\nimport sys\nfrom crossframe.cli.main import entry\n\n"
                                   "sys.exit(entry())\n")
        self.crossframe.chmod(0o755)
        # build from a copy: an in-tree build would leave build/ and *.egg-info in the repository
        shutil.copytree(CONTRIB, self.source, ignore=shutil.ignore_patterns(
            "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
        constraints = ["-c", REPO / "constraints.txt"] if (REPO / "constraints.txt").is_file() else []
        self.timed("pip install plugin + MLflow",
                   [self.python, "-m", "pip", "install", "--no-build-isolation", *constraints,
                    self.source], 600)
        return self


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> FreshVenv:
    """Built once for the module (installing MLflow takes a few seconds with a warm pip cache)."""
    return FreshVenv(tmp_path_factory.mktemp("contrib-mlflow")).build()


def test_plugin_installs_into_a_fresh_venv_and_records_a_run(venv: FreshVenv, tmp_path: Path) -> None:
    listing = sh([venv.crossframe, "plugins", "--json"], "crossframe plugins --json", cwd=tmp_path, timeout=120)
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert "mlflow" in rows, f"plugin 'mlflow' not listed: {sorted(rows)}\n{_tail(listing.stderr)}"
    row = rows["mlflow"]
    assert row["status"] == "loaded", row
    assert (row["distribution"], row["version"]) == ("crossframe-mlflow", "0.1.0"), row
    assert row["components"] == {"logger": ["mlflow"]}, row
    assert rows["torch"]["status"] == "loaded", rows["torch"]

    start = time.perf_counter()
    trained = sh([venv.crossframe, "run", "digits-mlp", "--quiet", "--set", "train.steps=30",
                  "--set", "train.log_every=10",
                  "--set", "loggers=[{name: mlflow}]"], "crossframe run with the mlflow logger",
                 cwd=tmp_path, timeout=300)
    venv.timings["crossframe run"] = round(time.perf_counter() - start, 1)
    assert "run directory:" in trained.stdout, trained.stdout
    stores = sorted(tmp_path.glob("runs/*/mlflow.db"))
    assert len(stores) == 1, f"expected one runs/*/mlflow.db, found {stores}\n{_tail(trained.stderr)}"
    run_dir = stores[0].parent

    read = sh([venv.python, "-c", READ_STORE, f"sqlite:///{stores[0]}"], "reading the MLflow store",
              cwd=tmp_path, timeout=120)
    report = json.loads(read.stdout.strip().splitlines()[-1])
    assert len(report["runs"]) == 1, f"expected one run in experiment 'crossframe': {report}"
    run = report["runs"][0]
    assert run["status"] == "FINISHED", run["status"]
    assert run["params"].get("train.steps") == "30", run["params"]
    assert run["params"].get("backend") == "torch", run["params"]
    assert (run["tags"].get("backend"), run["tags"].get("model")) == ("torch", "mlp"), run["tags"]
    assert run["tags"].get("mlflow.runName") == run_dir.name, run["tags"]
    assert run["loss_steps"] == [10, 20, 30], run["loss_steps"]
    assert "val/accuracy" in run["metrics"], run["metrics"]
    assert "config.yaml" in run["artifacts"] and "metrics.jsonl" in run["artifacts"], run["artifacts"]
    assert "checkpoints/step_30/state.json" in run["artifacts"], run["artifacts"]
    print(f"fresh-venv timings (s): {venv.timings}")


def test_plugin_own_tests_pass_in_the_fresh_venv(venv: FreshVenv) -> None:
    """contrib/crossframe-mlflow/tests, with MLflow installed, as a plugin author runs them."""
    done = sh([venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", venv.source / "tests"],
              "the plugin's own tests", cwd=venv.source, timeout=600)
    assert " passed" in done.stdout and "skipped" not in done.stdout, _tail(done.stdout)
