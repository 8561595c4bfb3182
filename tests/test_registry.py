"""The embedded model registry: register, alias, promote, resolve, verify; two writers at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import crossframe
from crossframe.cli.main import main
from crossframe.errors import UsageError
from crossframe.integrity import sha256_file, write_manifest
from crossframe.registry import ModelVersion, Registry, RegistryError, registry_dir, resolve_model_uri
from crossframe.registry.location import ENV_VAR
from crossframe.registry.uri import parse_model_uri
from tests.conftest import tiny_config

pytest.importorskip("torch")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny torch run, with an export directory (and its sha256 manifest) as the pipeline writes one."""
    root = tmp_path_factory.mktemp("runs")
    crossframe.run({**tiny_config(), "output_dir": str(root), "name": "r"}, quiet=True)
    export = root / "r" / "exports" / "onnx-torch"
    export.mkdir(parents=True)
    (export / "model.onnx").write_bytes(b"stand-in bytes: the registry copies and hashes, it does not parse")
    write_manifest(export)
    return root / "r"


def test_register_records_lineage_and_every_file_with_its_sha256(trained: Path, tmp_path: Path) -> None:
    store = Registry(tmp_path / "reg")
    v = store.register(trained, "tiny", aliases=["staging"], description="a tiny mlp")
    assert (v.version, v.aliases, v.stage) == (1, ["staging"], "staging")
    assert "checkpoints/step_20/model.safetensors" in v.artifacts
    assert "exports/onnx-torch/model.onnx" in v.artifacts and "exports/onnx-torch/manifest.json" in v.artifacts
    assert not any("optimizer" in rel for rel in v.artifacts)
    for rel, digest in v.artifacts.items():
        assert digest == sha256_file(trained / rel) == sha256_file(v.path / rel)
    lineage = v.lineage
    assert lineage["config"]["backend"] == "torch" and lineage["step"] == 20 and lineage["model"] == "mlp"
    assert lineage["versions"]["torch"] and lineage["versions"]["crossframe"] == crossframe.__version__
    assert lineage["data_fingerprint"].startswith("sha256:")
    last_eval = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines() if "val/loss" in x][-1]
    assert lineage["metrics"]["val/loss"] == last_eval["val/loss"]
    assert store.models()[0] | {"created": 0} == {"name": "tiny", "description": "a tiny mlp", "created": 0,
                                                  "versions": 1, "latest": 1, "aliases": {"staging": 1}}


def test_promote_moves_aliases_and_stages(trained: Path, tmp_path: Path) -> None:
    store = Registry(tmp_path / "reg")
    store.register(trained, "m", aliases=["production"])
    store.register(trained, "m")
    v2 = store.promote("m@2", "production")
    assert v2.stage == "production" and v2.aliases == ["production"]
    assert store.get("m", 1).stage == "archived" and store.get("m", 1).aliases == []
    assert store.promote("m@production", "champion").version == 2
    assert store.get("m", "champion").version == 2 and store.get("m").version == 2
    with pytest.raises(RegistryError, match="no alias 'prod'"):
        store.get("m", "prod")
    with pytest.raises(RegistryError, match="no version 7"):
        store.promote("m@7", "x")
    assert store.remove("m@1") == [1] and not store.version_dir("m", 1).exists()
    assert [v.version for v in store.versions("m")] == [2]
    store.remove("m")
    with pytest.raises(RegistryError, match="'m' is not registered"):
        store.get("m")


