"""Instruction data: JSONL of ``{prompt, response}`` or chat ``{messages: [{role, content}, ...]}`` records,
rendered with the tokenizer's chat template (plain concatenation when it has none), packed into rows of
``seq_len + 1`` tokens, with a loss mask that counts only the assistant's tokens.

``data: {name: instructions, paths: [train.jsonl]}``. Each example is ``prefix + answer + eot``: the mask is
1 on the answer's tokens and its end token, 0 on the prompt (the ``"mask"`` contract of language-model
batches, see :class:`crossframe.backend.TrainSetup`). For a conversation, every assistant turn is an answer
and what comes before it (rendered with ``add_generation_prompt``) the prompt. Examples are concatenated and
cut into rows; the training order is a seeded permutation of rows per epoch, so a run resumes at any step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from crossframe.errors import ConfigError, DataError
from crossframe.text.sources import jsonl_records


class InstructionParams(BaseModel):
    """``{name: instructions, paths: [...]}``."""

    model_config = ConfigDict(extra="forbid")
    paths: list[Path] = Field(min_length=1, description="JSONL files of prompt/response or messages records")
    prompt_field: str = "prompt"
    response_field: str = "response"
    messages_field: str = "messages"
    max_examples: PositiveInt | None = None


@dataclass
class InstructionSource:
    """The records, read; tokenised once the run's tokenizer is known (:meth:`training_data`)."""

    params: InstructionParams
    records: list[list[dict[str, str]]]  # each example as chat messages

    def training_data(self, cfg: Any, rank: int, world_size: int, batch: int) -> Any:
        """``(loader, val, info, tokenizer_dir)`` of the run (``load_training_data`` makes them its
        ``TrainingData``)."""
        from crossframe.data.dataset import DataInfo
        from crossframe.plugins import component
        from crossframe.validation import validate_params

        comp = component("tokenizer", cfg.text.tokenizer.name, "text.tokenizer.name")
        tokenizer = comp.obj(validate_params(comp.schema, cfg.text.tokenizer.params, "text.tokenizer"))
        if getattr(tokenizer, "trained", True) is False:
            raise ConfigError("text.tokenizer: instruction data needs a ready tokenizer (bytes or hf), not one "
                              "trained on the corpus")
        ids, mask = encode_examples(tokenizer, self.records)
        rows_x, rows_y, rows_m = pack(ids, mask, cfg.text.seq_len)
        n_val = max(1, round(len(rows_x) * cfg.data.val_fraction))
        if len(rows_x) <= n_val:
            raise DataError(f"data: {len(rows_x)} packed rows of {cfg.text.seq_len} tokens; too few to split "
                            "(more examples or a shorter text.seq_len)")
        train = PackedRows(rows_x[n_val:], rows_y[n_val:], rows_m[n_val:], batch, cfg.seed, rank, world_size)
        val = PackedRows(rows_x[:n_val], rows_y[:n_val], rows_m[:n_val], batch, cfg.seed)
        directory = Path(cfg.output_dir) / ".tokens" / "instructions-tokenizer"
        tokenizer.save(directory)
        return train, val, DataInfo("language_modeling", (cfg.text.seq_len,), tokenizer.vocab_size), directory


def _examples(params: InstructionParams, path: Path) -> Iterator[list[dict[str, str]]]:
    for number, record in jsonl_records(path):
        if isinstance(record, dict) and isinstance(record.get(params.messages_field), list):
            messages = record[params.messages_field]
            if not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in messages):
                raise DataError(f"data: {path}:{number} '{params.messages_field}' needs {{role, content}} items")
            yield [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        elif isinstance(record, dict) and params.prompt_field in record and params.response_field in record:
            yield [{"role": "user", "content": str(record[params.prompt_field])},
                   {"role": "assistant", "content": str(record[params.response_field])}]
        else:
            raise DataError(f"data: {path}:{number} has neither '{params.messages_field}' nor "
                            f"'{params.prompt_field}' and '{params.response_field}'")


def load_instructions(params: InstructionParams) -> InstructionSource:
    """The examples of ``params.paths`` (errors name the file and line)."""
    records: list[list[dict[str, str]]] = []
    for path in params.paths:
        for example in _examples(params, Path(path)):
            records.append(example)
            if params.max_examples is not None and len(records) >= params.max_examples:
                return InstructionSource(params, records)
    if not records:
        raise DataError(f"data.paths: no examples in {', '.join(map(str, params.paths))}")
    return InstructionSource(params, records)


def _render(tokenizer: Any, messages: list[dict[str, str]], prompt: bool) -> str:
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.render_chat(messages, add_generation_prompt=prompt)
    return "".join(m["content"] + ("\n" if m["role"] != "assistant" else "") for m in messages)


def encode_examples(tokenizer: Any, records: list[list[dict[str, str]]]) -> tuple[np.ndarray, np.ndarray]:
    """One stream of ids and a 0/1 mask (1 on assistant tokens and each example's end token)."""
    ids: list[int] = []
    mask: list[int] = []
    for messages in records:
        done: list[int] = []  # the tokens of this example so far
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = tokenizer.encode(_render(tokenizer, messages[:i], prompt=True)) if i else []
            upto = tokenizer.encode(_render(tokenizer, messages[: i + 1], prompt=False))
            if upto[: len(before)] != before:  # a template that rewrites the past: count the whole turn
                before = upto[: len(done)]
            ids += upto[len(done): len(before)] + upto[len(before):]
            mask += [0] * (len(before) - len(done)) + [1] * (len(upto) - len(before))
            done = upto
        ids.append(int(tokenizer.eot_id))
        mask.append(1)
    return np.asarray(ids, np.int64), np.asarray(mask, np.float32)


def pack(ids: np.ndarray, mask: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``x``, ``y`` ``[N, seq_len]`` and the mask of ``y`` (the last partial row is dropped)."""
    n = (len(ids) - 1) // seq_len
    if n == 0:
        raise DataError(f"data: {len(ids)} tokens do not fill one row of text.seq_len {seq_len}")
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1: n * seq_len + 1].reshape(n, seq_len)
    m = mask[1: n * seq_len + 1].reshape(n, seq_len)
    return x, y, m


class PackedRows:
    """Batches of packed rows in a seeded order per epoch (``batch(step)``), and the rows in order for eval."""

    task = "language_modeling"

    def __init__(self, x: np.ndarray, y: np.ndarray, m: np.ndarray, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1) -> None:
        self.x, self.y, self.m = x, y, m
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.steps_per_epoch = max(1, len(x) // batch_size)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's part of the global batch at 0-based ``step``."""
        epoch, within = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.x))
        idx = order[(within * self.batch_size + np.arange(self.batch_size)) % len(self.x)]
        idx = idx[self.rank::self.world_size]
        return {"x": self.x[idx], "y": self.y[idx], "mask": self.m[idx]}

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Every row once, in order."""
        for start in range(0, len(self.x), batch_size):
            sl = slice(start, start + batch_size)
            yield {"x": self.x[sl], "y": self.y[sl], "mask": self.m[sl]}
