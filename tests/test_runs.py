"""``crossframe runs``: list, show and diff real run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import crossframe
from crossframe.cli.main import main
from crossframe.runs import find_runs, list_runs, summarize
from crossframe.runs.detail import config_diff, diff, flatten, show
from crossframe.runs.summary import dir_size
from tests.conftest import tiny_config

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny torch runs differing in learning rate; the second has a prune step."""
    root = tmp_path_factory.mktemp("runs")
    base = {**tiny_config(eval_every=10), "output_dir": str(root)}
    crossframe.run({**base, "name": "a"}, quiet=True)
    b = {**base, "name": "b", "compress": [{"name": "prune", "sparsity": 0.5}]}
    b["train"] = {**b["train"], "optimizer": {"name": "adamw", "lr": 0.02}}
    crossframe.run(b, quiet=True)
    return root


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_list_reads_backend_model_steps_status_metric_and_size(two_runs: Path) -> None:
    found = {s.name: s for s in list_runs(two_runs)}
    assert set(found) == {"a", "b"}
    a = found["a"]
    assert (a.backend, a.model, a.steps, a.status) == ("torch", "mlp", 20, "completed")
    last_acc = [r["val/accuracy"] for r in _records(two_runs / "a") if "val/accuracy" in r][-1]
    assert a.metric == "val/accuracy" and a.best == pytest.approx(last_acc, abs=0)
    assert a.size_bytes == sum(p.stat().st_size for p in (two_runs / "a").rglob("*") if p.is_file())


def test_show_diffs_a_compressed_step_against_its_run(two_runs: Path) -> None:
    info = show(two_runs / "b")
    assert info["parent"] is None
    assert [c["step"] for c in info["checkpoints"]] == [20] and info["checkpoints"][0]["manifest"]
    assert [e["name"] for e in info["exports"]] == ["prune"]
    losses = [r["train/loss"] for r in _records(two_runs / "b") if "train/loss" in r]
    assert info["metrics"]["train/loss"]["last"] == losses[-1]
    assert info["metrics"]["train/loss"]["min"] == min(losses)
    assert info["metrics"]["train/loss"]["count"] == len(losses)
    step = show(two_runs / "b" / "compressed" / "1-prune")
    assert step["parent"] == str(two_runs / "b")


def test_diff_names_changed_config_keys_and_metrics(two_runs: Path) -> None:
    info = diff(two_runs / "a", two_runs / "b")
    keys = {k: (va, vb) for k, va, vb in info["config"]}
    assert keys["train.optimizer.lr"] == (0.01, 0.02)
    assert keys["name"] == ("a", "b")
    assert "compress.0.name" in keys
    metrics = {m["metric"]: m for m in info["metrics"]}
    assert metrics["train/loss"]["delta"] == pytest.approx(metrics["train/loss"]["b"] - metrics["train/loss"]["a"])


def test_cli_lists_shows_and_diffs(two_runs: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["runs", "--root", str(two_runs), "--json"]) == 0
    assert {r["name"] for r in json.loads(capsys.readouterr().out)} == {"a", "b"}
    assert main(["runs", "show", str(two_runs / "a"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["steps"] == 20
    assert main(["runs", "diff", str(two_runs / "a"), str(two_runs / "b")]) == 0
    assert "train.optimizer.lr" in capsys.readouterr().out
    assert main(["runs", "show", str(two_runs / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err and "config.yaml" in err


def test_a_thousand_runs_list_from_small_files(tmp_path: Path) -> None:
    for i in range(1000):
        ckpt = tmp_path / f"run{i:04d}" / "checkpoints" / f"step_{i + 1}"
        ckpt.mkdir(parents=True)
        (ckpt.parent.parent / "config.yaml").write_text("backend: jax\n")
        (ckpt / "state.json").write_text(json.dumps({"step": i + 1, "backend": "jax", "status": "completed",
                                                     "model": {"name": "gpt"}, "last_eval": {"val/loss": i / 10}}))
        (ckpt.parent / "latest").write_text(f"step_{i + 1}\n")
    (tmp_path / "not-a-run").mkdir()
    found = list_runs(tmp_path)
    assert len(found) == 1000 == len(find_runs(tmp_path))
    by_name = {s.name: s for s in found}
    assert by_name["run0042"].steps == 43 and by_name["run0042"].best == pytest.approx(4.2)
    assert by_name["run0042"].size_bytes == dir_size(tmp_path / "run0042")


def test_a_run_without_checkpoints_is_listed_as_running(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("backend: torch\n")
    (tmp_path / "metrics.jsonl").write_text('{"step": 5, "train/loss": 1.0}\n')
    s = summarize(tmp_path)
    assert (s.status, s.steps, s.best) == ("running", None, None)


def test_flatten_and_config_diff() -> None:
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "l": [{"name": "x"}]}) == {"a.b": 1, "a.c": [1, 2], "l.0.name": "x"}
    assert config_diff({"a": 1, "b": 2}, {"a": 1, "c": 3}) == [("b", 2, "<unset>"), ("c", "<unset>", 3)]
