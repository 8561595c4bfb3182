"""Plugin loading: guarded entry points, strict mode, allow / deny lists, listing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from crossframe import hookimpl
from crossframe.cli.main import main
from crossframe.errors import PluginError
from crossframe.plugins import configure, get_plugin_manager
from tests.plugin_dists import BROKEN, FAILS_TO_REGISTER, GOOD_DATASET, MISSPELT, make_distribution


def run_cli(args: list[str], site: Path, **env: str) -> subprocess.CompletedProcess:
    """The real ``crossframe`` CLI in a subprocess with ``site`` on its path."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]), **env}
    code = "import sys; from crossframe.cli.main import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=environ,
                          cwd=site.parent)


def test_broken_plugin_is_listed_as_failed_and_the_rest_works(site: Path) -> None:
    make_distribution(site, "crossframe-broken", "broken", "broken_plugin", BROKEN)
    listing = run_cli(["plugins", "--json"], site)
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["broken"]["status"] == "failed"
    assert "RuntimeError: this plugin is broken on purpose" in rows["broken"]["error"]
    assert rows["broken"]["distribution"] == "crossframe-broken"
    assert rows["torch"]["status"] == "loaded"
    assert "plugin 'broken' failed" in listing.stderr

    trained = run_cli(["run", "digits-mlp", "--quiet", "--set", "train.steps=10", "--set", "train.eval_every=0"], site)
    assert trained.returncode == 0, trained.stderr
    assert "run directory:" in trained.stdout


def test_strict_mode_turns_a_broken_plugin_into_an_error(site: Path) -> None:
    make_distribution(site, "crossframe-broken", "broken", "broken_plugin", BROKEN)
    result = run_cli(["plugins"], site, CROSSFRAME_STRICT_PLUGINS="1")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "plugin 'broken'" in lines[0] and "STRICT" in lines[0]


def test_misspelt_hook_fails_loudly_with_a_suggestion(site: Path) -> None:
    make_distribution(site, "crossframe-typo", "typo", "typo_plugin", MISSPELT)
    manager = configure()
    record = manager.records["typo"]
    assert record.status == "failed"
    assert "unknown hook 'register_model'" in record.error
    assert "did you mean 'register_models'" in record.error
    manager.check_pending()  # nothing half-registered is left behind


def test_check_pending_reports_unknown_hooks_of_registered_plugins() -> None:
    manager = get_plugin_manager()

    class Sneaky:
        @hookimpl
        def on_stepend(self, run):  # misspelt on purpose
            pass

    manager.pm.register(Sneaky(), name="sneaky")  # bypasses crossframe's own guard
    with pytest.raises(PluginError, match="sneaky"):
        manager.check_pending()


def test_registration_failure_is_recorded_and_other_models_remain(site: Path) -> None:
    make_distribution(site, "crossframe-bad-models", "badmodels", "badmodels_plugin", FAILS_TO_REGISTER)
    manager = configure()
    models = manager.components("model")
    assert {"mlp", "cnn"} <= set(models)
    assert manager.records["badmodels"].status == "failed"
    assert "ValueError: cannot register today" in manager.records["badmodels"].error


def test_plugin_component_is_usable_in_a_run(site: Path, workdir: Path, tiny) -> None:
    make_distribution(site, "crossframe-blobs", "blobs", "blobs_plugin", GOOD_DATASET)
    import crossframe

    cfg = tiny(steps=100)
    cfg["data"] = {"name": "blobs"}
    result = crossframe.run(cfg, quiet=True)
    assert result.status == "completed"
    assert result.metrics["val/accuracy"] > 0.9
    listing = {r.name: r for r in get_plugin_manager().records.values()}
    assert listing["blobs"].distribution == "crossframe-blobs"
    assert get_plugin_manager().provided_by("blobs") == {"dataset": ["blobs"]}


def test_disable_flag_allow_list_and_autoload_switch(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(site, "crossframe-blobs", "blobs", "blobs_plugin", GOOD_DATASET)
    assert configure(disabled=["blobs"]).records["blobs"].status == "disabled"
    assert "blobs" not in get_plugin_manager().components("dataset")

    monkeypatch.setenv("CROSSFRAME_PLUGINS", "blobs")
    manager = configure()
    assert manager.records["blobs"].status == "loaded"
    assert manager.records["torch"].status == "disabled"

    monkeypatch.delenv("CROSSFRAME_PLUGINS")
    monkeypatch.setenv("CROSSFRAME_DISABLE_PLUGIN_AUTOLOAD", "1")
    manager = configure()
    assert set(manager.records) == {"crossframe"}  # only the core registers itself
    assert "digits" in manager.components("dataset")


def test_disable_plugin_cli_flag_hides_its_components(site: Path, capsys: pytest.CaptureFixture) -> None:
    make_distribution(site, "crossframe-blobs", "blobs", "blobs_plugin", GOOD_DATASET)
    assert main(["--disable-plugin", "blobs", "plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["blobs"]["status"] == "disabled"
    assert rows["blobs"]["components"] == {}


def test_run_needing_a_disabled_backend_names_it(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["--disable-plugin", "torch", "run", "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "backend: unknown backend 'torch'" in err[0]


def test_plugins_listing_shows_hooks_and_components(capsys: pytest.CaptureFixture) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["torch"]["hooks"] == ["register_backends"]
    assert rows["torch"]["components"] == {"backend": ["torch"]}
    assert "mlp" in rows["crossframe"]["components"]["model"]
    assert main(["plugins"]) == 0
    assert "torch" in capsys.readouterr().out


def test_lifecycle_hooks_are_called_in_order(workdir: Path, tiny) -> None:
    import crossframe

    calls: list[str] = []

    class Recorder:
        @hookimpl
        def on_run_start(self, run):
            calls.append("start")

        @hookimpl
        def on_eval_end(self, run, step, metrics):
            calls.append(f"eval@{step}")

        @hookimpl
        def on_checkpoint_saved(self, run, step, path):
            assert (path / "model.safetensors").is_file()
            calls.append(f"ckpt@{step}")

        @hookimpl
        def on_run_end(self, run, status, metrics):
            calls.append(f"end:{status}")

    get_plugin_manager().register(Recorder(), "recorder")
    crossframe.run(tiny(steps=10, eval_every=5, checkpoint_every=5), quiet=True)
    assert calls == ["start", "eval@5", "ckpt@5", "eval@10", "ckpt@10", "end:completed"]
