"""Configs: formats, overrides, resolution, and one clear line (exit 2) for every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from crossframe.cli.main import main
from crossframe.config.loading import apply_overrides, load_config
from crossframe.errors import ConfigError, UsageError

MALFORMED = [
    ("a.yaml", "train:\n  stepz: 5\n", "train.stepz: unknown key; did you mean 'steps'?"),
    ("b.yaml", "train:\n  steps: -5\n", "train.steps: input should be greater than 0 (got -5)"),
    ("c.yaml", "backend: torhc\n", "backend: unknown backend 'torhc'; did you mean 'torch'?"),
    ("d.yaml", "train:\n  batch_size: many\n", "train.batch_size: input should be a valid integer"),
    ("e.yaml", "model:\n  name: mlp\n  hiden: [3]\n", "model.hiden: unknown key; did you mean 'hidden'?"),
    ("f.yaml", "data: {name: digitz}\n", "data.name: unknown dataset 'digitz'; did you mean 'digits'?"),
    ("g.yaml", "train:\n  optimizer: {name: adamw, lr: -1}\n", "train.optimizer.lr: input should be greater than 0"),
    ("h.yaml", "a: [1\n", "not valid YAML: line 2"),
    ("i.yaml", "precision: fp8\n", "precision: input should be 'fp32', 'bf16' or 'fp16'"),
    ("j.yaml", "train:\n  schedule: {name: cosine, warmup_steps: 10, decay_steps: 5}\n",
     "train.schedule: decay_steps must be larger than warmup_steps"),
    ("k.json", "[1, 2]", "the top level must be a mapping"),
    ("l.toml", "train = 3\n", "train: input should be a valid dictionary"),
    ("m.yaml", "train:\n  steps: 10\n  epochs: 2\n", "train: give either steps or epochs, not both"),
    ("n.yaml", "loggers: [{name: tensorbored}]\n", "loggers.0.name: unknown logger 'tensorbored'"),
    ("o.yaml", "train:\n  metrics: [acuracy]\n", "train.metrics.0: unknown metric 'acuracy'; did you mean 'accuracy'?"),
    ("p.ini", "x=1\n", "unknown format '.ini'"),
    ("q.yaml", "data: {name: csv}\n", "data.path: required but missing"),
    ("r.yaml", "train:\n  clip_norm: 0\n", "train.clip_norm: input should be greater than 0"),
]


@pytest.mark.parametrize(("filename", "text", "expected"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_config_gives_exit_2_and_one_line(filename, text, expected, workdir: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    (workdir / filename).write_text(text)
    assert main(["run", filename, "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert expected in lines[0]
    assert "Traceback" not in captured.err
    assert not (workdir / "runs").exists()  # nothing was started


@pytest.mark.parametrize(("args", "expected"), [
    (["run", "missing.yaml"], "config file 'missing.yaml' not found"),
    (["run", "--set", "nokey"], "--set 'nokey': expected KEY=VALUE"),
    (["run", "--set", "train.steps.deep=3"], "'train.steps' is a value, not a section"),
    (["run", "--device", "quantum"], "Invalid value for '--device'"),
    (["run", "--backend", "jaks"], "backend: unknown backend 'jaks'"),
    (["run", "--device", "tpu", "-q"], "device: 'tpu' requested, but backend 'torch' found only 'cpu'"),
    (["frobnicate"], "No such command 'frobnicate'"),
])
def test_bad_command_lines_give_exit_2_and_one_line(args, expected, workdir: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines


def test_debug_shows_the_traceback(workdir: Path) -> None:
    (workdir / "bad.yaml").write_text("train: {steps: -1}\n")
    with pytest.raises(ConfigError):
        main(["--debug", "run", "bad.yaml"])


def test_formats_agree(workdir: Path) -> None:
    data = {"seed": 7, "train": {"steps": 12, "optimizer": {"name": "sgd", "lr": 0.5}}}
    (workdir / "c.yaml").write_text(yaml.safe_dump(data))
    (workdir / "c.json").write_text(json.dumps(data))
    (workdir / "c.toml").write_text('seed = 7\n[train]\nsteps = 12\n[train.optimizer]\nname = "sgd"\nlr = 0.5\n')
    loaded = [load_config(workdir / f"c.{ext}") for ext in ("yaml", "json", "toml")]
    assert loaded[0] == loaded[1] == loaded[2]
    assert loaded[0].train.optimizer.params == {"lr": 0.5, "momentum": 0.0, "nesterov": False, "weight_decay": 0.0}


def test_overrides_parse_values_as_yaml_and_reach_lists() -> None:
    data = {"train": {"steps": 5}, "loggers": [{"name": "jsonl"}]}
    apply_overrides(data, ["train.steps=300", "train.clip_norm=1.5", "model.hidden=[8, 4]",
                           "loggers.0.name=csv", "train.compile=true", "name=my-run"])
    assert data == {"train": {"steps": 300, "clip_norm": 1.5, "compile": True},
                    "model": {"hidden": [8, 4]}, "loggers": [{"name": "csv"}], "name": "my-run"}
    with pytest.raises(UsageError, match=r"'loggers.3' needs an index from 0 to 1 \(1 appends\)"):
        apply_overrides(data, ["loggers.3.name=x"])
    apply_overrides(data, ["loggers.1.name=csv", "compress.0.name=prune", "compress.0.sparsity=0.5",
                           "compress.1={name: quantize}", "export.0=onnx"])
    assert data["loggers"] == [{"name": "csv"}, {"name": "csv"}]
    assert data["compress"] == [{"name": "prune", "sparsity": 0.5}, {"name": "quantize"}]
    assert data["export"] == ["onnx"]


def test_backend_flag_and_resolution_fill_component_defaults() -> None:
    cfg = load_config("digits-mlp", ["model={name: cnn}"], backend="torch")
    assert cfg.model.params == {"channels": [16, 32], "kernel_size": 3, "hidden": 64, "activation": "relu",
                                "dropout": 0.0}
    assert cfg.train.schedule.params["warmup_steps"] == 30
    assert cfg.train.optimizer.params["betas"] == (0.9, 0.999)


def test_config_show_prints_the_resolved_config(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "digits-mlp", "--set", "train.steps=42"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["steps"] == 42
    assert shown["train"]["grad_accum"] == 1  # a default, filled in
    assert shown["model"]["activation"] == "relu"
    assert main(["config", "show", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["backend"] == "torch"


def test_resolved_config_round_trips(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "--set", "seed=9"]) == 0
    (workdir / "saved.yaml").write_text(capsys.readouterr().out)
    assert load_config(workdir / "saved.yaml") == load_config(None, ["seed=9"])


def test_examples_quickstart_is_the_builtin_default() -> None:
    example = Path(__file__).parents[1] / "examples" / "quickstart.yaml"
    assert load_config(example) == load_config(None)


def test_presets_are_named_in_place_of_a_file(workdir: Path) -> None:
    example = Path(__file__).parents[1] / "examples" / "digits-mlp.yaml"
    assert load_config("digits-mlp") == load_config(example)
    assert load_config("digits-mlp").model.name == "mlp" and load_config("quickstart") == load_config(None)
    with pytest.raises(UsageError, match=r"config file 'digit-mlp' not found \(built-in presets: .*did you mean"):
        load_config("digit-mlp")
    (workdir / "digits-mlp").write_text("seed: 5\n")  # a file of that name wins, whatever its suffix
    with pytest.raises(UsageError, match="unknown format"):
        load_config("digits-mlp")


@pytest.mark.parametrize(("override", "expected"), [
    ("train.optimizer={name: sgd, nesterov: true}", "train.optimizer: nesterov needs momentum > 0"),
    ("train.optimizer={name: adam, betas: [0.9, 1.5]}", "train.optimizer: betas must each be in [0, 1)"),
    ("train.schedule={name: linear, warmup_steps: 9, decay_steps: 3}", "decay_steps must be larger"),
    ("name=bad name!", "name: must be letters, digits"),
])
def test_cross_field_rules_are_config_errors(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert expected in str(info.value)


def test_default_budget_is_visible() -> None:
    cfg = load_config({"train": {}})
    assert cfg.train.steps == 1000 and cfg.train.epochs is None
    assert load_config({"train": {"epochs": 3}}).train.steps is None
