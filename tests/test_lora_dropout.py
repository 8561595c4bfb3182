"""``train.lora.dropout``: every backend drops the same entries of the adapters' input (the core's hash, not a
framework generator), so the 30-step loss curves of the three backends still agree; dropout changes the curve."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crossframe
from crossframe.nn import lora_dropout as hashing
from tests.test_lora_checkpoints import graph_config

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
STEPS = 30


def backend_keep(backend: str, shape: tuple[int, ...], run: int, call: int, site: int, rate: float) -> np.ndarray:
    """The keep mask as ``backend`` computes it inside its step."""
    x = np.ones(shape, np.float32)
    if backend == "torch":
        import torch

        from crossframe_torch.adapters import LoraLinear

        layer = LoraLinear.adapt(torch.nn.Linear(shape[-1], 2), 1, 1.0)
        layer.enable_dropout(rate, site)
        layer.lora_base.fill_(hashing.call_base(run, call, site))
        return layer._keep(torch.from_numpy(x)).numpy()
    if backend == "jax":
        import jax.numpy as jnp

        from crossframe_jax.lowering import _keep

        ctx = {"lora_run": run, "lora_call": jnp.uint32(call), "lora_sites": {"s": site}, "lora_dropout": rate}
        return np.asarray(_keep(jnp.asarray(x), ctx, "s"))
    import tensorflow as tf

    from crossframe_tensorflow.lowering import _keep

    return _keep(tf.constant(x), run, tf.constant(call, tf.int64), site, rate).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@given(seed=st.integers(0, 2**40), call=st.integers(0, 10**6), site=st.integers(1, 40),
       rate=st.floats(0.05, 0.9), rows=st.integers(1, 3), width=st.integers(1, 9))
def test_every_backend_keeps_the_reference_entries(backend: str, seed: int, call: int, site: int, rate: float,
                                                   rows: int, width: int) -> None:
    run, constant = hashing.run_constant(seed), hashing.site_constants([f"l{i}" for i in range(site)])[f"l{site - 1}"]
    want = hashing.keep_mask((rows, 2, width), run, call, constant, rate)
    assert np.array_equal(backend_keep(backend, (rows, 2, width), run, call, constant, rate), want)


def test_the_reference_keeps_about_one_minus_rate() -> None:
    keep = hashing.keep_mask((64, 128), hashing.run_constant(0), 3, hashing.site_constants(["a"])["a"], 0.25)
    # 8192 Bernoulli(0.75) draws: a standard deviation of 0.005 on the share
    assert abs(keep.mean() - 0.75) < 0.03
    other = hashing.keep_mask((64, 128), hashing.run_constant(0), 4, hashing.site_constants(["a"])["a"], 0.25)
    assert not np.array_equal(keep, other)  # each call draws afresh


@pytest.mark.slow
def test_dropout_curves_agree_across_backends(workdir) -> None:
    curves = {}
    for backend in BACKENDS:
        config = graph_config(backend, STEPS, grad_accum=2)
        config["train"]["batch_size"] = 4
        config["train"]["lora"]["dropout"] = 0.2
        result = crossframe.run(config, quiet=True)
        records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        curves[backend] = [r["train/loss"] for r in records if "train/loss" in r]
    base = curves[BACKENDS[0]]
    assert len(base) == STEPS and np.mean(base[-5:]) < base[0]
    for backend, losses in curves.items():
        # float32, a 2-block width-16 model, 30 AdamW steps: rounding-order differences stay near 1e-5;
        # 1e-3 is the LoRA bar of tests/test_lora.py
        np.testing.assert_allclose(losses, base, atol=1e-3, err_msg=f"{backend} vs {BACKENDS[0]}")
    plain = graph_config("torch", STEPS, grad_accum=2)
    plain["train"]["batch_size"] = 4
    plain["name"] = "no-dropout"
    records = [json.loads(x) for x in (crossframe.run(plain, quiet=True).run_dir / "metrics.jsonl")
               .read_text().splitlines()]
    without = [r["train/loss"] for r in records if "train/loss" in r]
    assert max(abs(a - b) for a, b in zip(without, base, strict=True)) > 1e-3  # the dropout is real
