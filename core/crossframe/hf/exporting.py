"""Canonical weights of a decoder -> a Hugging Face directory (``config.json``, ``model.safetensors``,
``generation_config.json`` and the tokenizer files) that ``transformers`` loads.

``crossframe export RUN --format hf`` writes ``RUN/exports/hf/``. The run's model must be one the importer
knows (``model: {name: hf}``), or a built-in ``gpt`` with learned positions and full-rank kernels, which is a
GPT-2 (the same graph, the same canonical names) and is written as ``GPT2LMHeadModel``; with LoRA adapters,
they are merged into the base weights first.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.errors import ConfigError
from crossframe.hf.architectures import Architecture
from crossframe.hf.weights import to_hf
from crossframe.models.spec import ModelSpec
from crossframe.nn import layers as L

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def qkv_sizes(spec: ModelSpec) -> dict[str, tuple[int, int, int]]:
    """``(q, k, v)`` widths of each fused attention tensor of ``spec``'s graph, by canonical name."""
    out = {}
    for node in spec.graph.root.walk():
        if isinstance(node.layer, L.Attention):
            h, kv, hd = node.layer.dims(node.in_shape[1])
            for part in ("weight", "bias"):
                out[node.param_name(f"qkv.{part}")] = (h * hd, kv * hd, kv * hd)
    return out


def exported_config(arch: Architecture, dtype: str) -> dict[str, Any]:
    """``config.json`` for the export: the imported one, with the context and dtype it now has."""
    config = dict(arch.config)
    if arch.family == "gpt2":
        config["n_positions"] = arch.context  # the position table was cut to the run's context
    config["dtype"] = dtype
    return config


def write_hf(out: Path, spec: ModelSpec, arch: Architecture, weights: Mapping[str, np.ndarray],
             tokenizer_dir: Path | None = None) -> Path:
    """Write the Hugging Face directory ``out`` (replaced whole, atomically) for canonical ``weights``."""
    from crossframe.hf.safetensors_io import write_safetensors

    tensors = to_hf(arch, weights, qkv_sizes(spec))
    dtypes = {str(t.dtype) for t in tensors.values()}
    dtype = "bfloat16" if dtypes == {"bfloat16"} else "float16" if dtypes == {"float16"} else "float32"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_safetensors(tmp / "model.safetensors", tensors, metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(exported_config(arch, dtype), indent=2))
        if tokenizer_dir is not None:
            for name in (*TOKENIZER_FILES, "generation_config.json"):
                if (tokenizer_dir / name).is_file():
                    shutil.copyfile(tokenizer_dir / name, tmp / name)
        if not (tmp / "generation_config.json").exists():
            gen = {k: arch.config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in arch.config}
            (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def gpt2_architecture(spec: ModelSpec) -> Architecture:
    """The GPT-2 that a built-in ``gpt`` spec is, or a one-line :class:`ConfigError` naming what GPT-2 lacks."""
    from crossframe.hf.architectures import architecture
    from crossframe.models.gpt import LN_EPS

    p = spec.params
    if p.get("rope"):
        raise ConfigError("export: --format hf writes a gpt as a GPT-2, which has learned positions; this run's "
                          "gpt uses rotary embeddings (rope: true)")
    if spec.low_rank:
        raise ConfigError(f"export: --format hf needs full-rank kernels; this run's gpt factorises "
                          f"{', '.join(sorted(spec.low_rank))} (low_rank)")
    d, rate = int(p["d_model"]), float(p.get("dropout", 0.0))
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": spec.data_info.num_outputs,
              "n_positions": int(p["max_seq_len"]), "n_embd": d, "n_layer": int(p["n_layer"]),
              "n_head": int(p["n_head"]), "n_inner": int(p.get("d_ff") or 4 * d), "activation_function": "gelu_new",
              "layer_norm_epsilon": LN_EPS, "resid_pdrop": rate, "embd_pdrop": rate, "attn_pdrop": rate,
              "tie_word_embeddings": bool(p.get("tied_embeddings", True))}
    return architecture(config, source="gpt")


def export_run_hf(run: str | Path, checkpoint: str | None = None) -> Path:
    """Write ``RUN/exports/hf`` from the run's latest checkpoint (or ``checkpoint``); returns the directory."""
    from crossframe.checkpoint import MODEL_FILE, load_checkpoint
    from crossframe.hf.loading import architecture_of
    from crossframe.models import spec_from_json
    from crossframe.security.artifacts import UNSEALABLE, unsealable
    from crossframe.security.sealing import is_sealed

    loaded = load_checkpoint(Path(checkpoint or run))
    if is_sealed(loaded.path / MODEL_FILE):  # never write encrypted weights out in the clear
        raise unsealable("export: --format hf", UNSEALABLE["hf"])
    run_dir = Path(run) if checkpoint else loaded.path.parent.parent
    state = loaded.state["model"]
    if state["name"] not in ("hf", "gpt"):
        raise ConfigError(f"export: --format hf needs a run of model 'hf' (imported from a Hugging Face "
                          f"directory) or 'gpt'; '{run_dir}' trained '{state['name']}'")
    spec = spec_from_json(state)
    from crossframe.nn.lora import lora_scales, merge

    weights = merge(loaded.weights, lora_scales(spec.graph))  # adapters folded into the base kernels
    tokenizer = run_dir / "tokenizer"
    spec = getattr(spec, "base", spec)
    arch = gpt2_architecture(spec) if spec.name == "gpt" else architecture_of(spec)
    return write_hf(run_dir / "exports" / "hf", spec, arch, weights,
                    tokenizer if tokenizer.is_dir() else None)
