"""Tokenizers: ``bytes`` (UTF-8 bytes), ``chars`` (the corpus's characters) and ``bpe`` (byte-level BPE).

Every tokenizer has ``encode(text) -> list[int]``, ``encode_array(text) -> np.ndarray``,
``decode(ids) -> str``, ``vocab_size``, ``eot_id`` (the end-of-text token the token store puts
after each document; ``encode`` never produces it), ``save(directory)``, ``to_json()`` and a
class method ``load(directory)``; :func:`load_tokenizer` loads any of them. ``chars`` and
``bpe`` are *trainable*: they start empty and learn from ``train(documents)``.

On disk a tokenizer is a directory holding ``crossframe_tokenizer.json`` (its description; for
``chars`` also the vocabulary) and, for ``bpe``, the ``tokenizers`` library's ``tokenizer.json``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from crossframe.errors import ConfigError, DataError, PluginError
from crossframe.text.corpus import Document, texts

DESCRIPTION_FILE = "crossframe_tokenizer.json"
EOT_TOKEN = "<|endoftext|>"

Ids = Sequence[int] | np.ndarray


class Params(BaseModel):
    """Base of tokenizer params: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace`` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Tokenizer:
    """Base class; subclasses set ``name`` and implement ``encode_array`` and ``decode``."""

    name: ClassVar[str] = ""
    trainable: ClassVar[bool] = False

    @property
    def trained(self) -> bool:
        """Whether the tokenizer can encode (always true for untrainable ones)."""
        return True

    @property
    def vocab_size(self) -> int:
        """Number of token ids, ``eot_id`` included: every id is in ``range(vocab_size)``."""
        raise NotImplementedError

    @property
    def eot_id(self) -> int:
        """The end-of-text id placed between documents."""
        raise NotImplementedError

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text`` as a 1-D integer array."""
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no end-of-text token is added)."""
        return self.encode_array(text).tolist()

    def encode_many(self, batch: Sequence[str]) -> list[np.ndarray]:
        """``encode_array`` of each text (subclasses may do it in parallel)."""
        return [self.encode_array(text) for text in batch]

    def decode(self, ids: Ids) -> str:
        """The text of ``ids``; ``eot_id`` decodes to ``"<|endoftext|>"``."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """The params it was made with (JSON-ready)."""
        return {}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description: name, params, vocab_size, eot_id."""
        return {"name": self.name, "params": self.params(), "vocab_size": self.vocab_size, "eot_id": self.eot_id}

    def save(self, directory: str | Path) -> Path:
        """Write the tokenizer to ``directory`` (created); returns it."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / DESCRIPTION_FILE, json.dumps(self._saved(), indent=1).encode())
        return out

    def _saved(self) -> dict[str, Any]:
        return self.to_json()

    def _require_trained(self) -> None:
        if not self.trained:
            raise DataError(f"tokenizer '{self.name}': not trained; call train(documents) or load a saved one")

    def __repr__(self) -> str:
        state = f"vocab_size={self.vocab_size}" if self.trained else "untrained"
        return f"<{type(self).__name__} {state}>"


# --------------------------------------------------------------------------- bytes


class BytesParams(Params):
    """``tokenizer: {name: bytes}``: the UTF-8 bytes of the text (ids 0-255) plus EOT (256)."""


class BytesTokenizer(Tokenizer):
    """UTF-8 bytes: vocabulary 257, exact round trip of any text."""

    name = "bytes"

    @property
    def vocab_size(self) -> int:
        """256 byte values and the end-of-text id."""
        return 257

    @property
    def eot_id(self) -> int:
        """256."""
        return 256

    def encode_array(self, text: str) -> np.ndarray:
        """The UTF-8 bytes of ``text`` as uint8 (lone surrogates pass through as their 3 bytes)."""
        return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8)

    def decode(self, ids: Ids) -> str:
        """The bytes decoded as UTF-8 (invalid sequences become U+FFFD); EOT as ``<|endoftext|>``."""
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() > 256):
            raise DataError(f"tokenizer 'bytes': ids must be in 0..256 (got {arr.min()}..{arr.max()})")
        pieces = np.split(arr, np.flatnonzero(arr == 256))
        out = [pieces[0].astype(np.uint8).tobytes().decode("utf-8", "replace")]
        out += [EOT_TOKEN + p[1:].astype(np.uint8).tobytes().decode("utf-8", "replace") for p in pieces[1:]]
        return "".join(out)

    @classmethod
    def load(cls, directory: str | Path) -> BytesTokenizer:
        """A bytes tokenizer (nothing to read)."""
        return cls()


def make_bytes(params: BytesParams | None = None) -> BytesTokenizer:
    """Factory of ``bytes``."""
    return BytesTokenizer()


# --------------------------------------------------------------------------- chars


class CharsParams(Params):
    """``tokenizer: {name: chars}``: one id per character seen in training, sorted, + unknown + EOT."""

    unk: str = Field("\ufffd", min_length=1, description="what an unknown character decodes to")


def _code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


class CharsTokenizer(Tokenizer):
    """Characters: ids ``0..n-1`` for the training corpus's characters in code point order,
    ``n`` for unknown characters and ``n + 1`` for end-of-text."""

    name = "chars"
    trainable = True

    def __init__(self, params: CharsParams | None = None, chars: str | None = None) -> None:
        self.config = params or CharsParams()
        self._codes = np.empty(0, dtype=np.uint32)
        self._chars: list[str] = []
        if chars is not None:
            self._set_chars(set(chars))

    def _set_chars(self, chars: set[str]) -> None:
        if not chars:
            raise DataError("tokenizer 'chars': the corpus has no characters (empty corpus)")
        ordered = sorted(chars)
        self._chars = ordered
        self._codes = _code_points("".join(ordered))

    @property
    def trained(self) -> bool:
        """Whether a vocabulary has been learnt or loaded."""
        return bool(self._chars)

    @property
    def chars(self) -> str:
        """The vocabulary's characters, in id order."""
        return "".join(self._chars)

    @property
    def unk_id(self) -> int:
        """The id of unknown characters."""
        self._require_trained()
        return len(self._chars)

    @property
    def vocab_size(self) -> int:
        """Characters + unknown + end-of-text."""
        self._require_trained()
        return len(self._chars) + 2

    @property
    def eot_id(self) -> int:
        """The last id."""
        self._require_trained()
        return len(self._chars) + 1

    def train(self, documents: Iterable[Document | str]) -> CharsTokenizer:
        """Learn the vocabulary: every distinct character of ``documents`` (streamed)."""
        seen: set[str] = set()
        for text in texts(documents):
            seen.update(text)
        self._set_chars(seen)
        return self

    def encode_array(self, text: str) -> np.ndarray:
        """Ids of each character; characters not in the vocabulary get ``unk_id``."""
        self._require_trained()
        codes = _code_points(text)
        pos = np.searchsorted(self._codes, codes)
        pos_clipped = np.minimum(pos, len(self._codes) - 1)
        known = self._codes[pos_clipped] == codes
        return np.where(known, pos_clipped, len(self._chars)).astype(np.int32)

    def decode(self, ids: Ids) -> str:
        """The characters of ``ids``; unknown decodes to ``params.unk``, EOT to ``<|endoftext|>``."""
        self._require_trained()
        table = [*self._chars, self.config.unk, EOT_TOKEN]
        arr = np.asarray(ids, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= len(table)):
            raise DataError(f"tokenizer 'chars': ids must be in 0..{len(table) - 1} (got {arr.min()}..{arr.max()})")
        return "".join([table[i] for i in arr.tolist()])

    def params(self) -> dict[str, Any]:
        """``{"unk": ...}``."""
        return self.config.model_dump()

    def _saved(self) -> dict[str, Any]:
        return {**self.to_json(), "chars": self.chars}

    @classmethod
    def load(cls, directory: str | Path) -> CharsTokenizer:
        """Read a vocabulary written by :meth:`save`."""
        data = _read_description(Path(directory), cls.name)
        return cls(CharsParams.model_validate(data.get("params", {})), chars=data["chars"])


