"""Tokenizers: bytes, chars and byte-level BPE; round trips, saving, schemas and registration."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from crossframe.errors import CrossframeError, DataError
from crossframe.text import registry
from crossframe.text.corpus import Document
from crossframe.text.tokenizers import (
    EOT_TOKEN,
    TOKENIZERS,
    BPEParams,
    BPETokenizer,
    BytesTokenizer,
    CharsParams,
    CharsTokenizer,
    load_tokenizer,
)

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    \"\"\"A point.\"\"\"\n\n    def __init__(self, x, y):\n        self.x, self.y = x, y\n",
    "# héllo wörld, ünïcode ✓\r\nprint('tabs\\tand spaces')\n",
    "for i in range(10):\n    if i % 2:\n        print(i)\n",
] * 20


needs_tokenizers = pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None,
                                      reason="the 'tokenizers' library is not installed")


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return BPETokenizer(BPEParams(vocab_size=400)).train(CORPUS)


# --------------------------------------------------------------------------- bytes


@given(st.text())
def test_bytes_round_trip_any_text(text: str) -> None:
    tok = BytesTokenizer()
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and tok.decode(ids) == text
    assert tok.decode(tok.encode_array(text)) == text and tok.eot_id not in ids


def test_bytes_vocab_and_eot() -> None:
    tok = BytesTokenizer()
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    assert tok.decode([104, 105, 256, 33]) == f"hi{EOT_TOKEN}!"
    assert tok.decode([0xE2, 0x9C]) == "\ufffd"  # a cut multi-byte sequence does not raise
    with pytest.raises(DataError):
        tok.decode([300])
    assert tok.to_json() == {"name": "bytes", "params": {}, "vocab_size": 257, "eot_id": 256}


# --------------------------------------------------------------------------- chars


def test_chars_vocabulary_sorted_with_unknown_and_eot(tmp_path: Path) -> None:
    tok = CharsTokenizer().train([Document("a", "cab"), "b a\n"])
    assert tok.chars == "\n abc" and tok.vocab_size == 7 and tok.unk_id == 5 and tok.eot_id == 6
    assert tok.encode("abz") == [2, 3, 5]
    assert tok.decode(tok.encode("a zb\n")) == "a \ufffdb\n"  # unknowns come back as params.unk
    assert tok.decode([2, 6]) == f"a{EOT_TOKEN}"
    loaded = load_tokenizer(tok.save(tmp_path / "tok"))
    assert isinstance(loaded, CharsTokenizer) and loaded.chars == tok.chars
    assert loaded.encode("cab z") == tok.encode("cab z")
    custom = CharsTokenizer(CharsParams(unk="?")).train(["ab"])
    assert custom.decode(custom.encode("abc")) == "ab?"


@given(st.text(min_size=1), st.text())
def test_chars_round_trip_with_unknowns_mapped(train_text: str, text: str) -> None:
    tok = CharsTokenizer().train([train_text])
    known = set(train_text)
    assert tok.decode(tok.encode(text)) == "".join(c if c in known else "\ufffd" for c in text)


def test_chars_untrained_and_empty() -> None:
    with pytest.raises(DataError) as exc:
        CharsTokenizer().encode("x")
    assert "not trained" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DataError) as exc:
        CharsTokenizer().train(["", ""])
    assert "empty corpus" in str(exc.value)


# --------------------------------------------------------------------------- bpe


@given(st.text())
@needs_tokenizers
def test_bpe_round_trip_any_text(bpe: BPETokenizer, text: str) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text and bpe.eot_id not in ids
    assert all(0 <= i < bpe.vocab_size for i in ids)


@needs_tokenizers
def test_bpe_learns_merges_and_keeps_eot_literal_as_text(bpe: BPETokenizer) -> None:
    assert bpe.eot_id == 0 and 257 < bpe.vocab_size <= 400
    text = CORPUS[0]
    assert len(bpe.encode(text)) < len(text.encode()) / 2  # it compresses what it was trained on
    forged = f"a{EOT_TOKEN}b"
    assert bpe.eot_id not in bpe.encode(forged) and bpe.decode(bpe.encode(forged)) == forged
    assert bpe.decode([*bpe.encode("x"), bpe.eot_id]) == f"x{EOT_TOKEN}"
    assert [a.tolist() for a in bpe.encode_many(CORPUS[:4])] == [bpe.encode(t) for t in CORPUS[:4]]


@needs_tokenizers
def test_bpe_save_and_load(bpe: BPETokenizer, tmp_path: Path) -> None:
    directory = bpe.save(tmp_path / "bpe")
    assert (directory / "tokenizer.json").is_file()
    described = json.loads((directory / "crossframe_tokenizer.json").read_text())
    assert described["name"] == "bpe" and described["vocab_size"] == bpe.vocab_size
    assert described["library"].startswith("tokenizers ")
    loaded = load_tokenizer(directory)
    assert isinstance(loaded, BPETokenizer) and loaded.vocab_size == bpe.vocab_size
    sample = CORPUS[2] + EOT_TOKEN
    assert loaded.encode(sample) == bpe.encode(sample) and loaded.eot_id == bpe.eot_id


@needs_tokenizers
def test_bpe_untrained_and_empty() -> None:
    with pytest.raises(DataError) as exc:
        BPETokenizer().encode("x")
    assert "not trained" in str(exc.value)
    with pytest.raises(DataError) as exc:
        BPETokenizer().train([])
    assert "empty corpus" in str(exc.value)


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(exc.value)
    (tmp_path / "crossframe_tokenizer.json").write_text('{"name": "chars"}')
    with pytest.raises(CrossframeError):
        BPETokenizer.load(tmp_path)


# --------------------------------------------------------------------------- schemas and registration


def test_schemas_reject_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValidationError):
        BPEParams.model_validate({"vocab_size": 100})
    with pytest.raises(ValidationError):
        BPEParams.model_validate({"vocab": 1000})


def test_registry_registers_factories_with_schemas() -> None:
    got: dict[str, Any] = {}

    def register(name: str, obj: Any, *, schema: Any = None, description: str = "") -> None:
        got[name] = (obj, schema, description)

    registry.register_tokenizers(register)
    assert set(got) == {"bytes", "chars", "bpe"} == set(TOKENIZERS)
    for obj, schema, description in got.values():
        tok = obj(schema())
        assert description and hasattr(tok, "encode") and hasattr(tok, "decode")
    assert got["bytes"][0](got["bytes"][1]()).vocab_size == 257
    assert got["bpe"][0](BPEParams(vocab_size=300)).trainable

    sources: dict[str, Any] = {}
    registry.register_datasets(lambda name, obj, *, schema=None, description="": sources.update({name: schema}))
    assert set(sources) == {"text-files", "jsonl", "python-stdlib", "instructions"}


def test_importing_the_text_package_loads_no_framework_nor_tokenizers() -> None:
    code = ("import sys, crossframe.text, crossframe.text.registry, crossframe.text.pipeline\n"
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_encode_array_dtypes() -> None:
    assert BytesTokenizer().encode_array("ab").dtype == np.uint8
    assert np.issubdtype(CharsTokenizer().train(["ab"]).encode_array("ab").dtype, np.integer)
