"""GPT training throughput: ``crossframe.run`` against a hand-written native loop, on every backend.

One small GPT (4 layers, 4 heads, d_model 128, context 128, batch 16, fp32) trains on a real
token stream: the first ``STDLIB_FILES`` source files of the interpreter's standard library
(``crossframe.text.sources`` ``python-stdlib``), tokenised once with the ``bytes`` tokenizer
(vocabulary 257: 256 bytes + end-of-text) by :func:`crossframe.text.store.prepare` into a
temporary token store. Both sides of every backend read their batches from that store through
:class:`crossframe.text.loader.LMBatchLoader` with the same seed, so they see the same batches
in the same order, start from the same weights (the spec's canonical ``init(seed)``, loaded into
the native models) and use AdamW (lr 3e-4, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on the
2-D weights only, i.e. the embeddings and dense kernels; a constant rate).

Each backend runs in its own worker process (``python -m benchmarks.gpt_step --worker NAME``), so
frameworks, their thread pools and allocators never share a process; within a worker both sides
share the process, its cores and its thread settings. A backend whose framework is not installed,
or whose ``Backend().capabilities().models`` has no ``gpt``, is skipped with a note.

What runs
---------
crossframe
    The real public API: ``crossframe.run(config, quiet=True)`` with the config above (``text.store``
    naming the prepared store), ``log_every`` steps between fetches, ``eval_every: 0`` and
    ``checkpoint_every: 0``. A plugin of this benchmark notes the time at ``on_run_start`` (right
    before ``Trainer.fit``) and when the train logs of step ``log_every`` (the first one: after the
    first ``backend.fetch``, the first host sync) and of the last step reach its logger.
    Everything the loop does per step is inside: ``loader.batch``, the schedule,
    ``backend.train_step``, the pending list, the fetch and the ``metrics.jsonl`` line. Outside:
    config validation, opening the store, init, the backend's state, crossframe's own matmul-peak
    probe (before), and the final evaluation (capped at ``MAX_EVAL_TOKENS``) and checkpoint
    (after). The plugin implements no ``on_step_end``, so the loop's per-step hook stays off.
native (what a user of each framework would write; timed at the same three points)
    torch
        A compact nanoGPT-style module (``nn.Embedding`` ``wte`` / ``wpe``, pre-LN blocks with
        ``c_attn`` / ``c_proj`` / ``c_fc``, GELU tanh, ``F.scaled_dot_product_attention(is_causal=True)``,
        ``lm_head`` tied to ``wte``), ``torch.optim.AdamW`` with nanoGPT's two groups (decay on
        ``p.dim() >= 2``) and torch's default implementation on CPU; per step
        ``torch.from_numpy`` of the batch, forward, ``F.cross_entropy``, ``backward``, ``step``,
        ``zero_grad(set_to_none=True)``; ``loss.item()`` every ``log_every`` steps.
    jax
        A pure forward on a dict of arrays (the same math: ``jax.nn.dot_product_attention(is_causal=True)``,
        ``jax.nn.gelu(approximate=True)``, tied head; each layer ``x @ W + b`` a 2-D matmul over
        ``[B*T, D]`` (on XLA's CPU backend in jax 0.10 the 3-D form ``[B, T, D] @ W`` made this loop
        1.7x slower, 5.1k against 8.8k tokens/s), added to the residual as a whole, ``h + (x @ W + b)``:
        written ``h + x @ W + b`` the step is about 15% slower), ``optax.adamw`` with a decay mask of the 2-D arrays,
        ``jax.value_and_grad``, one ``jax.jit`` with parameters and optimizer state donated, the
        numpy batch passed straight in; ``float(loss)`` every ``log_every`` steps.
    tensorflow
        ``tf.Variable`` s in the canonical layout, the same forward in tf ops (a ``[B*T, d]``
        residual stream, dense layers as Keras writes them, ``tf.nn.bias_add(tf.matmul(x, W), b)``,
        which grappler fuses; ``tf.matmul`` attention with a causal ``tf.where`` mask), AdamW
        written in tf ops (``assign``, torch's update rule), one ``tf.function`` with a fixed
        int32 input signature around ``GradientTape`` + the update; ``tf.convert_to_tensor`` of
        the batch per step, ``loss.numpy()`` every ``log_every`` steps. No XLA (``jit_compile``)
        on either side: crossframe's ``train.compile`` stays ``false``.

Reported per backend
--------------------
tokens/s
    Steady state: ``(steps - log_every) * B * T / (t_last - t_first)``, the steps after the first
    fetch (compiled, warm) until the last fetch; median over rounds. Ratio: crossframe / native
    (1.0 means no overhead); also the median of the per-round ratios in the JSON.
MFU
    ``flops_per_token`` (:func:`crossframe.models.gpt.flops_per_token`: 6 N + 12 L T d) times
    tokens/s over the CPU's measured matmul peak: the best of the
    :func:`crossframe.perf.numpy_matmul_peak` probes taken in the same worker process (one before
    the rounds, one after, and the one ``crossframe.run`` takes before each run), so with the same
    cores and BLAS threads as the training. It is the peak of numpy's BLAS, not of the CPU: where
    a framework's own kernels are faster (e.g. numpy's OpenBLAS running AVX2 kernels on an
    AVX-512 CPU, oneDNN using AVX-512), MFU can exceed 100%.
first step
    Trace + compile + one step, derived the same way on both sides from the same round:
    ``first_window - (log_every - 1) * steady_step`` where ``first_window`` is the time from the
    start to the first fetch (``log_every`` steps). For torch (eager) it is the first step's extra
    cost (allocator, kernels' first use); for jax the XLA compile; for tensorflow the trace and
    graph optimisation. Median over rounds; every round starts from scratch on both sides.
same work
    After the first round, crossframe's final checkpoint and the native model's weights (in
    canonical layout) are compared: the max absolute difference, beside the largest change any
    weight made during training (the scale of the updates).

Cores and threads: ``--threads 1`` (the default) starts each worker pinned to one core
(``sched_setaffinity``) with one intra-op thread in torch and TensorFlow (and one inter-op thread
in TensorFlow) and one BLAS thread for numpy's probe; jax needs the pin, as recent jaxlib ignores
``XLA_FLAGS`` thread settings. On a small shared machine a second core comes and goes with the
other load, which makes rates jump between rounds; one pinned core does not. ``--threads 0``
leaves cores and threads to the frameworks, ``N`` sets N threads without a pin.

Rounds alternate the order (crossframe then native, native then crossframe, ...) to cancel drift.
``--quick``: one round of 8 steps (fetch every 4) per side and backend: about 30-60 s in all on 2 cores.
No timing is asserted anywhere.

Run it alone with ``python -m benchmarks.gpt_step [--quick] [--threads N] [--backend NAME ...]
[--out FILE.json]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import crossframe
from benchmarks.common import RunClock, machine_info, markdown_table, median, smoke, spread

TITLE = "GPT training throughput: crossframe vs native, per backend (tokens/s, MFU)"

BACKENDS = ("torch", "jax", "tensorflow")
SEED = 0
#: smoke mode (``python -m benchmarks --smoke``, inherited by the workers) shrinks the model to a toy
N_LAYER, N_HEAD, D_MODEL, SEQ_LEN, BATCH = (1, 2, 32, 32, 4) if smoke() else (4, 4, 128, 128, 16)
LR, WEIGHT_DECAY, BETAS, EPS = 3e-4, 0.1, (0.9, 0.95), 1e-8
VAL_FRACTION = 0.05
STDLIB_FILES = 100  # about 1.7 M training tokens: no epoch ends inside a round
MAX_EVAL_TOKENS = BATCH * SEQ_LEN  # the final evaluation crossframe.run always does (untimed), kept small
CLOCK = "gpt_benchmark_clock"
MODEL = {"name": "gpt", "n_layer": N_LAYER, "n_head": N_HEAD, "d_model": D_MODEL, "max_seq_len": SEQ_LEN}


@dataclass(frozen=True)
class Plan:
    """Steps per round, steps between fetches, rounds."""

    steps: int
    log_every: int
    rounds: int


def plan(quick: bool) -> Plan:
    """Quick: one short round (a smoke test); full: five rounds of 50 steps, a fetch every 10."""
    if quick:
        return Plan(4, 2, 1) if smoke() else Plan(8, 4, 1)
    return Plan(50, 10, 5)


# --------------------------------------------------------------------------- timing points


@dataclass
class Times:
    """The three timing points of one loop (start, first fetch, last fetch) and the last loss seen."""

    start: float = math.nan
    first_log: float = math.nan
    end: float = math.nan
    final_loss: float = math.nan

    def steady_step_s(self, p: Plan) -> float:
        """Seconds per step after the first fetch."""
        return (self.end - self.first_log) / (p.steps - p.log_every)

    def tokens_per_s(self, p: Plan) -> float:
        """Steady-state target tokens per second."""
        return BATCH * SEQ_LEN / self.steady_step_s(p)

    def first_window(self) -> float:
        """Start to the first fetch: trace + compile + ``log_every`` steps."""
        return self.first_log - self.start

    def first_step(self, p: Plan) -> float:
        """The first step's time (trace + compile + one step), if the next ``log_every - 1`` ran steady."""
        return self.first_window() - (p.log_every - 1) * self.steady_step_s(p)


