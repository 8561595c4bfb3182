"""The torch backend's ``gpt`` (a lowered graph): reference forward, canonical round trip, LM loss, KV-cache generation,
low rank, attention dropout, activation checkpointing and continuous batching over the lowered graph."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crossframe.backend import TrainSetup
from crossframe.data.dataset import DataInfo
from crossframe.models import build_model

torch = pytest.importorskip("torch")

from crossframe_torch.backend import TorchBackend  # noqa: E402
from crossframe_torch.decoding import GraphCache  # noqa: E402

VOCAB = 11
VARIANTS = [{}, {"rope": True}, {"tied_embeddings": False}, {"d_ff": 12},
            {"rope": True, "tied_embeddings": False, "d_ff": 20, "n_layer": 3}]


@pytest.fixture(scope="module")
def be() -> TorchBackend:
    return TorchBackend()


def gpt(vocab: int = VOCAB, seq: int = 8, **params):
    base = {"n_layer": 2, "n_head": 2, "d_model": 8, "max_seq_len": 16}
    return build_model("gpt", base | params, DataInfo("language_modeling", (seq,), vocab))


def lively(spec, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights far from the init (larger logits, peaked attention, non-trivial norms)."""
    rng = np.random.default_rng(seed)
    out = {}
    for p in spec.table:
        if p.layout == "norm_scale":
            out[p.name] = (1.0 + rng.normal(0, 0.3, p.shape)).astype(np.float32)
        else:
            out[p.name] = rng.normal(0, 0.5 if p.layout == "embedding" else 0.25, p.shape).astype(np.float32)
    return out


def tokens(b: int, t: int, vocab: int = VOCAB, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (b, t)).astype(np.int64)


def lm_batch(b: int, t: int, seed: int, vocab: int = VOCAB) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, vocab, (b, t)).astype(np.int64)
    mask = (rng.random((b, t)) < 0.7).astype(np.float32)
    mask[:, 0] = 1.0
    return {"x": x, "y": np.roll(x, -1, axis=1), "mask": mask}


# ---------------------------------------------------------------------- forward and layouts


@pytest.mark.parametrize("params", VARIANTS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "default")
@pytest.mark.parametrize("init", ["gpt2", "lively"])
def test_forward_matches_numpy_reference(be, params, init) -> None:
    spec = gpt(seq=16, **params)
    w = spec.init(3) if init == "gpt2" else lively(spec, 3)
    x = tokens(3, 16)
    got = be.predict(be.inference_state(spec, w), x)
    want = spec.forward(w, x)
    assert got.shape == want.shape == (3, 16, VOCAB) and got.dtype == np.float32
    assert np.abs(got - want).max() <= 1e-4
    # shorter sequences use the first positions
    np.testing.assert_allclose(be.predict(be.inference_state(spec, w), x[:, :5]), spec.forward(w, x[:, :5]),
                               atol=1e-4, rtol=0)


def test_parameters_are_the_canonical_names_and_buffers_are_not_saved(be) -> None:
    spec = gpt(rope=True, tied_embeddings=False)
    state = be.inference_state(spec, spec.init(0))
    assert [n for n, _ in state.module.named_parameters()] == [p.name for p in spec.table]
    assert set(state.module.state_dict()) == {p.name for p in spec.table}  # rope tables are not persistent


@settings(max_examples=15, deadline=None)
@given(n_layer=st.integers(1, 3), n_head=st.integers(1, 3), head=st.sampled_from([2, 4]),
       vocab=st.integers(2, 30), seq=st.integers(1, 9), d_ff=st.one_of(st.none(), st.integers(1, 17)),
       rope=st.booleans(), tied=st.booleans(), seed=st.integers(0, 2**16))
