"""Packing, truncation and sliding windows: no token lost or repeated, the LM shift, the masks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.errors import ConfigError
from crossframe.text.sequences import (
    pack,
    packed_block_count,
    sliding_window_plan,
    sliding_windows,
    truncate,
)

token_lists = st.lists(st.integers(0, 1000), max_size=300)
seq_lens = st.integers(1, 40)


@given(token_lists, seq_lens)
def test_packing_loses_and_repeats_nothing(tokens: list[int], seq_len: int) -> None:
    arr = np.array(tokens, dtype=np.uint16)
    batch = pack(arr, seq_len)
    n_blocks = packed_block_count(len(tokens), seq_len)
    assert batch["x"].shape == batch["y"].shape == (n_blocks, seq_len) and batch["x"].dtype == np.int32
    covered = n_blocks * seq_len
    assert batch["x"].reshape(-1).tolist() == tokens[:covered]  # every input once, in order
    assert batch["y"].reshape(-1).tolist() == tokens[1:covered + 1]  # every target once, in order
    assert 0 <= max(len(tokens) - 1, 0) - covered < seq_len  # only a tail of targets is left
    if n_blocks:
        assert (batch["y"][:, :-1] == batch["x"][:, 1:]).all()  # the LM shift


@given(token_lists, seq_lens)
def test_packing_with_padded_tail_covers_every_target(tokens: list[int], seq_len: int) -> None:
    batch = pack(np.array(tokens, dtype=np.int64), seq_len, pad_last=True, pad_id=7)
    mask = batch["mask"].astype(bool)
    assert batch["y"][mask].tolist() == tokens[1:]
    assert batch["x"][mask].tolist() == tokens[:-1]
    assert (batch["y"][~mask] == 7).all() and (batch["x"][~mask] == 7).all()


docs_strategy = st.lists(st.lists(st.integers(0, 99), max_size=60), max_size=8)


@given(docs_strategy, seq_lens)
def test_truncation_split_long_loses_and_repeats_nothing(docs: list[list[int]], seq_len: int) -> None:
    eot = 100
    batch = truncate(docs, seq_len, eot_id=eot, split_long=True)
    mask = batch["mask"].astype(bool)
    expected_targets = [t for doc in docs for t in [*doc, eot]]
    expected_inputs = [t for doc in docs for t in [eot, *doc]]
    assert batch["y"][mask].tolist() == expected_targets
    assert batch["x"][mask].tolist() == expected_inputs
    assert (batch["y"][~mask] == eot).all()  # pads default to eot_id, masked out
    assert batch["x"].shape[1] == seq_len and batch["mask"].dtype == np.float32
    assert (mask[:, 0]).all() and (np.diff(mask.astype(int), axis=1) <= 0).all()  # pads only at the end


@given(docs_strategy, seq_lens)
def test_truncation_keeps_a_prefix_per_document(docs: list[list[int]], seq_len: int) -> None:
    eot, pad = 100, 101
    batch = truncate(docs, seq_len, eot_id=eot, pad_id=pad)
    assert batch["x"].shape == (len(docs), seq_len)
    for row, doc in enumerate(docs):
        mask = batch["mask"][row].astype(bool)
        assert batch["y"][row][mask].tolist() == [*doc, eot][:seq_len]
        assert batch["x"][row][mask].tolist() == [eot, *doc][:seq_len]
        assert (batch["x"][row][~mask] == pad).all()


def test_truncation_without_bos() -> None:
    batch = truncate([[1, 2, 3], []], 4, eot_id=9, bos=False)
    assert batch["x"].tolist() == [[1, 2, 3, 9]] and batch["y"].tolist() == [[2, 3, 9, 9]]
    assert batch["mask"].tolist() == [[1, 1, 1, 0]]  # the empty document gives no row
    assert truncate([], 4, eot_id=9)["x"].shape == (0, 4)


@given(st.integers(0, 400), seq_lens, st.data())
def test_sliding_window_scores_each_token_once(n: int, seq_len: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, seq_len))
    tokens = (np.arange(n) * 7 + 3) % 1000
    batch_size = data.draw(st.integers(1, 9))
    batches = list(sliding_windows(tokens, seq_len, stride, batch_size, pad_id=0))
    starts, _ = sliding_window_plan(n, seq_len, stride)
    scored: list[int] = []
    row = 0
    for batch in batches:
        assert batch["x"].shape == batch["y"].shape == batch["mask"].shape and batch["x"].shape[1] == seq_len
        assert len(batch["x"]) <= batch_size
        for x, y, mask in zip(batch["x"], batch["y"], batch["mask"], strict=True):
            positions = np.flatnonzero(mask)
            targets = starts[row] + 1 + positions
            assert (y[positions] == tokens[targets]).all()  # the right token is scored
            valid = min(seq_len, n - starts[row] - 1)
            assert (x[:valid] == tokens[starts[row]:starts[row] + valid]).all()
            if row > 0:
                assert positions.min() >= seq_len - stride  # at least seq_len - stride tokens of context
            scored.extend(targets.tolist())
            row += 1
    assert row == starts.size
    assert sorted(scored) == list(range(1, n))  # every token but the first, exactly once


def test_sliding_window_plan_example() -> None:
    starts, first = sliding_window_plan(11, 4, 2)  # targets 1..10
    assert starts.tolist() == [0, 2, 4, 6] and first.tolist() == [0, 2, 2, 2]
    starts, first = sliding_window_plan(12, 4, 2)  # one target left over: a last window moved back
    assert starts.tolist() == [0, 2, 4, 6, 7] and first.tolist() == [0, 2, 2, 2, 3]
    with pytest.raises(ConfigError):
        sliding_window_plan(10, 4, 5)
    with pytest.raises(ConfigError):
        pack(np.arange(5), 0)