# --------------------------------------------------------------------------- data and model


def prepare_store(directory: Path) -> dict[str, Any]:
    """Tokenise the first ``STDLIB_FILES`` stdlib files with ``bytes`` into a token store at ``directory``."""
    from crossframe.text.sources import StdlibParams, load_stdlib
    from crossframe.text.store import prepare
    from crossframe.text.tokenizers import BytesTokenizer

    start = time.perf_counter()
    store = prepare(load_stdlib(StdlibParams(max_files=STDLIB_FILES)), BytesTokenizer(), directory,
                    val_fraction=VAL_FRACTION)
    return {"stdlib_files": STDLIB_FILES, "train_tokens": store["train"].n_tokens,
            "val_tokens": store["val"].n_tokens, "vocab_size": store.vocab_size,
            "prepare_s": time.perf_counter() - start}


def gpt_spec(vocab: int) -> Any:
    """The canonical ``gpt`` spec for ``vocab`` tokens of context ``SEQ_LEN``."""
    from crossframe.data.dataset import DataInfo
    from crossframe.models import build_model

    params = {k: v for k, v in MODEL.items() if k != "name"}
    return build_model("gpt", params, DataInfo("language_modeling", (SEQ_LEN,), vocab))


def model_flops_per_token(vocab: int) -> float:
    """Training FLOPs per token: :func:`crossframe.models.gpt.flops_per_token`."""
    from crossframe.models.gpt import GPTParams, flops_per_token

    params = GPTParams.model_validate({k: v for k, v in MODEL.items() if k != "name"})
    return flops_per_token(params, vocab, SEQ_LEN)


