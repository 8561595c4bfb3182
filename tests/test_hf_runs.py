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
from tests.hf_models import save_tiny, save_tokenizer, write_corpus

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A tiny Llama and its tokenizer in one directory, plus a text corpus beside it."""
    directory = save_tokenizer(save_tiny("llama", tmp_path / "llama"))
    write_corpus(tmp_path / "corpus")
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


def test_export_hf_round_trips_through_transformers(workdir: Path, model_dir: Path) -> None:
    """import -> fine-tune (torch) -> ``crossframe export --format hf`` -> transformers: the same logits."""
    from crossframe.hf.loading import load_pretrained
    from tests.hf_models import hf_logits

    result = crossframe.run(run_config(model_dir, "torch", steps=2), quiet=True)
    assert main(["export", str(result.run_dir), "--format", "hf"]) == 0
    out = result.run_dir / "exports" / "hf"
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()}
    ids = np.random.default_rng(0).integers(0, 96, (2, 16))
    spec, weights = load_pretrained(out)
    trained = load_checkpoint(result.run_dir).weights
    assert all(np.array_equal(weights[k], trained[k]) for k in trained)  # the export holds the trained weights
    np.testing.assert_allclose(hf_logits(out, ids), spec.graph.reference(trained, ids), atol=1e-4)
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(out)
    from crossframe.hf.tokenizer import HFTokenizer

    ours = HFTokenizer(out)
    assert tok("the cat sat")["input_ids"] == ours.encode_prompt("the cat sat")
    chat = [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": "sat"}]
    assert tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == ours.render_chat(
        chat, add_generation_prompt=True)


def gpt_run_config(**model: object) -> dict:
    return {"name": "g", "backend": "torch", "device": "cpu",
            "data": {"name": "python-stdlib", "max_files": 2, "val_fraction": 0.5},
            "text": {"tokenizer": {"name": "bytes"}, "seq_len": 8, "max_eval_tokens": 16},
            "model": {"name": "gpt", "n_layer": 2, "n_head": 2, "d_model": 8, "max_seq_len": 12, **model},
            "train": {"steps": 2, "batch_size": 2, "eval_every": 0}}


@pytest.mark.parametrize("tied", [True, False])
def test_a_gpt_exports_as_a_gpt2_that_transformers_runs(workdir: Path, tied: bool) -> None:
    """The built-in gpt is GPT-2's graph: ``export --format hf`` writes a GPT2LMHeadModel with the run's logits,
    and importing that directory gives back the run's canonical weights."""
    from crossframe.hf.loading import load_pretrained
    from crossframe.models import spec_from_json
    from tests.hf_models import hf_logits

    result = crossframe.run(gpt_run_config(tied_embeddings=tied, d_ff=12), quiet=True)
    assert main(["export", str(result.run_dir), "--format", "hf"]) == 0
    out = result.run_dir / "exports" / "hf"
    checkpoint = load_checkpoint(result.run_dir)
    spec, trained = spec_from_json(checkpoint.state["model"]), checkpoint.weights
    ids = np.random.default_rng(0).integers(0, spec.data_info.num_outputs, (2, 12))
    # float32 logits of a 2-block net of width 8: a few ulps of values near 1 each
    np.testing.assert_allclose(hf_logits(out, ids), spec.forward(trained, ids), atol=1e-4)
    imported, weights = load_pretrained(out)
    assert [(q.name, q.shape) for q in imported.table] == [(q.name, q.shape) for q in spec.table]  # one graph
    assert ("lm_head.weight" in weights) == (not tied)
    assert set(weights) == set(trained) and all(np.array_equal(weights[k], trained[k]) for k in trained)


