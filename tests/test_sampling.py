"""Host-side sampling: greedy, temperature, top-k, top-p, seeded."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crossframe.sampling import generate_by_recompute, make_sampler

logits_st = st.lists(st.floats(-5, 5, allow_subnormal=False), min_size=2, max_size=30).map(lambda v: np.array([v]))


@given(logits=logits_st)
def test_zero_temperature_is_greedy(logits) -> None:
    assert make_sampler(temperature=0)(logits)[0] == logits.argmax()


@given(logits=logits_st, k=st.integers(1, 5), seed=st.integers(0, 100))
def test_top_k_only_draws_from_the_k_largest(logits, k, seed) -> None:
    sample = make_sampler(temperature=1.0, top_k=k, seed=seed)
    kth = np.sort(logits[0])[-min(k, logits.shape[1])]
    for _ in range(10):
        assert logits[0, sample(logits)[0]] >= kth


def test_top_p_keeps_the_smallest_nucleus() -> None:
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(make_sampler(top_p=0.7, seed=s)(logits)[0]) for s in range(200)}
    assert seen == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: the first two
    assert {int(make_sampler(top_p=0.4, seed=s)(logits)[0]) for s in range(50)} == {0}


def test_temperature_sampling_follows_the_distribution_and_is_seeded() -> None:
    logits = np.log(np.array([[0.7, 0.2, 0.1]] * 4000))
    draws = make_sampler(seed=3)(logits)
    assert np.bincount(draws, minlength=3) / 4000 == pytest.approx([0.7, 0.2, 0.1], abs=0.03)
    assert np.array_equal(draws, make_sampler(seed=3)(logits))


def test_bad_sampler_params() -> None:
    with pytest.raises(ValueError, match="top_p"):
        make_sampler(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        make_sampler(temperature=-1)


def test_generate_by_recompute_keeps_a_window() -> None:
    seen: list[int] = []

    def predict(tokens: np.ndarray) -> np.ndarray:
        seen.append(tokens.shape[1])
        out = np.zeros((*tokens.shape, 5))
        out[:, :, :] = -1.0
        out[np.arange(len(tokens)), -1, (tokens[:, -1] + 1) % 5] = 1.0  # next = last + 1
        return out

    result = generate_by_recompute(predict, np.array([[0, 1]]), 6, make_sampler(temperature=0), max_seq_len=4)
    assert result.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2]]
    assert seen == [2, 3, 4, 4, 4, 4]