def two_d_decay(weights: dict[str, np.ndarray]) -> dict[str, bool]:
    """nanoGPT's rule: weight decay on the arrays of two or more dimensions."""
    return {name: value.ndim >= 2 for name, value in weights.items()}


# --------------------------------------------------------------------------- crossframe side


def crossframe_config(backend: str, p: Plan, store: Path, output_dir: Path, name: str) -> dict[str, Any]:
    """The run config: the stdlib store, the GPT, AdamW at a constant rate, no intermediate eval or checkpoint."""
    return {
        "name": name,
        "backend": backend,
        "device": "cpu",
        "precision": "fp32",
        "seed": SEED,
        "output_dir": str(output_dir),
        "data": {"name": "python-stdlib", "max_files": STDLIB_FILES, "val_fraction": VAL_FRACTION},
        "text": {"tokenizer": {"name": "bytes"}, "seq_len": SEQ_LEN, "store": str(store),
                 "max_eval_tokens": MAX_EVAL_TOKENS},
        "model": MODEL,
        "train": {
            "steps": p.steps,
            "batch_size": BATCH,
            "optimizer": {"name": "adamw", "lr": LR, "betas": list(BETAS), "eps": EPS,
                          "weight_decay": WEIGHT_DECAY},
            "schedule": {"name": "constant"},
            "eval_every": 0,
            "eval_batch_size": BATCH,
            "checkpoint_every": 0,
            "keep_checkpoints": 1,
            "log_every": p.log_every,
        },
        "loggers": [{"name": CLOCK}],
    }


@dataclass
class CrossframeRound:
    """One timed ``crossframe.run``."""

    times: Times
    peak_flops: float
    logged_mfu: float
    checkpoint: Path | None
    run_dir: Path


def crossframe_round(backend: str, p: Plan, store: Path, clock: RunClock, output_dir: Path, name: str
                     ) -> CrossframeRound:
    """Run ``crossframe.run`` once; the clock plugin times its training loop."""
    result = crossframe.run(crossframe_config(backend, p, store, output_dir, name), quiet=True)
    times = Times(clock.start, clock.first_log, clock.end, clock.final_loss)
    if result.steps != p.steps or math.isnan(times.end) or math.isnan(times.first_log):
        raise RuntimeError(f"{backend}: crossframe run stopped at step {result.steps} of {p.steps}")
    return CrossframeRound(times, clock.peak_flops, clock.logged_mfu, result.checkpoint, result.run_dir)


# --------------------------------------------------------------------------- native sides


class NativeRun:
    """A freshly built native model + optimizer: ``step(x, y)`` returns a device loss."""

    def step(self, x: np.ndarray, y: np.ndarray) -> Any:
        """One training step; no host sync."""
        raise NotImplementedError

    def loss_value(self, loss: Any) -> float:
        """The loss on the host (the sync)."""
        raise NotImplementedError

    def weights(self) -> dict[str, np.ndarray]:
        """The weights under canonical names and layouts."""
        raise NotImplementedError


