"""Data sources, the seeded split and the resumable batch order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.data import BatchLoader, Dataset
from crossframe.data.loader import eval_batches
from crossframe.data.sources import (
    CsvParams,
    DigitsParams,
    NpzParams,
    SyntheticParams,
    load_csv,
    load_digits,
    load_npz,
    load_synthetic,
)
from crossframe.errors import ConfigError, DataError


def numbered(n: int) -> Dataset:
    return Dataset(np.arange(n, dtype=np.float32)[:, None], np.arange(n) % 3, "classification")


@given(n=st.integers(10, 300), batch=st.integers(1, 10), seed=st.integers(0, 10**6), step=st.integers(0, 500))
def test_batch_is_a_pure_function_of_seed_and_step(n, batch, seed, step) -> None:
    data = numbered(n)
    warm = BatchLoader(data, batch, seed)
    for s in range(0, step, max(step // 7, 1)):  # walk through other epochs first
        warm.batch(s)
    fresh = BatchLoader(data, batch, seed)
    assert np.array_equal(warm.batch(step)["x"], fresh.batch(step)["x"])


@given(n=st.integers(10, 200), batch=st.integers(1, 10), seed=st.integers(0, 10**6), epoch=st.integers(0, 5))
def test_an_epoch_visits_distinct_examples(n, batch, seed, epoch) -> None:
    loader = BatchLoader(numbered(n), batch, seed)
    spe = loader.steps_per_epoch
    seen = np.concatenate([loader.indices(epoch * spe + i) for i in range(spe)])
    assert len(seen) == spe * batch == len(np.unique(seen))


def test_epochs_are_shuffled_differently_and_seeds_matter() -> None:
    loader = BatchLoader(numbered(100), 10, seed=0)
    assert not np.array_equal(loader.order(0), loader.order(1))
    assert not np.array_equal(loader.order(0), BatchLoader(numbered(100), 10, seed=1).order(0))


def test_batch_larger_than_data_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_size: 64"):
        BatchLoader(numbered(10), 64, 0)


def test_eval_batches_cover_everything_once() -> None:
    data = numbered(23)
    xs = np.concatenate([b["x"] for b in eval_batches(data, 5)])
    assert np.array_equal(xs, data.x)


def test_split_is_seeded_and_disjoint() -> None:
    data = numbered(100)
    train, val = data.split(0.2, seed=4)
    again, _ = data.split(0.2, seed=4)
    assert len(val) == 20 and len(train) == 80
    assert np.array_equal(train.x, again.x)
    assert not set(train.x[:, 0]) & set(val.x[:, 0])


def test_digits_are_images_in_unit_range() -> None:
    data = load_digits(DigitsParams())
    assert data.x.shape == (1797, 8, 8, 1) and data.x.dtype == np.float32
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0
    assert data.info.num_outputs == 10
    assert load_digits(DigitsParams(flatten=True)).x.shape == (1797, 64)


def test_synthetic_is_reproducible_and_both_tasks_work() -> None:
    a = load_synthetic(SyntheticParams(seed=5))
    b = load_synthetic(SyntheticParams(seed=5))
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    reg = load_synthetic(SyntheticParams(task="regression", targets=2))
    assert reg.task == "regression" and reg.y.shape == (1024, 2)
    assert reg.info.num_outputs == 2


def test_npz_source(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.ones((10, 3)), y=np.arange(10) % 2, x_val=np.zeros((4, 3)), y_val=np.array([0, 1, 0, 1]))
    data = load_npz(NpzParams(path=path))
    assert data.task == "classification"
    train, val = data.split(0.5, 0)
    assert len(train) == 10 and len(val) == 4  # the file's own validation part wins
    with pytest.raises(DataError, match="has no array 'features'"):
        load_npz(NpzParams(path=path, x_key="features"))
    with pytest.raises(DataError, match="not found"):
        load_npz(NpzParams(path=tmp_path / "nope.npz"))


def test_csv_source(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n1,2,0\n3,4,1\n5,6.5,1\n")
    data = load_csv(CsvParams(path=path, target="label"))
    assert data.task == "classification"
    assert np.array_equal(data.x, [[1, 2], [3, 4], [5, 6.5]]) and list(data.y) == [0, 1, 1]
    assert load_csv(CsvParams(path=path, target="b")).task == "regression"
    with pytest.raises(DataError, match="column 'lbl' not in"):
        load_csv(CsvParams(path=path, target="lbl"))
    path.write_text("a,label\nx,1\n")
    with pytest.raises(DataError, match="non-numeric"):
        load_csv(CsvParams(path=path, target="label"))


def test_mismatched_lengths_and_fractional_labels_are_rejected() -> None:
    with pytest.raises(DataError, match="3 inputs but 2 targets"):
        Dataset(np.zeros((3, 1)), np.zeros(2), "classification")
    with pytest.raises(DataError, match="integer class ids"):
        Dataset(np.zeros((2, 1)), np.array([0.5, 1.0]), "classification")
