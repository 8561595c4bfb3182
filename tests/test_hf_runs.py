"""A local Hugging Face model in a run: ``model: {name: hf}`` with ``tokenizer: {name: hf}`` fine-tunes on every
backend from the pretrained weights, and ``crossframe generate`` continues a prompt with each backend's cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import crossframe
from crossframe.checkpoint import load_checkpoint
from crossframe.cli.main import main
from tests.hf_models import CORPUS, save_tiny, save_tokenizer

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A tiny Llama and its tokenizer in one directory, plus a text corpus beside it."""
    directory = save_tokenizer(save_tiny("llama", tmp_path / "llama"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(CORPUS * 3):
        (corpus / f"{i}.txt").write_text(text)
    return directory


def run_config(model_dir: Path, backend: str, steps: int = 4) -> dict:
    return {
        "name": f"sft-{backend}", "backend": backend, "device": "cpu", "seed": 0,
        "data": {"name": "text-files", "paths": [str(model_dir.parent / "corpus")], "val_fraction": 0.25},
        "text": {"tokenizer": {"name": "hf", "path": str(model_dir)}, "seq_len": 16, "max_eval_tokens": 64},
        "model": {"name": "hf", "path": str(model_dir)},
        "train": {"steps": steps, "batch_size": 2, "log_every": 1, "eval_every": 0,
                  "optimizer": {"name": "adamw", "lr": 1e-3}},
    }


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_hf_model_fine_tunes_from_its_weights_and_generates(workdir: Path, model_dir: Path, backend: str,
                                                               capsys: pytest.CaptureFixture) -> None:
    from crossframe.hf.loading import load_pretrained

    _, pretrained = load_pretrained(model_dir, context=16)
    result = crossframe.run(run_config(model_dir, backend, steps=1), quiet=True)
    assert np.isfinite(result.metrics["val/loss"])
    trained = load_checkpoint(result.run_dir).weights
    assert set(trained) == set(pretrained)
    moved = max(float(np.abs(trained[k] - pretrained[k].astype(np.float32)).max()) for k in trained)
    assert 0 < moved < 0.01, moved  # one small AdamW step away from the pretrained weights, not re-initialised
    capsys.readouterr()
    args = ["generate", str(result.run_dir), "--prompt", "the cat", "--max-tokens", "6", "--temperature", "0"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("the cat"), text