def torch_native(spec: Any, init: dict[str, np.ndarray]) -> NativeRun:
    """nanoGPT, compact: the same architecture, canonical initial weights, nanoGPT's AdamW groups."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    vocab = spec.data_info.num_outputs

    class CausalSelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = nn.Linear(D_MODEL, 3 * D_MODEL)
            self.c_proj = nn.Linear(D_MODEL, D_MODEL)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, c = x.shape
            q, k, v = self.c_attn(x).split(c, dim=2)
            q, k, v = (z.view(b, t, N_HEAD, c // N_HEAD).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_fc = nn.Linear(D_MODEL, 4 * D_MODEL)
            self.c_proj = nn.Linear(4 * D_MODEL, D_MODEL)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1 = nn.LayerNorm(D_MODEL)
            self.attn = CausalSelfAttention()
            self.ln_2 = nn.LayerNorm(D_MODEL)
            self.mlp = MLP()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte = nn.Embedding(vocab, D_MODEL)
            self.wpe = nn.Embedding(SEQ_LEN, D_MODEL)
            self.h = nn.ModuleList(Block() for _ in range(N_LAYER))
            self.ln_f = nn.LayerNorm(D_MODEL)
            self.lm_head = nn.Linear(D_MODEL, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # weight tying

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            pos = torch.arange(idx.shape[1], dtype=torch.long)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    def native_name(name: str) -> str:
        """Canonical name -> this module's parameter name."""
        if name in ("wte", "wpe"):
            return f"{name}.weight"
        for canonical, ours in ((".attn.qkv.", ".attn.c_attn."), (".attn.proj.", ".attn.c_proj."),
                                (".mlp.fc.", ".mlp.c_fc."), (".mlp.proj.", ".mlp.c_proj.")):
            name = name.replace(canonical, ours)
        return name

    layouts = {p.name: p.layout for p in spec.table}
    model = GPT()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in init.items():
            value = value.T if layouts[name] == "dense" else value
            params[native_name(name)].copy_(torch.from_numpy(np.ascontiguousarray(value)))
    if len(params) != len(init):
        raise RuntimeError(f"torch native: {len(params)} parameters, the canonical table has {len(init)}")
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=BETAS, eps=EPS)
    model.train()

    class Run(NativeRun):
        def step(self, x: np.ndarray, y: np.ndarray) -> Any:
            xb, yb = torch.from_numpy(x), torch.from_numpy(y)
            logits = model(xb)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), yb.view(-1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        def loss_value(self, loss: Any) -> float:
            return float(loss.item())

        def weights(self) -> dict[str, np.ndarray]:
            out = {}
            for name in init:
                value = params[native_name(name)].detach().numpy()
                out[name] = (value.T if layouts[name] == "dense" else value).copy()
            return out

    return Run()


def jax_native(spec: Any, init: dict[str, np.ndarray]) -> NativeRun:
    """A pure jax forward, ``optax.adamw`` with a 2-D decay mask, one jit with donated state."""
    from functools import partial

    import jax
    import jax.numpy as jnp
    import optax

    def layer_norm(x: Any, scale: Any, bias: Any) -> Any:
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + 1e-5) * scale + bias

    def dense(x: Any, w: dict[str, Any], prefix: str) -> Any:
        # a layer is x @ W + b, added to the residual as a whole: XLA's CPU backend runs
        # ``h + (x @ W + b)`` about 15% faster in this model than ``h + x @ W + b`` (left to right)
        flat = x.reshape(-1, x.shape[-1]) @ w[prefix + ".weight"] + w[prefix + ".bias"]  # 2-D: [B*T, D] @ [D, N]
        return flat.reshape(*x.shape[:-1], flat.shape[-1])

    def forward(w: dict[str, Any], idx: Any) -> Any:
        b, t = idx.shape
        hd = D_MODEL // N_HEAD
        h = w["wte.weight"][idx] + w["wpe.weight"][:t]
        for i in range(N_LAYER):
            p = f"h.{i}."
            qkv = dense(layer_norm(h, w[p + "ln_1.weight"], w[p + "ln_1.bias"]), w, p + "attn.qkv")
            q, k, v = (z.reshape(b, t, N_HEAD, hd) for z in jnp.split(qkv, 3, axis=-1))
            att = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(b, t, D_MODEL)
            h = h + dense(att, w, p + "attn.proj")
            m = layer_norm(h, w[p + "ln_2.weight"], w[p + "ln_2.bias"])
            h = h + dense(jax.nn.gelu(dense(m, w, p + "mlp.fc"), approximate=True), w, p + "mlp.proj")
        h = layer_norm(h, w["ln_f.weight"], w["ln_f.bias"])
        return (h.reshape(b * t, D_MODEL) @ w["wte.weight"].T).reshape(b, t, -1)

    def loss_fn(w: dict[str, Any], x: Any, y: Any) -> Any:
        return optax.softmax_cross_entropy_with_integer_labels(forward(w, x), y).mean()

    tx = optax.adamw(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS, weight_decay=WEIGHT_DECAY, mask=two_d_decay(init))

    @partial(jax.jit, donate_argnums=(0, 1))
    def train_step(w: dict[str, Any], opt_state: Any, x: Any, y: Any) -> tuple[Any, Any, Any]:
        loss, grads = jax.value_and_grad(loss_fn)(w, x, y)
        updates, opt_state = tx.update(grads, opt_state, w)
        return optax.apply_updates(w, updates), opt_state, loss

    cpu = jax.devices("cpu")[0]
    params = jax.device_put({k: np.array(v, copy=True) for k, v in init.items()}, cpu)
    opt_state = jax.device_put(tx.init(params), cpu)  # committed like the params (no recompile on call 2)

    class Run(NativeRun):
        def __init__(self) -> None:
            self.params, self.opt_state = params, opt_state

        def step(self, x: np.ndarray, y: np.ndarray) -> Any:
            self.params, self.opt_state, loss = train_step(self.params, self.opt_state, x, y)
            return loss

        def loss_value(self, loss: Any) -> float:
            return float(loss)

        def weights(self) -> dict[str, np.ndarray]:
            return {k: np.asarray(v).copy() for k, v in jax.device_get(self.params).items()}

    return Run()


