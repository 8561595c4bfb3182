"""Token store throughput: preparing the standard library's source, and reading training batches.

What is measured
----------------
prepare
    :func:`crossframe.text.store.prepare` over the ``python-stdlib`` source (tests excluded; the
    first 150 files with ``--quick``), with the ``bytes`` tokenizer and with a byte-level ``bpe``
    (vocabulary 8192) trained first on the train split. Reported: the corpus size, the time to
    train the tokenizer (bpe), the time to tokenise and write the store, and MB of source text
    per second. The files are read through the page cache (warm: the source is read once first).
read
    Random training batches ``[B, T + 1]`` from the prepared bytes store's ``train.bin`` memmap
    (12 M tokens for the whole stdlib, warm in the page cache, as it is after ``prepare`` or
    the first epoch). ``crossframe`` is ``LMBatchLoader.batch(step)`` (seeded permutation of
    packed blocks, sorted gather, int32 ``x`` and ``y``); ``native`` is nanoGPT's ``get_batch``
    in numpy (random offsets, ``np.stack`` of slices, int64). Reported: batches/s, tokens/s
    (``B * T`` target tokens per batch) and microseconds per batch; set those against what a
    training step consumes: ``B x T = 8 x 256 = 2,048`` tokens per step for a small GPT (e.g.
    4 layers, 256 wide), which on a CPU takes milliseconds per step and on a GPU ~1 ms; the
    loader must stay well under that.

Run it alone with ``python -m benchmarks.token_store [--quick]``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, median, pick, smoke, spread

TITLE = "Token store: prepare the Python stdlib, and read random [B, T+1] batches from the memmap"

READ_CASES = [(8, 256), (32, 512), (64, 1024)]  # (batch, seq_len); the first is the small GPT config
BPE_VOCAB = 8192


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def prepare_rows(corpus: Any, out: Path, log: Callable[[str], None], rounds: int) -> tuple[list[dict], Path]:
    """Time ``prepare`` with ``bytes`` and ``bpe``; returns the rows and the bytes store's path."""
    from crossframe.text.store import prepare
    from crossframe.text.tokenizers import BPEParams, BPETokenizer, BytesTokenizer

    texts = [d.text for d in corpus]  # warm the page cache; size of the corpus
    chars = sum(map(len, texts))
    mb = sum(len(t.encode()) for t in texts) / 1e6
    rows = []
    for name in ("bytes", "bpe"):
        train_s = 0.0
        if name == "bpe":
            train_s, tokenizer = _timed(lambda: BPETokenizer(BPEParams(vocab_size=BPE_VOCAB)).train(
                corpus.split(0.05)[0]))
        else:
            tokenizer = BytesTokenizer()
        times = []
        for _ in range(rounds):
            seconds, store = _timed(lambda tok=tokenizer, n=name: prepare(corpus, tok, out / n, val_fraction=0.05))
            times.append(seconds)
        tokens = sum(s.n_tokens for s in store.splits.values())
        row = {"kind": "prepare", "case": f"stdlib, {name}", "tokenizer": name, "docs": len(texts),
               "corpus_mb": mb, "chars": chars, "tokens": tokens, "vocab_size": store.vocab_size,
               "dtype": store.meta["dtype"], "train_s": train_s, "prepare_s": median(times),
               "prepare_spread": spread(times), "mb_per_s": mb / median(times),
               "tokens_per_s": tokens / median(times), "rounds": rounds}
        rows.append(row)
        log(f"  prepare {name}: {mb:.1f} MB -> {tokens / 1e6:.2f} M tokens in {row['prepare_s']:.2f} s "
            f"({row['mb_per_s']:.1f} MB/s), tokenizer training {train_s:.2f} s")
    return rows, out / "bytes"


