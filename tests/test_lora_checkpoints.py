"""Adapter-only LoRA checkpoints: a LoRA run writes its adapters, their optimizer state and a reference to its
base (with the base's sha256); every reader gets the whole model back through ``load_checkpoint``, which
rebuilds the base and refuses a changed or missing one in one line; resuming matches an uninterrupted run."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import crossframe
from crossframe.checkpoint import MODEL_FILE, load_checkpoint, save_checkpoint
from crossframe.cli.main import main
from crossframe.nn.lora_checkpoint import STATE_KEY, fingerprint, is_adapter
from tests.hf_models import TINY_LM_LAYERS

pytestmark = pytest.mark.slow
BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
LAYERS = TINY_LM_LAYERS


def graph_config(backend: str, steps: int, **train: object) -> dict:
    """A LoRA run of a small seeded graph model on bytes (no pretrained base: the seed rebuilds it)."""
    return {"name": f"lora-{backend}", "backend": backend, "device": "cpu", "seed": 3,
            "data": {"name": "python-stdlib", "max_files": 2, "val_fraction": 0.5},
            "text": {"tokenizer": {"name": "bytes"}, "seq_len": 8, "max_eval_tokens": 32},
            "model": {"name": "graph", "layers": LAYERS},
            "train": {"steps": steps, "batch_size": 2, "eval_every": 0, "log_every": 1, "clip_norm": 1.0,
                      "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1},
                      "lora": {"rank": 2, "alpha": 4, "targets": ["*qkv", "*attn.proj", "*mlp.up"]}, **train}}


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_from_adapters_matches_an_uninterrupted_run(workdir: Path, backend: str) -> None:
    whole = crossframe.run(graph_config(backend, 6, checkpoint_every=3, keep_checkpoints=3), quiet=True)
    step3 = whole.run_dir / "checkpoints" / "step_3"
    saved = json.loads((step3 / "state.json").read_text())
    from safetensors.numpy import load_file

    on_disk = load_file(str(step3 / MODEL_FILE))
    assert on_disk and all(is_adapter(k) for k in on_disk), sorted(on_disk)[:4]
    opt = load_file(str(step3 / "optimizer.safetensors"))
    assert all(k == "step" or is_adapter(k) for k in opt) and "exp_avg/attn.qkv.lora_b" in opt
    assert saved[STATE_KEY]["init_from"] is None and saved[STATE_KEY]["path"] is None
    loaded = load_checkpoint(step3)  # whole: the seeded base rebuilt, its fingerprint checked
    assert fingerprint(loaded.weights) == saved[STATE_KEY]["sha256"]
    assert "wte.weight" in loaded.weights and set(loaded.optimizer_state) == set(opt)
    from crossframe.nn.lora_checkpoint import FrozenSlots

    slots = FrozenSlots(loaded.optimizer_state, loaded.weights)  # what a resume hands the backend
    assert "exp_avg/wte.weight" in slots and not slots["exp_avg_sq/wte.weight"].any()
    assert len(slots) == len(list(slots)) == 1 + 2 * len(loaded.weights)

    copy = workdir / "runs" / "resumed"
    shutil.copytree(whole.run_dir, copy)
    (copy / "metrics.jsonl").unlink()
    resumed = crossframe.run(resume=copy / "checkpoints" / "step_3", quiet=True)
    assert resumed.steps == 6
    mine, theirs = losses(resumed.run_dir), losses(whole.run_dir)
    assert sorted(mine) == [4, 5, 6]
    # the same float32 steps in the same order on the same backend: equal up to the last bit or two
    for step, loss in mine.items():
        assert abs(loss - theirs[step]) < 1e-6, (step, loss, theirs[step])
    end, again = load_checkpoint(whole.run_dir), load_checkpoint(resumed.run_dir)
    for name, value in end.weights.items():
        np.testing.assert_allclose(again.weights[name], value, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------- an imported base


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny Llama (transformers' save_pretrained), a LoRA run on it, and a twin run directory whose
    checkpoint holds the same model whole (what checkpoints held before adapters-only)."""
    pytest.importorskip("transformers")
    from tests.hf_models import save_tiny, save_tokenizer, write_corpus

    root = tmp_path_factory.mktemp("lora-ckpt")
    model_dir = save_tokenizer(save_tiny("llama", root / "llama"))
    corpus = write_corpus(root / "corpus")
    config = {"name": "adapters", "backend": "torch", "device": "cpu", "seed": 0, "output_dir": str(root / "runs"),
              "data": {"name": "text-files", "paths": [str(corpus)], "val_fraction": 0.25},
              "text": {"tokenizer": {"name": "hf", "path": str(model_dir)}, "seq_len": 16, "max_eval_tokens": 64},
              "model": {"name": "hf", "path": str(model_dir)},
              "train": {"steps": 4, "batch_size": 2, "eval_every": 0,
                        "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.0},
                        "lora": {"rank": 2, "alpha": 4, "targets": ["*qkv", "*mlp.up", "lm_head"]}}}
    result = crossframe.run(config, quiet=True)
    loaded = load_checkpoint(result.run_dir)
    twin = root / "runs" / "whole"
    shutil.copytree(result.run_dir, twin, ignore=shutil.ignore_patterns("checkpoints"))
    state = {k: v for k, v in loaded.state.items() if k not in (STATE_KEY, "step")}
    from crossframe.nn.lora_checkpoint import FrozenSlots

    whole_opt = dict(FrozenSlots(loaded.optimizer_state, loaded.weights))
    save_checkpoint(twin / "checkpoints", loaded.step, loaded.weights, whole_opt, state, keep=1)
    return {"run": result.run_dir, "twin": twin, "model_dir": model_dir, "config": config, "root": root}