def tensorflow_native(spec: Any, init: dict[str, np.ndarray]) -> NativeRun:
    """``tf.Variable`` s, the forward in tf ops, AdamW in tf ops, one ``tf.function`` step."""
    import tensorflow as tf

    vocab = spec.data_info.num_outputs
    hd = D_MODEL // N_HEAD
    w = {k: tf.Variable(v, name=k.replace(".", "_")) for k, v in init.items()}
    decay = two_d_decay(init)
    m = {k: tf.Variable(tf.zeros_like(v), trainable=False) for k, v in w.items()}
    v2 = {k: tf.Variable(tf.zeros_like(v), trainable=False) for k, v in w.items()}
    count = tf.Variable(0.0, trainable=False)
    names = list(w)
    causal = tf.constant(np.tril(np.ones((SEQ_LEN, SEQ_LEN), dtype=bool)))

    def layer_norm(x: tf.Tensor, prefix: str) -> tf.Tensor:
        centred = x - tf.reduce_mean(x, axis=-1, keepdims=True)
        var = tf.reduce_mean(tf.square(centred), axis=-1, keepdims=True)
        return centred * tf.math.rsqrt(var + 1e-5) * w[prefix + ".weight"] + w[prefix + ".bias"]

    def dense(x: tf.Tensor, prefix: str) -> tf.Tensor:  # as Keras' Dense: grappler fuses MatMul + BiasAdd
        return tf.nn.bias_add(tf.matmul(x, w[prefix + ".weight"]), w[prefix + ".bias"])

    def forward(idx: tf.Tensor) -> tf.Tensor:
        b, t = idx.shape
        h = tf.reshape(tf.gather(w["wte.weight"], idx) + w["wpe.weight"][:t], [b * t, D_MODEL])
        for i in range(N_LAYER):
            p = f"h.{i}."
            qkv = dense(layer_norm(h, p + "ln_1"), p + "attn.qkv")
            q, k, v = tf.unstack(tf.transpose(tf.reshape(qkv, [b, t, 3, N_HEAD, hd]), [2, 0, 3, 1, 4]))
            scores = tf.matmul(q, k, transpose_b=True) * (1.0 / math.sqrt(hd))
            scores = tf.where(causal[:t, :t], scores, float("-inf"))
            att = tf.reshape(tf.transpose(tf.matmul(tf.nn.softmax(scores), v), [0, 2, 1, 3]), [b * t, D_MODEL])
            h = h + dense(att, p + "attn.proj")
            h = h + dense(tf.nn.gelu(dense(layer_norm(h, p + "ln_2"), p + "mlp.fc"), approximate=True),
                          p + "mlp.proj")
        return tf.matmul(layer_norm(h, "ln_f"), w["wte.weight"], transpose_b=True)  # [B*T, vocab]

    def adamw(grads: list[tf.Tensor]) -> None:
        """torch's AdamW: ``p *= 1 - lr wd`` (2-D only), then ``p -= lr / c1 * m / (sqrt(v / c2) + eps)``."""
        t = count.assign_add(1.0)
        step_size = LR / (1.0 - tf.pow(BETAS[0], t))
        c2_sqrt = tf.sqrt(1.0 - tf.pow(BETAS[1], t))
        for name, g in zip(names, grads, strict=True):
            p, g = w[name], tf.convert_to_tensor(g)  # the embedding's gradient comes as IndexedSlices
            mk = m[name].assign(BETAS[0] * m[name] + (1.0 - BETAS[0]) * g)
            vk = v2[name].assign(BETAS[1] * v2[name] + (1.0 - BETAS[1]) * tf.square(g))
            kept = p * (1.0 - LR * WEIGHT_DECAY) if decay[name] else p
            p.assign(kept - step_size * mk / (tf.sqrt(vk) / c2_sqrt + EPS))

    spec_xy = tf.TensorSpec([BATCH, SEQ_LEN], tf.int32)

    @tf.function(input_signature=[spec_xy, spec_xy])
    def train_step(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            logits = forward(x)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.reshape(y, [-1]), logits=logits))
        adamw(tape.gradient(loss, [w[n] for n in names]))
        return loss

    if vocab != init["wte.weight"].shape[0]:
        raise RuntimeError("tensorflow native: vocabulary mismatch")

    class Run(NativeRun):
        def step(self, x: np.ndarray, y: np.ndarray) -> Any:
            return train_step(tf.convert_to_tensor(x), tf.convert_to_tensor(y))

        def loss_value(self, loss: Any) -> float:
            return float(loss.numpy())

        def weights(self) -> dict[str, np.ndarray]:
            return {k: v.numpy().copy() for k, v in w.items()}

    return Run()


