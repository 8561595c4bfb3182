"""Learning-rate schedules: properties that must hold for any parameters."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from crossframe import schedules as s
from crossframe.config.validation import validate_params
from crossframe.errors import ConfigError
from crossframe.plugins import component

base_lrs = st.floats(1e-6, 10.0)
totals = st.integers(2, 5000)


def build(name: str, params: dict, base_lr: float, total: int):
    comp = component("schedule", name)
    return comp.obj(validate_params(comp.schema, params, "train.schedule"), base_lr, total)


@given(name=st.sampled_from(["constant", "step", "exponential", "cosine", "linear"]),
       warmup=st.integers(1, 200), base_lr=base_lrs, total=totals)
def test_warmup_rises_monotonically_to_base_lr(name, warmup, base_lr, total) -> None:
    assume(warmup < total)
    lr = build(name, {"warmup_steps": warmup}, base_lr, total)
    values = [lr(i) for i in range(warmup)]
    assert all(b > a for a, b in zip(values, values[1:], strict=False))
    assert values[0] > 0
    assert math.isclose(values[-1], base_lr, rel_tol=1e-12)
    assert math.isclose(lr(warmup), base_lr, rel_tol=1e-12)  # the schedule proper starts at base_lr


@given(base_lr=base_lrs, total=totals, ratio=st.floats(0.0, 1.0), warmup=st.integers(0, 100),
       step=st.integers(0, 10_000))
def test_cosine_stays_within_bounds_and_hits_its_ends(base_lr, total, ratio, warmup, step) -> None:
    assume(warmup < total)
    lr = build("cosine", {"warmup_steps": warmup, "min_lr_ratio": ratio}, base_lr, total)
    assert 0 <= lr(step) <= base_lr * (1 + 1e-12)
    if step >= warmup:
        assert lr(step) >= base_lr * ratio * (1 - 1e-12)
    assert math.isclose(lr(total), base_lr * ratio, rel_tol=1e-9, abs_tol=1e-15)
    assert math.isclose(lr(total + step), base_lr * ratio, rel_tol=1e-9, abs_tol=1e-15)


@given(base_lr=base_lrs, total=totals)
def test_cosine_is_non_increasing_after_warmup(base_lr, total) -> None:
    lr = build("cosine", {"min_lr_ratio": 0.0}, base_lr, total)
    values = [lr(i) for i in range(0, total + 1, max(total // 50, 1))]
    assert all(b <= a + 1e-15 for a, b in zip(values, values[1:], strict=False))
    assert math.isclose(lr(total // 2 if total % 2 == 0 else 0), base_lr / 2 if total % 2 == 0 else base_lr,
                        rel_tol=1e-9)


@given(base_lr=base_lrs, size=st.integers(1, 100), gamma=st.floats(0.01, 1.0), step=st.integers(0, 5000))
def test_step_decay_formula(base_lr, size, gamma, step) -> None:
    lr = build("step", {"step_size": size, "gamma": gamma}, base_lr, 1000)
    assert math.isclose(lr(step), base_lr * gamma ** (step // size), rel_tol=1e-12)


@given(base_lr=base_lrs, gamma=st.floats(0.5, 1.0), step=st.integers(0, 5000))
def test_exponential_decay_formula(base_lr, gamma, step) -> None:
    lr = build("exponential", {"gamma": gamma}, base_lr, 1000)
    assert math.isclose(lr(step), base_lr * gamma**step, rel_tol=1e-9)


@given(base_lr=base_lrs, total=totals, end=st.floats(0.0, 1.0))
def test_linear_reaches_its_end_factor(base_lr, total, end) -> None:
    lr = build("linear", {"end_factor": end}, base_lr, total)
    assert lr(0) == base_lr
    assert math.isclose(lr(total), base_lr * end, rel_tol=1e-9, abs_tol=1e-15)
    assert math.isclose(lr(total * 3), base_lr * end, rel_tol=1e-9, abs_tol=1e-15)


@given(base_lr=base_lrs, step=st.integers(0, 10_000))
def test_constant_is_constant(base_lr, step) -> None:
    assert build("constant", {}, base_lr, 100)(step) == base_lr


def test_schedules_are_pure_functions_of_the_step() -> None:
    lr = build("cosine", {"warmup_steps": 10}, 0.1, 100)
    forward = [lr(i) for i in range(100)]
    backward = [lr(i) for i in reversed(range(100))][::-1]
    assert forward == backward


def test_bad_schedule_params_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"train.schedule.gamma: input should be greater than 0"):
        build("step", {"gamma": 0}, 0.1, 10)
    with pytest.raises(ConfigError, match=r"train.schedule.warmup_step: unknown key; did you mean 'warmup_steps'"):
        build("cosine", {"warmup_step": 3}, 0.1, 10)


def test_with_warmup_zero_is_identity() -> None:
    def after(step: int) -> float:
        return step * 2.0

    assert s.with_warmup(0, 1.0, after) is after
