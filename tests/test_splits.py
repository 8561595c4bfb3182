"""Splits: k folds are disjoint and cover the data, stratified folds keep class ratios within one
example, groups never straddle; a test split; ``crossframe cv`` end to end on torch and jax."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.data.splits import holdout, kfold
from crossframe.errors import ConfigError, DataError


@st.composite
def labelled(draw: Any) -> tuple[np.ndarray, int, int]:
    n = draw(st.integers(4, 200))
    classes = draw(st.integers(1, 6))
    y = np.array(draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    k = draw(st.integers(2, min(10, n)))
    return y, k, draw(st.integers(0, 2**31 - 1))


def _assert_partition(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n)), "parts overlap or miss examples"


@given(labelled(), st.booleans())
def test_folds_are_disjoint_cover_the_data_and_stratified_ones_keep_class_ratios(
        case: tuple[np.ndarray, int, int], stratify: bool) -> None:
    y, k, seed = case
    folds = kfold(len(y), k, seed, labels=y if stratify else None)
    _assert_partition(folds, len(y))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    if stratify:
        for c in np.unique(y):
            counts = [int(np.sum(y[f] == c)) for f in folds]
            share = np.sum(y == c) / k
            assert all(abs(n_c - share) < 1 for n_c in counts), f"class {c}: {counts} per fold, share {share}"
    assert all(np.array_equal(a, b) for a, b in zip(folds, kfold(len(y), k, seed, labels=y if stratify else None),
                                                    strict=True)), "the same seed gives other folds"


@given(st.lists(st.integers(0, 12), min_size=6, max_size=120), st.integers(2, 4), st.integers(0, 99))
def test_grouped_folds_keep_each_group_in_one_fold(groups_list: list[int], k: int, seed: int) -> None:
    groups = np.array(groups_list)
    if len(np.unique(groups)) < k:
        with pytest.raises(DataError, match="groups cannot fill"):
            kfold(len(groups), k, seed, groups=groups)
        return
    folds = kfold(len(groups), k, seed, groups=groups)
    _assert_partition(folds, len(groups))
    owners = [set(groups[f].tolist()) for f in folds]
    assert all(not (owners[i] & owners[j]) for i in range(k) for j in range(i + 1, k)), "a group is in two folds"


@given(labelled(), st.sampled_from([0.1, 0.2, 0.3]), st.sampled_from([0.0, 0.15]))
def test_stratified_holdout_keeps_every_class_within_one_example(case: tuple[np.ndarray, int, int], val: float,
                                                                 test: float) -> None:
    y, _, seed = case
    n = len(y)
    if round(n * val) + round(n * test) >= n:
        return
    train, va, te = holdout(n, val, test, seed, labels=y)
    _assert_partition([train, va, te], n)
    assert len(va) == round(n * val) and len(te) == round(n * test)
    for c in np.unique(y):
        n_c = np.sum(y == c)
        assert abs(np.sum(y[va] == c) - n_c * len(va) / n) < 1


def test_grouped_holdout_and_the_bad_combinations() -> None:
    groups = np.repeat(np.arange(10), 5)
    train, val, test = holdout(50, 0.2, 0.2, 0, groups=groups)
    _assert_partition([train, val, test], 50)
    assert not set(groups[val]) & set(groups[train]) and not set(groups[test]) & set(groups[train])
    with pytest.raises(ConfigError, match="'stratify' and 'group' together"):
        holdout(50, 0.2, 0.0, 0, labels=groups, groups=groups)
    with pytest.raises(DataError, match="leave no training examples"):
        holdout(10, 0.5, 0.5, 0)
    with pytest.raises(DataError, match="3 folds of 2 examples"):
        kfold(2, 3, 0)


# --------------------------------------------------------------------------- runs


def _config(tmp_path: Path, **split: Any) -> dict[str, Any]:
    return {"backend": "torch", "device": "cpu", "seed": 2, "output_dir": str(tmp_path / "runs"),
            "data": {"name": "synthetic", "samples": 90, "features": 5, "classes": 3, "split": split},
            "model": {"name": "mlp", "hidden": [8]},
            "train": {"steps": 8, "batch_size": 16, "log_every": 4, "optimizer": {"name": "adamw", "lr": 0.02},
                      "metrics": ["accuracy", "f1", "roc_auc"]}}


@pytest.mark.slow  # two short runs
def test_a_test_split_is_held_out_and_eval_reads_it(tmp_path: Path) -> None:
    import crossframe
    from crossframe.config.loading import load_config
    from crossframe.train.data import load_training_data
    from crossframe.train.evaluate import evaluate

    cfg = _config(tmp_path, val=0.2, test=0.2, stratify=True)
    data = load_training_data(load_config(cfg))
    assert (len(data.loader.dataset), len(data.val), len(data.test)) == (54, 18, 18)
    seen = [data.loader.dataset.x, data.val.x, data.test.x]
    rows = {row.tobytes() for part in seen for row in part}
    assert len(rows) == 90, "train, val and test share an example"
    run_dir = crossframe.run(cfg, quiet=True).run_dir
    on_test = evaluate(run_dir, split="test")
    assert on_test["test/accuracy"] == pytest.approx(np.mean(_predict(run_dir, data.test.x) == data.test.y))
    no_test = crossframe.run(_config(tmp_path), quiet=True).run_dir
    with pytest.raises(ConfigError, match="has no test split"):
        evaluate(no_test, split="test")


def _predict(run_dir: Path, x: np.ndarray) -> np.ndarray:
    from crossframe.checkpoint import load_checkpoint
    from crossframe.models import spec_from_json
    from crossframe.train.runner import make_backend

    ckpt = load_checkpoint(run_dir)
    backend = make_backend(ckpt.state["backend"])
    state = backend.inference_state(spec_from_json(ckpt.state["model"]), ckpt.weights)
    return backend.predict(state, x).argmax(axis=1)


def _cv(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``crossframe cv ARGS`` through the CLI's own entry (exit codes and one-line errors included)."""
    from crossframe.cli.main import main

    code = main(["cv", *args])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.slow  # two folds trained (in two spawned processes with jobs=2)