NATIVE: dict[str, Callable[[Any, dict[str, np.ndarray]], NativeRun]] = {
    "torch": torch_native, "jax": jax_native, "tensorflow": tensorflow_native}
#: the token ids each native loop reads: int64 as crossframe's loader gives (torch's ``nn.Embedding``
#: and nanoGPT use it; jax narrows it to int32 on the way in), int32 for TensorFlow's ``tf.gather``
NATIVE_IDS: dict[str, type] = {"torch": np.int64, "jax": np.int64, "tensorflow": np.int32}


def native_round(backend: str, spec: Any, init: dict[str, np.ndarray], tokens: Any, p: Plan
                 ) -> tuple[Times, NativeRun]:
    """Build the native model afresh (untimed), then time its loop at the same three points."""
    from crossframe.text.loader import LMBatchLoader

    loader = LMBatchLoader(tokens, SEQ_LEN, BATCH, SEED, dtype=NATIVE_IDS[backend])
    native = NATIVE[backend](spec, init)
    times = Times()
    times.start = time.perf_counter()
    for step in range(p.steps):
        batch = loader.batch(step)
        loss = native.step(batch["x"], batch["y"])
        done = step + 1
        if done % p.log_every == 0 or done == p.steps:
            times.final_loss = native.loss_value(loss)
            if done == p.log_every:
                times.first_log = time.perf_counter()
    times.end = time.perf_counter()
    return times, native


# --------------------------------------------------------------------------- one backend (a worker)


def setup_framework(backend: str, threads: int) -> str:
    """Thread settings (before any framework work) and a tiny warm-up op; returns the version."""
    if backend == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        torch.ones(8, 8) @ torch.ones(8, 8)
        return f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s)"
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        import optax

        jax.jit(lambda a: a @ a)(jnp.ones((8, 8))).block_until_ready()
        return f"jax {jax.__version__}, optax {optax.__version__}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # fresh tf.functions from the same code each round: no retracing warning
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    tf.matmul(tf.ones([8, 8]), tf.ones([8, 8])).numpy()
    return (f"tensorflow {tf.__version__}, {tf.config.threading.get_intra_op_parallelism_threads() or 'default'} "
            f"intra-op / {tf.config.threading.get_inter_op_parallelism_threads() or 'default'} inter-op thread(s)")


