"""The token store: a corpus tokenised once into flat memory-mapped files, one set per split.

Layout of a store directory::

    meta.json           format, tokenizer description, dtype, per-split counts (written last)
    train.bin           the train split's tokens, raw uint16 / uint32: doc 0, EOT, doc 1, EOT, ...
    train.idx.npy       int64 offsets, n_docs + 1 of them: document i is tokens[idx[i] : idx[i+1] - 1]
                        (the token at idx[i+1] - 1 is its EOT; idx[-1] == n_tokens)
    train.ids           the documents' ids, one JSON string per line, in store order
    val.bin, val.idx.npy, val.ids     the same for the validation split (when val_fraction > 0)
    tokenizer/          the tokenizer, saved (``load_tokenizer`` reads it back)

:func:`prepare` streams: it tokenises a small batch of documents at a time and writes tokens
through a fixed-size buffer, so its memory does not grow with the corpus. Every file is written
under a temporary name and moved into place with ``os.replace``; ``meta.json`` goes last and is
removed first, so a store is either complete or refused by :meth:`TokenStore.open`.

Under ``security.encrypt`` the split files are encrypted as they stream out
(:class:`~crossframe.security.sealing.SealingWriter`: AES-256-GCM, bound to the final file name) and
the document offsets stay in memory (8 bytes a document) until the sealed index is written, so no
token, offset or id reaches the disk in plain text, not even in a temporary file.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from crossframe.errors import ConfigError, DataError
from crossframe.text.corpus import SPLIT_BUCKETS, Document, Split, TextCorpus, as_documents, split_of
from crossframe.text.tokenizers import Tokenizer, load_tokenizer, write_atomic

FORMAT = "crossframe-token-store"
VERSION = 1
META = "meta.json"
TOKENIZER_DIR = "tokenizer"
SPLITS: tuple[Split, ...] = ("train", "val")

DType = Literal["auto", "uint16", "uint32"]


def choose_dtype(vocab_size: int, dtype: DType | str = "auto") -> np.dtype:
    """uint16 when every id fits (``vocab_size <= 65536``), else uint32; or the one asked for."""
    if dtype == "auto":
        return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)
    if dtype not in ("uint16", "uint32"):
        raise ConfigError(f"dtype: must be 'auto', 'uint16' or 'uint32' (got {dtype!r})")
    chosen = np.dtype(dtype)
    if vocab_size > np.iinfo(chosen).max + 1:
        raise ConfigError(f"dtype: {dtype} cannot hold a vocabulary of {vocab_size} ids; use 'uint32' or 'auto'")
    return chosen


def split_files(split: str) -> dict[str, str]:
    """File names of one split: tokens, index and ids."""
    return {"tokens": f"{split}.bin", "index": f"{split}.idx.npy", "ids": f"{split}.ids"}


# --------------------------------------------------------------------------- writing


class _SplitWriter:
    """Streams one split's tokens, offsets and ids into temporary files."""

    def __init__(self, directory: Path, split: str, dtype: np.dtype, vocab_size: int, eot_id: int,
                 chunk_tokens: int) -> None:
        self.directory, self.split, self.dtype = directory, split, dtype
        self.vocab_size, self.eot_id = vocab_size, eot_id
        suffix = f".tmp-{os.getpid()}"
        names = split_files(split)
        self.tmp = {key: directory / f".{name}{suffix}" for key, name in names.items()}
        self.final = {key: directory / name for key, name in names.items()}
        from crossframe.security import active

        protection = active()
        self._key = protection.key if protection is not None else None
        self._offset_chunks: list[np.ndarray] = []  # sealed stores: offsets kept in memory, never spilled
        self._offsets: BinaryIO | None = None
        if self._key is None:
            self.tmp["offsets"] = directory / f".{split}.offsets{suffix}"
            self._tokens: BinaryIO = open(self.tmp["tokens"], "wb")  # noqa: SIM115 - closed in finish/abort
            self._offsets = open(self.tmp["offsets"], "wb")  # noqa: SIM115
            self._ids: Any = open(self.tmp["ids"], "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        else:  # security.encrypt: encrypted as written, bound to the final names
            self._tokens = io.BufferedWriter(self._sealed("tokens"), buffer_size=1 << 20)
            self._ids = io.TextIOWrapper(io.BufferedWriter(self._sealed("ids")), encoding="utf-8", newline="\n")
        self._buf = np.empty(chunk_tokens, dtype=dtype)
        self._fill = 0
        self._pending_offsets: list[int] = []
        self.n_tokens = self.n_docs = self.n_chars = 0

    def _sealed(self, key: str) -> Any:
        from crossframe.security.sealing import SealingWriter

        assert self._key is not None
        return SealingWriter(self.tmp[key], self._key, self.final[key].name)

    def add(self, doc: Document, ids: np.ndarray) -> None:
        """Append one document's ids and an EOT."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size:
            if not np.issubdtype(ids.dtype, np.integer):
                raise DataError(f"tokenizer: encode gave {ids.dtype} ids for document '{doc.id}', not integers")
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.vocab_size:
                raise DataError(f"tokenizer: document '{doc.id}' encodes to ids {low}..{high}, "
                                f"outside 0..{self.vocab_size - 1}")
            if (ids == self.eot_id).any():
                raise DataError(f"tokenizer: document '{doc.id}' encodes to the end-of-text id {self.eot_id}")
        self._pending_offsets.append(self.n_tokens)
        if len(self._pending_offsets) >= 65536:
            self._flush_offsets()
        self._ids.write(json.dumps(doc.id, ensure_ascii=False) + "\n")
        self._put(ids)
        self._put(np.array([self.eot_id]))
        self.n_tokens += ids.size + 1
        self.n_docs += 1
        self.n_chars += len(doc.text)

    def _put(self, arr: np.ndarray) -> None:
        pos = 0
        while pos < arr.size:
            take = min(arr.size - pos, self._buf.size - self._fill)
            self._buf[self._fill:self._fill + take] = arr[pos:pos + take]
            self._fill += take
            pos += take
            if self._fill == self._buf.size:
                self._flush_tokens()

    def _flush_tokens(self) -> None:
        self._tokens.write(memoryview(self._buf[: self._fill]))  # no copy
        self._fill = 0

    def _flush_offsets(self) -> None:
        chunk = np.asarray(self._pending_offsets, dtype=np.int64)
        if self._offsets is None:
            self._offset_chunks.append(chunk)
        else:
            self._offsets.write(chunk.tobytes())
        self._pending_offsets.clear()

    def finish(self) -> dict[str, Any]:
        """Flush and close; write the index as .npy (in chunks). Returns the split's counts."""
        self._flush_tokens()
        self._pending_offsets.append(self.n_tokens)
        self._flush_offsets()
        for handle in self._handles():
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()  # a sealed file gets its tag here
        if self._offsets is None:  # sealed: the .npy index built in memory, encrypted as it is written
            buffer = io.BytesIO()
            np.save(buffer, np.concatenate(self._offset_chunks), allow_pickle=False)
            with self._sealed("index") as sealed:
                sealed.write(buffer.getbuffer())
            return self._counts()
        index = np.lib.format.open_memmap(self.tmp["index"], mode="w+", dtype=np.int64, shape=(self.n_docs + 1,))
        raw = np.memmap(self.tmp["offsets"], dtype=np.int64, mode="r")
        for start in range(0, raw.size, 1 << 20):
            index[start:start + (1 << 20)] = raw[start:start + (1 << 20)]
        index.flush()
        del index, raw
        self.tmp.pop("offsets").unlink()
        return self._counts()

    def _handles(self) -> list[Any]:
        return [h for h in (self._tokens, self._offsets, self._ids) if h is not None]

    def _counts(self) -> dict[str, Any]:
        return {"n_tokens": self.n_tokens, "n_docs": self.n_docs, "n_chars": self.n_chars,
                "files": split_files(self.split)}

    def commit(self) -> None:
        """Move the finished temporary files into place (sealed as they were written, under ``security.encrypt``)."""
        for key, tmp in self.tmp.items():
            os.replace(tmp, self.final[key])

    def abort(self) -> None:
        """Close and delete the temporary files."""
        for handle in self._handles():
            handle.close()
        for tmp in self.tmp.values():
            tmp.unlink(missing_ok=True)


def _read_split_file(path: Path) -> bytes | None:
    """The plaintext of a sealed store file (opened with ``CROSSFRAME_KEY_FILE``), or None for a plain one."""
    from crossframe.security.keys import encryption_key
    from crossframe.security.sealing import is_sealed, read_sealed

    if not is_sealed(path):
        return None
    key = encryption_key(required=True, why=f"token store file '{path}' is encrypted")
    assert key is not None
    return read_sealed(path, key)


def _batches(documents: Iterable[Document], batch_chars: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    size = 0
    for doc in documents:
        batch.append(doc)
        size += len(doc.text)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def prepare(documents: Iterable[Document | str], tokenizer: Tokenizer, out_dir: str | Path, *,
            val_fraction: float = 0.0, dtype: DType | str = "auto", chunk_tokens: int = 1 << 20,
            batch_chars: int = 1 << 18, source: dict[str, Any] | None = None) -> TokenStore:
    """Tokenise ``documents`` once into a token store at ``out_dir``; returns it opened.

    Documents go to ``train`` or ``val`` by :func:`~crossframe.text.corpus.split_of` on their id
    (``val_fraction == 0``: everything in ``train``, no ``val`` files). Empty documents are
    skipped. Memory is bounded by ``chunk_tokens`` (the write buffer) and ``batch_chars`` (the
    text tokenised at once), whatever the corpus size. The tokenizer must be trained already (train
    it on the ``train`` part only, so validation stays unseen) and is saved in ``out_dir/tokenizer``.
    A store already at ``out_dir`` is replaced; files of other names are left alone.
    """
    split_of("", val_fraction)  # validates the fraction
    if getattr(tokenizer, "trained", True) is False:
        raise DataError(f"tokenizer '{getattr(tokenizer, 'name', '?')}': not trained; call train(documents) "
                        "on the training documents before prepare")
    eot_id = getattr(tokenizer, "eot_id", None)
    if eot_id is None:
        raise ConfigError("tokenizer: has no eot_id (an end-of-text id is needed between documents)")
    vocab_size = int(tokenizer.vocab_size)
    store_dtype = choose_dtype(vocab_size, dtype)
    if source is None and isinstance(documents, TextCorpus):
        source = documents.describe()

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # from here until the new meta.json lands, the store is invalid
    names = SPLITS if val_fraction > 0 else SPLITS[:1]
    writers = {name: _SplitWriter(out, name, store_dtype, vocab_size, int(eot_id), chunk_tokens) for name in names}
    encode_many = getattr(tokenizer, "encode_many", None)
    skipped = 0
    try:
        for batch in _batches(as_documents(documents), batch_chars):
            kept = [doc for doc in batch if doc.text]
            skipped += len(batch) - len(kept)
            batch = kept
            if not batch:
                continue
            texts = [doc.text for doc in batch]
            encoded = encode_many(texts) if encode_many else [tokenizer.encode(t) for t in texts]
            for doc, ids in zip(batch, encoded, strict=True):
                writers[split_of(doc.id, val_fraction) if val_fraction > 0 else "train"].add(doc, ids)
        stats = {name: writer.finish() for name, writer in writers.items()}
        _check_counts(stats, val_fraction, skipped)
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    for name in SPLITS:
        if name not in names:
            for file in split_files(name).values():
                (out / file).unlink(missing_ok=True)
    if hasattr(tokenizer, "save"):
        tokenizer.save(out / TOKENIZER_DIR)
    describe = tokenizer.to_json() if hasattr(tokenizer, "to_json") else {"name": type(tokenizer).__name__}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": describe,
        "vocab_size": vocab_size,
        "eot_id": int(eot_id),
        "dtype": store_dtype.name,
        "layout": "each document's tokens followed by eot_id; <split>.idx.npy: n_docs + 1 int64 offsets, "
                  "document i = tokens[idx[i] : idx[i + 1] - 1]",
        "val_fraction": val_fraction,
        "split_rule": f"crc32(utf-8 id) % {SPLIT_BUCKETS} < round(val_fraction * {SPLIT_BUCKETS}) -> val",
        "skipped_empty_documents": skipped,
        "source": source,
        "splits": stats,
    }
    write_atomic(out / META, (json.dumps(meta, indent=1, ensure_ascii=False) + "\n").encode())
    return TokenStore.open(out)


def _check_counts(stats: dict[str, dict[str, Any]], val_fraction: float, skipped: int) -> None:
    total = sum(s["n_docs"] for s in stats.values())
    if total == 0:
        extra = f" ({skipped} empty documents skipped)" if skipped else ""
        raise DataError(f"data: the corpus has no documents to tokenise{extra}")
    if stats["train"]["n_docs"] == 0:
        raise DataError(f"data.val_fraction: {val_fraction} puts all {total} documents in validation")
    if "val" in stats and stats["val"]["n_docs"] == 0:
        raise DataError(f"data.val_fraction: {val_fraction} puts none of the {total} documents in validation; "
                        "raise it or add documents")


# --------------------------------------------------------------------------- reading


@dataclass
class TokenSplit:
    """One split of a store: ``tokens`` (read-only memmap) and the document ``offsets``."""

    name: str
    tokens: np.ndarray
    offsets: np.ndarray
    ids_path: Path

    @property
    def n_tokens(self) -> int:
        """Tokens in the split, EOTs included."""
        return int(self.tokens.size)

    @property
    def n_docs(self) -> int:
        """Documents in the split."""
        return int(self.offsets.size - 1)

    def document(self, i: int) -> np.ndarray:
        """The tokens of document ``i`` without its EOT (a view into the memmap)."""
        if not 0 <= i < self.n_docs:
            raise IndexError(f"split '{self.name}' has {self.n_docs} documents (asked for {i})")
        return self.tokens[int(self.offsets[i]): int(self.offsets[i + 1]) - 1]

    def doc_ids(self) -> Iterator[str]:
        """The documents' ids, in store order (read from the ids file, one at a time)."""
        plain = _read_split_file(self.ids_path)  # sealed under security.encrypt
        if plain is not None:
            for line in plain.decode("utf-8").splitlines():
                yield json.loads(line)
            return
        with open(self.ids_path, encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def __len__(self) -> int:
        return self.n_tokens


class TokenStore:
    """A prepared store opened read-only; splits are :class:`TokenSplit` views over memmaps."""

    def __init__(self, directory: Path, meta: dict[str, Any], splits: dict[str, TokenSplit]) -> None:
        self.directory, self.meta, self.splits = directory, meta, splits

    @classmethod
    def open(cls, directory: str | Path) -> TokenStore:
        """Open the store at ``directory``; a missing or incomplete store is a :class:`DataError`."""
        root = Path(directory)
        if not root.is_dir():
            raise DataError(f"token store: directory '{root}' not found")
        meta_path = root / META
        if not meta_path.is_file():
            raise DataError(f"token store: '{root}' has no {META} (not prepared, or preparing was "
                            "interrupted); prepare it again")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise DataError(f"token store: '{meta_path}' is not valid JSON ({exc})") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise DataError(f"token store: '{meta_path}' is not a {FORMAT} v{VERSION} store")
        dtype = np.dtype(meta["dtype"])
        splits = {name: cls._open_split(root, name, info, dtype) for name, info in meta["splits"].items()}
        return cls(root, meta, splits)

    @staticmethod
    def _open_split(root: Path, name: str, info: dict[str, Any], dtype: np.dtype) -> TokenSplit:
        files = {key: root / file for key, file in info["files"].items()}
        for path in files.values():
            if not path.is_file():
                raise DataError(f"token store: '{path}' is missing; prepare the store again")
        sealed = _read_split_file(files["tokens"])  # security.encrypt: decrypted into memory, never to disk
        size = len(sealed) if sealed is not None else files["tokens"].stat().st_size
        if size != info["n_tokens"] * dtype.itemsize:
            raise DataError(f"token store: '{files['tokens']}' holds {size} bytes, meta.json says "
                            f"{info['n_tokens']} {dtype.name} tokens; prepare the store again")
        if sealed is not None:
            import io

            tokens = np.frombuffer(sealed, dtype=dtype)
            index = _read_split_file(files["index"])
            offsets = np.load(io.BytesIO(index) if index is not None else files["index"], allow_pickle=False)
        else:
            tokens = (np.memmap(files["tokens"], dtype=dtype, mode="r") if size
                      else np.empty(0, dtype=dtype))
            offsets = np.load(files["index"], mmap_mode="r", allow_pickle=False)
        if offsets.shape != (info["n_docs"] + 1,) or (offsets.size and int(offsets[-1]) != info["n_tokens"]):
            raise DataError(f"token store: '{files['index']}' does not match meta.json; prepare the store again")
        return TokenSplit(name, tokens, offsets, files["ids"])

    def __getitem__(self, split: str) -> TokenSplit:
        """The split named ``split`` (``"train"`` or ``"val"``)."""
        if split not in self.splits:
            raise DataError(f"token store: '{self.directory}' has no split '{split}' "
                            f"(it has: {', '.join(self.splits)})")
        return self.splits[split]

    @property
    def vocab_size(self) -> int:
        """The tokenizer's vocabulary size."""
        return int(self.meta["vocab_size"])

    @property
    def eot_id(self) -> int:
        """The end-of-text id between documents."""
        return int(self.meta["eot_id"])

    def tokenizer(self) -> Tokenizer:
        """The tokenizer saved with the store."""
        return load_tokenizer(self.directory / TOKENIZER_DIR)

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {s.n_docs} docs / {s.n_tokens} tokens" for n, s in self.splits.items())
        return f"<TokenStore {self.directory} {self.meta['dtype']} ({parts})>"
