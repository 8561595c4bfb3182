"""The pytest plugin's fixtures, used the way a plugin author would use them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from crossframe import hookimpl
from crossframe.data import Dataset


class Blobs:
    """An in-process dataset plugin."""

    @hookimpl
    def register_datasets(self, register):
        def load(params):
            rng = np.random.default_rng(1)
            y = rng.integers(0, 2, 120)
            return Dataset(rng.normal(0, 0.2, (120, 3)) + y[:, None], y, "classification")

        register("test-blobs", load)


def test_registered_plugin_is_used_by_the_in_process_cli(crossframe_plugins, crossframe_cli, hook_recorder,
                                                         workdir: Path, tiny) -> None:
    crossframe_plugins.register(Blobs(), "blobs")
    cfg = tiny(steps=10, eval_every=5)
    cfg["data"] = {"name": "test-blobs"}
    (workdir / "cfg.json").write_text(json.dumps(cfg))
    result = crossframe_cli("run", "cfg.json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "run directory:" in result.stdout
    names = hook_recorder.names()
    assert names[0] == "on_run_start" and names[-1] == "on_run_end"
    assert names.count("on_step_end") == 10 and names.count("on_eval_end") == 2
    listing = crossframe_cli("plugins", "--json")
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["blobs"]["components"] == {"dataset": ["test-blobs"]}


def test_cli_fixture_reports_errors_as_one_line(crossframe_cli, workdir: Path) -> None:
    result = crossframe_cli("run", "--set", "train.steps=-1")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: train.steps: input should be greater than 0 (got -1)"
