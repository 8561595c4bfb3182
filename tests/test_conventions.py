"""Conventions: plots leave matplotlib's global backend alone; ``config schema`` prints JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.cli.main import main


def test_plots_do_not_switch_matplotlib_backend(tmp_path: Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    from crossframe.compare import plots

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        results = {"results": [{"backend": "torch", "loss_curve": [[1, 2.0], [2, 1.5], [3, 1.2]]},
                               {"backend": "jax", "loss_curve": [[1, 2.1], [2, 1.4], [3, 1.1]]}]}
        path = plots.loss_curves(results, tmp_path / "loss.png")
        assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(before)


def test_config_schema_is_json_schema_that_accepts_the_quickstart(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"backend", "train", "loggers", "registry"} <= set(schema["properties"])
    train = schema["$defs"]["TrainConfig"]["properties"]
    assert train["profile_steps"]["default"] == 0 and train["resource_metrics"]["default"] is True
    assert schema["additionalProperties"] is False  # unknown keys are errors, as in crossframe itself
    jsonschema = pytest.importorskip("jsonschema")
    assert main(["config", "show", "quickstart", "--json"]) == 0
    resolved = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(resolved)) == []
    assert [e.path[-1] for e in validator.iter_errors({**resolved, "train": {"stepz": 5}})] == ["train"]


def test_several_config_files_merge_later_ones_winning(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("backend: torch\nmodel: {name: mlp, hidden: [32, 32]}\n"
                    "train: {steps: 50, batch_size: 8, optimizer: {name: adamw, lr: 0.01}}\nloggers: [{name: csv}]\n")
    more = tmp_path / "more.toml"
    more.write_text("loggers = []\n[train]\nsteps = 70\n[train.optimizer]\nlr = 0.5\n")
    last = tmp_path / "last.json"
    last.write_text(json.dumps({"train": {"steps": 90}}))
    for name in ("CROSSFRAME_TRAIN__STEPS", "CROSSFRAME_SEED"):
        monkeypatch.delenv(name, raising=False)
    assert main(["config", "show", str(base), "-c", str(more), "--config", str(last), "--json"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["steps"] == 90 and cfg["train"]["batch_size"] == 8
    assert cfg["train"]["optimizer"] == {**cfg["train"]["optimizer"], "name": "adamw", "lr": 0.5}
    assert cfg["model"]["hidden"] == [32, 32] and cfg["loggers"] == []


def test_environment_overrides_sit_between_files_and_set(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from crossframe.config.loading import env_overrides

    assert env_overrides({"CROSSFRAME_TRAIN__LOG_EVERY": "5", "CROSSFRAME_DEBUG": "1", "CROSSFRAME_SEED": "4",
                          "OTHER_SEED": "1", "CROSSFRAME_TRAIN__": "x"}) == ["seed=4", "train.log_every=5"]
    monkeypatch.setenv("CROSSFRAME_TRAIN__STEPS", "123")
    monkeypatch.setenv("CROSSFRAME_SEED", "9")
    assert main(["config", "show", "digits-mlp", "--json", "--set", "seed=11"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["steps"] == 123 and cfg["seed"] == 11
    monkeypatch.setenv("CROSSFRAME_TRAIN__STEPZ", "1")
    assert main(["config", "show", "digits-mlp"]) == 2
    assert "stepz" in capsys.readouterr().err


_keys = st.sampled_from(["a", "b", "c", "train", "lr"])
_leaves = st.one_of(st.integers(-5, 5), st.booleans(), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2))
_trees = st.recursive(_leaves, lambda inner: st.dictionaries(_keys, inner, max_size=3), max_leaves=8)
_configs = st.dictionaries(_keys, _trees, max_size=4)


@given(_configs, _configs)
def test_merging_keeps_every_leaf_of_the_later_config(base: dict, later: dict) -> None:
    from crossframe.config.loading import merge_configs
    from crossframe.runs.detail import flatten

    merged = merge_configs(base, later)
    flat_merged, flat_later = flatten(merged), flatten(later)
    for key, value in flat_later.items():
        if value != {}:  # an empty section merges nothing over a full one
            assert flat_merged[key] == value
    for key, value in flatten(base).items():  # a base leaf survives unless the later config covers its path
        covered = any(key == k or key.startswith(k + ".") or k.startswith(key + ".") for k in flat_later)
        assert covered or flat_merged.get(key) == value
    assert merge_configs(merged, later) == merged  # applying the same layer twice changes nothing


@given(_configs, _configs)
def test_config_diff_is_empty_exactly_for_equal_flattenings(a: dict, b: dict) -> None:
    from crossframe.runs.detail import config_diff, flatten

    diff = config_diff(a, b)
    assert (diff == []) == (flatten(a) == flatten(b))
    assert config_diff(a, a) == []
    assert [(k, vb, va) for k, va, vb in diff] == config_diff(b, a)
