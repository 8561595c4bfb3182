"""Sampling text from a trained language-model run, on any backend: ``crossframe generate``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from crossframe.checkpoint import load_checkpoint
from crossframe.config.loading import load_config
from crossframe.errors import ConfigError
from crossframe.models import spec_from_json
from crossframe.sampling import generate_by_recompute, make_sampler
from crossframe.train.runner import CONFIG_FILE, prepare_backend


def generate(run: str | os.PathLike, prompt: str = "", max_tokens: int = 200, *, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int = 0,
             backend: str | None = None) -> str:
    """Continue ``prompt`` with ``max_tokens`` sampled tokens from the run's latest checkpoint.

    Greedy when ``temperature == 0``. A backend with a KV cache (a ``generate`` method) uses it;
    any other recomputes the context for each token. The same seed gives the same text.
    """
    if max_tokens < 0:
        raise ConfigError(f"--max-tokens: must be >= 0 (got {max_tokens})")
    checkpoint = load_checkpoint(Path(run))
    run_dir = checkpoint.path.parent.parent
    if checkpoint.state["model"]["data_info"]["task"] != "language_modeling":
        raise ConfigError(f"generate: '{run_dir}' is not a language-model run (model "
                          f"'{checkpoint.state['model']['name']}')")
    tokenizer_dir = run_dir / "tokenizer"
    if not tokenizer_dir.is_dir():
        raise ConfigError(f"generate: '{run_dir}' has no tokenizer/ directory")
    from crossframe.text.tokenizers import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    cfg = load_config(run_dir / CONFIG_FILE, backend=backend)
    spec = spec_from_json(checkpoint.state["model"])
    impl, device = prepare_backend(cfg, training=False)
    state = impl.inference_state(spec, checkpoint.weights, device, cfg.precision)
    try:
        sample = make_sampler(temperature, top_k, top_p, seed)
    except ValueError as exc:
        raise ConfigError(f"generate: {exc}") from None
    encode = getattr(tokenizer, "encode_prompt", tokenizer.encode)  # a pretrained tokenizer adds its BOS
    ids = encode(prompt) if prompt else [tokenizer.eot_id]
    prompt_ids = np.asarray([ids], dtype=np.int64)
    max_seq_len = int(spec.params.get("max_seq_len") or spec.data_info.input_shape[0])  # a graph: its context
    if hasattr(impl, "generate"):
        out = impl.generate(state, prompt_ids[:, -max_seq_len:], max_tokens, sample)
        new = out[0, min(len(ids), max_seq_len):]
    else:
        out = generate_by_recompute(lambda t: impl.predict(state, t), prompt_ids, max_tokens, sample, max_seq_len)
        new = out[0, len(ids):]
    new = [int(t) for t in new]
    stops = set(getattr(tokenizer, "stop_ids", lambda: [])())  # generation_config.json's eos ids
    cut = next((i for i, t in enumerate(new) if t in stops), None)
    if cut is not None:
        new = new[:cut]
    return prompt + tokenizer.decode(new)
