"""The JAX backend's ``gpt`` (a graph of neutral layers, lowered by ``crossframe_jax.lowering``): forward
against the numpy reference, exact round trips, the masked token loss and its accumulation, training,
activation checkpointing, dropout keys (layers and attention weights), factorised attention, bf16, the
KV-cached generation against full recompute, and the same steps as torch.

Every compiled train step costs seconds on a small CPU, so the configs are tiny and states are
reused through ``load_state`` (same program, no new compile) where a test needs several runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossframe.backend import TrainSetup
from crossframe.data.dataset import DataInfo
from crossframe.models import build_model
from crossframe.sampling import generate_by_recompute, make_sampler

jax = pytest.importorskip("jax")
pytest.importorskip("optax")
from crossframe.testing.tolerance import U_BF16, network_tolerance, sgd_weight_tolerance  # noqa: E402
from crossframe_jax.backend import JaxBackend  # noqa: E402

BACKEND = JaxBackend()
VOCAB = 13


def gpt_spec(seq: int = 8, vocab: int = VOCAB, **params):
    base = {"n_layer": 2, "n_head": 2, "d_model": 16, "max_seq_len": 16}
    return build_model("gpt", base | params, DataInfo("language_modeling", (seq,), vocab))


def lm_batch(b: int, t: int, seed: int, vocab: int = VOCAB, mask: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, (b, t)).astype(np.int64)
    batch = {"x": x, "y": np.roll(x, -1, axis=1)}
    if mask:
        m = (rng.random((b, t)) < 0.7).astype(np.float32)
        m[: b // 2] *= (np.arange(t) >= t // 2)  # the first half of the batch counts far fewer tokens
        m[-1, -1] = 1.0
        batch["mask"] = m
    return batch


def ref_token_ce(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=-1))
    return lse - np.take_along_axis(z, y[..., None], axis=-1)[..., 0]


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def losses(state, batches, lr: float = 0.01):
    out = []
    for batch in batches:
        state, o = BACKEND.train_step(state, batch, lr)
        out.append(o["loss"])
    return state, [float(v) for v in BACKEND.fetch(out)]


# --------------------------------------------------------------------------- forward and weights


@pytest.mark.parametrize("params", [{}, {"rope": True}, {"tied_embeddings": False},
                                    {"rope": True, "tied_embeddings": False, "d_ff": 24, "n_head": 4}],
                         ids=["learned", "rope", "untied", "rope-untied-dff"])
def test_forward_matches_numpy_reference(params) -> None:
    spec = gpt_spec(seq=12, **params)
    weights = {k: v * 4 if k.startswith("w") or "weight" in k else v for k, v in spec.init(3).items()}  # larger logits
    x = lm_batch(5, 12, 1)["x"]
    state = BACKEND.inference_state(spec, weights)
    got = BACKEND.predict(state, x)
    want = spec.forward(weights, x)
    assert got.dtype == np.float32 and got.shape == (5, 12, VOCAB)
    diff = max_diff(got, want)
    print(f"gpt {params}: max |jax - reference| = {diff:.3g} (logits up to {np.abs(want).max():.3g})")
    assert diff <= 1e-4
    if not params:
        shorter = BACKEND.predict(state, x[:, :7])  # any length up to max_seq_len
        assert max_diff(shorter, spec.forward(weights, x[:, :7])) <= 1e-4


def test_forward_refuses_sequences_longer_than_the_context() -> None:
    spec = gpt_spec(max_seq_len=8)
    with pytest.raises(ValueError, match=r"longer than max_len 8 \(a gpt's model\.max_seq_len\)"):
        BACKEND.predict(BACKEND.inference_state(spec, spec.init(0)), np.zeros((1, 9), np.int64))


@pytest.mark.parametrize("params", [{}, {"rope": True, "tied_embeddings": False}])
def test_canonical_round_trip_is_exact(params) -> None:
    spec = gpt_spec(**params)
    weights = spec.init(7)
    state = BACKEND.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01}))
    back, opt = BACKEND.export_state(state)
    assert list(back) == [p.name for p in spec.table]
    for name, value in weights.items():
        assert back[name].dtype == np.float32 and np.array_equal(back[name], value), name
    assert {k.split("/", 1)[1] for k in opt if "/" in k} == set(weights)
    again, _ = BACKEND.export_state(BACKEND.load_state(state, back, opt))
    assert all(np.array_equal(again[n], weights[n]) for n in weights)


# --------------------------------------------------------------------------- the token loss


def test_masked_grad_accumulation_equals_one_batch() -> None:
    spec = gpt_spec()
    weights = spec.init(2)
    batches = [lm_batch(8, 8, 60 + i) for i in range(3)]
    lr, momentum = 0.1, 0.9  # SGD carries the reordered sums' rounding linearly (crossframe.testing.tolerance)
    runs = {}
    for k in (1, 2):
        state = BACKEND.create_state(TrainSetup(spec, weights, "sgd", {"lr": lr, "momentum": momentum,
                                                                       "weight_decay": 0.1},
                                                grad_accum=k, clip_norm=0.5))
        state, run_losses = losses(state, batches, lr)
        runs[k] = (BACKEND.export_state(state)[0], run_losses)
    (w1, l1), (w2, l2) = runs[1], runs[2]
    depth, terms = 2 * spec.params["n_layer"] + 2, 8 * 8 * spec.params["d_model"]
    assert max(abs(a - b) for a, b in zip(l1, l2, strict=True)) <= network_tolerance(depth, terms, max(l1))
    # clipping to 0.5 bounds every step's gradient norm, so 0.5 bounds the gradients' size
    allowed = sgd_weight_tolerance(lr, len(batches), network_tolerance(depth, terms, 0.5), momentum)
    worst = max(max_diff(w1[n], w2[n]) for n in w1)
    print(f"grad_accum=2 vs 1: max |weight diff| after 3 sgd steps = {worst:.3g}, allowed {allowed:.3g}")
    assert worst <= allowed
    assert max(max_diff(w1[n], weights[n]) for n in w1) > 100 * allowed  # the weights did move


def test_loss_and_eval_sums_match_the_reference_with_and_without_mask() -> None:
    spec = gpt_spec(n_layer=1)
    weights = spec.init(4)
    state = BACKEND.create_state(TrainSetup(spec, weights, "sgd", {"lr": 0.0}, grad_accum=2))
    masked, plain = lm_batch(6, 8, 5), lm_batch(6, 8, 5, mask=False)
    ce = ref_token_ce(spec.forward(weights, masked["x"]), masked["y"])
    m = masked["mask"]

    sums = BACKEND.fetch(BACKEND.eval_step(state, masked))
    assert abs(float(sums["loss_sum"]) - (ce * m).sum()) <= 1e-4
    assert float(sums["count"]) == m.sum()
    sums = BACKEND.fetch(BACKEND.eval_step(state, plain))
    assert abs(float(sums["loss_sum"]) - ce.sum()) <= 1e-4 and sums["count"] == 48

    state, (loss_masked, loss_plain) = losses(state, [masked, plain], lr=0.0)
    assert abs(loss_masked - (ce * m).sum() / m.sum()) <= 1e-5
    assert abs(loss_plain - ce.mean()) <= 1e-5
    state, _ = losses(state, [lm_batch(6, 8, 9), lm_batch(6, 8, 9, mask=False)], lr=0.1)  # new rates
    assert state.program.traces["train"] == 2  # one compile with a mask, one without; none per rate
    zero = dict(masked, mask=np.zeros_like(m))
    state, (loss_zero,) = losses(state, [zero])
    assert loss_zero == 0.0  # nothing counted: loss 0 and zero gradients, not NaN
    assert all(np.isfinite(v).all() for v in BACKEND.export_state(state)[0].values())


def test_tiny_gpt_learns_a_cyclic_sequence() -> None:
    vocab, t, b = 16, 16, 8
    spec = build_model("gpt", {"n_layer": 2, "n_head": 2, "d_model": 32, "max_seq_len": t},
                       DataInfo("language_modeling", (t,), vocab))
    state = BACKEND.create_state(TrainSetup(spec, spec.init(0), "adamw", {"lr": 3e-3, "weight_decay": 0.01}))
    rng = np.random.default_rng(0)
    cycle = rng.permutation(vocab)  # the next token is a fixed function of the current one
    seq = np.tile(cycle, 4)
    history = []
    for _ in range(100):
        starts = rng.integers(0, vocab, b)
        x = np.stack([seq[s:s + t] for s in starts])
        y = np.stack([seq[s + 1:s + t + 1] for s in starts])
        state, out = BACKEND.train_step(state, {"x": x, "y": y}, 3e-3)
        history.append(out["loss"])
    history = [float(v) for v in BACKEND.fetch(history)]
    print(f"cyclic sequence: loss {history[0]:.3f} -> {history[-1]:.4f} (log vocab {math.log(vocab):.3f})")
    assert history[0] > 0.8 * math.log(vocab)
    assert history[-1] < 0.1 * math.log(vocab)
    assert state.program.traces["train"] == 1


# --------------------------------------------------------------------------- checkpointing, dropout, precision


def test_activation_checkpointing_gives_the_same_steps() -> None:
    spec = gpt_spec(rope=True, dropout=0.1)  # recomputed blocks redraw the very same dropout masks
    weights = spec.init(1)
    batches = [lm_batch(4, 8, 20 + i) for i in range(3)]
    runs = []
    for remat in (False, True):
        state = BACKEND.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01},
                                                activation_checkpointing=remat))
        runs.append(losses(state, batches)[1])
    assert max(abs(a - b) for a, b in zip(*runs, strict=True)) <= 1e-6


def test_dropout_is_deterministic_for_a_seed() -> None:
    spec = gpt_spec(n_layer=1, dropout=0.3)
    weights = spec.init(1)
    batches = [lm_batch(4, 8, 30 + i, mask=False) for i in range(3)]
    state = BACKEND.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01}, seed=5, grad_accum=2))
    _, fresh_opt = BACKEND.export_state(state)
    state, first = losses(state, batches)
    state = BACKEND.load_state(state, weights, fresh_opt)  # the same compiled step, from the start again
    state, second = losses(state, batches)
    assert first == second  # bit for bit: the keys are a function of (seed, step)
    assert state.program.traces["train"] == 1

    other = BACKEND.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01}, seed=6, grad_accum=2))
    _, other_losses = losses(other, batches)
    assert other_losses != first
    # eval and predict never drop: they equal the reference
    x = batches[0]["x"]
    assert max_diff(BACKEND.predict(BACKEND.inference_state(spec, weights), x), spec.forward(weights, x)) <= 1e-4
    # and training does: the first loss differs from the dropout-free loss of the same weights
    ce = ref_token_ce(spec.forward(weights, x), batches[0]["y"]).mean()
    assert abs(first[0] - ce) > 1e-3


def test_bf16_trains_with_float32_master_weights() -> None:
    spec = gpt_spec(n_layer=1, rope=True)
    weights = spec.init(0)
    batches = [lm_batch(8, 8, 40 + i) for i in range(5)]
    runs = {}
    for precision in ("fp32", "bf16"):
        state = BACKEND.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01}, precision=precision))
        state, run_losses = losses(state, batches)
        runs[precision] = run_losses
        assert all(v.dtype == np.float32 for v in state.params.values())
    assert all(np.isfinite(runs["bf16"]))
    assert max(abs(a - b) for a, b in zip(runs["fp32"], runs["bf16"], strict=True)) <= 0.05
    for precision in ("bf16", "fp16"):  # fp16: inference only (attention in float32 on the CPU)
        logits = BACKEND.predict(BACKEND.inference_state(spec, weights, precision=precision), batches[0]["x"])
        assert logits.dtype == np.float32 and max_diff(logits, spec.forward(weights, batches[0]["x"])) <= 0.05


# --------------------------------------------------------------------------- generation


@pytest.mark.parametrize("params", [{}, {"rope": True, "tied_embeddings": False}])
def test_cached_generation_equals_full_recompute(params) -> None:
    spec = gpt_spec(seq=12, max_seq_len=12, **params)  # the cache holds the graph's context: 12 positions
    weights = {k: v * 3 for k, v in spec.init(9).items()}  # peaked logits: a sampled path is informative
    state = BACKEND.inference_state(spec, weights)
    prompt = lm_batch(3, 4, 2)["x"]
    cached_logits, full_logits = [], []

    def recording(store, sampler):
        def sample(logits):
            store.append(np.array(logits))
            return sampler(logits)
        return sample

    # 4 + 11 tokens: 9 through the cache (prefill + decode steps), then 2 by the sliding window
    out = BACKEND.generate(state, prompt, 11, recording(cached_logits, make_sampler(0.8, seed=1)))
    want = generate_by_recompute(lambda c: spec.forward(weights, c), prompt, 11,
                                 recording(full_logits, make_sampler(0.8, seed=1)), 12)
    assert out.dtype == np.int64 and out.shape == (3, 15)
    np.testing.assert_array_equal(out, want)
    diff = max(max_diff(a, b) for a, b in zip(cached_logits, full_logits, strict=True))
    assert diff <= 1e-4, f"cached logits differ from full recompute by {diff:.3g}"
    assert state.program.traces["generate"] == 2  # the prompt's shape, then [B, 1] for every new token
    BACKEND.generate(state, prompt[:, :3], 5, lambda z: z.argmax(-1))
    assert state.program.traces["generate"] == 3  # a new prompt length; every position, one compiled step


def test_generate_needs_a_language_model() -> None:
    from crossframe.errors import CapabilityError

    spec = build_model("mlp", {"hidden": [4]}, DataInfo("classification", (3,), 2))
    with pytest.raises(CapabilityError, match="not a language model"):
        BACKEND.generate(BACKEND.inference_state(spec, spec.init(0)), np.zeros((1, 2), np.int64), 2,
                         lambda z: z.argmax(-1))


# --------------------------------------------------------------------------- against torch


def test_adamw_steps_agree_with_torch() -> None:
    pytest.importorskip("torch")
    from crossframe_torch.backend import TorchBackend

    torch_backend = TorchBackend()
    if "gpt" not in torch_backend.capabilities().models:
        pytest.skip("the torch backend has no gpt yet")
    spec = gpt_spec(rope=True)
    weights = spec.init(8)
    batches = [lm_batch(8, 8, 70 + i) for i in range(5)]
    results = []
    for backend in (BACKEND, torch_backend):
        state = backend.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01, "weight_decay": 0.1},
                                                grad_accum=2, clip_norm=1.0))
        out = []
        for batch in batches:
            state, o = backend.train_step(state, batch, 0.01)
            out.append(o["loss"])
        results.append(([float(v) for v in backend.fetch(out)], backend.export_state(state)[0]))
    (jax_losses, jax_w), (torch_losses, torch_w) = results
    loss_diff = max(abs(a - b) for a, b in zip(jax_losses, torch_losses, strict=True))
    print(f"jax vs torch, 5 adamw steps: max |loss diff| {loss_diff:.3g}, "
          f"max |weight diff| {max(max_diff(jax_w[n], torch_w[n]) for n in jax_w):.3g}")
    assert loss_diff <= 1e-4


# --------------------------------------------------------------------------- what the lowering adds for gpt


def graph_spec(layers, seq: int = 6, vocab: int = VOCAB, **params):
    return build_model("graph", {"layers": layers, **params}, DataInfo("language_modeling", (seq,), vocab))


def test_factorised_attention_and_gated_mlp_match_the_reference() -> None:
    # every kind of factorisable linear: attention qkv / proj, a gated MLP's gate / up / down, a dense head
    layers = [{"embedding": {"name": "wte", "dim": 16}},
              {"residual": {"name": "", "layers": [{"norm": {"name": "ln", "kind": "rms"}},
                                                   {"attention": {"name": "attn", "heads": 4, "kv_heads": 2,
                                                                  "rope": True}}]}},
              {"residual": {"name": "", "layers": [{"gated_mlp": {"name": "mlp", "hidden": 24, "bias": True}}]}},
              {"dense": {"name": "head", "units": "outputs"}}]
    low_rank = {"attn.qkv": 3, "attn.proj": 5, "mlp.gate": 4, "mlp.up": 2, "mlp.down": 6, "head": 3}
    spec = graph_spec(layers, low_rank=low_rank)
    names = {p.name for p in spec.table}
    assert {f"{k}.weight_u" for k in low_rank} <= names and not any(f"{k}.weight" in names for k in low_rank)
    weights = spec.init(2)
    x = lm_batch(3, 6, 4)["x"]
    got = BACKEND.predict(BACKEND.inference_state(spec, weights), x)
    want = spec.forward(weights, x)  # the reference folds U @ V
    assert max_diff(got, want) <= 1e-4 * max(1.0, float(np.abs(want).max()))

    gpt = gpt_spec(low_rank={"h.0.attn.qkv": 4, "h.1.attn.proj": 2, "h.0.mlp.fc": 3})
    weights = gpt.init(5)
    assert "h.0.attn.qkv.weight_v" in weights and "h.0.attn.qkv.weight" not in weights
    x = lm_batch(2, 8, 6)["x"]
    assert max_diff(BACKEND.predict(BACKEND.inference_state(gpt, weights), x), gpt.forward(weights, x)) <= 1e-4


@pytest.mark.slow
def test_attention_dropout_is_active_in_training_and_off_in_evaluation() -> None:
    from crossframe_jax.backend import _uses_rng
    from crossframe_jax.lowering import make_forward

    rate = 0.4
    layers = [{"embedding": {"name": "wte", "dim": 8}}, {"attention": {"name": "attn", "heads": 2, "dropout": rate}},
              {"tied_head": "wte"}]
    spec = graph_spec(layers)
    assert _uses_rng(TrainSetup(spec, spec.init(0), "sgd", {"lr": 0.1}))  # no dropout layer, yet keys are drawn
    weights = {k: v * 4 for k, v in spec.init(1).items()}
    params = {k: jax.numpy.asarray(v) for k, v in weights.items()}
    x = lm_batch(2, 6, 3)["x"]
    forward = make_forward(spec.graph)
    want = spec.forward(weights, x)
    assert max_diff(forward(params, x), want) <= 1e-4  # evaluation: no dropout
    key = jax.random.key(0)
    assert max_diff(forward(params, x, train=False, rng=key), want) <= 1e-4
    dropped = jax.jit(lambda k: forward(params, x, train=True, rng=k))
    first, again, other = (np.asarray(dropped(k)) for k in (key, key, jax.random.key(1)))
    np.testing.assert_array_equal(first, again)  # a function of the key
    assert max_diff(first, other) > 1e-3 and max_diff(first, want) > 1e-3
    # inverted dropout is unbiased: over many keys the mean output tends to the evaluation output
    n = 2000
    samples = np.asarray(jax.vmap(dropped)(jax.random.split(jax.random.key(2), n)), np.float64)
    error = np.abs(samples.mean(axis=0) - want)
    bound = 5.0 * samples.std(axis=0) / math.sqrt(n) + 1e-4  # five standard errors of the mean
    assert (error <= bound).all(), f"worst {float((error - bound).max()):.3g} above the bound"


@pytest.mark.slow
def test_activation_checkpointing_gives_the_same_gradients() -> None:
    from crossframe_jax.backend import token_loss
    from crossframe_jax.lowering import make_forward

    spec = gpt_spec(dropout=0.2, low_rank={"h.1.attn.qkv": 4})  # dropout: the same masks recomputed
    params = {k: jax.numpy.asarray(v) for k, v in spec.init(3).items()}
    batch = lm_batch(4, 8, 11, mask=False)
    grads = {}
    for remat in (False, True):
        forward = make_forward(spec.graph, remat=remat)

        def loss(p, forward=forward):
            return token_loss(forward(p, batch["x"], train=True, rng=jax.random.key(7)), batch["y"]).mean()

        grad_fn = jax.jit(jax.grad(loss))
        text = str(jax.make_jaxpr(grad_fn)(params))
        assert text.count("remat") + text.count("checkpoint") >= (2 if remat else 0)  # one per block
        if not remat:
            assert "remat" not in text and "checkpoint" not in text
        grads[remat] = {k: np.asarray(v, np.float64) for k, v in grad_fn(params).items()}
    depth, width = 2 * 2 + 2, 8 * 16  # a gradient is a sum over the batch's tokens through the blocks
    for name, g in grads[False].items():
        allowed = network_tolerance(depth, width, max(1e-3, float(np.abs(g).max())))
        assert max_diff(grads[True][name], g) <= allowed, name


def test_the_fused_attention_kernel_is_asked_for_only_where_it_runs_and_refusals_fall_back() -> None:
    from types import SimpleNamespace

    from crossframe_jax.lowering import attention_implementation, make_forward

    jnp = jax.numpy
    gpu, cpu = SimpleNamespace(platform="gpu"), jax.devices("cpu")[0]
    assert attention_implementation(gpu, jnp.bfloat16, 64) == "cudnn"
    assert attention_implementation(gpu, jnp.float16, 128) == "cudnn"
    assert attention_implementation(gpu, None, 64) is None  # float32: XLA's path at HIGHEST precision
    assert attention_implementation(gpu, jnp.bfloat16, 12) is None  # head sizes cuDNN does not take
    assert attention_implementation(gpu, jnp.bfloat16, 256) is None
    assert attention_implementation(cpu, jnp.bfloat16, 64) is None
    # asked for on a machine without cuDNN, the call is refused while tracing and XLA's path runs instead
    spec = gpt_spec(n_layer=1, d_model=32, n_head=2)  # head size 16
    weights = spec.init(0)
    params = {k: jnp.asarray(v) for k, v in weights.items()}
    x = lm_batch(2, 8, 1)["x"]
    got = np.asarray(jax.jit(make_forward(spec.graph, jnp.bfloat16, device=gpu))(params, x), np.float32)
    want = spec.forward(weights, x)
    # bf16 rounding through the chained reductions (qkv, scores, values, proj, fc, proj, head), each of up to
    # 4 * 32 terms whose rounding errors add up like a random walk (sqrt(terms) units), on logits of this size
    allowed = 7 * math.sqrt(4 * 32) * U_BF16 * float(np.abs(want).max())
    print(f"bf16 through XLA's attention: max |diff| {max_diff(got, want):.3g}, allowed {allowed:.3g}")
    assert max_diff(got, want) <= allowed
