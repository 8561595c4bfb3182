"""LoRA on an imported Llama: only the adapters move, the loss falls on every backend and the three 30-step
curves agree, and ``export --format hf`` merges the adapters (base + scale * A @ B) into weights transformers loads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import crossframe
from crossframe.checkpoint import load_checkpoint
from crossframe.cli.main import main
from crossframe.models import spec_from_json
from tests.hf_models import hf_logits, save_tiny, save_tokenizer, write_corpus

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
STEPS = 30


@pytest.fixture(scope="module")
def curves(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 30-step LoRA run per backend, from the same tiny Llama and data."""
    root = tmp_path_factory.mktemp("lora")
    model_dir = save_tokenizer(save_tiny("llama", root / "llama"))
    corpus = write_corpus(root / "corpus")
    out = {"model_dir": model_dir}
    for backend in BACKENDS:
        config = {
            "name": f"lora-{backend}", "backend": backend, "device": "cpu", "seed": 0, "output_dir": str(root / "runs"),
            "data": {"name": "text-files", "paths": [str(corpus)], "val_fraction": 0.25},
            "text": {"tokenizer": {"name": "hf", "path": str(model_dir)}, "seq_len": 16, "max_eval_tokens": 64},
            "model": {"name": "hf", "path": str(model_dir)},
            "train": {"steps": STEPS, "batch_size": 4, "log_every": 1, "eval_every": 0,
                      "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.0},
                      "lora": {"rank": 4, "alpha": 8, "targets": ["*qkv", "*self_attn.proj", "*mlp.up", "lm_head"]}},
        }
        result = crossframe.run(config, quiet=True)
        records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        out[backend] = (result, [r["train/loss"] for r in records if "train/loss" in r])
    return out


def test_lora_lowers_the_loss_and_the_backends_agree(curves: dict) -> None:
    base = curves[BACKENDS[0]][1]
    assert len(base) == STEPS
    for backend in BACKENDS:
        losses = curves[backend][1]
        assert np.mean(losses[-5:]) < losses[0] - 0.3, (backend, losses[0], losses[-5:])
        # float32 forward/backward of a 2-layer, width-32 model over 30 Adam steps: differences of
        # rounding order grow to ~1e-5; 1e-3 is the bar
        np.testing.assert_allclose(losses, base, atol=1e-3, err_msg=f"{backend} vs {BACKENDS[0]}")


def test_only_adapters_move(curves: dict) -> None:
    from crossframe.hf.loading import load_pretrained

    _, pretrained = load_pretrained(curves["model_dir"], context=16)
    for backend in BACKENDS:
        weights = load_checkpoint(curves[backend][0].run_dir).weights
        adapters = {k for k in weights if k.endswith((".lora_a", ".lora_b"))}
        assert {k.rsplit(".", 1)[0] for k in adapters} >= {"layers.0.self_attn.qkv", "layers.1.mlp.up", "lm_head"}
        for name, value in pretrained.items():
            assert np.array_equal(weights[name], np.asarray(value, np.float32)), f"{backend}: base '{name}' moved"
        assert any(np.abs(weights[k]).max() > 0 for k in adapters if k.endswith("lora_b")), backend


def test_export_merges_the_adapters(curves: dict) -> None:
    from crossframe.hf.loading import load_pretrained

    result = curves["torch"][0]
    assert main(["export", str(result.run_dir), "--format", "hf"]) == 0
    out = result.run_dir / "exports" / "hf"
    _, merged = load_pretrained(out)
    trained = load_checkpoint(result.run_dir).weights
    name = "layers.0.self_attn.qkv"
    want = trained[f"{name}.weight"] + 2.0 * trained[f"{name}.lora_a"] @ trained[f"{name}.lora_b"]
    np.testing.assert_allclose(merged[f"{name}.weight"], want, atol=1e-5)
    ids = np.random.default_rng(0).integers(0, 96, (2, 16))
    from crossframe.models import spec_from_json

    with_adapters = spec_from_json(load_checkpoint(result.run_dir).state["model"])
    np.testing.assert_allclose(hf_logits(out, ids), with_adapters.graph.reference(trained, ids), atol=1e-4)
    assert not (Path(out) / "adapter_config.json").exists()  # merged: a plain model directory


def test_the_built_in_gpt_takes_lora_like_any_graph(workdir: Path) -> None:
    """The built-in gpt is a graph: LoRA adapts its attention projections and trains only the adapters."""
    config = {"name": "gpt-lora", "backend": "torch", "device": "cpu", "seed": 3,
              "data": {"name": "python-stdlib", "max_files": 2, "val_fraction": 0.5},
              "text": {"tokenizer": {"name": "bytes"}, "seq_len": 8, "max_eval_tokens": 16},
              "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "d_model": 8, "max_seq_len": 8},
              "train": {"steps": 3, "batch_size": 2, "eval_every": 0, "lora": {"rank": 2},
                        "optimizer": {"name": "adamw", "lr": 1e-2}}}
    result = crossframe.run(config, quiet=True)
    checkpoint = load_checkpoint(result.run_dir)
    spec = spec_from_json(checkpoint.state["model"])
    base = spec.base.init(3)  # the seeded base the run started from
    adapters = {k for k in checkpoint.weights if k.endswith((".lora_a", ".lora_b"))}
    assert adapters == {f"h.{i}.attn.{lin}.{ab}" for i in (0, 1) for lin in ("qkv", "proj")
                        for ab in ("lora_a", "lora_b")}
    assert all(np.array_equal(checkpoint.weights[k], base[k]) for k in base)  # the base stayed frozen
    assert any(np.abs(checkpoint.weights[k]).max() > 0 for k in adapters if k.endswith("lora_b"))  # B trained


@pytest.mark.parametrize(("model", "lora", "message"), [
    ({"name": "graph", "layers": [{"embedding": {"dim": 8}}, {"dense": "outputs"}]}, {"targets": ["*qkv"]},
     "train.lora.targets: ['*qkv'] match no linear"),
    ({"name": "graph", "layers": [{"embedding": {"dim": 8}}, {"dense": "outputs"}]}, {"rank": 0},
     "train.lora.rank"),
])
def test_bad_lora_settings_are_one_line(workdir: Path, capsys: pytest.CaptureFixture, model: dict, lora: dict,
                                        message: str) -> None:
    config = {"name": "bad-lora", "backend": "torch", "device": "cpu",
              "data": {"name": "python-stdlib", "max_files": 2, "val_fraction": 0.5},
              "text": {"tokenizer": {"name": "bytes"}, "seq_len": 8, "max_eval_tokens": 16},
              "model": model, "train": {"steps": 1, "batch_size": 2, "eval_every": 0, "lora": lora}}
    Path("bad.json").write_text(json.dumps(config))
    assert main(["run", "bad.json", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert not Path("runs/bad-lora").exists()
