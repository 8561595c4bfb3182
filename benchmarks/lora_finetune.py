"""LoRA fine-tuning throughput of a tiny Llama: crossframe on each backend against transformers + PEFT.

What is measured
----------------
One tiny random Llama (built with transformers, saved as a Hugging Face directory; 2 layers, width 64,
grouped-query attention, vocabulary 96) is fine-tuned with rank-8 LoRA adapters on the attention
projections (q/k/v/o in PEFT, the fused ``qkv`` and ``proj`` in crossframe) with AdamW, the same batch
``B x T`` and the same number of steps, one CPU thread each, side by side in this one process:

- ``crossframe (<backend>)``: ``crossframe.run`` with ``model: {name: hf}`` and ``train.lora``; tokens/s is
  the median of the loop's own ``train/tokens_per_sec`` over the log windows after the first (compilation);
  ``train.compile`` is ``auto`` (eager on a CPU), and torch runs once more with ``train.compile: true``
  (``torch.compile``; left out of ``--smoke``, since compiling takes seconds);
- ``transformers Trainer + PEFT``: ``Trainer.train`` on the PEFT-wrapped model, timed by a callback from
  the end of the first logged window to the last step;
- ``torch + PEFT loop``: the same PEFT model in a plain ``loss.backward(); opt.step()`` loop.

Reported: tokens/s (``B * T`` target tokens per step) and the ratio of each to the Trainer.

Import time: a bf16 Llama of about 100 MB (25 MB with ``--quick``) saved by transformers, made ready to
run on torch: ``crossframe.hf.loading.load_pretrained`` + the torch backend's ``inference_state`` (float32
on the CPU) against ``AutoModelForCausalLM.from_pretrained(dtype=float32)``; best of 3, page cache warm.

Run it alone with ``python -m benchmarks.lora_finetune [--quick]``.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, pick, smoke

TITLE = "LoRA fine-tuning of a tiny Llama: crossframe per backend vs transformers Trainer + PEFT (tokens/s)"

BATCH, SEQ, RANK, ALPHA, LR = 8, 64, 8, 16.0, 1e-3
WINDOW = 10  # steps per log window
TEXT = ("the cat sat on the mat and the dog sat on the log. a bird in the hand is worth two in the bush. "
        "all that glitters is not gold. to be or not to be, that is the question. ") * 4


def build_model(directory: Path) -> None:
    """The tiny Llama and a small Metaspace BPE tokenizer, saved into ``directory``."""
    import torch
    import transformers as tr
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    torch.manual_seed(0)
    config = tr.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ)
    tr.LlamaForCausalLM(config).save_pretrained(directory)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    tok.train_from_iterator([TEXT], trainers.BpeTrainer(vocab_size=96, special_tokens=["<unk>", "<s>", "</s>"],
                                                        show_progress=False))
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    corpus = directory.parent / "corpus"
    corpus.mkdir(exist_ok=True)
    for i in range(40):
        (corpus / f"{i}.txt").write_text(TEXT)


def crossframe_row(backend: str, root: Path, steps: int, compile: bool | str = "auto") -> dict[str, Any]:
    """Tokens/s of ``crossframe.run`` with LoRA on ``backend`` (``compile``: the run's ``train.compile``)."""
    import crossframe

    model_dir = root / "llama"
    config = {
        "name": f"lora-{backend}", "backend": backend, "device": "cpu", "seed": 0, "threads": 1,
        "output_dir": str(root / "runs"),
        "data": {"name": "text-files", "paths": [str(root / "corpus")], "val_fraction": 0.1},
        "text": {"tokenizer": {"name": "hf", "path": str(model_dir)}, "seq_len": SEQ, "max_eval_tokens": 256},
        "model": {"name": "hf", "path": str(model_dir)},
        "train": {"steps": steps, "batch_size": BATCH, "log_every": WINDOW, "eval_every": 0, "compile": compile,
                  "optimizer": {"name": "adamw", "lr": LR, "weight_decay": 0.0},
                  "lora": {"rank": RANK, "alpha": ALPHA, "targets": ["*qkv", "*self_attn.proj"]}},
    }
    result = crossframe.run(config, quiet=True)
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    rates = [r["train/tokens_per_sec"] for r in records if "train/tokens_per_sec" in r][1:]
    setting = "" if compile == "auto" else f", train.compile: {str(compile).lower()}"
    case = f"crossframe ({backend}{setting})"
    return {"case": case, "tokens_per_s": statistics.median(rates), "steps": steps}


def peft_model() -> Any:
    """The saved Llama wrapped by PEFT with the same adapters."""
    import torch
    import transformers as tr
    from peft import LoraConfig, get_peft_model

    return torch, get_peft_model(tr.AutoModelForCausalLM.from_pretrained(ROOT[0] / "llama", dtype=torch.float32),
                                 LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))


ROOT: list[Path] = []