def test_canonical_round_trip_is_exact(n_layer, n_head, head, vocab, seq, d_ff, rope, tied, seed) -> None:
    be = TorchBackend()
    spec = build_model("gpt", {"n_layer": n_layer, "n_head": n_head, "d_model": n_head * head, "d_ff": d_ff,
                               "max_seq_len": seq, "rope": rope, "tied_embeddings": tied},
                       DataInfo("language_modeling", (seq,), vocab))
    w = lively(spec, seed)
    back, _ = be.export_state(be.create_state(TrainSetup(spec, w, "adamw", {"lr": 0.1})))
    assert set(back) == set(w)
    for name, value in w.items():
        assert back[name].dtype == np.float32 and back[name].shape == value.shape
        assert np.array_equal(back[name], value), name


# ---------------------------------------------------------------------- loss and training


def test_loss_eval_and_masks_follow_the_contract(be) -> None:
    spec = gpt()
    w = lively(spec, 1)
    batch = lm_batch(4, 8, 5)
    logits = spec.forward(w, batch["x"]).astype(np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    ce = -np.take_along_axis(logp, batch["y"][..., None], -1)[..., 0]
    want_sum = float((ce * batch["mask"]).sum())

    state = be.create_state(TrainSetup(spec, w, "sgd", {"lr": 0.0}))
    host = be.fetch(be.eval_step(state, batch))
    assert abs(float(host["loss_sum"]) - want_sum) <= 1e-4
    assert float(host["count"]) == batch["mask"].sum()
    no_mask = be.fetch(be.eval_step(state, {"x": batch["x"], "y": batch["y"]}))
    assert int(no_mask["count"]) == 32 and abs(float(no_mask["loss_sum"]) - ce.sum()) <= 1e-4

    _, out = be.train_step(state, batch, 0.0)
    assert isinstance(out["loss"], torch.Tensor)  # stays on the device
    assert abs(float(be.fetch(out)["loss"]) - want_sum / batch["mask"].sum()) <= 1e-5
    empty = dict(batch, mask=np.zeros_like(batch["mask"]))
    _, out = be.train_step(state, empty, 0.1)
    assert float(be.fetch(out)["loss"]) == 0.0  # nothing counted: zero loss, not NaN


@pytest.mark.parametrize("params", [{}, {"rope": True, "tied_embeddings": False}])
def test_masked_grad_accumulation_is_exact(be, params) -> None:
    spec = gpt(**params)
    w = lively(spec, 2)
    states = [be.create_state(TrainSetup(spec, w, "sgd", {"lr": 0.1}, grad_accum=k)) for k in (1, 2, 4)]
    losses = []
    for i in range(2):
        batch = lm_batch(8, 8, 30 + i)
        batch["mask"][:4, 4:] = 0.0  # micro-batches count very different numbers of tokens
        steps = [be.train_step(s, batch, 0.1) for s in states]
        states = [s for s, _ in steps]
        losses.append([float(be.fetch(o)["loss"]) for _, o in steps])
    for row in losses:
        assert max(row) - min(row) <= 1e-5
    ref = be.export_state(states[0])[0]
    for other in states[1:]:
        got = be.export_state(other)[0]
        for name in ref:
            assert np.abs(got[name] - ref[name]).max() <= 1e-5, name


def cyclic_batch(rng: np.random.Generator, cycle: np.ndarray, b: int, t: int) -> dict[str, np.ndarray]:
    starts = rng.integers(0, len(cycle), b)
    seq = np.stack([np.take(cycle, np.arange(s, s + t + 1), mode="wrap") for s in starts]).astype(np.int64)
    return {"x": seq[:, :-1], "y": seq[:, 1:], "mask": np.ones((b, t), np.float32)}


def test_training_learns_a_repetitive_sequence(be) -> None:
    vocab = 16
    spec = gpt(vocab=vocab, seq=12, n_layer=2, d_model=32, n_head=4, max_seq_len=12)
    state = be.create_state(TrainSetup(spec, spec.init(0), "adamw", {"lr": 3e-3, "weight_decay": 0.0}))
    cycle = np.random.default_rng(1).permutation(vocab)
    rng = np.random.default_rng(2)
    outs = [be.train_step(state, cyclic_batch(rng, cycle, 16, 12), 3e-3)[1] for _ in range(100)]
    losses = [float(o["loss"]) for o in be.fetch(outs)]
    assert losses[0] > 0.8 * math.log(vocab)
    assert np.mean(losses[-5:]) < 0.25 * math.log(vocab), losses[-5:]
    host = be.fetch(be.eval_step(state, cyclic_batch(rng, cycle, 8, 12)))
    assert float(host["loss_sum"]) / float(host["count"]) < 0.25 * math.log(vocab)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(be, dropout) -> None:
    spec = gpt(dropout=dropout, rope=True)
    w = lively(spec, 4)
    batch = lm_batch(4, 8, 9)
    results = []
    for remat in (False, True):  # sgd with lr 1: the weight change is the gradient
        state = be.create_state(TrainSetup(spec, w, "sgd", {"lr": 1.0}, seed=7, activation_checkpointing=remat))
        _, out = be.train_step(state, batch, 1.0)
        results.append((float(be.fetch(out)["loss"]), be.export_state(state)[0]))
    (loss_a, wa), (loss_b, wb) = results
    assert abs(loss_a - loss_b) <= 1e-6
    for name in wa:
        assert np.abs((wa[name] - w[name]) - (wb[name] - w[name])).max() <= 1e-6, name


def test_dropout_is_seeded_and_off_in_eval(be) -> None:
    spec = gpt(dropout=0.3)
    w = lively(spec, 5)
    batch = lm_batch(4, 8, 1)
    losses = []
    for _ in range(2):
        state = be.create_state(TrainSetup(spec, w, "adamw", {"lr": 0.01}, seed=3))
        losses.append([float(be.fetch(be.train_step(state, batch, 0.01)[1])["loss"]) for _ in range(3)])
    assert losses[0] == losses[1]
    x = batch["x"]
    np.testing.assert_allclose(be.predict(be.inference_state(spec, w), x), spec.forward(w, x), atol=1e-4, rtol=0)


# ---------------------------------------------------------------------- generation


@pytest.mark.parametrize("params", [{}, {"rope": True}, {"tied_embeddings": False, "d_ff": 20}])
def test_cached_forward_equals_the_full_forward(be, params) -> None:
    spec = gpt(seq=16, **params)
    module = be.inference_state(spec, lively(spec, 6)).module
    x = torch.from_numpy(tokens(3, 16, seed=2))
    cache = GraphCache(module, 3, 16, torch.float32, torch.device("cpu"))

    def cached(start: int, end: int) -> torch.Tensor:
        with cache.at(start):
            return module(x[:, start:end])

    with torch.no_grad():
        full = module(x)
        parts = [cached(0, 5), cached(5, 9)] + [cached(i, i + 1) for i in range(9, 16)]
    assert (torch.cat(parts, dim=1) - full).abs().max().item() <= 1e-5


def greedy(logits: np.ndarray) -> np.ndarray:
    return logits.argmax(axis=-1)


@pytest.mark.parametrize("params", [{}, {"rope": True}])
@pytest.mark.parametrize("new", [5, 14])  # 14: runs past max_seq_len (16) into the sliding window
def test_kv_cache_generation_equals_full_recompute(be, params, new) -> None:
    spec = gpt(seq=16, **params)
    state = be.inference_state(spec, lively(spec, 7))
    prompt = tokens(2, 6, seed=3)
    got = be.generate(state, prompt, new, greedy)
    want = prompt
    for _ in range(new):  # the naive loop: a full forward on the last max_seq_len tokens each time
        logits = be.predict(state, want[:, -16:])[:, -1]
        want = np.concatenate([want, greedy(logits)[:, None]], axis=1)
    assert got.shape == (2, 6 + new) and got.dtype == np.int64
    assert np.array_equal(got, want)


def test_seeded_sampling_is_deterministic(be) -> None:
    spec = gpt(seq=16, rope=True, dropout=0.1)
    w = lively(spec, 8)

    def run(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)

        def sample(logits: np.ndarray) -> np.ndarray:
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            return np.array([rng.choice(len(row), p=row) for row in p])

        state = be.create_state(TrainSetup(spec, w, "adamw", {"lr": 0.01}, seed=1))
        return be.generate(state, tokens(3, 4, seed=4), 20, sample)

    a, b, c = run(0), run(0), run(1)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_prompt_longer_than_the_context_uses_the_window(be) -> None:
    spec = gpt(seq=16)
    state = be.inference_state(spec, lively(spec, 9))
    prompt = tokens(1, 20, seed=5)
    got = be.generate(state, prompt, 2, greedy)
    first = greedy(be.predict(state, prompt[:, -16:])[:, -1])
    assert got.shape == (1, 22) and got[0, 20] == first[0]


def test_generate_refuses_non_language_models(be) -> None:
    from crossframe.errors import CapabilityError

    spec = build_model("mlp", {"hidden": [4]}, DataInfo("classification", (3,), 2))
    with pytest.raises(CapabilityError, match="not a language model"):
        be.generate(be.inference_state(spec, spec.init(0)), np.zeros((1, 1), np.int64), 1, greedy)


# ---------------------------------------------------------------------- precision


def test_bf16_trains_predicts_and_generates(be) -> None:
    spec = gpt(seq=16, rope=True, dropout=0.1)
    w = lively(spec, 10)
    state = be.create_state(TrainSetup(spec, w, "adamw", {"lr": 0.01}, precision="bf16", grad_accum=2,
                                       clip_norm=1.0))
    outs = [be.train_step(state, lm_batch(4, 16, i), 0.01)[1] for i in range(3)]
    for host in be.fetch(outs):
        assert np.isfinite(host["loss"]) and np.isfinite(host["grad_norm"])
    weights = be.export_state(state)[0]
    assert all(v.dtype == np.float32 for v in weights.values())
    x = tokens(2, 16)
    inference = be.inference_state(spec, weights, precision="bf16")
    got = be.predict(inference, x)
    assert got.dtype == np.float32
    assert np.abs(got - spec.forward(weights, x)).max() < 0.25  # bf16 rounding, not a wrong model
    out = be.generate(inference, x[:, :4], 14, greedy)
    assert out.shape == (2, 18)


# ---------------------------------------------------------------------- the lowering's additions


def llama_like(low_rank: dict[str, int], seq: int = 6, vocab: int = VOCAB):
    """A decoder of neutral layers with grouped-query rotary attention (biased qkv) and a gated MLP."""
    block = [{"residual": {"name": "", "layers": [{"norm": {"name": "ln_1", "kind": "rms"}},
                                                  {"attention": {"name": "attn", "heads": 4, "kv_heads": 2,
                                                                 "rope": True, "qkv_bias": True}}]}},
             {"residual": {"name": "", "layers": [{"norm": {"name": "ln_2", "kind": "rms"}},
                                                  {"gated_mlp": {"name": "mlp", "hidden": 12, "bias": True}}]}}]
    layers = [{"embedding": {"name": "wte", "dim": 8}}, {"sequential": {"name": "h", "repeat": 2, "layers": block}},
              {"norm": {"name": "ln_f", "kind": "rms"}}, {"dense": {"name": "lm_head", "units": "outputs"}}]
    return build_model("graph", {"layers": layers, "low_rank": low_rank}, DataInfo("language_modeling", (seq,), vocab))


def test_factorised_attention_and_gated_mlp_match_the_reference(be) -> None:
    """attn.qkv / attn.proj of a gpt and a gated MLP's gate / up / down, factorised (x @ U) @ V + b, give the
    numpy reference's outputs (which folds U @ V) and train both factors."""
    from crossframe_torch.models import LowRankLinear

    cases = [gpt(seq=16, low_rank={"h.0.attn.qkv": 3, "h.1.attn.proj": 2, "h.0.mlp.fc": 4}),
             llama_like({"h.0.attn.qkv": 3, "h.1.attn.proj": 5, "h.0.mlp.gate": 2, "h.0.mlp.up": 3,
                         "h.1.mlp.down": 4})]
    for spec in cases:
        w = lively(spec, 11)
        x = tokens(2, spec.data_info.input_shape[0], seed=12)
        state = be.inference_state(spec, w)
        factored = {n for n, m in state.module.named_modules() if isinstance(m, LowRankLinear)}
        assert factored == set(spec.low_rank)
        assert np.abs(be.predict(state, x) - spec.forward(w, x)).max() <= 1e-4  # fp32 over two blocks
        train = be.create_state(TrainSetup(spec, w, "sgd", {"lr": 0.1}))
        be.train_step(train, {"x": x, "y": np.roll(x, -1, axis=1)}, 0.1)
        after = be.export_state(train)[0]
        for prefix in spec.low_rank:
            for factor in ("weight_u", "weight_v"):
                assert not np.array_equal(after[f"{prefix}.{factor}"], w[f"{prefix}.{factor}"]), (prefix, factor)


def test_attention_dropout_acts_on_the_weights_in_training_only(be) -> None:
    """Dropout on the attention weights alone (no other dropout layer): training forwards differ from
    each other and from the reference; evaluation equals the reference."""
    layers = [{"embedding": {"name": "wte", "dim": 8}}, {"attention": {"name": "attn", "heads": 2, "dropout": 0.5}},
              {"dense": {"name": "out", "units": "outputs"}}]
    spec = build_model("graph", {"layers": layers}, DataInfo("language_modeling", (8,), VOCAB))
    assert spec.graph.kinds() == {"sequential", "embedding", "attention", "dense"}
    w = lively(spec, 13)
    x = tokens(4, 8, seed=14)
    module = be.inference_state(spec, w).module
    ids = torch.from_numpy(x)
    with torch.no_grad():
        module.train()
        torch.manual_seed(0)
        a, b = module(ids).numpy(), module(ids).numpy()
        module.eval()
        evaluated = module(ids).numpy()
    want = spec.forward(w, x)
    assert np.abs(evaluated - want).max() <= 1e-5
    assert np.abs(a - b).max() > 1e-2 and np.abs(a - want).max() > 1e-2  # lively weights: O(1) logits


def test_activation_checkpointing_recomputes_each_block_in_the_backward_pass(be) -> None:
    """With activation checkpointing each block h.i runs twice per training step (forward, then its
    recomputation in the backward pass), once without it, and once in evaluation either way."""
    from crossframe_torch.lowering import Block, repeated_blocks

    spec = gpt(n_layer=3)
    batch = lm_batch(2, 8, 3)
    for remat, want in ((False, 1), (True, 2)):
        state = be.create_state(TrainSetup(spec, spec.init(0), "sgd", {"lr": 0.1}, activation_checkpointing=remat))
        blocks = repeated_blocks(state.module)
        assert [n for n, m in state.module.named_modules() if isinstance(m, Block)] == ["h.0", "h.1", "h.2"]
        assert blocks == [state.module.get_submodule(f"h.{i}") for i in range(3)]
        calls = {i: 0 for i in range(3)}
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(lambda *_, i=i, calls=calls: calls.__setitem__(i, calls[i] + 1))
        be.train_step(state, batch, 0.1)
        assert calls == {i: want for i in range(3)}, remat
        be.eval_step(state, batch)
        assert calls == {i: want + 1 for i in range(3)}, remat


def test_slot_decoder_batches_slots_at_their_own_positions(be) -> None:
    """Continuous batching over the lowered graph: sequences in two slots at different lengths decode one token
    each in one batched step (prefilled on joining, a slot reused after release), and every step's logits
    equal a full forward over that sequence; past the window a sequence is recomputed over its last tokens."""
    from crossframe_torch.serving import SlotDecoder

    for spec in (gpt(seq=16, rope=True), gpt(seq=16, tied_embeddings=False), llama_like({}, seq=16)):
        state = be.inference_state(spec, lively(spec, 15))
        decoder = be.batch_decoder(state, 2)
        assert isinstance(decoder, SlotDecoder) and decoder.window == 16
        rng = np.random.default_rng(16)
        seqs = {0: rng.integers(0, VOCAB, 3).tolist(), 1: rng.integers(0, VOCAB, 7).tolist()}
        for step in range(14):
            if step == 5:  # slot 0 finishes; a new sequence takes it
                decoder.release(0)
                seqs[0] = rng.integers(0, VOCAB, 2).tolist()
            entries = sorted(seqs.items(), reverse=step % 2 == 1)  # row order does not tie rows to slots
            logits = decoder.step(entries)
            for row, (slot, seq) in enumerate(entries):
                want = be.predict(state, np.asarray([seq[-16:]]))[0, -1]
                np.testing.assert_allclose(logits[row], want, atol=1e-4, err_msg=f"step {step}, slot {slot}")
                seq.append(int(logits[row].argmax()))
        assert len(seqs[1]) > 16  # slot 1 ran past the window


def test_batch_decoder_refuses_non_language_models(be) -> None:
    from crossframe.errors import CapabilityError

    spec = build_model("mlp", {"hidden": [4]}, DataInfo("classification", (3,), 2))
    with pytest.raises(CapabilityError, match="not a language model"):
        be.batch_decoder(be.inference_state(spec, spec.init(0)), 2)


def test_dp_sgd_steps_a_graph_with_activation_checkpointing_as_without(be) -> None:
    """DP-SGD's per-example gradients (torch.func, which runs no saved-tensor hooks) on a graph of repeated
    blocks: with activation checkpointing asked for, the private step equals the one without."""
    from crossframe.privacy import NOISE_PREFIX, WEIGHT_KEY, PrivacySetup, step_noise

    block = [{"residual": [{"norm": "layer"}, {"dense": 8}, "relu", {"dropout": 0.1}]}]
    layers = [{"dense": 8}, {"sequential": {"name": "h", "repeat": 2, "layers": block}}, {"dense": "outputs"}]
    spec = build_model("graph", {"layers": layers}, DataInfo("classification", (6,), 4))
    w = lively(spec, 17)
    privacy = PrivacySetup(noise_multiplier=0.7, max_grad_norm=1.0, expected_batch=4, seed=9)
    noise = step_noise(privacy, 0, [(p.name, tuple(p.shape)) for p in spec.table])
    x = np.random.default_rng(18).normal(size=(4, 6)).astype(np.float32)
    batch = {"x": x, "y": np.arange(4), WEIGHT_KEY: np.ones(4, np.float32),
             **{NOISE_PREFIX + k: v for k, v in noise.items()}}
    after = []
    for remat in (False, True):
        state = be.create_state(TrainSetup(spec, w, "sgd", {"lr": 1.0}, privacy=privacy, seed=3,
                                           activation_checkpointing=remat))
        be.train_step(state, batch, 1.0)
        after.append(be.export_state(state)[0])
    assert any(not np.array_equal(after[0][k], w[k]) for k in w)
    for name in w:
        np.testing.assert_array_equal(after[1][name], after[0][name], err_msg=name)


def test_a_graph_may_name_its_layers_like_the_lowered_modules_helpers() -> None:
    """Layer names are the user's: ``blocks`` (once a method of the lowered module) lowers and trains."""
    from crossframe.backend import TrainSetup
    from crossframe.data.dataset import DataInfo
    from crossframe.models import build_model
    from crossframe_torch.backend import TorchBackend

    layers = [{"sequential": {"name": "blocks", "repeat": 2, "layers": [{"dense": {"name": "fc", "units": 4}}]}},
              {"dense": {"name": "head", "units": "outputs"}}]
    spec = build_model("graph", {"layers": layers}, DataInfo("classification", (4,), 3))
    be = TorchBackend()
    state = be.create_state(TrainSetup(spec, spec.init(0), "sgd", {"lr": 0.1}, activation_checkpointing=True))
    batch = {"x": np.ones((2, 4), np.float32), "y": np.array([0, 2])}
    state, out = be.train_step(state, batch, 0.1)
    assert np.isfinite(float(out["loss"]))
    assert "blocks.0.fc.weight" in dict(state.module.named_parameters())
