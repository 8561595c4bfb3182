"""Tabular data: csv with categorical columns, Parquet and Arrow through pyarrow, standardisation
fitted on the training split only and applied by eval and serve; bad files and columns are one line."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossframe.data.splits import holdout
from crossframe.data.tabular import TRANSFORM_FILE, CsvParams, TabularParams, load_arrow, load_csv, load_parquet
from crossframe.errors import DataError

N = 80


def _table(seed: int = 0) -> dict[str, list[Any]]:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "pro", "max"], N)
    age = rng.integers(18, 80, N).astype(float)
    income = np.round(rng.normal(50_000, 15_000, N), 2)
    churned = np.where((plan == "basic") ^ (rng.random(N) < 0.1), "yes", "no")
    return {"age": age.tolist(), "plan": plan.tolist(), "region": rng.choice(["n", "s"], N).tolist(),
            "income": income.tolist(), "churned": churned.tolist()}


def _write_csv(path: Path, table: dict[str, list[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(list(table))
        writer.writerows(zip(*table.values(), strict=True))
    return path


def _config(tmp_path: Path, path: Path, **data: Any) -> dict[str, Any]:
    return {"backend": "torch", "device": "cpu", "seed": 4, "output_dir": str(tmp_path / "runs"),
            "data": {"name": "csv", "path": str(path), "target": "churned", "categorical": ["plan", "region"],
                     "split": {"val": 0.25, "stratify": True}, **data},
            "model": {"name": "mlp", "hidden": [8]},
            "train": {"steps": 10, "batch_size": 16, "log_every": 5, "optimizer": {"name": "adamw", "lr": 0.05},
                      "metrics": ["accuracy", "roc_auc"]}}


def test_statistics_come_from_the_training_split_and_eval_applies_the_saved_ones(tmp_path: Path) -> None:
    import crossframe
    from crossframe.config.loading import load_config
    from crossframe.train.data import load_training_data
    from crossframe.train.evaluate import evaluate

    table = _table()
    path = _write_csv(tmp_path / "churn.csv", table)
    result = crossframe.run(_config(tmp_path, path), quiet=True)
    saved = json.loads((result.run_dir / TRANSFORM_FILE).read_text())
    assert [f["name"] for f in saved["features"]] == ["age", "plan", "region", "income"]
    assert saved["features"][1]["levels"] == ["basic", "max", "pro"]
    y = (np.array(table["churned"]) == "yes").astype(int)  # class names sort: no, yes
    train_idx, val_idx, _ = holdout(N, 0.25, 0.0, 4, labels=y)
    for column, k in (("age", 0), ("income", 1)):
        raw = np.array(table[column])
        assert saved["mean"][k] == pytest.approx(raw[train_idx].mean(), rel=1e-12)
        assert saved["std"][k] == pytest.approx(raw[train_idx].std(), rel=1e-12)
        assert saved["mean"][k] != pytest.approx(raw.mean(), rel=1e-9)  # not the whole file's
    data = load_training_data(load_config(result.run_dir / "config.yaml"))
    age = np.array(table["age"])[val_idx]
    # float32 inputs: the standardised value is exact to float32 rounding (about 6e-8 relative)
    np.testing.assert_allclose(data.val.x[:, 0], (age - saved["mean"][0]) / saved["std"][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(data.val.x[:, 1:4].sum(axis=1), 1.0)  # one-hot plan
    assert data.info.class_names == ("no", "yes") and data.info.input_shape == (7,)
    assert evaluate(result.run_dir)["val/accuracy"] == pytest.approx(result.metrics["val/accuracy"])
    # the file changes after training: explain (like eval) keeps the run's statistics, never refits them
    from crossframe.explain.load import load_run

    _write_csv(path, {**table, "age": [a + 100.0 for a in table["age"]]})
    shifted = load_run(result.run_dir).dataset.x[:, 0]
    np.testing.assert_allclose(shifted, (age + 100.0 - saved["mean"][0]) / saved["std"][0], rtol=1e-6, atol=1e-5)


def test_parquet_and_arrow_files_read_as_the_csv_does(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.feather as feather
    import pyarrow.parquet as pq

    table = _table(1)
    arrow = pa.table(table)
    pq.write_table(arrow, tmp_path / "t.parquet")
    feather.write_feather(arrow, tmp_path / "t.arrow")
    common = {"target": "churned", "categorical": ["plan", "region"]}
    want = load_csv(CsvParams(path=_write_csv(tmp_path / "t.csv", table), **common))
    for got in (load_parquet(TabularParams(path=tmp_path / "t.parquet", **common)),
                load_arrow(TabularParams(path=tmp_path / "t.arrow", **common))):
        np.testing.assert_array_equal(got.x, want.x)
        np.testing.assert_array_equal(got.y, want.y)
        assert got.class_names == want.class_names == ("no", "yes")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"data.path: '.*bad.parquet' is not a readable parquet file"):
        load_parquet(TabularParams(path=tmp_path / "bad.parquet", **common))


def test_index_encoding_and_unseen_levels(tmp_path: Path) -> None:
    table = _table(2)
    params = CsvParams(path=_write_csv(tmp_path / "t.csv", table), target="churned", categorical=["plan", "region"],
                       encoding="index", columns=["plan", "age"])
    data = load_csv(params)
    assert data.x.shape == (N, 2)
    assert set(np.unique(data.x[:, 0])) <= {0.0, 1.0, 2.0}
    fitted = data.transform.fit(data.x)
    x = fitted.rows([{"plan": "enterprise", "age": 30}, {"plan": "pro", "age": 30}])
    assert x[0, 0] == -1.0 and x[1, 0] == 2.0  # unseen level: -1; levels sorted: basic, max, pro
    with pytest.raises(DataError, match="numeric column 'age' is missing"):
        fitted.rows([{"plan": "pro"}])


@pytest.mark.parametrize(("change", "message"), [
    ({"target": "gone"}, "data.target: column 'gone' not in"),
    ({"categorical": ["plan"]}, "non-numeric cell 'n' in column 'region' (row 1)"),
    ({"columns": ["age", "churned"]}, "data.columns: 'churned' is the target"),
])
def test_bad_columns_are_one_line_naming_the_file_and_column(tmp_path: Path, change: dict[str, Any], message: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from crossframe.cli.main import main

    path = _write_csv(tmp_path / "churn.csv", _table())
    cfg = _config(tmp_path, path)
    cfg["data"].update(change)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # after the run-directory line
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err
    if "row" in message:
        assert "churn.csv" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow  # a run and a server subprocess
def test_serve_applies_the_runs_transform_to_raw_rows(tmp_path: Path) -> None:
    import httpx

    import crossframe
    from crossframe.config.loading import load_config
    from crossframe.train.data import load_training_data

    table = _table()
    run_dir = crossframe.run(_config(tmp_path, _write_csv(tmp_path / "churn.csv", table)), quiet=True).run_dir
    data = load_training_data(load_config(run_dir / "config.yaml"))
    port = _free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "crossframe", "serve", str(run_dir), "--port", str(port),
                             "--log-level", "warning"], stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        y = (np.array(table["churned"]) == "yes").astype(int)
        _, val_idx, _ = holdout(N, 0.25, 0.0, 4, labels=y)
        rows = [{k: table[k][i] for k in ("age", "plan", "region", "income")} for i in val_idx]
        by_rows = httpx.post(f"{url}/v1/predict", json={"rows": rows}, timeout=30)
        by_inputs = httpx.post(f"{url}/v1/predict", json={"inputs": data.val.x.tolist()}, timeout=30)
        assert by_rows.status_code == 200, by_rows.text
        # the same float32 inputs through the same model: identical scores
        assert [d["scores"] for d in by_rows.json()["data"]] == [d["scores"] for d in by_inputs.json()["data"]]
        assert {d["label"] for d in by_rows.json()["data"]} <= {"no", "yes"}
        bad = httpx.post(f"{url}/v1/predict", json={"rows": [{"plan": "pro"}]}, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "rows"
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_group_column_keeps_each_group_in_one_split_and_is_not_a_feature(tmp_path: Path) -> None:
    from crossframe.config.loading import load_config
    from crossframe.errors import ConfigError
    from crossframe.train.data import load_training_data

    table = _table(3)
    table["customer"] = [f"c{i // 4}" for i in range(N)]  # 20 customers, 4 rows each
    cfg = _config(tmp_path, _write_csv(tmp_path / "t.csv", table))
    cfg["data"]["split"] = {"val": 0.25, "test": 0.25, "group": "customer"}
    data = load_training_data(load_config(cfg))
    parts = [data.loader.dataset, data.val, data.test]
    assert sum(len(p) for p in parts) == N and all(p.groups is not None for p in parts)
    owners = [set(p.groups.tolist()) for p in parts]
    assert not (owners[0] & owners[1]) and not (owners[0] & owners[2]) and not (owners[1] & owners[2])
    assert data.info.input_shape == (7,)  # age, plan x3, region x2, income: no customer column
    cfg["data"] = {"name": "synthetic", "split": {"group": "customer"}}
    with pytest.raises(ConfigError, match=r"data\.split\.group: source 'synthetic' has no group ids"):
        load_training_data(load_config(cfg))