def trainer_row(steps: int) -> dict[str, Any]:
    """Tokens/s of ``transformers.Trainer`` on the PEFT model."""
    import transformers as tr

    torch, model = peft_model()
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 96, (BATCH * steps, SEQ)))
    data = [{"input_ids": row, "labels": row} for row in ids]
    stamps: list[float] = []

    class Clock(tr.TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            stamps.append(time.perf_counter())

    args = tr.TrainingArguments(output_dir=str(ROOT[0] / "trainer"), per_device_train_batch_size=BATCH,
                                max_steps=steps, learning_rate=LR, weight_decay=0.0, lr_scheduler_type="constant",
                                logging_steps=steps + 1, save_strategy="no", report_to=[], use_cpu=True,
                                dataloader_num_workers=0, disable_tqdm=True)
    tr.Trainer(model=model, args=args, train_dataset=data, callbacks=[Clock()]).train()
    timed = stamps[WINDOW - 1:]
    return {"case": "transformers Trainer + PEFT",
            "tokens_per_s": BATCH * SEQ * (len(timed) - 1) / (timed[-1] - timed[0]), "steps": steps}


def loop_row(steps: int) -> dict[str, Any]:
    """Tokens/s of a plain torch loop on the PEFT model."""
    torch, model = peft_model()
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 96, (steps, BATCH, SEQ)))
    stamps = []
    for x in ids:
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    timed = stamps[WINDOW - 1:]
    return {"case": "torch + PEFT loop", "tokens_per_s": BATCH * SEQ * (len(timed) - 1) / (timed[-1] - timed[0]),
            "steps": steps}


def import_rows(root: Path, quick: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Seconds to make a bf16 checkpoint runnable on torch: crossframe's import vs ``from_pretrained``."""
    import torch
    import transformers as tr

    from crossframe.hf.loading import load_pretrained
    from crossframe_torch.backend import TorchBackend

    width, layers = (512, 4) if quick else (1024, 4)
    config = tr.LlamaConfig(vocab_size=8192, hidden_size=width, intermediate_size=width * 3, num_hidden_layers=layers,
                            num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=256)
    directory = root / "big"
    tr.LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(directory)
    mb = (directory / "model.safetensors").stat().st_size / 1e6
    backend = TorchBackend()

    def ours() -> None:
        spec, weights = load_pretrained(directory, context=256)
        backend.inference_state(spec, weights)

    def theirs() -> None:
        tr.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)

    rows = []
    for case, fn in (("transformers from_pretrained", theirs), ("crossframe import (torch)", ours)):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        rows.append({"case": case, "checkpoint_mb": mb, "seconds": min(times), "kind": "import"})
    for row in rows:
        row["vs_from_pretrained"] = rows[0]["seconds"] / row["seconds"]
        log(f"  import {row['case']}: {row['seconds']:.3f} s for {mb:.0f} MB bf16 "
            f"({row['vs_from_pretrained']:.2f}x from_pretrained's speed)")
    return rows


def run(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every case, side by side; ratios against the Trainer."""
    log = log or (lambda text: print(text, file=sys.stderr))
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("peft") is None:
        log("  lora_finetune: transformers and peft are not installed; skipped")
        return []
    import torch

    torch.set_num_threads(1)
    steps = pick(200, 60, 2 * WINDOW + 2, quick)
    root = Path(tempfile.mkdtemp(prefix="crossframe-lora-"))
    ROOT[:] = [root]
    try:
        build_model(root / "llama")
        rows = [trainer_row(steps), loop_row(steps)]
        for backend in ("torch", "jax", "tensorflow"):
            if importlib.util.find_spec(backend) is not None:
                rows.append(crossframe_row(backend, root, steps))
                if backend == "torch" and not smoke():  # next to eager torch; compilation takes seconds
                    rows.append(crossframe_row("torch", root, steps, compile=True))
        base = rows[0]["tokens_per_s"]
        for row in rows:
            row["vs_trainer"] = row["tokens_per_s"] / base
            log(f"  {row['case']}: {row['tokens_per_s']:,.0f} tok/s ({row['vs_trainer']:.2f}x the Trainer)")
        rows += import_rows(root, quick, log)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Two Markdown tables: fine-tuning tokens/s against the Trainer, then import time."""
    train = markdown_table(["case", "steps", "tokens/s", "vs Trainer + PEFT"],
                           [[r["case"], r["steps"], f"{r['tokens_per_s']:,.0f}", f"{r['vs_trainer']:.2f}x"]
                            for r in rows if r.get("kind") != "import"])
    imports = [[r["case"], f"{r['checkpoint_mb']:.0f}", f"{r['seconds']:.3f}", f"{r['vs_from_pretrained']:.2f}x"]
               for r in rows if r.get("kind") == "import"]
    if not imports:
        return train
    return train + "\n\n" + markdown_table(["import (bf16 -> float32 on torch)", "MB", "seconds",
                                             "speed vs from_pretrained"], imports)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--quick", action="store_true")
    print(table(run(quick=parser.parse_args().quick)))
