"""Hugging Face checkpoints (tiny random GPT-2, Llama, Llama 3, Mistral, Qwen2 built with transformers) import
as graphs of neutral layers: logits match transformers on every backend, greedy generation with each
backend's KV cache gives transformers' tokens, and bad directories are one line."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from crossframe.errors import CheckpointError, ConfigError
from crossframe.sampling import generate_by_recompute, make_sampler
from tests.hf_models import FAMILIES, VOCAB, hf_greedy, hf_logits, save_tiny

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
# float32 through 2 blocks of width 32 over logits of size ~1: rounding is ~1e-6; 1e-4 is the bar
TOL = 1e-4


def backend(name: str):
    """A fresh backend object."""
    if name == "torch":
        from crossframe_torch.backend import TorchBackend
        return TorchBackend()
    if name == "jax":
        from crossframe_jax.backend import JaxBackend
        return JaxBackend()
    from crossframe_tensorflow.backend import TensorFlowBackend
    return TensorFlowBackend()


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    """``(family, directory)`` of a saved tiny model."""
    directory = save_tiny(request.param, tmp_path_factory.mktemp(request.param))
    return request.param, directory


def test_logits_match_transformers_on_every_backend(tiny) -> None:
    from crossframe.hf.loading import load_pretrained

    family, directory = tiny
    ids = np.random.default_rng(1).integers(0, VOCAB, (2, 12))
    want = hf_logits(directory, ids)
    spec, weights = load_pretrained(directory, context=16)
    ref = spec.graph.reference(weights, ids)
    np.testing.assert_allclose(ref, want, atol=TOL, err_msg=f"{family}: numpy reference")
    for name in BACKENDS:
        impl = backend(name)
        got = impl.predict(impl.inference_state(spec, weights), ids)
        np.testing.assert_allclose(got, want, atol=TOL, err_msg=f"{family} on {name}")


def test_greedy_generation_with_the_cache_gives_transformers_tokens(tiny) -> None:
    from crossframe.hf.loading import load_pretrained

    family, directory = tiny
    prompt = np.random.default_rng(2).integers(0, VOCAB, (2, 5))
    want = hf_greedy(directory, prompt, 8)
    spec, weights = load_pretrained(directory, context=16)
    for name in BACKENDS:
        impl = backend(name)
        state = impl.inference_state(spec, weights)
        got = impl.generate(state, prompt, 8, make_sampler(0.0))
        np.testing.assert_array_equal(got, want, err_msg=f"{family} on {name}")


def test_the_cache_equals_recomputing_past_the_window(tmp_path) -> None:
    """Past the context the loop slides a window; with the cache before it, the tokens equal recomputing."""
    from crossframe.hf.loading import load_pretrained

    spec, weights = load_pretrained(save_tiny("llama", tmp_path), context=8)
    prompt = np.random.default_rng(3).integers(0, VOCAB, (1, 3))
    for name in BACKENDS:
        impl = backend(name)
        state = impl.inference_state(spec, weights)
        want = generate_by_recompute(lambda t: impl.predict(state, t), prompt, 9, make_sampler(0.0), 8)  # noqa: B023
        np.testing.assert_array_equal(impl.generate(state, prompt, 9, make_sampler(0.0)), want, err_msg=name)


def test_unknown_architecture_missing_tensor_and_pickles_are_one_line(tmp_path) -> None:
    from crossframe.hf.loading import load_pretrained

    directory = save_tiny("qwen2", tmp_path / "q")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "architectures": ["BertForMaskedLM"]}))
    with pytest.raises(ConfigError, match="BertForMaskedLM is not supported"):
        load_pretrained(directory)
    (directory / "config.json").write_text(json.dumps(config))
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(directory / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    save_file(tensors, str(directory / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.self_attn\.k_proj\.bias' is missing"):
        load_pretrained(directory)
    pickled = tmp_path / "p"
    pickled.mkdir()
    (pickled / "config.json").write_text(json.dumps(config))
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04not-opened")
    with pytest.raises(CheckpointError, match="a pickle is never opened"):
        load_pretrained(pickled)


def test_bf16_weights_stay_bf16_views_and_export_back(tmp_path) -> None:
    """A bf16 checkpoint imports without a host cast (read-only views of the memory-mapped file), runs on every
    backend with transformers' float32 logits of the same weights, and exports back as bf16."""
    import torch
    import transformers as tr

    from crossframe.hf.architectures import architecture
    from crossframe.hf.exporting import write_hf
    from crossframe.hf.loading import load_pretrained

    directory = save_tiny("qwen2", tmp_path / "q")
    tr.AutoModelForCausalLM.from_pretrained(directory).to(torch.bfloat16).save_pretrained(directory)
    spec, weights = load_pretrained(directory, context=16)
    assert {str(w.dtype) for w in weights.values()} == {"bfloat16"}
    assert not weights["embed_tokens.weight"].flags.writeable  # a view of the file, not a copy
    ids = np.random.default_rng(4).integers(0, VOCAB, (2, 10))
    want = hf_logits(directory, ids)  # transformers upcasts bf16 to float32 exactly
    for name in BACKENDS:
        impl = backend(name)
        np.testing.assert_allclose(impl.predict(impl.inference_state(spec, weights), ids), want, atol=TOL,
                                   err_msg=name)
    out = write_hf(tmp_path / "out", spec, architecture(json.loads((directory / "config.json").read_text()), 16),
                   weights)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    np.testing.assert_allclose(hf_logits(out, ids), want, atol=TOL)


def test_sharded_checkpoints_import(tmp_path) -> None:
    """``model.safetensors.index.json`` and its shards read as one checkpoint; a missing shard is one line."""
    import transformers as tr

    from crossframe.hf.loading import load_pretrained

    single = save_tiny("llama", tmp_path / "one")
    sharded = tmp_path / "many"
    tr.AutoModelForCausalLM.from_pretrained(single).save_pretrained(sharded, max_shard_size="20KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert (sharded / "model.safetensors.index.json").is_file() and len(shards) > 1
    _, one = load_pretrained(single)
    _, many = load_pretrained(sharded)
    assert one.keys() == many.keys() and all(np.array_equal(one[k], many[k]) for k in one)
    shards[-1].unlink()
    with pytest.raises(CheckpointError, match=f"shard '{shards[-1].name}' is missing"):
        load_pretrained(sharded)
