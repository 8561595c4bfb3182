"""LMBatchLoader: batches are a pure function of (seed, step); ranks partition the global batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.errors import ConfigError, CrossframeError
from crossframe.text.loader import LMBatchLoader, eval_batches
from crossframe.text.sequences import packed_block_count
from crossframe.text.store import prepare
from crossframe.text.tokenizers import BytesTokenizer

TOKENS = (np.arange(5_001) * 31 % 257).astype(np.uint16)  # 5,001 tokens: 5000 targets


def rows(batch: dict) -> set[tuple[int, ...]]:
    return {tuple(r) for r in batch["x"].tolist()}


@given(st.lists(st.integers(0, 200), min_size=1, max_size=15), st.integers(0, 3))
def test_batch_is_a_pure_function_of_seed_and_step(steps: list[int], seed: int) -> None:
    reference = LMBatchLoader(TOKENS, 16, 8, seed)
    expected = {s: reference.batch(s) for s in sorted(set(steps))}  # in order, like a run
    resumed = LMBatchLoader(TOKENS, 16, 8, seed)  # a fresh process, visiting steps in any order
    for step in steps:
        got = resumed.batch(step)
        assert all(np.array_equal(got[k], expected[step][k]) for k in ("x", "y"))


def test_batches_shift_and_shapes_and_seeds() -> None:
    loader = LMBatchLoader(TOKENS, 16, 8, seed=0)
    batch = loader.batch(3)
    assert batch["x"].shape == batch["y"].shape == (8, 16) and batch["x"].dtype == np.int32
    assert (batch["y"][:, :-1] == batch["x"][:, 1:]).all()
    for idx, x, y in zip(np.sort(loader.indices(3)), batch["x"], batch["y"], strict=True):
        assert (x == TOKENS[idx * 16: idx * 16 + 16]).all() and (y == TOKENS[idx * 16 + 1: idx * 16 + 17]).all()
    other = LMBatchLoader(TOKENS, 16, 8, seed=1)
    assert not np.array_equal(other.batch(3)["x"], batch["x"])
    assert loader.tokens_per_step == 128 and [s for s, _ in loader.iterate(2, 5)] == [2, 3, 4]


def test_each_epoch_visits_distinct_blocks_and_reshuffles() -> None:
    loader = LMBatchLoader(TOKENS, 16, 8, seed=5)
    n_blocks = packed_block_count(TOKENS.size, 16)
    assert loader.n_blocks == n_blocks == 312 and loader.steps_per_epoch == 39
    for epoch in (0, 1):
        seen = np.concatenate([loader.global_indices(epoch * 39 + s) for s in range(39)])
        assert len(set(seen.tolist())) == seen.size == 39 * 8
    assert loader.epoch_of(39) == 1
    assert not np.array_equal(loader.global_indices(0), loader.global_indices(39))


@given(st.sampled_from([1, 2, 3, 4, 6]), st.integers(1, 4), st.integers(0, 120), st.integers(0, 9))
def test_ranks_partition_the_global_batch(world: int, per_rank: int, step: int, seed: int) -> None:
    batch_size = world * per_rank
    single = LMBatchLoader(TOKENS, 8, batch_size, seed)
    ranks = [LMBatchLoader(TOKENS, 8, batch_size, seed, rank=r, world_size=world) for r in range(world)]
    parts = [r.indices(step) for r in ranks]
    joined = np.concatenate(parts)
    assert all(p.size == per_rank for p in parts)
    assert len(set(joined.tolist())) == batch_size  # no overlap
    assert sorted(joined.tolist()) == sorted(single.indices(step).tolist())  # no gap
    merged = set().union(*(rows(r.batch(step)) for r in ranks))
    assert merged == rows(single.batch(step))


def test_loader_reads_a_store_split(tmp_path: Path) -> None:
    store = prepare([f"document number {i}\n" * 5 for i in range(40)], BytesTokenizer(), tmp_path / "s")
    loader = LMBatchLoader(store["train"], 32, 4, seed=0)
    batch = loader.batch(0)
    assert batch["x"].max() <= 256 and loader.n_blocks == (store["train"].n_tokens - 1) // 32
    blocks = list(eval_batches(store["train"], 32, 10))
    assert sum(len(b["x"]) for b in blocks) == loader.n_blocks and len(blocks[-1]["x"]) <= 10


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"batch_size": 6, "world_size": 4}, "multiple of the world size 4"),
    ({"batch_size": 8, "rank": 2, "world_size": 2}, "rank: must be in 0..1"),
    ({"batch_size": 400}, "exceeds the 312 blocks"),
])
def test_bad_loader_settings(kwargs: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        LMBatchLoader(TOKENS, 16, seed=0, **kwargs)
    assert expected in str(exc.value) and "\n" not in str(exc.value) and isinstance(exc.value, CrossframeError)
