"""Tiny random Hugging Face models built with transformers and saved into a directory (test helpers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

VOCAB = 96
FAMILIES = ("gpt2", "llama", "llama3", "mistral", "qwen2")


def save_tiny(family: str, directory: Path, seed: int = 0, tied: bool | None = None) -> Path:
    """A 2-layer model of ``family`` with random weights, saved with ``save_pretrained`` into ``directory``."""
    import torch
    import transformers as tr

    torch.manual_seed(seed)
    common: dict[str, Any] = {"vocab_size": VOCAB}
    if family == "gpt2":
        config = tr.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=32, **common)
        model = tr.GPT2LMHeadModel(config)
    else:
        llama: dict[str, Any] = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                                     num_key_value_heads=2, max_position_embeddings=32, rms_norm_eps=1e-5, **common)
        if tied is not None:
            llama["tie_word_embeddings"] = tied
        if family in ("llama", "llama3"):
            if family == "llama3":
                llama["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
            model = tr.LlamaForCausalLM(tr.LlamaConfig(**llama))
        elif family == "mistral":
            model = tr.MistralForCausalLM(tr.MistralConfig(sliding_window=None, **llama))
        else:
            model = tr.Qwen2ForCausalLM(tr.Qwen2Config(**llama))
    with torch.no_grad():  # norms and biases away from their 1 / 0 initial values, so a mix-up shows
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    model.save_pretrained(directory)
    return directory


def hf_logits(directory: Path, ids: np.ndarray) -> np.ndarray:
    """transformers' own float32 logits for ``ids`` ``[B, T]``."""
    import torch
    import transformers as tr

    model = tr.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()


def hf_greedy(directory: Path, ids: np.ndarray, n: int) -> np.ndarray:
    """transformers' greedy continuation of ``ids`` by ``n`` tokens (no stop tokens)."""
    import torch
    import transformers as tr

    model = tr.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.from_numpy(ids.astype(np.int64)), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, eos_token_id=None, pad_token_id=0)
    return out.numpy()


CORPUS = ["the cat sat on the mat and the dog sat on the log", "a bird in the hand is worth two in the bush",
          "all that glitters is not gold, all that wander are not lost", "to be or not to be, that is the question"]
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{{ eos_token }}"
                 "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")


def save_tokenizer(directory: Path, vocab: int = VOCAB) -> Path:
    """A small BPE (Metaspace, as Llama's) trained on :data:`CORPUS`, saved as ``tokenizer.json`` with a
    ``tokenizer_config.json`` naming ``<s>`` / ``</s>`` and a chat template."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>"],
                                                            show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "chat_template": CHAT_TEMPLATE,
         "tokenizer_class": "PreTrainedTokenizerFast"}))
    return directory


def write_corpus(directory: Path) -> Path:
    """:data:`CORPUS`, three times over, one text file per line, in ``directory`` (made here); returns it."""
    directory.mkdir()
    for i, text in enumerate(CORPUS * 3):
        (directory / f"{i}.txt").write_text(text)
    return directory


#: a tiny Llama-style decoder as neutral layers (seeded weights, no pretrained base): LoRA and freezing tests
TINY_LM_LAYERS = [{"embedding": {"name": "wte", "dim": 16}},
                  {"residual": {"name": "", "layers": [{"norm": {"name": "ln", "kind": "rms"}},
                                                       {"attention": {"name": "attn", "heads": 2, "rope": True}}]}},
                  {"residual": {"name": "", "layers": [{"norm": {"name": "ln2", "kind": "rms"}},
                                                       {"gated_mlp": {"name": "mlp", "hidden": 24}}]}},
                  {"norm": {"name": "ln_f", "kind": "rms"}}, {"tied_head": "wte"}]
