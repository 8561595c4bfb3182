"""Instruction data: prompt/response and chat records become packed rows whose loss mask covers only the
answers (and each example's end token); a LoRA run on them trains; bad records are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import crossframe
from crossframe.cli.main import main
from crossframe.text.instructions import InstructionParams, encode_examples, load_instructions, pack
from crossframe.text.tokenizers import BytesTokenizer

RECORDS = [{"prompt": "say cat", "response": "cat"},
           {"messages": [{"role": "user", "content": "two?"}, {"role": "assistant", "content": "2"},
                         {"role": "user", "content": "three?"}, {"role": "assistant", "content": "3"}]}]


def write(path: Path, records: list) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_only_answers_are_counted(tmp_path: Path) -> None:
    source = load_instructions(InstructionParams(paths=[write(tmp_path / "a.jsonl", RECORDS)]))
    tok = BytesTokenizer()
    ids, mask = encode_examples(tok, source.records)
    assert len(ids) == len(mask)
    counted = ids[mask == 1]
    eot = tok.eot_id
    pieces = bytes(int(i) for i in counted if i != eot).decode()
    assert pieces == "cat" + "2" + "3"  # the answers, nothing of the prompts
    assert int((counted == eot).sum()) == 2 == int((ids == eot).sum())  # each example's end token counts
    assert tok.decode(ids[mask == 0]) == "say cat\n" + "two?\n" + "three?\n"
    x, y, m = pack(ids, mask, 4)
    assert np.array_equal(x[:, 1:], y[:, :-1]) and np.array_equal(m.reshape(-1), mask[1: m.size + 1])


def test_a_bad_record_is_one_line(tmp_path: Path) -> None:
    from crossframe.errors import DataError

    with pytest.raises(DataError, match=r"b\.jsonl:2 has neither 'messages' nor 'prompt' and 'response'"):
        load_instructions(InstructionParams(paths=[write(tmp_path / "b.jsonl", [RECORDS[0], {"text": "x"}])]))


@pytest.mark.slow
def test_lora_on_instruction_data_trains(workdir: Path, tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from tests.hf_models import save_tiny, save_tokenizer

    model_dir = save_tokenizer(save_tiny("llama", tmp_path / "llama"))
    data = write(tmp_path / "sft.jsonl", [{"prompt": f"the cat {i % 3}", "response": "sat on the mat"}
                                         for i in range(40)] + RECORDS[1:] * 10)
    config = {"name": "sft", "backend": "torch", "device": "cpu", "seed": 0,
              "data": {"name": "instructions", "paths": [str(data)], "val_fraction": 0.2},
              "text": {"tokenizer": {"name": "hf", "path": str(model_dir)}, "seq_len": 16},
              "model": {"name": "hf", "path": str(model_dir)},
              "train": {"steps": 25, "batch_size": 4, "log_every": 1, "eval_every": 0,
                        "optimizer": {"name": "adamw", "lr": 3e-2, "weight_decay": 0.0},
                        "lora": {"rank": 4, "targets": ["*qkv", "*proj", "*mlp.*", "lm_head"]}}}
    result = crossframe.run(config, quiet=True)
    losses = [json.loads(x)["train/loss"] for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in json.loads(x)]
    assert np.mean(losses[-5:]) < losses[0] - 0.5, losses
    assert main(["generate", str(result.run_dir), "--prompt", "the cat", "--max-tokens", "4",
                 "--temperature", "0"]) == 0
