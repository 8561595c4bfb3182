"""The TensorFlow backend's ``gpt`` (a graph of neutral layers, lowered like any other): forward against the
numpy reference, canonical round trips, the language-modelling loss (masks, exact gradient accumulation, eval
sums), learning, activation checkpointing, dropout determinism, tracing and bf16; and what the lowering does
for it: factorised attention and gated-MLP linears, dropout on attention weights, recomputed blocks. Tiny
configs; the Backend API directly."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as the plugin does before tensorflow loads
tf = pytest.importorskip("tensorflow")

from crossframe.backend import TrainSetup  # noqa: E402
from crossframe.data.dataset import DataInfo  # noqa: E402
from crossframe.models import build_model  # noqa: E402
from crossframe.testing.tolerance import network_tolerance, sgd_weight_tolerance  # noqa: E402
from crossframe_tensorflow.backend import TensorFlowBackend  # noqa: E402

BACKEND = TensorFlowBackend()
VOCAB = 17
SEQ = 12
VARIANTS = {"learned": {}, "rope": {"rope": True}, "untied": {"tied_embeddings": False},
            "rope-untied-dff": {"rope": True, "tied_embeddings": False, "d_ff": 24}}


def gpt_spec(seq: int = SEQ, vocab: int = VOCAB, **params):
    base = {"n_layer": 2, "n_head": 2, "d_model": 16, "max_seq_len": 16}
    return build_model("gpt", base | params, DataInfo("language_modeling", (seq,), vocab))


def sharpened(spec, seed: int, factor: float = 8.0) -> dict[str, np.ndarray]:
    """Initial weights with the normal ones scaled up, so attention and logits are far from uniform."""
    weights = spec.init(seed)
    rng = np.random.default_rng(seed)
    for p in spec.table:
        if p.init == "normal":
            weights[p.name] = (weights[p.name] * factor).astype(np.float32)
        elif p.layout in ("bias", "norm_bias"):
            weights[p.name] = rng.normal(0, 0.1, p.shape).astype(np.float32)
        elif p.layout == "norm_scale":
            weights[p.name] = (1 + rng.normal(0, 0.1, p.shape)).astype(np.float32)
    return weights


def lm_batch(n: int, seed: int, seq: int = SEQ, vocab: int = VOCAB, mask: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, (n, seq)).astype(np.int64)
    batch = {"x": x, "y": np.roll(x, -1, axis=1)}
    if mask:
        m = (rng.random(x.shape) < 0.7).astype(np.float32)
        m[: n // 2, seq // 2:] = 0.0  # the micro-batches count very different numbers of tokens
        m[:, 0] = 1.0
        batch["mask"] = m
    return batch


def reference_loss(spec, weights, batch) -> tuple[float, float, float]:
    """(mean over counted tokens, sum over counted tokens, count) from the numpy reference forward."""
    logits = spec.reference_forward(weights, batch["x"])
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, batch["y"][..., None], -1)[..., 0]
    mask = batch.get("mask", np.ones(ce.shape))
    total = float((ce * mask).sum())
    return total / mask.sum(), total, float(mask.sum())


def losses(state, batches, lr: float = 0.01) -> list[float]:
    outs = [BACKEND.train_step(state, b, lr)[1] for b in batches]
    return [float(BACKEND.fetch(o)["loss"]) for o in outs]


# --------------------------------------------------------------------------- forward and layouts


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_matches_numpy_reference(variant: str) -> None:
    spec = gpt_spec(**VARIANTS[variant])
    state_diffs = []
    for weights in (spec.init(4), sharpened(spec, 4)):
        state = BACKEND.inference_state(spec, weights)
        for t in (SEQ, 5):  # the data's length and a shorter prompt
            x = lm_batch(6, 1)["x"][:, :t]
            got = BACKEND.predict(state, x)
            want = spec.reference_forward(weights, x)
            assert got.shape == (6, t, VOCAB) and got.dtype == np.float32
            state_diffs.append(float(np.max(np.abs(got - want))))
    print(f"gpt/{variant}: max |tf - numpy| = {max(state_diffs):.3g}")
    assert max(state_diffs) <= 1e-4, state_diffs


def test_predict_is_causal_and_ignores_dropout() -> None:
    spec = gpt_spec(dropout=0.5, rope=True)
    weights = sharpened(spec, 2)
    state = BACKEND.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01}))
    x = lm_batch(3, 2)["x"]
    changed = x.copy()
    changed[:, 7:] = (changed[:, 7:] + 1) % VOCAB
    a, b = BACKEND.predict(state, x), BACKEND.predict(state, changed)
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-3
    np.testing.assert_allclose(a, spec.reference_forward(weights, x), atol=1e-4)  # eval: no dropout


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_canonical_round_trip_is_exact(variant: str) -> None:
    spec = gpt_spec(**VARIANTS[variant])
    weights = sharpened(spec, 9)
    state = BACKEND.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01}))
    back, opt = BACKEND.export_state(state)
    assert list(back) == [p.name for p in spec.table]
    assert {v.name.split(":")[0].split("/", 1)[1] for v in state.model.variables} == set(weights)
    for name, value in weights.items():
        assert back[name].dtype == np.float32 and np.array_equal(back[name], value), name
    assert set(opt) == {"step"} | {f"{s}/{n}" for n in weights for s in ("exp_avg", "exp_avg_sq")}
    back["wte.weight"][...] = 3.0  # a copy, not a view
    other = spec.init(1)
    BACKEND.load_state(state, other, None)
    again, _ = BACKEND.export_state(state)
    assert all(np.array_equal(again[k], other[k]) for k in other)


# --------------------------------------------------------------------------- the loss


@pytest.mark.parametrize("grad_accum", [1, 4])
def test_step_loss_is_the_masked_mean_over_the_whole_batch(grad_accum: int) -> None:
    spec = gpt_spec()
    weights = sharpened(spec, 3)
    state = BACKEND.create_state(TrainSetup(spec, weights, "sgd", {"lr": 0.0}, grad_accum=grad_accum))
    batch = lm_batch(8, 5)
    ones = {**batch, "mask": np.ones_like(batch["mask"])}
    no_mask = {"x": batch["x"], "y": batch["y"]}
    got = [BACKEND.train_step(state, b, 0.0)[1] for b in (batch, no_mask, ones)]  # rate 0: weights stay
    assert all(isinstance(out["loss"], tf.Tensor) for out in got)
    got = [float(v["loss"]) for v in BACKEND.fetch(got)]
    assert got[0] == pytest.approx(reference_loss(spec, weights, batch)[0], abs=1e-5)
    assert got[1] == pytest.approx(reference_loss(spec, weights, no_mask)[0], abs=1e-5)
    assert got[1] == got[2]  # no mask is a mask of ones


def test_masked_grad_accumulation_equals_one_batch() -> None:
    spec = gpt_spec(rope=True)
    weights = spec.init(2)
    states = [BACKEND.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01}, grad_accum=k)) for k in (1, 2)]
    batches = [lm_batch(8, 60 + i) for i in range(3)]
    curves = [losses(s, batches) for s in states]
    np.testing.assert_allclose(curves[0], curves[1], atol=1e-6)
    a, b = (BACKEND.export_state(s)[0] for s in states)
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst <= 1e-5, worst


def test_eval_sums_match_the_reference() -> None:
    spec = gpt_spec(tied_embeddings=False)
    weights = sharpened(spec, 6)
    state = BACKEND.inference_state(spec, weights)
    for n, with_mask in ((8, True), (3, True), (5, False)):
        batch = lm_batch(n, 11, mask=with_mask)
        sums = BACKEND.fetch(BACKEND.eval_step(state, batch))
        assert set(sums) == {"loss_sum", "count"}
        _, total, count = reference_loss(spec, weights, batch)
        assert float(sums["count"]) == count == (batch["mask"].sum() if with_mask else n * SEQ)
        assert float(sums["loss_sum"]) == pytest.approx(total, rel=1e-5)


# --------------------------------------------------------------------------- training


def test_training_on_a_cyclic_sequence_learns_it() -> None:
    vocab, seq = 16, 16
    spec = gpt_spec(seq=seq, vocab=vocab, n_layer=2, d_model=32, n_head=4, max_seq_len=seq)
    state = BACKEND.create_state(TrainSetup(spec, spec.init(0), "adamw", {"lr": 3e-3, "weight_decay": 0.01},
                                            clip_norm=1.0))
    rng = np.random.default_rng(0)
    curve = []
    for _ in range(100):
        start = rng.integers(0, vocab, (16, 1))
        tokens = (start + np.arange(seq + 1)) % vocab  # 0 1 2 ... 15 0 1 ...
        _, out = BACKEND.train_step(state, {"x": tokens[:, :-1], "y": tokens[:, 1:]}, 3e-3)
        curve.append(out["loss"])
    curve = [float(v) for v in BACKEND.fetch(curve)]
    assert curve[0] == pytest.approx(math.log(vocab), abs=0.3)
    assert max(curve[-5:]) < 0.1 * math.log(vocab), curve[-5:]
    tokens = (np.arange(4)[:, None] + np.arange(seq)) % vocab
    pred = BACKEND.predict(state, tokens).argmax(-1)
    np.testing.assert_array_equal(pred, (tokens + 1) % vocab)


def test_activation_checkpointing_gives_the_same_steps() -> None:
    spec = gpt_spec(dropout=0.2, rope=True)  # with dropout: the recomputed blocks must draw the same masks
    weights = spec.init(5)
    batches = [lm_batch(8, 30 + i) for i in range(3)]
    lr, momentum = 0.1, 0.9
    runs = []
    for checkpointing in (False, True):
        # SGD: the recomputed backward sums in another order, and SGD carries that rounding linearly
        # (Adam would turn a rounding-level gradient element into a full step; see crossframe.testing.tolerance)
        state = BACKEND.create_state(TrainSetup(spec, weights, "sgd", {"lr": lr, "momentum": momentum}, grad_accum=2,
                                                clip_norm=1e6, seed=3, activation_checkpointing=checkpointing))
        outs = BACKEND.fetch([BACKEND.train_step(state, b, lr)[1] for b in batches])
        runs.append(([float(o["loss"]) for o in outs], max(float(o["grad_norm"]) for o in outs),
                     BACKEND.export_state(state)[0]))
    (loss_a, grad_a, w_a), (loss_b, _, w_b) = runs
    tokens, depth = 8 * SEQ, 2 * spec.params["n_layer"] + 2
    loss_tol = network_tolerance(depth, tokens * spec.params["d_model"], max(loss_a))
    np.testing.assert_allclose(loss_b, loss_a, atol=loss_tol, rtol=0)
    grad_error = network_tolerance(depth, tokens * spec.params["d_model"], grad_a)
    weight_tol = sgd_weight_tolerance(lr, len(batches), grad_error, momentum)
    worst = max(float(np.max(np.abs(w_b[n] - w_a[n]))) for n in w_a)
    print(f"checkpointing vs not: max |weight diff| {worst:.3g}, allowed {weight_tol:.3g}")
    assert worst <= weight_tol
    # the comparison has teeth: the weights moved much further than the tolerance
    assert max(float(np.max(np.abs(w_a[n] - weights[n]))) for n in w_a) > 100 * weight_tol


def test_dropout_is_deterministic_for_a_seed() -> None:
    spec = gpt_spec(dropout=0.3)
    weights = spec.init(1)
    batches = [lm_batch(8, 70)] * 3  # the same batch: only the step changes the masks

    def run(seed: int, dropout_spec=spec):
        state = BACKEND.create_state(TrainSetup(dropout_spec, weights, "adamw", {"lr": 0.01}, seed=seed))
        return losses(state, batches), BACKEND.export_state(state)[0]

    (a, wa), (b, wb), (c, _) = run(0), run(0), run(1)
    assert a == b and all(np.array_equal(wa[k], wb[k]) for k in wa)
    assert a != c
    no_dropout = reference_loss(spec, weights, batches[0])[0]
    assert abs(a[0] - no_dropout) > 1e-3  # dropout is on in training...
    state = BACKEND.inference_state(spec, weights)
    sums = BACKEND.fetch(BACKEND.eval_step(state, batches[0]))
    assert float(sums["loss_sum"] / sums["count"]) == pytest.approx(no_dropout, abs=1e-5)  # ...and off in eval
    assert len(set(a)) == 3  # new masks every step


def test_steps_are_traced_once() -> None:
    spec = gpt_spec(dropout=0.1)
    state = BACKEND.create_state(TrainSetup(spec, spec.init(0), "adamw", {"lr": 0.01}, grad_accum=2, clip_norm=1.0))
    for i in range(4):
        BACKEND.train_step(state, lm_batch(8, i, mask=i % 2 == 0), 0.01 / (i + 1))
    for n, with_mask in ((8, True), (3, False), (5, True)):
        BACKEND.eval_step(state, lm_batch(n, 9, mask=with_mask))
    for t in (SEQ, 4):
        BACKEND.predict(state, lm_batch(2, 3)["x"][:, :t])
    assert state.train_fn.tracing_count() == 1
    assert state.eval_fn.tracing_count() == 1
    assert state.predict_fn.tracing_count() == 1
    assert list(state.ones) == [(8, SEQ), (3, SEQ)]  # default masks made once per shape
    assert int(BACKEND.export_state(state)[1]["step"]) == 4


def test_bf16_trains_close_to_fp32() -> None:
    spec = gpt_spec(rope=True, dropout=0.1)
    weights = spec.init(7)
    batches = [lm_batch(8, 80)] * 8  # the same batch: the loss must go down
    curves = {}
    for precision, checkpointing in (("fp32", False), ("bf16", False), ("bf16", True)):
        state = BACKEND.create_state(TrainSetup(spec, weights, "adamw", {"lr": 0.01}, precision=precision,
                                                activation_checkpointing=checkpointing))
        curves[precision, checkpointing] = curve = losses(state, batches)
        assert state.model.params["wte.weight"].dtype == tf.float32  # master weights stay float32
        logits = BACKEND.predict(state, batches[0]["x"])
        assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
        assert all(np.isfinite(curve)) and curve[-1] < curve[0] - 0.1, curve
        np.testing.assert_allclose(curve, curves["fp32", False], rtol=2e-2)
    fresh = BACKEND.predict(BACKEND.inference_state(spec, weights, precision="bf16"), batches[0]["x"])
    np.testing.assert_allclose(fresh, spec.reference_forward(weights, batches[0]["x"]), atol=2e-2)


# --------------------------------------------------------------------------- what the graph lowering adds

#: a tiny grouped-query decoder with a gated MLP: every factorisable linear of a graph that gpt lacks
GATED = [{"embedding": {"name": "wte", "dim": 16}},
         {"residual": {"name": "", "layers": [{"norm": {"name": "ln", "kind": "rms"}},
                                              {"attention": {"name": "attn", "heads": 4, "kv_heads": 2,
                                                             "rope": True}}]}},
         {"residual": {"name": "", "layers": [{"norm": {"name": "ln2", "kind": "rms"}},
                                              {"gated_mlp": {"name": "mlp", "hidden": 24}}]}},
         {"norm": {"name": "ln_f", "kind": "rms"}}, {"tied_head": "wte"}]


@pytest.mark.parametrize(("model", "low_rank"), [
    ("gpt", {"h.0.attn.qkv": 3, "h.0.attn.proj": 2, "h.1.attn.qkv": 5, "h.1.mlp.fc": 4}),
    ("graph", {"attn.qkv": 3, "attn.proj": 4, "mlp.gate": 2, "mlp.up": 3, "mlp.down": 5}),
])
def test_factorised_linears_match_the_reference(model: str, low_rank: dict[str, int]) -> None:
    """A factorised attention qkv / proj and gated-MLP gate / up / down run as ``(x @ U) @ V + b``: the
    forward equals the numpy reference (which folds ``U @ V``), and both factors get gradients."""
    info = DataInfo("language_modeling", (SEQ,), VOCAB)
    params = ({"n_layer": 2, "n_head": 2, "d_model": 16, "max_seq_len": 16} if model == "gpt"
              else {"layers": GATED})
    spec = build_model(model, params | {"low_rank": low_rank}, info)
    names = {p.name for p in spec.table}
    for prefix in low_rank:
        assert {f"{prefix}.weight_u", f"{prefix}.weight_v"} <= names and f"{prefix}.weight" not in names
    weights = sharpened(spec, 3)
    x = lm_batch(4, 2)["x"]
    got = BACKEND.predict(BACKEND.inference_state(spec, weights), x)
    np.testing.assert_allclose(got, spec.reference_forward(weights, x), atol=1e-4, rtol=0)
    state = BACKEND.create_state(TrainSetup(spec, weights, "sgd", {"lr": 0.1}))
    BACKEND.train_step(state, lm_batch(4, 3), 0.1)
    after, _ = BACKEND.export_state(state)
    for prefix in low_rank:
        for factor in ("weight_u", "weight_v"):
            name = f"{prefix}.{factor}"
            assert not np.array_equal(after[name], weights[name]), f"'{name}' took no gradient"


def attention_only(rate: float) -> object:
    """Embeddings, one causal attention with dropout ``rate`` on its weights, and the tied head: no dropout layer."""
    layers = [{"embedding": {"name": "wte", "dim": 16}},
              {"attention": {"name": "attn", "heads": 2, "dropout": rate}}, {"tied_head": "wte"}]
    return build_model("graph", {"layers": layers}, DataInfo("language_modeling", (SEQ,), VOCAB))


def test_attention_dropout_is_on_in_training_only_and_unbiased() -> None:
    rate = 0.5
    spec = attention_only(rate)
    weights = sharpened(spec, 5)
    model = BACKEND.inference_state(spec, weights).model
    assert model.uses_rng and not BACKEND.inference_state(attention_only(0.0), weights).model.uses_rng
    n = 512  # one sequence, many rows: every row draws its own mask
    x = tf.constant(np.repeat(lm_batch(1, 4)["x"], n, axis=0).astype(np.int32))
    evaluation = model(x).numpy()
    np.testing.assert_allclose(evaluation[0], spec.reference_forward(weights, x.numpy()[:1])[0], atol=1e-4)

    def train(seed: int) -> np.ndarray:
        return model(x, training=True, seed=tf.constant([seed, 0], tf.int64)).numpy()

    a, b, c = train(1), train(1), train(2)
    np.testing.assert_array_equal(a, b)  # a pure function of the seed
    assert not np.array_equal(a, c)
    assert np.abs(a - evaluation).max() > 1e-2
    # the first position attends only to itself (weight 1): each head's dropped weight is 0 or 2, so its
    # logits take at most 2 ** heads values over the rows; dropout on the layer's output would give ~n
    first = {tuple(np.round(row, 4)) for row in a[:, 0]}
    assert 2 <= len(first) <= 4, len(first)
    # dropout rescales the kept weights by 1 / (1 - rate): the mean over the rows is the evaluation output,
    # within six standard errors of that mean (the rows are independent draws)
    mean, sem = a.mean(axis=0), a.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(mean - evaluation[0]) <= 6 * sem + 1e-6)


def test_activation_checkpointing_recomputes_each_block() -> None:
    """With checkpointing the train step's graph runs each block's forward again in the backward pass
    (one more softmax per attention layer); prediction and evaluation run it once."""

    def softmaxes(fn) -> int:
        graph = fn.function.get_concrete_function().graph
        ops = list(graph.get_operations())
        for function in graph.as_graph_def().library.function:  # recompute_grad may trace into functions
            ops += [type("Op", (), {"type": node.op}) for node in function.node_def]
        return sum(op.type == "Softmax" for op in ops)

    spec = gpt_spec(n_layer=3)
    counts = {}
    for checkpointing in (False, True):
        state = BACKEND.create_state(TrainSetup(spec, spec.init(0), "sgd", {"lr": 0.1},
                                                activation_checkpointing=checkpointing))
        BACKEND.train_step(state, lm_batch(4, 1), 0.1)
        counts[checkpointing] = softmaxes(state.train_fn), softmaxes(state.predict_fn)
    assert counts[False] == (3, 3)
    assert counts[True] == (6, 3)


@pytest.mark.parametrize("variant", ["learned", "rope-untied-dff"])
def test_generation_with_the_cache_equals_recomputing(variant: str) -> None:
    """``gpt`` generates through the graph's key / value cache: greedy tokens equal recomputing the whole
    context for each token, past the context window too (the loop then slides it)."""
    from crossframe.sampling import generate_by_recompute, make_sampler

    spec = gpt_spec(**VARIANTS[variant])
    state = BACKEND.inference_state(spec, sharpened(spec, 4))  # weights whose greedy streams vary
    prompt = lm_batch(2, 6)["x"][:, :4]
    steps = SEQ + 3  # past the window of SEQ tokens
    want = generate_by_recompute(lambda t: BACKEND.predict(state, t), prompt, steps, make_sampler(0.0), SEQ)
    got = BACKEND.generate(state, prompt, steps, make_sampler(0.0))
    assert got.shape == (2, 4 + steps)
    np.testing.assert_array_equal(got, want)
    assert all(len(np.unique(row[4:])) > 1 for row in got)  # not a degenerate constant stream