def _max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    if set(a) != set(b):
        raise RuntimeError(f"parameter names differ: {sorted(set(a) ^ set(b))}")
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def bench_backend(backend: str, store_dir: Path, quick: bool, threads: int, log: Callable[[str], None]
                  ) -> dict[str, Any]:
    """Everything for one backend, in this process: the row of the table."""
    from crossframe.checkpoint import load_checkpoint
    from crossframe.perf import numpy_matmul_peak
    from crossframe.text.store import TokenStore
    from crossframe.train.runner import make_backend

    p = plan(quick)
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    row: dict[str, Any] = {"backend": backend, "cores": cores, "threads": threads,
                           "steps_per_round": p.steps, "log_every": p.log_every, "rounds": p.rounds}
    version = setup_framework(backend, threads)
    row["framework"] = version
    models = make_backend(backend).capabilities().models
    if "gpt" not in models:
        row.update(status="skipped", note=f"the {backend} backend has no gpt yet (models: {', '.join(models)})")
        log(f"gpt_step[{backend}]: skipped: {row['note']}")
        return row
    store = TokenStore.open(store_dir)
    vocab = store.vocab_size
    spec = gpt_spec(vocab)
    init = spec.init(SEED)
    if two_d_decay(init) != {q.name: q.decay for q in spec.table}:
        raise RuntimeError("the native 2-D decay rule differs from the spec's decay mask")
    fpt = model_flops_per_token(vocab)
    peaks = [numpy_matmul_peak()]
    log(f"gpt_step[{backend}]: {version}; cores {cores}; {spec.param_count:,} parameters, "
        f"{fpt / 1e6:.2f} MFLOP/token, matmul peak {peaks[0] / 1e9:.1f} GFLOP/s")

    cf: list[CrossframeRound] = []
    native: list[Times] = []
    with RunClock(CLOCK).installed() as clock, tempfile.TemporaryDirectory(prefix=f"crossframe-gpt-{backend}-") as tmp:
        for r in range(p.rounds):
            order = ("crossframe", "native") if r % 2 == 0 else ("native", "crossframe")
            for side in order:
                if side == "crossframe":
                    cf.append(crossframe_round(backend, p, store_dir, clock, Path(tmp), f"gpt-{backend}-{r}"))
                else:
                    times, model = native_round(backend, spec, init, store["train"], p)
                    native.append(times)
            if r == 0:  # same work: the first round's final weights on both sides
                if cf[0].checkpoint is None:
                    raise RuntimeError(f"{backend}: crossframe run wrote no checkpoint to compare against")
                ours = model.weights()
                row["weights_max_abs_diff"] = _max_abs_diff(load_checkpoint(cf[0].checkpoint).weights, ours)
                row["weights_max_abs_update"] = _max_abs_diff(init, ours)
                del model, ours
            shutil.rmtree(cf[-1].run_dir, ignore_errors=True)
            log(f"  {backend} round {r + 1}/{p.rounds}: crossframe {cf[-1].times.tokens_per_s(p):,.0f} tok/s "
                f"(first step {cf[-1].times.first_step(p):.2f} s), native {native[-1].tokens_per_s(p):,.0f} "
                f"tok/s (first step {native[-1].first_step(p):.2f} s)")
    peaks.append(numpy_matmul_peak())
    peaks += [c.peak_flops for c in cf if math.isfinite(c.peak_flops)]
    peak = max(peaks)

    cf_rates = [c.times.tokens_per_s(p) for c in cf]
    native_rates = [t.tokens_per_s(p) for t in native]
    cf_med, native_med = median(cf_rates), median(native_rates)
    row.update(
        status="ok",
        vocab_size=vocab,
        params=spec.param_count,
        tokens_per_step=BATCH * SEQ_LEN,
        flops_per_token=fpt,
        peak_flops=peak,
        peak_flops_probes=peaks,
        crossframe_tokens_per_s=cf_med,
        native_tokens_per_s=native_med,
        ratio=cf_med / native_med,
        paired_ratio_median=median(c / n for c, n in zip(cf_rates, native_rates, strict=True)),
        crossframe_mfu=fpt * cf_med / peak,
        native_mfu=fpt * native_med / peak,
        crossframe_logged_mfu_median=median(c.logged_mfu for c in cf),
        crossframe_ms_per_step=1e3 * BATCH * SEQ_LEN / cf_med,
        native_ms_per_step=1e3 * BATCH * SEQ_LEN / native_med,
        crossframe_spread=spread(cf_rates),
        native_spread=spread(native_rates),
        crossframe_rounds_tokens_per_s=cf_rates,
        native_rounds_tokens_per_s=native_rates,
        crossframe_first_step_s=median(c.times.first_step(p) for c in cf),
        native_first_step_s=median(t.first_step(p) for t in native),
        crossframe_first_window_s=median(c.times.first_window() for c in cf),
        native_first_window_s=median(t.first_window() for t in native),
        final_loss={"crossframe_window_mean": cf[0].times.final_loss, "native_last": native[0].final_loss},
        loadavg=os.getloadavg() if hasattr(os, "getloadavg") else None,
    )
    return row


def worker_main(backend: str, store_dir: Path, quick: bool, threads: int, out: Path) -> int:
    """The worker process: one backend's row, written as JSON to ``out`` (an error becomes a row too)."""

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    try:
        row = bench_backend(backend, store_dir, quick, threads, log)
    except Exception as exc:  # a backend being finished elsewhere must not sink the other rows
        import traceback

        traceback.print_exc()
        row = {"backend": backend, "status": "error", "note": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}
    out.write_text(json.dumps(row, indent=2, default=str) + "\n")
    return 0 if row["status"] != "error" else 1


# --------------------------------------------------------------------------- the benchmark (parent)

FRAMEWORK_MODULE = {"torch": "torch", "jax": "jax", "tensorflow": "tensorflow"}
_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\)|I\d{4} [\d:.]+ +\d+ \S+:\d+\] )")


def _worker_env(threads: int) -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(q for q in (str(root), env.get("PYTHONPATH", "")) if q)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    return env