def test_the_checkpoint_is_a_small_fraction_of_the_base(adapter_run: dict) -> None:
    from safetensors.numpy import load_file

    step = load_checkpoint(adapter_run["run"]).path
    adapters = (step / MODEL_FILE).stat().st_size
    base = (adapter_run["model_dir"] / "model.safetensors").stat().st_size
    whole = (load_checkpoint(adapter_run["twin"]).path / MODEL_FILE).stat().st_size
    assert adapters < 0.1 * base and adapters < 0.1 * whole, (adapters, base, whole)
    assert all(is_adapter(k) for k in load_file(str(step / MODEL_FILE)))


def test_eval_export_and_generate_equal_the_whole_checkpoint(adapter_run: dict,
                                                             capsys: pytest.CaptureFixture) -> None:
    from crossframe.hf.loading import load_pretrained
    from crossframe.train.evaluate import evaluate
    from crossframe.train.generate import generate

    run, twin = adapter_run["run"], adapter_run["twin"]
    assert abs(evaluate(run)["val/loss"] - evaluate(twin)["val/loss"]) < 1e-5
    for directory in (run, twin):
        assert main(["export", str(directory), "--format", "hf"]) == 0
    _, merged = load_pretrained(run / "exports" / "hf")
    _, reference = load_pretrained(twin / "exports" / "hf")
    assert merged.keys() == reference.keys()
    for name, value in merged.items():  # the same bytes in, the same float64 merge: equal
        np.testing.assert_allclose(value, reference[name], atol=1e-5, err_msg=name)
    assert not np.array_equal(merged["lm_head.weight"], load_pretrained(adapter_run["model_dir"])[1]["lm_head.weight"])
    text = generate(run, "the cat", 6, temperature=0.0)
    assert text == generate(twin, "the cat", 6, temperature=0.0) and len(text) > len("the cat")