@pytest.mark.parametrize(("backend", "jobs"), [("jax", 1), ("torch", 2)])
def test_cv_trains_every_fold_and_writes_a_table_and_json(tmp_path: Path, backend: str, jobs: int,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from crossframe.train.evaluate import evaluate

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, stratify=True)))
    code, output = _cv([str(path), "--folds", "2", "--jobs", str(jobs), "--backend", backend], capsys)
    assert code == 0, output
    assert "mean ± std" in output and "roc_auc" in output
    summary_path = next((tmp_path / "runs").glob("*-cv/cv.json"))
    summary = json.loads(summary_path.read_text())
    rows = summary["results"]
    assert [r["fold"] for r in rows] == [0, 1] and all(r["status"] == "completed" for r in rows)
    assert sum(r["val"] for r in rows) == 90 and all(r["train"] + r["val"] == 90 for r in rows)
    accs = [r["metrics"]["val/accuracy"] for r in rows]
    assert summary["summary"]["val/accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert summary["summary"]["val/accuracy"]["std"] == pytest.approx(np.std(accs))
    fold = Path(rows[1]["run_dir"])
    assert evaluate(fold)["val/accuracy"] == pytest.approx(accs[1])  # each fold is an ordinary run
    assert summary["backend"] == backend and summary["jobs"] == jobs


def test_cv_refuses_bad_input_in_one_line_before_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = tmp_path / "c.yaml"
    cfg = _config(tmp_path, stratify=True)
    cfg["data"]["task"] = "regression"
    path.write_text(yaml.safe_dump(cfg))
    for args, message in (([str(path), "--folds", "3"], "data.split.stratify: needs class labels"),
                          ([str(path), "--folds", "1"], "--folds: 1; use at least 2")):
        code, output = _cv(args, capsys)
        assert code == 2, output
        assert message in output and "Traceback" not in output and len(output.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoints"))