def make_chars(params: CharsParams | None = None) -> CharsTokenizer:
    """Factory of ``chars`` (untrained)."""
    return CharsTokenizer(params)


# --------------------------------------------------------------------------- bpe


def _library() -> Any:
    """The ``tokenizers`` library, or a one-line error saying how to install it."""
    try:
        import tokenizers
    except ImportError:
        raise PluginError("tokenizer 'bpe': needs the 'tokenizers' library (pip install tokenizers)") from None
    return tokenizers


class BPEParams(Params):
    """``tokenizer: {name: bpe, vocab_size: 8192}``: byte-level BPE trained with the ``tokenizers`` library."""

    vocab_size: int = Field(8192, ge=257, le=2**31 - 1,
                            description="target size with the 256 byte symbols and EOT (small corpora give fewer)")
    min_frequency: int = Field(2, ge=1, description="a pair must occur this often to be merged")
    max_token_length: int | None = Field(None, ge=1, description="longest token in characters (None: no limit)")


class BPETokenizer(Tokenizer):
    """Byte-level BPE (GPT-2's pre-tokenizer regex, no normaliser): exact round trip of any text.

    EOT (``<|endoftext|>``) is id 0. The literal string ``<|endoftext|>`` inside a document is
    encoded as ordinary text, never as EOT, so documents cannot forge a boundary.
    """

    name = "bpe"
    trainable = True

    def __init__(self, params: BPEParams | None = None, native: Any = None) -> None:
        self.config = params or BPEParams()
        self._tok: Any = None
        self._eot = -1
        if native is not None:
            self._attach(native)

    def _attach(self, native: Any) -> None:
        eot = native.token_to_id(EOT_TOKEN)
        if eot is None:
            raise DataError(f"tokenizer 'bpe': vocabulary has no '{EOT_TOKEN}' token")
        native.encode_special_tokens = True  # '<|endoftext|>' inside a document is plain text
        self._tok, self._eot = native, int(eot)

    @property
    def native(self) -> Any:
        """The underlying ``tokenizers.Tokenizer``."""
        self._require_trained()
        return self._tok

    @property
    def trained(self) -> bool:
        """Whether merges have been learnt or loaded."""
        return self._tok is not None

    @property
    def vocab_size(self) -> int:
        """Size of the learnt vocabulary (``params.vocab_size`` or less on a small corpus)."""
        return int(self.native.get_vocab_size())

    @property
    def eot_id(self) -> int:
        """The id of ``<|endoftext|>`` (0)."""
        self._require_trained()
        return self._eot

    def train(self, documents: Iterable[Document | str]) -> BPETokenizer:
        """Learn merges from ``documents`` (streamed into the library's trainer)."""
        lib = _library()
        pre_tokenizers, trainers = lib.pre_tokenizers, lib.trainers
        native = lib.Tokenizer(lib.models.BPE())
        native.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        native.decoder = lib.decoders.ByteLevel()
        extra = {"max_token_length": self.config.max_token_length} if self.config.max_token_length else {}
        trainer = trainers.BpeTrainer(
            vocab_size=self.config.vocab_size, min_frequency=self.config.min_frequency, show_progress=False,
            special_tokens=[EOT_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **extra)
        count = 0

        def counted() -> Iterable[str]:
            nonlocal count
            for text in texts(documents):
                count += 1
                yield text

        native.train_from_iterator(counted(), trainer)
        if count == 0:
            raise DataError("tokenizer 'bpe': nothing to train on (empty corpus)")
        self._attach(native)
        return self

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of ``text``."""
        return np.asarray(self.native.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_many(self, batch: Sequence[str]) -> list[np.ndarray]:
        """Encode a batch on the library's thread pool."""
        encoded = self.native.encode_batch_fast(list(batch), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encoded]

    def decode(self, ids: Ids) -> str:
        """The text of ``ids`` (EOT as ``<|endoftext|>``)."""
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            raise DataError(f"tokenizer 'bpe': ids must be in 0..{self.vocab_size - 1}")
        return str(self.native.decode(ids, skip_special_tokens=False))

    def params(self) -> dict[str, Any]:
        """The training params."""
        return self.config.model_dump()

    def to_json(self) -> dict[str, Any]:
        """Name, params, vocab_size, eot_id and the ``tokenizers`` version that trained it."""
        return {**super().to_json(), "library": f"tokenizers {_library().__version__}"}

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` (the library's format) and the description."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "tokenizer.json", self.native.to_str().encode())
        return super().save(out)

    @classmethod
    def load(cls, directory: str | Path) -> BPETokenizer:
        """Read ``tokenizer.json`` and the description written by :meth:`save`."""
        path = Path(directory)
        data = _read_description(path, cls.name)
        native_cls = _library().Tokenizer
        try:
            native = native_cls.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # the library raises plain Exception
            raise DataError(f"tokenizer: cannot read '{path / 'tokenizer.json'}' ({exc})") from None
        return cls(BPEParams.model_validate(data.get("params", {})), native)


def make_bpe(params: BPEParams | None = None) -> BPETokenizer:
    """Factory of ``bpe`` (untrained)."""
    return BPETokenizer(params)


# --------------------------------------------------------------------------- loading


#: name -> (params schema, factory, class, description): what :mod:`crossframe.text.registry` registers
TOKENIZERS: dict[str, tuple[type[Params], Any, type[Tokenizer], str]] = {
    "bytes": (BytesParams, make_bytes, BytesTokenizer, "UTF-8 bytes: 256 ids + end-of-text"),
    "chars": (CharsParams, make_chars, CharsTokenizer, "the corpus's characters + unknown + end-of-text"),
    "bpe": (BPEParams, make_bpe, BPETokenizer, "byte-level BPE trained on the corpus (tokenizers library)"),
}


def _read_description(directory: Path, expected: str | None = None) -> dict[str, Any]:
    path = directory / DESCRIPTION_FILE
    if not path.is_file():
        raise DataError(f"tokenizer: '{path}' not found (not a saved tokenizer directory)")
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise DataError(f"tokenizer: '{path}' is not valid JSON ({exc})") from None
    if expected is not None and data.get("name") != expected:
        raise DataError(f"tokenizer: '{path}' holds a '{data.get('name')}' tokenizer, not '{expected}'")
    return data


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load a tokenizer saved with ``save(directory)`` (any built-in kind)."""
    data = _read_description(Path(directory))
    name = data.get("name")
    if name == "hf":  # a Hugging Face tokenizer directory (crossframe.hf, the same floor)
        from crossframe.hf.tokenizer import HFTokenizer

        return HFTokenizer.load(directory)
    if name not in TOKENIZERS:
        raise ConfigError(f"tokenizer: '{directory}' holds unknown tokenizer '{name}' "
                          f"(built-in: {', '.join(TOKENIZERS)})")
    return TOKENIZERS[name][2].load(directory)
