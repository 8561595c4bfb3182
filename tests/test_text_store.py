"""The token store: exact round trips, layout, atomic writes, errors, flat memory, the config path."""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crossframe
from crossframe.errors import ConfigError, CrossframeError, DataError
from crossframe.text import registry
from crossframe.text.corpus import Document, TextCorpus, split_of
from crossframe.text.pipeline import prepare_from_config
from crossframe.text.sources import StdlibParams, load_stdlib
from crossframe.text.store import TokenStore, choose_dtype, prepare
from crossframe.text.tokenizers import BPEParams, BPETokenizer, BytesTokenizer, CharsTokenizer, Tokenizer

needs_tokenizers = pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None,
                                      reason="the 'tokenizers' library is not installed")


def one_line(exc: pytest.ExceptionInfo) -> str:
    assert isinstance(exc.value, CrossframeError) and "\n" not in str(exc.value)
    return str(exc.value)


def assert_round_trip(store: TokenStore, originals: dict[str, str], expected: Any = None) -> int:
    """Every stored document decodes to its original text; returns how many were checked."""
    tok = store.tokenizer()
    checked = 0
    for split in store.splits.values():
        assert split.tokens[split.offsets[1:] - 1].tolist() == [store.eot_id] * split.n_docs  # EOT after each
        for i, doc_id in enumerate(split.doc_ids()):
            want = originals[doc_id] if expected is None else expected(originals[doc_id])
            assert tok.decode(split.document(i)) == want, doc_id
            checked += 1
    return checked


def test_bytes_store_round_trips_the_stdlib(tmp_path: Path) -> None:
    corpus = load_stdlib(StdlibParams(max_files=50))
    originals = {d.id: d.text for d in corpus}
    store = prepare(corpus, BytesTokenizer(), tmp_path / "store", val_fraction=0.2)
    non_empty = {k for k, v in originals.items() if v}
    assert assert_round_trip(store, originals) == len(non_empty)
    assert store.meta["skipped_empty_documents"] == len(originals) - len(non_empty)
    assert {i for s in store.splits.values() for i in s.doc_ids()} == non_empty
    assert set(store["val"].doc_ids()) == {i for i in non_empty if split_of(i, 0.2) == "val"}
    train = store["train"]
    assert isinstance(train.tokens, np.memmap) and train.tokens.dtype == np.uint16
    assert train.n_tokens == sum(len(originals[i].encode()) + 1 for i in train.doc_ids())
    assert store.meta["source"]["source"] == "python-stdlib" and store.meta["dtype"] == "uint16"
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [
        "meta.json", "tokenizer", "train.bin", "train.ids", "train.idx.npy", "val.bin", "val.ids", "val.idx.npy"]


@needs_tokenizers
def test_bpe_store_round_trips(tmp_path: Path) -> None:
    corpus = load_stdlib(StdlibParams(max_files=15))
    originals = {d.id: d.text for d in corpus}
    train_part, _ = corpus.split(0.2)
    tok = BPETokenizer(BPEParams(vocab_size=600)).train(train_part)  # trained on train only
    store = prepare(corpus, tok, tmp_path / "bpe", val_fraction=0.2)
    assert assert_round_trip(store, originals) == sum(1 for v in originals.values() if v)
    assert store.meta["tokenizer"]["name"] == "bpe" and store["train"].n_tokens < sum(map(len, originals.values()))


def test_chars_store_maps_unknowns(tmp_path: Path) -> None:
    docs = [Document(f"d{i}", text) for i, text in enumerate(["hello world", "wörld ✓", "plain", "more text"] * 5)]
    tok = CharsTokenizer().train([d for d in docs if split_of(d.id, 0.3) == "train"])
    store = prepare(docs, tok, tmp_path / "chars", val_fraction=0.3)
    known = set(tok.chars)
    assert assert_round_trip(store, {d.id: d.text for d in docs},
                             lambda t: "".join(c if c in known else "\ufffd" for c in t)) == len(docs)


def test_plain_strings_and_no_val_split(tmp_path: Path) -> None:
    store = prepare(["ab", "", "c"], BytesTokenizer(), tmp_path / "s")
    assert list(store.splits) == ["train"] and store["train"].tokens.tolist() == [97, 98, 256, 99, 256]
    assert list(store["train"].doc_ids()) == ["#0", "#2"] and store["train"].document(1).tolist() == [99]
    with pytest.raises(DataError) as exc:
        store["val"]
    assert "no split 'val'" in one_line(exc)
    prepare(["x", "y", "z", "w"] * 10, BytesTokenizer(), tmp_path / "s", val_fraction=0.5)
    prepare(["ab"], BytesTokenizer(), tmp_path / "s")  # a re-prepare without val removes the old val files
    assert not (tmp_path / "s" / "val.bin").exists() and list(TokenStore.open(tmp_path / "s").splits) == ["train"]