def test_a_models_uri_resolves_to_a_run_directory_and_tampering_is_refused(
        trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = tmp_path / "reg"
    Registry(reg).register(trained, "tiny", aliases=["production"])
    path = resolve_model_uri("models:/tiny@production", reg)
    assert path == resolve_model_uri("models:/tiny/1", reg) == resolve_model_uri("models:/tiny", reg)
    monkeypatch.setenv(ENV_VAR, str(reg))
    assert main(["eval", "models:/tiny@production", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 20
    with (path / "checkpoints" / "step_20" / "model.safetensors").open("ab") as handle:
        handle.write(b"\0")
    assert main(["eval", "models:/tiny@production"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "model.safetensors: sha256 does not match" in err


def test_registry_location_and_uri_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert registry_dir() == tmp_path / "xdg" / "crossframe" / "registry"
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "env"))
    assert registry_dir() == tmp_path / "env"
    assert registry_dir(config_value=str(tmp_path / "cfg")) == tmp_path / "cfg"
    assert registry_dir(tmp_path / "flag", str(tmp_path / "cfg")) == tmp_path / "flag"
    assert parse_model_uri("models:/a@prod") == ("a", "prod")
    assert parse_model_uri("models:/a/3") == ("a", "3")
    assert parse_model_uri("models:/a") == ("a", None)
    for bad in ("runs/a", "models:/a/x", "models:/a@"):
        with pytest.raises(UsageError):
            parse_model_uri(bad)


def test_cli_register_promote_ls_show_rm(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reg = str(tmp_path / "reg")
    assert main(["models", "register", str(trained), "--name", "cli", "--alias", "staging", "--registry", reg]) == 0
    assert "version 1 (staging)" in capsys.readouterr().out
    assert main(["models", "register", str(trained), "--name", "cli", "--registry", reg]) == 0
    assert main(["models", "promote", "cli@2", "production", "--registry", reg]) == 0
    assert main(["models", "ls", "--json", "--registry", reg]) == 0
    capsys.readouterr()
    assert main(["models", "ls", "--json", "--registry", reg]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["aliases"] == {"production": 2, "staging": 1}
    assert main(["models", "show", "cli@production", "--json", "--registry", reg]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert main(["models", "register", str(trained), "--name", "bad name", "--registry", reg]) == 2
    assert "--name: 'bad name' is not allowed" in capsys.readouterr().err
    with (trained / "exports" / "onnx-torch" / "model.onnx").open("r+b") as handle:
        original = handle.read(1)
        handle.seek(0)
        handle.write(b"S" if original != b"S" else b"T")
    try:
        assert main(["models", "register", str(trained), "--name", "cli", "--registry", reg]) == 2  # bad input
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "model.onnx: sha256 does not match manifest.json" in err
    finally:
        with (trained / "exports" / "onnx-torch" / "model.onnx").open("r+b") as handle:
            handle.write(original)
    assert main(["models", "rm", "cli", "--yes", "--registry", reg]) == 0
    assert main(["models", "show", "cli", "--registry", reg]) == 2


WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from crossframe.registry import Registry
    run_dir, reg, go, count = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    store = Registry(reg)
    while not go.exists():
        time.sleep(0.005)
    for _ in range(count):
        print(store.register(run_dir, "shared").version, flush=True)
""")


def test_two_processes_registering_at_once_lose_and_duplicate_no_version(trained: Path, tmp_path: Path) -> None:
    reg, go, count = tmp_path / "reg", tmp_path / "go", 6
    Registry(reg)  # create the schema first, so both writers start from the same file
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "core"), str(ROOT / "plugins"),
                                                          os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(trained), str(reg), str(go), str(count)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    time.sleep(0.5)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    got = [int(line) for out, _ in outs for line in out.split()]
    assert sorted(got) == list(range(1, 2 * count + 1))
    store = Registry(reg)
    versions = store.versions("shared")
    assert [v.version for v in versions] == list(range(1, 2 * count + 1))
    for v in versions:
        store.verify(v)
    assert sorted(p.name for p in (reg / "artifacts" / "shared").iterdir()) == sorted(str(n) for n in got)


def test_a_compressed_step_registers_as_a_loadable_version(tmp_path: Path) -> None:
    from crossframe.checkpoint import load_checkpoint

    root = tmp_path / "runs"
    cfg = {**tiny_config(), "output_dir": str(root), "name": "c", "compress": [{"name": "prune", "sparsity": 0.5}]}
    crossframe.run(cfg, quiet=True)
    step = root / "c" / "compressed" / "1-prune"
    v = Registry(tmp_path / "reg").register(step, "pruned")
    assert v.lineage["parent_run"] == str((root / "c").resolve())
    assert v.lineage["compress"][0]["name"] == "prune"
    loaded = load_checkpoint(v.path)
    assert loaded.path.name == "step_20"
    original = load_checkpoint(step).weights
    assert all((loaded.weights[k] == original[k]).all() for k in original)


def test_a_tampered_compressed_step_is_refused(tmp_path: Path) -> None:
    from crossframe.checkpoint import load_checkpoint
    from crossframe.integrity import IntegrityError

    root = tmp_path / "runs"
    cfg = {**tiny_config(steps=5), "output_dir": str(root), "name": "c",
           "compress": [{"name": "prune", "sparsity": 0.5}]}
    crossframe.run(cfg, quiet=True)
    step = root / "c" / "compressed" / "1-prune"
    assert {"model.safetensors", "masks.safetensors", "state.json", "config.yaml"} <= set(
        json.loads((step / "manifest.json").read_text())["files"])
    with (step / "masks.safetensors").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(IntegrityError, match=r"masks\.safetensors: sha256 does not match"):
        load_checkpoint(step)


class _RecordingRegistry(Registry):
    """A plugin's registry backend: the SQLite one, counting checkouts."""

    checkouts: list[str] = []

    def checkout(self, version: ModelVersion) -> Path:
        type(self).checkouts.append(version.uri)
        return super().checkout(version)


class _RegistryPlugin:
    @crossframe.hookimpl
    def register_model_registries(self, register: Any) -> None:
        register("memo", lambda location: _RecordingRegistry(location), description="test backend")


def test_a_plugin_backend_is_selected_by_name_colon_location(
        trained: Path, tmp_path: Path, crossframe_plugins, crossframe_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from crossframe.registry import ModelRegistry, open_registry

    crossframe_plugins.register(_RegistryPlugin(), "memo-plugin")
    where = tmp_path / "memo"
    done = crossframe_cli("models", "register", str(trained), "--name", "m", "--alias", "prod",
                          "--registry", f"memo:{where}", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["path"].startswith(str(where))
    monkeypatch.setenv(ENV_VAR, f"memo:{where}")
    store = open_registry()
    assert isinstance(store, _RecordingRegistry) and isinstance(store, ModelRegistry)
    assert resolve_model_uri("models:/m@prod") == where / "artifacts" / "m" / "1"
    assert _RecordingRegistry.checkouts[-1] == "models:/m/1"
    # a plain path and sqlite:DIR are the built-in registry; an unknown NAME: is one line
    assert type(open_registry(str(tmp_path / "plain"))) is Registry
    assert open_registry(f"sqlite:{where}").get("m", "prod").version == 1
    bad = crossframe_cli("models", "ls", "--registry", "nosuch:http://x")
    assert bad.exit_code == 2 and "\n" not in bad.stderr.strip()
    assert "registry: unknown model_registry 'nosuch'" in bad.stderr and "memo" in bad.stderr, bad.stderr


@pytest.mark.slow  # a server subprocess
def test_serve_by_alias_serves_the_promoted_version(trained: Path, tmp_path: Path) -> None:
    import httpx

    from tests.test_contrib_mlflow import Server, free_port

    reg = tmp_path / "reg"
    store = Registry(reg)
    store.register(trained, "tiny")
    store.register(trained, "tiny")
    store.promote("tiny@2", "production")
    port = free_port()
    env = {"CROSSFRAME_REGISTRY": str(reg), "PYTHONPATH": os.pathsep.join([str(ROOT / "core"), str(ROOT / "plugins")])}
    served = Server([sys.executable, "-m", "crossframe", "serve", "models:/tiny@production", "--engine", "native",
                     "--port", port, "--log-level", "warning"], tmp_path / "serve.log",
                    f"http://127.0.0.1:{port}/readyz", env, 120)
    try:
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", json={"inputs": [[0.5] * 8, [-1.0] * 8]}, timeout=30)
        assert r.status_code == 200 and len(r.json()["data"]) == 2, r.text
    finally:
        assert served.stop() == 0
    assert models["data"][0]["id"] == "2", models  # the version's directory: artifacts/tiny/2