def test_a_changed_or_missing_base_is_one_line(adapter_run: dict, capsys: pytest.CaptureFixture) -> None:
    from safetensors.numpy import load_file, save_file

    root = adapter_run["root"]
    base = root / "base-copy"
    shutil.copytree(adapter_run["model_dir"], base)
    config = {**adapter_run["config"], "name": "moved", "model": {"name": "hf", "path": str(base)},
              "train": {**adapter_run["config"]["train"], "steps": 1}}
    result = crossframe.run(config, quiet=True)
    expected = json.loads((load_checkpoint(result.run_dir).path / "state.json").read_text())[STATE_KEY]["sha256"]
    tensors = load_file(str(base / "model.safetensors"))
    name = next(k for k in sorted(tensors) if k.endswith("norm.weight"))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(base / "model.safetensors"), metadata={"format": "pt"})
    capsys.readouterr()
    assert main(["eval", str(result.run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(base) in err and expected in err and "has changed" in err, err
    shutil.rmtree(base)
    assert main(["export", str(result.run_dir), "--format", "hf"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(base) in err and "missing" in err and expected in err, err
    assert not (result.run_dir / "exports" / "hf").exists()


def test_full_checkpoints_on_request(workdir: Path) -> None:
    config = graph_config("torch", 1)
    config["train"]["lora"]["checkpoint"] = "full"
    result = crossframe.run(config, quiet=True)
    loaded = load_checkpoint(result.run_dir)
    assert STATE_KEY not in loaded.state and "wte.weight" in loaded.weights


def test_export_hf_as_a_run_step(adapter_run: dict, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    """``export: [{name: hf}]`` in the run's config writes ``RUN/exports/hf`` after training: the merged model."""
    from crossframe.hf.loading import load_pretrained
    from crossframe.models import spec_from_json
    from crossframe.nn.lora import lora_scales, merge

    config = {**adapter_run["config"], "name": "with-export", "output_dir": str(workdir / "runs"),
              "train": {**adapter_run["config"]["train"], "steps": 2}, "export": [{"name": "hf"}]}
    result = crossframe.run(config, quiet=True)
    loaded = load_checkpoint(result.run_dir)
    want = merge(loaded.weights, lora_scales(spec_from_json(loaded.state["model"]).graph))
    _, written = load_pretrained(result.run_dir / "exports" / "hf")
    assert written.keys() == want.keys()
    for name, value in written.items():
        np.testing.assert_allclose(value, want[name], atol=1e-6, err_msg=name)
    for export, message in (([{"name": "hf", "dtype": "bf16"}], "export.0: 'hf' takes no params"),):
        Path("bad.json").write_text(json.dumps({**config, "name": "bad", "export": export}))
        capsys.readouterr()
        assert main(["run", "bad.json", "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    graph = {**graph_config("torch", 1), "name": "bad", "export": [{"name": "hf"}]}
    Path("bad.json").write_text(json.dumps(graph))
    assert main(["run", "bad.json", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "export.0.name: 'hf' writes a Hugging Face directory" in err and len(err.splitlines()) == 1, err
    assert not (workdir / "runs" / "bad").exists() and not Path("runs/bad").exists()


def test_an_encrypted_run_is_never_exported_in_the_clear(adapter_run: dict, workdir: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    """transformers opens a Hugging Face directory only from plain files, so ``hf`` under ``security.encrypt``
    is refused in one line: as a run step before training, and from the CLI on an encrypted run."""
    from crossframe.security.keys import KEY_FILE_ENV, write_new_keys
    from crossframe.security.sealing import is_sealed

    monkeypatch.setenv(KEY_FILE_ENV, str(write_new_keys(workdir / "keys")["aes"]))
    config = {**adapter_run["config"], "name": "sealed", "output_dir": str(workdir / "runs"),
              "train": {**adapter_run["config"]["train"], "steps": 1}, "security": {"encrypt": True}}
    Path("step.json").write_text(json.dumps({**config, "name": "sealed-step", "export": [{"name": "hf"}]}))
    assert main(["run", "step.json", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: export.0.name: 'hf': cannot be encrypted") and len(err.splitlines()) == 1, err
    assert not (workdir / "runs" / "sealed-step").exists()
    result = crossframe.run(config, quiet=True)
    assert is_sealed(load_checkpoint(result.run_dir).path / MODEL_FILE)
    capsys.readouterr()
    assert main(["export", str(result.run_dir), "--format", "hf"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: export: --format hf: cannot be encrypted (transformers loads a Hugging Face directory " \
                  "only from plain files); use onnx, or turn security.encrypt off for it", err
    assert not (result.run_dir / "exports" / "hf").exists()


def test_a_resumed_lora_run_keeps_the_base_it_started_from(workdir: Path) -> None:
    """``model.init_from: RUN`` is pinned to the checkpoint RUN had when the LoRA run started: a resume after RUN
    saved a newer checkpoint still rebuilds (and checks) the old base, and trains on from it."""
    base_cfg = {**graph_config("torch", 2), "name": "base"}
    base_cfg["train"] = {k: v for k, v in base_cfg["train"].items() if k != "lora"}
    base = crossframe.run(base_cfg, quiet=True)
    first = load_checkpoint(base.run_dir)
    lora_cfg = graph_config("torch", 2, checkpoint_every=2)
    lora_cfg["model"] = {**lora_cfg["model"], "init_from": str(base.run_dir)}
    started = crossframe.run(lora_cfg, quiet=True)
    pinned = json.loads((started.run_dir / "checkpoints" / "step_2" / "state.json").read_text())[STATE_KEY]
    assert pinned["init_from"].endswith("step_2")  # the base run's checkpoint, not the run directory
    newer = {k: v + np.float32(0.5) for k, v in first.weights.items()}  # the base run moves on
    save_checkpoint(base.run_dir / "checkpoints", 9, newer, {}, {k: v for k, v in first.state.items() if k != "step"},
                    keep=3)
    assert load_checkpoint(base.run_dir).step == 9
    resumed = crossframe.run(started.run_dir / "config.yaml", overrides=["train.steps=4"], resume=started.run_dir,
                             quiet=True)
    assert resumed.steps == 4
    end = load_checkpoint(resumed.run_dir)
    for name, value in first.weights.items():  # the frozen base is the one the run started from
        np.testing.assert_array_equal(end.weights[name], value, err_msg=name)
