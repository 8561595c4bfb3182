"""Plugin compatibility ranges, a config's required plugins, and renamed hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import crossframe
from crossframe import compat
from crossframe.cli.main import main
from crossframe.errors import ConfigError, PluginError
from crossframe.plugins import configure
from tests.plugin_dists import GOOD_DATASET, RENAMED_HOOK, make_distribution


def test_plugin_outside_its_crossframe_range_is_skipped_with_one_line(site: Path, workdir: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    make_distribution(site, "crossframe-future", "future", "future_plugin", "raise SystemExit('imported!')",
                      requires=("numpy", "crossframe>=9.0"))
    assert main(["plugins", "--json"]) == 0
    captured = capsys.readouterr()
    rows = {row["name"]: row for row in json.loads(captured.out)}
    assert rows["future"]["status"] == "incompatible"
    assert rows["future"]["error"] == f"needs crossframe>=9.0, this is crossframe {crossframe.__version__}"
    warning = [line for line in captured.err.splitlines() if "future" in line]
    assert warning == [f"crossframe: plugin 'future' is incompatible and was skipped: {rows['future']['error']}"]


def test_compatible_range_and_extras_only_requirements_load(site: Path) -> None:
    make_distribution(site, "crossframe-blobs", "blobs", "blobs_plugin", GOOD_DATASET,
                      requires=("crossframe>=0.1,<1", "crossframe>=99; extra == 'future'"))
    manager = configure()
    assert manager.records["blobs"].status == "loaded"
    assert "blobs" in manager.components("dataset")


def test_strict_mode_fails_on_an_incompatible_plugin(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_distribution(site, "crossframe-old", "old", "old_plugin", GOOD_DATASET, requires=("crossframe<0.1",))
    monkeypatch.setenv("CROSSFRAME_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"plugin 'old' needs crossframe<0\.1"):
        configure()


def test_config_requires_missing_or_out_of_range_plugins(site: Path, workdir: Path, tiny,
                                                         capsys: pytest.CaptureFixture) -> None:
    make_distribution(site, "crossframe-blobs", "blobs", "blobs_plugin", GOOD_DATASET, version="0.3.0")
    cases = [
        (["crossframe-mlflow>=0.1"],
         "requires: 'crossframe-mlflow' is not installed (pip install 'crossframe-mlflow>=0.1')"),
        (["crossframe-blobs>=1.0"],
         "requires: crossframe-blobs 0.3.0 is installed, the config needs crossframe-blobs>=1.0"),
        (["not a requirement!"], "requires.0: 'not a requirement!' is not a requirement"),
    ]
    for requires, expected in cases:
        (workdir / "cfg.json").write_text(json.dumps({**tiny(), "requires": requires}))
        assert main(["run", "cfg.json", "-q"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: {expected}"] or (len(err) == 1 and expected in err[0]), err
    assert not (workdir / "runs").exists()

    cfg = {**tiny(steps=5), "requires": ["crossframe-blobs>=0.3"]}
    cfg["data"] = {"name": "blobs"}
    assert crossframe.run(cfg, quiet=True).status == "completed"


def test_requiring_a_disabled_plugin_says_so(site: Path) -> None:
    make_distribution(site, "crossframe-blobs", "blobs", "blobs_plugin", GOOD_DATASET)
    configure(disabled=["blobs"])
    with pytest.raises(PluginError, match="crossframe-blobs is installed but its plugin 'blobs' is disabled"):
        crossframe.load_config({"requires": ["crossframe-blobs"]})
    with pytest.raises(ConfigError, match="requires: input should be a valid list"):
        crossframe.load_config({"requires": "crossframe-blobs"})


def test_renamed_hook_keeps_working_with_a_warning(site: Path, workdir: Path, tiny,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(compat.RENAMED_HOOKS, "on_training_start", ("on_run_start", "0.3"))
    root = make_distribution(site, "crossframe-legacy", "legacy", "legacy_plugin", RENAMED_HOOK)
    plugin_file = root / "legacy_plugin.py"
    with pytest.warns(FutureWarning) as caught:
        manager = configure()
    message = str(caught[0].message)
    assert f"plugin 'legacy' ({plugin_file}:4) implements 'on_training_start', renamed to 'on_run_start'" in message
    assert "stops working in crossframe 0.3" in message
    assert manager.records["legacy"].hooks == ["on_run_start"]
    crossframe.run(tiny(steps=3), quiet=True)
    import legacy_plugin

    assert legacy_plugin.STARTED == [0]


def test_a_hook_past_its_rename_window_is_an_unknown_hook(site: Path) -> None:
    make_distribution(site, "crossframe-legacy", "legacy", "legacy_plugin", RENAMED_HOOK)
    record = configure().records["legacy"]
    assert record.status == "failed" and "unknown hook 'on_training_start'" in record.error