def nanogpt_get_batch(data: np.ndarray, rng: np.random.Generator, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """nanoGPT's ``get_batch`` in numpy: random offsets, stacked slices, int64."""
    ix = rng.integers(0, len(data) - seq_len - 1, batch)
    x = np.stack([data[i:i + seq_len].astype(np.int64) for i in ix])
    y = np.stack([data[i + 1:i + 1 + seq_len].astype(np.int64) for i in ix])
    return {"x": x, "y": y}


def _time_loader(loader: Any, first_step: int, steps: int) -> float:
    start = time.perf_counter()
    for step in range(first_step, first_step + steps):
        loader.batch(step)
    return time.perf_counter() - start


def _time_native(tokens: np.ndarray, rng: np.random.Generator, batch: int, seq_len: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        nanogpt_get_batch(tokens, rng, batch, seq_len)
    return time.perf_counter() - start


def read_rows(store_dir: Path, log: Callable[[str], None], steps: int, rounds: int) -> list[dict]:
    """Batches per second from the memmap: LMBatchLoader against nanoGPT-style slicing."""
    from crossframe.text.loader import LMBatchLoader
    from crossframe.text.store import TokenStore

    tokens = TokenStore.open(store_dir)["train"].tokens
    rows = []
    for batch, seq_len in READ_CASES:
        loader = LMBatchLoader(tokens, seq_len, batch, seed=0)
        span = loader.steps_per_epoch
        rates: dict[str, list[float]] = {"crossframe": [], "native": []}
        for r in range(rounds):
            start_step = (r * steps) % max(span - steps, 1)
            loader.batch(start_step)  # the epoch's permutation, outside the timing
            rng = np.random.default_rng(r)
            for side in (("crossframe", "native") if r % 2 == 0 else ("native", "crossframe")):
                if side == "crossframe":
                    seconds = _time_loader(loader, start_step, steps)
                else:
                    seconds = _time_native(tokens, rng, batch, seq_len, steps)
                rates[side].append(steps / seconds)
        cf, native = median(rates["crossframe"]), median(rates["native"])
        row = {"kind": "read", "case": f"B={batch}, T={seq_len}", "batch": batch, "seq_len": seq_len,
               "tokens_per_step": batch * seq_len, "steps": steps, "rounds": rounds, "store_tokens": int(tokens.size),
               "crossframe_batches_per_s": cf, "native_batches_per_s": native,
               "crossframe_tokens_per_s": cf * batch * seq_len, "native_tokens_per_s": native * batch * seq_len,
               "crossframe_us_per_batch": 1e6 / cf, "native_us_per_batch": 1e6 / native,
               "crossframe_spread": spread(rates["crossframe"]), "native_spread": spread(rates["native"])}
        rows.append(row)
        log(f"  read B={batch} T={seq_len}: crossframe {cf:,.0f} batches/s ({row['crossframe_tokens_per_s'] / 1e6:.1f} "
            f"M tokens/s), nanoGPT-style {native:,.0f} batches/s")
    return rows


def run(quick: bool = False, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Prepare the stdlib with bytes and bpe, then read batches from the bytes store."""
    from crossframe.text.sources import StdlibParams, load_stdlib

    log = log or (lambda text: print(text, file=sys.stderr))
    corpus = load_stdlib(StdlibParams(max_files=(30 if smoke() else 150) if quick else None))
    tmp = Path(tempfile.mkdtemp(prefix="crossframe-bench-"))
    try:
        prep, store_dir = prepare_rows(corpus, tmp, log, rounds=1 if quick else 3)
        reads = read_rows(store_dir, log, steps=pick(1000, 200, 50, quick), rounds=pick(7, 3, 1, quick))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return prep + reads


def table(rows: list[dict[str, Any]]) -> str:
    """Two Markdown tables: prepare throughput, then read throughput against a step's needs."""
    prep = [[r["case"], r["docs"], f"{r['corpus_mb']:.1f}", f"{r['tokens'] / 1e6:.2f}", r["vocab_size"],
             f"{r['train_s']:.1f}", f"{r['prepare_s']:.2f}", f"{r['mb_per_s']:.1f}",
             f"{r['tokens_per_s'] / 1e6:.2f}"] for r in rows if r["kind"] == "prepare"]
    read = [[r["case"], r["tokens_per_step"], f"{r['crossframe_batches_per_s']:,.0f}",
             f"{r['crossframe_us_per_batch']:.0f}", f"{r['crossframe_tokens_per_s'] / 1e6:.1f}",
             f"{r['native_batches_per_s']:,.0f}", f"{r['native_us_per_batch']:.0f}",
             f"{r['crossframe_spread']:.0%} / {r['native_spread']:.0%}"] for r in rows if r["kind"] == "read"]
    return (markdown_table(["prepare", "docs", "MB", "M tokens", "vocab", "tokenizer train s", "prepare s",
                            "MB/s", "M tokens/s"], prep)
            + "\n\n"
            + markdown_table(["read (memmap, warm)", "tokens/step", "crossframe batches/s", "us/batch",
                              "M tokens/s", "nanoGPT-style batches/s", "us/batch", "spread cf / native"], read))


if __name__ == "__main__":
    from benchmarks.__main__ import main

    sys.exit(main(["--only", "token_store", *sys.argv[1:]]))