def spawn_worker(backend: str, store: Path, quick: bool, threads: int, log: Callable[[str], None]
                 ) -> dict[str, Any]:
    """Run ``python -m benchmarks.gpt_step --worker BACKEND`` (pinned to one core when ``threads == 1``)."""
    root = Path(__file__).resolve().parent.parent
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pin = threads == 1 and bool(allowed)

    def pin_child() -> None:  # runs in the child before exec: every thread it ever starts inherits this
        os.sched_setaffinity(0, {allowed[0]})

    with tempfile.TemporaryDirectory(prefix="crossframe-gpt-worker-") as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "benchmarks.gpt_step", "--worker", backend, "--store", str(store),
               "--threads", str(threads), "--out", str(out)]
        if quick:
            cmd.append("--quick")
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, env=_worker_env(threads), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, preexec_fn=pin_child if pin else None)
        assert proc.stderr is not None
        for line in proc.stderr:  # pass the worker's log on, without TF / absl start-up chatter
            if not _NOISE.match(line):
                log(line.rstrip("\n"))
        code = proc.wait()
        if not out.is_file():
            return {"backend": backend, "status": "error", "note": f"worker exited {code} (see its output above)"}
        row = json.loads(out.read_text())
        row["worker_wall_s"] = time.perf_counter() - started
        return row


def run(quick: bool = False, log: Callable[[str], None] | None = None, threads: int = 1,
        backends: tuple[str, ...] = BACKENDS) -> list[dict[str, Any]]:
    """Prepare the token store once, then one worker process per backend; one row per backend.

    ``threads``: 1 (default) pins each worker to one core with one framework thread; 0 leaves
    cores and threads to the frameworks; N sets N threads without a pin.
    """
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    rows = []
    with tempfile.TemporaryDirectory(prefix="crossframe-gpt-store-") as tmp:
        store = Path(tmp) / "stdlib-bytes"
        data = prepare_store(store)
        log(f"gpt_step: token store of {data['stdlib_files']} stdlib files: {data['train_tokens']:,} train tokens, "
            f"vocabulary {data['vocab_size']} ({data['prepare_s']:.2f} s)")
        for backend in backends:
            if importlib.util.find_spec(FRAMEWORK_MODULE[backend]) is None:
                rows.append({"backend": backend, "status": "skipped",
                             "note": f"{FRAMEWORK_MODULE[backend]} is not installed"})
                log(f"gpt_step[{backend}]: skipped ({FRAMEWORK_MODULE[backend]} is not installed)")
                continue
            row = spawn_worker(backend, store, quick, threads, log)
            row["data"] = data
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of :func:`run`'s results (skipped or failed backends say why)."""
    headers = ["backend", "steps x rounds", "crossframe tok/s", "native tok/s", "ratio cf/native",
               "MFU cf / native", "first step s cf / native", "spread cf / native", "max abs dw (update)",
               "peak GFLOP/s"]
    body = []
    for row in rows:
        if row.get("status") != "ok":
            body.append([row["backend"], f"{row.get('status')}: {row.get('note')}", *["-"] * (len(headers) - 2)])
            continue
        body.append([
            row["backend"], f"{row['steps_per_round']} x {row['rounds']}",
            f"{row['crossframe_tokens_per_s']:,.0f}", f"{row['native_tokens_per_s']:,.0f}", f"{row['ratio']:.3f}",
            f"{row['crossframe_mfu']:.1%} / {row['native_mfu']:.1%}",
            f"{row['crossframe_first_step_s']:.2f} / {row['native_first_step_s']:.2f}",
            f"{row['crossframe_spread']:.0%} / {row['native_spread']:.0%}",
            f"{row['weights_max_abs_diff']:.1e} ({row['weights_max_abs_update']:.1e})",
            f"{row['peak_flops'] / 1e9:.1f}",
        ])
    return markdown_table(headers, body)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.gpt_step [--quick] [--threads N] [--backend NAME ...] [--out FILE.json]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpt_step", description=TITLE)
    parser.add_argument("--quick", action="store_true", help="one short round per backend (a smoke test, ~1 min)")
    parser.add_argument("--out", type=Path, default=None, metavar="FILE.json", help="write the JSON results here")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="1 (default): each worker pinned to one core, one framework thread; "
                             "0: the frameworks' own choice; N: N threads, no pin")
    parser.add_argument("--backend", action="append", choices=BACKENDS, metavar="NAME",
                        help=f"only this backend (repeatable; one of {', '.join(BACKENDS)})")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)  # internal: one backend, here
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.store is None or args.out is None:
            parser.error("--worker needs --store and --out")
        return worker_main(args.worker, args.store, args.quick, args.threads, args.out)
    started = time.perf_counter()
    rows = run(quick=args.quick, threads=args.threads, backends=tuple(args.backend or BACKENDS))
    print(f"### {TITLE}\n\n{table(rows)}")
    if args.out is not None:
        result = {"title": TITLE, "quick": args.quick, "threads": args.threads, "machine": machine_info(),
                  "seconds": time.perf_counter() - started, "rows": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 1 if any(row.get("status") == "error" for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
