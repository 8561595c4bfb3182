"""``config.json`` of a GPT-2, Llama (Llama 3 rope scaling included), Mistral or Qwen2 checkpoint as a graph of
neutral layers, with the map between its tensors and the graph's canonical weights.

Each canonical tensor comes from one Hugging Face tensor (``same``: as stored; ``linear``: a torch
``[out, in]`` kernel read transposed) or, for attention, from the query, key and value projections side by
side (``qkv``: ``[D, (H + 2 KV) hd]``). The map is used both ways: import and export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crossframe.errors import ConfigError

Transform = Literal["same", "linear", "qkv", "qkv_bias"]

#: ``config.json`` ``architectures`` entry -> family
ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}
GELU = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu", "silu": "silu",
        "tanh": "tanh"}


@dataclass
class TensorMap:
    """One canonical tensor and the Hugging Face tensors it is made of."""

    canonical: str
    sources: tuple[str, ...]
    transform: Transform


@dataclass
class Architecture:
    """What a ``config.json`` describes, in crossframe's terms."""

    family: str
    config: dict[str, Any]
    layers: list[Any]
    vocab: int
    context: int
    tensors: list[TensorMap] = field(default_factory=list)
    #: tensors in the files that are derived, not weights (rotary tables, causal masks): skipped on import
    ignored_suffixes: tuple[str, ...] = (".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq")


