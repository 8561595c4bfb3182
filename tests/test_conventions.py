"""Conventions: plots leave matplotlib's global backend alone; ``config schema`` prints JSON Schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