def test_dtype_choice() -> None:
    assert choose_dtype(257) == np.uint16 and choose_dtype(65536) == np.uint16
    assert choose_dtype(65537) == np.uint32 and choose_dtype(300, "uint32") == np.uint32
    with pytest.raises(ConfigError) as exc:
        choose_dtype(70000, "uint16")
    assert "uint16" in one_line(exc)


class BigVocab(Tokenizer):
    """A stand-in with 70,000 ids: each character's code point + 60,000."""

    name = "big"
    vocab_size = 70_001
    eot_id = 70_000

    def encode_array(self, text: str) -> np.ndarray:
        return np.array([ord(c) + 60_000 for c in text], dtype=np.int64)

    def decode(self, ids: Any) -> str:
        return "".join(chr(int(i) - 60_000) for i in ids)


def test_uint32_store_for_a_big_vocabulary(tmp_path: Path) -> None:
    store = prepare(["abc", "de"], BigVocab(), tmp_path / "big")
    assert store["train"].tokens.dtype == np.uint32 and store["train"].tokens[0] == 60_097


class Failing(BytesTokenizer):
    def __init__(self, after: int) -> None:
        self.left = after

    def encode_array(self, text: str) -> np.ndarray:
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("tokenizer crashed")
        return super().encode_array(text)


def test_interrupted_prepare_leaves_no_store_and_no_temp_files(tmp_path: Path) -> None:
    out = tmp_path / "s"
    prepare(["old"] * 10, BytesTokenizer(), out)
    with pytest.raises(RuntimeError):
        prepare((f"doc {i}" for i in range(100)), Failing(after=50), out, batch_chars=10)
    assert not (out / "meta.json").exists()
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    with pytest.raises(DataError) as exc:
        TokenStore.open(out)
    assert "prepare it again" in one_line(exc)


