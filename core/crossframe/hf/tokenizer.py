"""A Hugging Face tokenizer directory (``tokenizer.json``, ``tokenizer_config.json``) as a crossframe tokenizer,
with its special tokens and chat template.

``tokenizer: {name: hf, path: DIR}``. Text is encoded by the ``tokenizers`` library without the special
tokens its post-processor would add (documents are joined by the end-of-text id, as with every
tokenizer); :meth:`HFTokenizer.encode_prompt` adds them, as ``transformers``' tokenizer does by default.
The chat template is rendered with jinja2 in a sandbox, with the variables transformers passes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from crossframe.errors import ConfigError, DataError
from crossframe.text.tokenizers import Ids, Params, Tokenizer

#: files copied with a saved tokenizer (those present)
FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
         "generation_config.json")


class HFTokenizerParams(Params):
    """``tokenizer: {name: hf, path: DIR}``."""

    path: str = Field(description="a directory with tokenizer.json (and tokenizer_config.json)")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON ({exc})") from None


def _token_text(value: Any) -> str | None:
    """A special token as written in tokenizer_config.json: a string or ``{"content": ...}``."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer(Tokenizer):
    """The tokenizer of a Hugging Face model directory."""

    name = "hf"

    def __init__(self, directory: str | Path) -> None:
        from tokenizers import Tokenizer as Native

        self.directory = Path(directory)
        path = self.directory / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"tokenizer.path: '{self.directory}' has no tokenizer.json")
        try:
            self.native = Native.from_file(str(path))
        except Exception as exc:  # the library raises plain Exception
            raise DataError(f"{path}: not a tokenizers file ({exc})") from None
        self.config = _read_json(self.directory / "tokenizer_config.json")
        self.generation = _read_json(self.directory / "generation_config.json")
        template = self.directory / "chat_template.jinja"
        self.chat_template: str | None = (template.read_text() if template.is_file()
                                          else self.config.get("chat_template"))
        self.special = {k: _token_text(self.config.get(k))
                        for k in ("bos_token", "eos_token", "pad_token", "unk_token")}

    def token_id(self, text: str | None) -> int | None:
        """The id of token ``text`` (None when absent)."""
        return None if text is None else self.native.token_to_id(text)

    @property
    def vocab_size(self) -> int:
        """Ids in the vocabulary, added tokens included."""
        return int(self.native.get_vocab_size(with_added_tokens=True))

    @property
    def eot_id(self) -> int:
        """The end-of-sequence token (``eos_token``, else generation_config's first ``eos_token_id``)."""
        eos = self.token_id(self.special["eos_token"])
        if eos is None:
            ids = self.stop_ids()
            if not ids:
                raise ConfigError(f"tokenizer: '{self.directory}' names no eos_token (tokenizer_config.json) "
                                  "or eos_token_id (generation_config.json)")
            eos = ids[0]
        return int(eos)

    def stop_ids(self) -> list[int]:
        """Ids that end generation: generation_config.json's ``eos_token_id`` (one or a list), else the eos token."""
        value = self.generation.get("eos_token_id")
        if value is None:
            eos = self.token_id(self.special["eos_token"])
            return [] if eos is None else [eos]
        return [int(v) for v in (value if isinstance(value, list) else [value])]

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of ``text`` without added special tokens."""
        return np.asarray(self.native.encode(text, add_special_tokens=False).ids, np.int64)

    def encode_many(self, batch: Sequence[str]) -> list[np.ndarray]:
        """Encode a batch on the library's thread pool."""
        return [np.asarray(e.ids, np.int64) for e in self.native.encode_batch(list(batch), add_special_tokens=False)]

    def encode_prompt(self, text: str) -> list[int]:
        """Ids of ``text`` with the special tokens the tokenizer's post-processor adds (a BOS, for Llama)."""
        return list(self.native.encode(text, add_special_tokens=True).ids)

    def decode(self, ids: Ids) -> str:
        """The text of ``ids`` (special tokens kept)."""
        return str(self.native.decode([int(i) for i in np.asarray(ids).reshape(-1)], skip_special_tokens=False))

    def params(self) -> dict[str, Any]:
        """``{"path": ...}`` (where it was read from)."""
        return {"path": str(self.directory)}

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """``messages`` (``[{"role", "content"}]``) through the chat template, as transformers renders it."""
        if not self.chat_template:
            raise ConfigError(f"tokenizer: '{self.directory}' has no chat template (tokenizer_config.json "
                              "chat_template or chat_template.jinja)")
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=["jinja2.ext.loopcontrols"])
        env.globals["raise_exception"] = raise_exception
        try:
            return env.from_string(self.chat_template).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                bos_token=self.special["bos_token"] or "", eos_token=self.special["eos_token"] or "")
        except TemplateError as exc:
            raise DataError(f"chat template of '{self.directory}': {exc}") from None

    def save(self, directory: str | Path) -> Path:
        """Copy the tokenizer files and write the crossframe description."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if (self.directory / name).is_file():
                tmp = out / f".{name}.tmp"
                shutil.copyfile(self.directory / name, tmp)
                tmp.replace(out / name)
        saved = self.directory
        self.directory = out  # the description names the copy, so the run directory stands alone
        try:
            return super().save(out)
        finally:
            self.directory = saved

    @classmethod
    def load(cls, directory: str | Path) -> HFTokenizer:
        """Read a directory written by :meth:`save` (or any Hugging Face tokenizer directory)."""
        return cls(directory)


def make_hf_tokenizer(params: HFTokenizerParams) -> HFTokenizer:
    """Factory of ``hf``."""
    return HFTokenizer(params.path)