def read_config(directory: Path) -> dict[str, Any]:
    """``config.json`` of ``directory`` (one-line errors for a missing or unreadable file)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ConfigError(f"model.path: '{directory}' has no config.json (a Hugging Face model directory holds "
                          "config.json and model.safetensors)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from None


def family_of(config: dict[str, Any], source: str = "config.json") -> str:
    """The family (``gpt2``, ``llama``, ``mistral``, ``qwen2``) named by ``architectures``."""
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return ARCHITECTURES[name]
    raise ConfigError(f"{source}: architecture {', '.join(map(str, names)) or '(none)'} is not supported "
                      f"(supported: {', '.join(ARCHITECTURES)})")


def architecture(config: dict[str, Any], context: int | None = None, source: str = "config.json") -> Architecture:
    """The graph and tensor map of ``config``; ``context`` (default: the model's maximum) is the sequence
    length the graph is built for (the KV cache's size)."""
    family = family_of(config, source)
    try:
        return _GPT2(config, context) if family == "gpt2" else _llama_like(family, config, context, source)
    except KeyError as exc:
        raise ConfigError(f"{source}: missing field {exc} for a {family} model") from None


def _context(config: dict[str, Any], key: str, context: int | None, source: str) -> int:
    limit = int(config[key])
    if context is None:
        return limit
    if context > limit:
        raise ConfigError(f"{source}: sequences of {context} tokens exceed the model's {key} ({limit})")
    return int(context)


def _GPT2(c: dict[str, Any], context: int | None) -> Architecture:
    d, n, heads, vocab = int(c["n_embd"]), int(c["n_layer"]), int(c["n_head"]), int(c["vocab_size"])
    ff = int(c.get("n_inner") or 4 * d)
    eps = float(c.get("layer_norm_epsilon", 1e-5))
    act = GELU.get(c.get("activation_function", "gelu_new"))
    if act is None:
        raise ConfigError(f"config.json: activation_function '{c['activation_function']}' is not supported")
    t = _context(c, "n_positions", context, "config.json")
    norm = {"kind": "layer", "eps": eps}
    block = [
        {"residual": {"name": "", "layers": [{"norm": {"name": "ln_1", **norm}},
                                             {"attention": {"name": "attn", "heads": heads}}]}},
        {"residual": {"name": "", "layers": [{"norm": {"name": "ln_2", **norm}},
                                             {"dense": {"name": "mlp.fc", "units": ff}}, act,
                                             {"dense": {"name": "mlp.proj", "units": d}}]}},
    ]
    tied = bool(c.get("tie_word_embeddings", True))
    head = {"tied_head": "wte"} if tied else {"dense": {"name": "lm_head", "units": vocab, "bias": False}}
    layers = [{"embedding": {"name": "wte", "vocab": vocab, "dim": d}}, {"positional": {"name": "wpe", "max_len": t}},
              {"sequential": {"name": "h", "repeat": n, "layers": block}}, {"norm": {"name": "ln_f", **norm}}, head]
    tensors = [TensorMap("wte.weight", ("transformer.wte.weight",), "same"),
               TensorMap("wpe.weight", ("transformer.wpe.weight",), "same")]
    for i in range(n):
        src, dst = f"transformer.h.{i}.", f"h.{i}."
        for ours, theirs in (("ln_1", "ln_1"), ("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("ln_2", "ln_2"), ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            for part in ("weight", "bias"):  # GPT-2's Conv1D keeps kernels [in, out]: the canonical layout
                tensors.append(TensorMap(f"{dst}{ours}.{part}", (f"{src}{theirs}.{part}",), "same"))
    tensors += [TensorMap("ln_f.weight", ("transformer.ln_f.weight",), "same"),
                TensorMap("ln_f.bias", ("transformer.ln_f.bias",), "same")]
    if not tied:
        tensors.append(TensorMap("lm_head.weight", ("lm_head.weight",), "linear"))
    return Architecture("gpt2", c, layers, vocab, t, tensors)


def _rope(c: dict[str, Any], source: str) -> tuple[float, dict[str, Any] | None]:
    """``(base, Llama 3 scaling or None)`` from ``rope_parameters`` (transformers 5) or ``rope_theta`` and
    ``rope_scaling`` (earlier files)."""
    params = dict(c.get("rope_parameters") or c.get("rope_scaling") or {})
    base = float(params.get("rope_theta", c.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return base, None
    if kind != "llama3":
        raise ConfigError(f"{source}: rope type '{kind}' is not supported (supported: default, llama3)")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return base, {k: params[k] for k in keys if k in params}


def _llama_like(family: str, c: dict[str, Any], context: int | None, source: str) -> Architecture:
    d, n, vocab = int(c["hidden_size"]), int(c["num_hidden_layers"]), int(c["vocab_size"])
    heads = int(c["num_attention_heads"])
    kv = int(c.get("num_key_value_heads") or heads)
    hd = int(c.get("head_dim") or d // heads)
    act = c.get("hidden_act", "silu")
    if act not in ("silu", "gelu", "gelu_pytorch_tanh", "relu"):
        raise ConfigError(f"{source}: hidden_act '{act}' is not supported")
    t = _context(c, "max_position_embeddings", context, source)
    window = c.get("sliding_window")
    if family == "mistral" and window is not None and int(window) < t:
        raise ConfigError(f"{source}: sliding_window {window} is shorter than the context {t}; "
                          f"set a context of at most {window} tokens")
    if family == "qwen2" and c.get("use_sliding_window"):
        raise ConfigError(f"{source}: use_sliding_window is not supported")
    base, scaling = _rope(c, source)
    qkv_bias = family == "qwen2" or bool(c.get("attention_bias", False))
    out_bias = bool(c.get("attention_bias", False))
    mlp_bias = bool(c.get("mlp_bias", False))
    eps = float(c.get("rms_norm_eps", 1e-6))
    tied = bool(c.get("tie_word_embeddings", False))
    norm = {"kind": "rms", "eps": eps}
    attention = {"name": "self_attn", "heads": heads, "kv_heads": kv, "head_dim": hd, "rope": True,
                 "rope_base": base, "qkv_bias": qkv_bias, "bias": out_bias}
    if scaling is not None:
        attention["rope_scaling"] = scaling
    block = [
        {"residual": {"name": "", "layers": [{"norm": {"name": "input_layernorm", **norm}}, {"attention": attention}]}},
        {"residual": {"name": "", "layers": [{"norm": {"name": "post_attention_layernorm", **norm}},
                                             {"gated_mlp": {"name": "mlp", "hidden": int(c["intermediate_size"]),
                                                            "activation": GELU[act], "bias": mlp_bias}}]}},
    ]
    head = {"tied_head": "embed_tokens"} if tied else {"dense": {"name": "lm_head", "units": vocab, "bias": False}}
    layers = [{"embedding": {"name": "embed_tokens", "vocab": vocab, "dim": d}},
              {"sequential": {"name": "layers", "repeat": n, "layers": block}},
              {"norm": {"name": "norm", **norm}}, head]
    tensors = [TensorMap("embed_tokens.weight", ("model.embed_tokens.weight",), "same")]
    for i in range(n):
        src, dst = f"model.layers.{i}.", f"layers.{i}."
        proj = tuple(f"{src}self_attn.{x}_proj" for x in "qkv")
        tensors.append(TensorMap(f"{dst}self_attn.qkv.weight", tuple(f"{p}.weight" for p in proj), "qkv"))
        if qkv_bias:
            tensors.append(TensorMap(f"{dst}self_attn.qkv.bias", tuple(f"{p}.bias" for p in proj), "qkv_bias"))
        tensors.append(TensorMap(f"{dst}self_attn.proj.weight", (f"{src}self_attn.o_proj.weight",), "linear"))
        if out_bias:
            tensors.append(TensorMap(f"{dst}self_attn.proj.bias", (f"{src}self_attn.o_proj.bias",), "same"))
        for name in ("input_layernorm", "post_attention_layernorm"):
            tensors.append(TensorMap(f"{dst}{name}.weight", (f"{src}{name}.weight",), "same"))
        for name in ("gate", "up", "down"):
            tensors.append(TensorMap(f"{dst}mlp.{name}.weight", (f"{src}mlp.{name}_proj.weight",), "linear"))
            if mlp_bias:
                tensors.append(TensorMap(f"{dst}mlp.{name}.bias", (f"{src}mlp.{name}_proj.bias",), "same"))
    tensors.append(TensorMap("norm.weight", ("model.norm.weight",), "same"))
    if not tied:
        tensors.append(TensorMap("lm_head.weight", ("lm_head.weight",), "linear"))
    return Architecture(family, c, layers, vocab, t, tensors)
