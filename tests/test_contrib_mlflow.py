"""contrib/crossframe-mlflow, installed as a user would: pip into a fresh virtual environment.

The fresh environment sees this one's packages (crossframe, torch, pytest, setuptools, wheel)
through a ``.pth`` file, so nothing heavy is reinstalled: pip builds the plugin from a copy of
its folder (``--no-build-isolation``, with this environment's setuptools) and fetches only what
the plugin adds (mlflow-skinny, SQLAlchemy, Alembic) from the package index. Then the fresh
environment's ``crossframe`` lists the plugin, trains with ``loggers: [{name: mlflow}]``, and its
Python reads the MLflow store back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import crossframe
from crossframe.distributed.world import free_port
from crossframe.integrity import sha256_file
from tests.conftest import tiny_config

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


def sh(args: list[str], what: str, *, cwd: Path, timeout: float, env: dict[str, str] | None = None,
       check: bool = True) -> subprocess.CompletedProcess:
    """Run ``args`` (``env`` added to the scrubbed environment); fail with its output (not a bare exit
    code) if it hangs, or if it fails and ``check`` is set."""
    try:
        done = subprocess.run([str(a) for a in args], cwd=cwd, env={**_env(), **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr or ""
        pytest.fail(f"{what} timed out after {timeout:.0f}s\n--- stdout\n{_tail(out)}\n--- stderr\n{_tail(err)}")
    assert done.returncode == 0 or not check, (f"{what} failed with exit code {done.returncode}\n"
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
        self.create()
        self.install_plugin()
        return self

    def create(self) -> None:
        """The venv, seeing this environment's packages through a ``.pth`` file."""
        # pip comes from this environment, through the .pth below: no ensurepip, no pip upgrade
        self.timed("create venv", [sys.executable, "-m", "venv", "--without-pip", self.path], 120)
        purelib = sh([self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     "asking the fresh venv for its site-packages", cwd=self.root, timeout=60).stdout.strip()
        outer = sysconfig.get_paths()["purelib"]
        lines = [f"import site; site.addsitedir({outer!r})"]  # runs this env's .pth files: editable finders too
        source_root = Path(crossframe.__file__).resolve().parents[1]  # core/ when installed editable
        if not source_root.is_relative_to(Path(outer).resolve()):
            lines.append(str(source_root))
            if (source_root.parent / "plugins").is_dir():  # the first-party backends of the same checkout
                lines.append(str(source_root.parent / "plugins"))
        (Path(purelib) / "_crossframe_outer_env.pth").write_text("\n".join(lines) + "\n")

    def install_plugin(self) -> None:
        """crossframe's console script, and the plugin built from a copy of its folder."""
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
    assert row["components"] == {"logger": ["mlflow"], "model_registry": ["mlflow"]}, row
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


# --------------------------------------------------------------------------- the Model Registry hand-off

#: the tracking server (the full package: mlflow-skinny has no server). 3.18.0's mlflow-tracing is not
#: published; 3.17.2 asks for pyarrow<26, so its venv gets its own pyarrow (the constraint is dropped).
MLFLOW_SERVER = "mlflow==3.17.2"

READ_REGISTRY = """
import json, sys, tempfile
from pathlib import Path
from mlflow.tracking import MlflowClient
from crossframe.distributed.world import free_port
from crossframe.integrity import sha256_file

client = MlflowClient(tracking_uri=sys.argv[1], registry_uri=sys.argv[1])
mv = client.get_model_version_by_alias("digits", "production")
run = client.get_run(mv.run_id)
files = Path(client.download_artifacts(mv.run_id, "model", tempfile.mkdtemp()))
print(json.dumps({
    "version": mv.version, "aliases": client.get_registered_model("digits").aliases, "tags": mv.tags,
    "source": mv.source, "run_id": mv.run_id, "artifact_uri": run.info.artifact_uri,
    "params": run.data.params, "metrics": run.data.metrics,
    "downloaded": {p.relative_to(files).as_posix(): sha256_file(p) for p in files.rglob("*") if p.is_file()},
}))
"""


class Server:
    """A subprocess in its own process group, answering ``health`` on a loopback port; stopped with the
    whole group (MLflow's server runs uvicorn in a child process)."""

    def __init__(self, args: list[str], log: Path, health: str, env: dict[str, str], ready_s: float) -> None:
        self.log = log
        self.proc = subprocess.Popen([str(a) for a in args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     env={**_env(), **env}, cwd=log.parent, start_new_session=True)
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{args[0]} exited with {self.proc.returncode}\n{_tail(log.read_text())}")
            try:
                if httpx.get(health, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.stop()
        pytest.fail(f"{args[0]} not ready after {ready_s:.0f}s\n{_tail(log.read_text())}")

    def stop(self) -> int:
        """SIGTERM to the group, SIGKILL after 20 s; the exit code."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(20)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A real MLflow tracking server with a SQLite backend store, in a venv of its own (the plugin's venv
    keeps only mlflow-skinny, as a client machine would); ``(url, artifacts directory)``."""
    root = tmp_path_factory.mktemp("mlflow-server")
    server_venv = FreshVenv(root)
    server_venv.create()
    constraints = root / "constraints.txt"
    pins = (REPO / "constraints.txt").read_text().splitlines() if (REPO / "constraints.txt").is_file() else []
    constraints.write_text("\n".join(p for p in pins if not p.lower().startswith("pyarrow")) + "\n")
    server_venv.timed("pip install the MLflow server", [server_venv.python, "-m", "pip", "install", "-c",
                                                        constraints, MLFLOW_SERVER], 600)
    port, artifacts = free_port(), root / "artifacts"
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    server = Server([server_venv.path / "bin" / "mlflow", "server", "--host", "127.0.0.1", "--port", port,
                     "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                     "--artifacts-destination", artifacts], root / "server.log", f"{url}/health",
                    {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, ready_s=180)
    server_venv.timings["server ready"] = round(time.perf_counter() - start, 1)
    print(f"mlflow server timings (s): {server_venv.timings}")
    try:
        yield url, artifacts
    finally:
        assert server.stop() is not None


def test_models_register_promote_and_serve_through_a_real_mlflow_registry(
        venv: FreshVenv, tracking_server: tuple[str, Path], tmp_path: Path) -> None:
    from crossframe.config.loading import load_config
    from crossframe.train.data import load_training_data
    from crossframe.train.evaluate import evaluate

    url, artifacts = tracking_server
    run_dir = crossframe.run({**tiny_config(), "output_dir": str(tmp_path / "runs"), "name": "r"}, quiet=True).run_dir
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}  # where checked-out versions are cached

    def cli(*args: object, registry: str = f"mlflow:{url}", check: bool = True) -> subprocess.CompletedProcess:
        return sh([venv.crossframe, *args], f"crossframe {' '.join(map(str, args))}", cwd=tmp_path, timeout=180,
                  env={**env, "CROSSFRAME_REGISTRY": registry}, check=check)

    first = json.loads(cli("models", "register", run_dir, "--name", "digits", "--alias", "staging",
                           "--description", "tiny mlp", "--json").stdout)
    assert (first["version"], first["aliases"], first["stage"]) == (1, ["staging"], "staging"), first
    # the flag wins over the environment (which names an empty SQLite directory here)
    second = json.loads(cli("models", "register", run_dir, "--name", "digits", "--registry", f"mlflow:{url}",
                            "--json", registry=str(tmp_path / "unused")).stdout)
    assert second["version"] == 2 and not (tmp_path / "unused").exists()
    assert "stage production" in cli("models", "promote", "digits@2", "production").stdout

    read = sh([venv.python, "-c", READ_REGISTRY, url], "reading the registry with MlflowClient", cwd=tmp_path,
              timeout=120)
    got = json.loads(read.stdout.strip().splitlines()[-1])
    assert got["version"] == "2" and got["aliases"] == {"staging": "1", "production": "2"}, got
    tags = got["tags"]
    recorded = json.loads(tags["crossframe.artifacts"])
    assert "checkpoints/step_20/model.safetensors" in recorded and "config.yaml" in recorded, recorded
    for rel, digest in recorded.items():
        if rel != "checkpoints/latest":  # the version's pointer, written by the registry
            assert digest == sha256_file(run_dir / rel), rel
    assert got["downloaded"] == recorded  # the server holds exactly the registered bytes
    lineage = json.loads(tags["crossframe.lineage"])
    assert (tags["crossframe.backend"], tags["crossframe.model"], tags["crossframe.step"]) == ("torch", "mlp", "20")
    assert tags["crossframe.data_fingerprint"] == lineage["data_fingerprint"]
    assert tags["crossframe.stage"] == "production"
    assert tags["crossframe.version.crossframe"] == crossframe.__version__ and "crossframe.version.torch" in tags
    assert got["params"]["train.steps"] == "20" and got["params"]["model.name"] == "mlp", got["params"]
    last_eval = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "val/loss" in x][-1]
    assert got["metrics"]["val/loss"] == last_eval["val/loss"] == float(tags["crossframe.metric.val/loss"])

    listed = json.loads(cli("models", "ls", "--json").stdout)
    assert [(m["name"], m["versions"], m["latest"], m["aliases"], m["description"]) for m in listed] == [
        ("digits", 2, 2, {"production": 2, "staging": 1}, "tiny mlp")]
    shown = json.loads(cli("models", "show", "digits", "--json").stdout)
    assert [(v["version"], v["stage"], v["aliases"]) for v in shown] == [(1, "staging", ["staging"]),
                                                                        (2, "production", ["production"])]
    unknown = cli("models", "show", "digits@nope", check=False)
    assert unknown.returncode == 2 and "alias 'nope'" in unknown.stderr, unknown.stderr
    refused = cli("models", "show", "nope", check=False)
    assert refused.returncode == 2 and "'nope'" in refused.stderr and "\n" not in refused.stderr.strip()

    # serve by alias: the version is fetched from the server into the cache and checked file by file
    port = free_port()
    served = Server([venv.crossframe, "serve", "models:/digits@production", "--port", port, "--log-level",
                     "warning"], tmp_path / "serve.log", f"http://127.0.0.1:{port}/readyz",
                    {**env, "CROSSFRAME_REGISTRY": f"mlflow:{url}"}, ready_s=120)
    try:
        val = load_training_data(load_config(run_dir / "config.yaml")).val
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"inputs": val.x.tolist()}, timeout=60)
        assert r.status_code == 200, r.text
        labels = [d["class_index"] for d in r.json()["data"]]
        assert sum(int(a == b) for a, b in zip(labels, val.y, strict=True)) / len(labels) == \
            evaluate(run_dir)["val/accuracy"]
    finally:
        assert served.stop() == 0
    checked_out = Path(cli("models", "path", "digits@production").stdout.strip())
    assert {p.relative_to(checked_out).as_posix(): sha256_file(p) for p in checked_out.rglob("*")
            if p.is_file()} == recorded

    # a byte changed in the server's artifact store is refused, naming the file, on the next fetch
    stored = artifacts / got["artifact_uri"].split("mlflow-artifacts:/", 1)[1] / "model" / "checkpoints" / \
        "step_20" / "model.safetensors"
    with stored.open("ab") as handle:
        handle.write(b"\0")
    env["XDG_DATA_HOME"] = str(tmp_path / "fresh-cache")
    refused = cli("models", "path", "models:/digits@production", check=False)
    err = refused.stderr.strip()
    assert refused.returncode == 2 and "\n" not in err, err
    assert "model/checkpoints/step_20/model.safetensors: sha256 does not match" in err, err

    # a server that is not there is one line after a few retries, not MLflow's four minutes of them
    env.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
    gone = cli("models", "ls", registry=f"mlflow:http://127.0.0.1:{free_port()}", check=False)
    err = gone.stderr.strip()
    assert gone.returncode == 2 and "\n" not in err and "cannot reach the tracking server" in err, err