def test_open_detects_missing_and_inconsistent_stores(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        TokenStore.open(tmp_path / "none")
    assert "none" in one_line(exc)
    store = prepare(["abc", "def"], BytesTokenizer(), tmp_path / "s")
    with open(store["train"].tokens.filename, "ab") as handle:
        handle.write(b"\0\0")
    with pytest.raises(DataError) as exc:
        TokenStore.open(tmp_path / "s")
    assert "train.bin" in one_line(exc)


def test_bad_corpora_give_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        prepare([], BytesTokenizer(), tmp_path / "a")
    assert "no documents" in one_line(exc)
    with pytest.raises(DataError) as exc:
        prepare(["", ""], BytesTokenizer(), tmp_path / "b")
    assert "2 empty documents" in one_line(exc)
    with pytest.raises(DataError) as exc:
        prepare([Document("train-only", "x")], BytesTokenizer(), tmp_path / "c", val_fraction=0.01)
    assert "val_fraction" in one_line(exc)
    with pytest.raises(DataError) as exc:
        prepare(["x"], CharsTokenizer(), tmp_path / "d")
    assert "not trained" in one_line(exc)
    with pytest.raises(ConfigError) as exc:
        prepare(["x"], BytesTokenizer(), tmp_path / "e", val_fraction=1.5)
    assert "val_fraction" in one_line(exc)


def test_store_split_is_stable_when_the_corpus_grows(tmp_path: Path) -> None:
    small = [Document(f"mod_{i}.py", f"x = {i}\n") for i in range(200)]
    grown = small[:100] + [Document(f"new_{i}.py", f"y = {i}\n") for i in range(100)] + small[100:]
    a = prepare(small, BytesTokenizer(), tmp_path / "a", val_fraction=0.2)
    b = prepare(grown, BytesTokenizer(), tmp_path / "b", val_fraction=0.2)
    assert set(a["val"].doc_ids()) <= set(b["val"].doc_ids())
    assert set(a["train"].doc_ids()) <= set(b["train"].doc_ids())
    assert not set(b["val"].doc_ids()) & {d.id for d in small} - set(a["val"].doc_ids())


# --------------------------------------------------------------------------- memory


def generated_corpus(megabytes: float) -> Iterator[Document]:
    """Documents of 2-22 KB sliced from a fixed 64 KB text, made on the fly (never all held)."""
    rng = random.Random(0)
    base = "".join(rng.choice("abcdefghij klmnop\n\tqrstuvwxyz()=:é✓") for _ in range(1 << 16))
    total = i = 0
    while total < megabytes * 1e6:
        size = 2000 + (i * 7919) % 20000
        start = (i * 104729) % (len(base) - size)
        yield Document(f"doc{i}", base[start:start + size])
        total += size
        i += 1


def traced_peak(megabytes: float, out: Path) -> tuple[float, int]:
    tracemalloc.start()
    try:
        store = prepare(generated_corpus(megabytes), BytesTokenizer(), out, val_fraction=0.1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak / 1e6, store["train"].n_tokens + store["val"].n_tokens


RSS_PROBE = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_text_store import generated_corpus
from crossframe.text.store import prepare
from crossframe.text.tokenizers import BytesTokenizer

def status(key):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024

prepare(["warm up"], BytesTokenizer(), Path({out!r}))
Path("/proc/self/clear_refs").write_text("5")  # restart the high-water mark (VmHWM) from the current RSS
before = status("VmRSS")
prepare(generated_corpus({mb}), BytesTokenizer(), Path({out!r}), val_fraction=0.1)
print(status("VmHWM") - before)
"""


def rss_growth(megabytes: float, out: Path) -> float:
    """Peak RSS (MB) of a fresh process while it prepares the corpus, less its RSS just before.

    Read from /proc (``ru_maxrss`` would not do: a child inherits its parent's high-water mark).
    """
    code = RSS_PROBE.format(tests=str(Path(__file__).parent), mb=megabytes, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def test_prepare_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    small_peak, small_tokens = traced_peak(6, tmp_path / "small")
    big_peak, big_tokens = traced_peak(18, tmp_path / "big")
    linux = Path("/proc/self/clear_refs").exists()
    small_rss, big_rss = ((rss_growth(6, tmp_path / "small_rss"), rss_growth(18, tmp_path / "big_rss")) if linux
                          else (float("nan"), float("nan")))
    print(f"\nprepare, bytes tokenizer: {small_tokens / 1e6:.1f}M tokens -> tracemalloc peak {small_peak:.2f} MB, "
          f"peak RSS growth {small_rss:.1f} MB; {big_tokens / 1e6:.1f}M tokens -> tracemalloc peak "
          f"{big_peak:.2f} MB, peak RSS growth {big_rss:.1f} MB")
    assert big_tokens > 2.5 * small_tokens
    assert big_peak < 8 and small_peak < 8  # a fixed bound (write buffers + one batch), far below 18 MB
    assert abs(big_peak - small_peak) < 1.0  # and it does not scale with the corpus
    if linux:
        assert big_rss < 16 and big_rss - small_rss < 4  # 12 MB more corpus, (almost) no more resident memory


# --------------------------------------------------------------------------- config -> store


class TextPlugin:
    """Registers the text pipeline the way crossframe.builtin is meant to."""

    @crossframe.hookimpl
    def register_tokenizers(self, register: Any) -> None:
        registry.register_tokenizers(register)

    @crossframe.hookimpl
    def register_datasets(self, register: Any) -> None:
        registry.register_datasets(register)


@pytest.fixture
def text_registered() -> None:
    from crossframe.plugins import get_plugin_manager

    manager = get_plugin_manager()
    if "python-stdlib" not in manager.components("dataset"):  # not yet wired into crossframe.builtin
        manager.register(TextPlugin(), "text-test")


@needs_tokenizers
def test_prepare_from_config_trains_on_train_split(tmp_path: Path, text_registered: None) -> None:
    store = prepare_from_config({"data": {"name": "python-stdlib", "max_files": 20, "val_fraction": 0.25},
                                 "tokenizer": {"name": "bpe", "vocab_size": 400},
                                 "out_dir": str(tmp_path / "stdlib")})
    originals = {d.id: d.text for d in load_stdlib(StdlibParams(max_files=20))}
    assert assert_round_trip(store, originals) == sum(1 for v in originals.values() if v)
    assert store.meta["tokenizer"]["name"] == "bpe" and store.meta["source"]["params"]["max_files"] == 20
    meta = json.loads((tmp_path / "stdlib" / "meta.json").read_text())
    assert meta["splits"]["val"]["n_docs"] == store["val"].n_docs > 0


@pytest.mark.parametrize(("config", "expected"), [
    ({"data": {"name": "python-stdlib", "max_filez": 3}, "out_dir": "x"}, "data.max_filez: unknown key"),
    ({"data": {"name": "python-stdlib"}, "tokenizer": {"name": "bpe", "vocab_size": 10}, "out_dir": "x"},
     "tokenizer.vocab_size"),
    ({"data": {"name": "python-stdlib"}, "out_dir": "x", "dtyp": "auto"}, "dtyp: unknown key"),
    ({"data": {"name": "pyhton-stdlib"}, "out_dir": "x"}, "did you mean 'python-stdlib'"),
    ({"data": {"name": "text-files", "paths": ["/no/such/dir"]}, "out_dir": "x"}, "'/no/such/dir' not found"),
])
def test_prepare_from_config_errors(config: dict, expected: str, text_registered: None) -> None:
    with pytest.raises(CrossframeError) as exc:
        prepare_from_config(config)
    assert expected in one_line(exc)


def test_text_corpus_type_check(tmp_path: Path, text_registered: None) -> None:
    with pytest.raises(ConfigError) as exc:
        prepare_from_config({"data": {"name": "synthetic"}, "out_dir": str(tmp_path)})
    assert "not a text source" in one_line(exc)
    assert isinstance(load_stdlib(StdlibParams(max_files=1)), TextCorpus)