def test_export_hf_refuses_what_gpt2_cannot_hold_in_one_line(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    result = crossframe.run(gpt_run_config(rope=True), quiet=True)
    assert main(["export", str(result.run_dir), "--format", "hf"]) == 2
    err = capsys.readouterr().err.strip()
    assert "rotary embeddings (rope: true)" in err and "\n" not in err
    assert not (result.run_dir / "exports" / "hf").exists()
    digits = {"name": "d", "backend": "torch", "device": "cpu", "data": {"name": "digits"},
              "model": {"name": "mlp", "hidden": [4]}, "train": {"steps": 1, "batch_size": 8, "eval_every": 0}}
    result = crossframe.run(digits, quiet=True)
    assert main(["export", str(result.run_dir), "--format", "hf"]) == 2
    assert "needs a run of model 'hf'" in capsys.readouterr().err


def test_init_from_an_hf_directory_and_from_a_run(workdir: Path, model_dir: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """``model.init_from``: a graph written in the config starts from an HF directory's weights (frozen ones
    stay equal to them), a second run starts from the first's checkpoint, a mismatch is one line."""
    import json

    from crossframe.hf.loading import load_architecture, load_pretrained

    layers = load_architecture(model_dir, 16).layers
    config = run_config(model_dir, "torch", steps=1)
    config["model"] = {"name": "graph", "layers": layers, "init_from": str(model_dir)}
    config["train"]["freeze"] = ["embed_tokens.*", "layers.*"]
    first = crossframe.run(config, quiet=True)
    _, pretrained = load_pretrained(model_dir, context=16)
    weights = load_checkpoint(first.run_dir).weights
    assert all(np.array_equal(weights[k], pretrained[k]) for k in pretrained if not k.startswith(("norm", "lm_head")))
    assert not np.array_equal(weights["lm_head.weight"], pretrained["lm_head.weight"])
    second = crossframe.run({**config, "name": "second", "model": {**config["model"], "init_from": str(first.run_dir)},
                             "train": {**config["train"], "freeze": ["layers.*", "norm.*", "lm_head.*"]}}, quiet=True)
    again = load_checkpoint(second.run_dir).weights
    assert np.array_equal(again["lm_head.weight"], weights["lm_head.weight"])  # frozen here, trained there
    narrow = [{"embedding": {"name": "embed_tokens", "dim": 8}}, {"dense": {"name": "lm_head", "units": "outputs"}}]
    bad = {**config, "name": "bad", "model": {"name": "graph", "layers": narrow, "init_from": str(first.run_dir)},
           "train": {**config["train"], "freeze": []}}
    Path("bad.json").write_text(json.dumps(bad))
    capsys.readouterr()
    assert main(["run", "bad.json", "-q"]) == 2
    err = capsys.readouterr().err
    assert "model.init_from" in err and "Traceback" not in err
    assert not Path("runs/bad").exists()


def test_bad_model_directories_are_one_line_exit_2(workdir: Path, model_dir: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    """No config.json, a pickle instead of safetensors, an unknown architecture: one line each, no run written."""
    import json
    import shutil

    cases = {}
    empty = workdir / "empty"
    empty.mkdir()
    cases["no config"] = (empty, "has no config.json")
    pickled = workdir / "pickled"
    shutil.copytree(model_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    cases["pickle"] = (pickled, "a pickle is never opened")
    unknown = workdir / "unknown"
    shutil.copytree(model_dir, unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "architectures": ["T5ForConditionalGeneration"]}))
    cases["architecture"] = (unknown, "T5ForConditionalGeneration is not supported")
    for what, (directory, message) in cases.items():
        config = run_config(model_dir, "torch", steps=1)
        config["model"]["path"] = str(directory)
        config["name"] = "bad"
        Path("bad.json").write_text(json.dumps(config))
        capsys.readouterr()
        assert main(["run", "bad.json", "-q"]) == 2, what
        err = capsys.readouterr().err.strip()
        assert message in err and "Traceback" not in err and len(err.splitlines()) == 1, (what, err)
        assert not Path("runs/bad").exists(), what


def test_generation_stops_at_generation_configs_eos(workdir: Path, model_dir: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    import json

    result = crossframe.run(run_config(model_dir, "jax", steps=1), quiet=True)
    args = ["generate", str(result.run_dir), "--prompt", "the cat", "--max-tokens", "6", "--temperature", "0"]
    capsys.readouterr()
    assert main(args) == 0
    free = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(free) > len("the cat")
    # every id a stop token: the first generated one ends the text
    stops = list(range(96))
    (result.run_dir / "tokenizer" / "generation_config.json").write_text(json.dumps({"eos_token_id": stops}))
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "the cat"  # stopped before any text


def test_an_imported_model_serves(workdir: Path, model_dir: Path) -> None:
    """``crossframe serve`` opens an ``hf`` run natively: its window is the run's context, greedy completion
    of the served model equals ``crossframe generate``'s."""
    from crossframe.serve.loading import load_served_model

    result = crossframe.run(run_config(model_dir, "torch", steps=1), quiet=True)
    model = load_served_model(result.run_dir, engine="native")
    assert model.window == 16 and model.batch_decoder is not None  # torch: its slot cache over the lowered graph
    ids = np.asarray([model.tokenizer.encode_prompt("the cat")])
    from crossframe.sampling import generate_by_recompute, make_sampler

    out = generate_by_recompute(model.predict, ids, 4, make_sampler(0.0), model.window)
    decoder, seq = model.batch_decoder(2), ids[0].tolist()
    for _ in range(4):  # greedy through the slot cache (slot 1): the same tokens as recomputing the context
        seq.append(int(decoder.step([(1, seq)])[0].argmax()))
    assert seq == out[0].tolist()
    from crossframe.train.generate import generate

    assert generate(result.run_dir, "the cat", 4, temperature=0.0) == "the cat" + model.tokenizer.decode(
        out[0, ids.shape[1]:])
