"""The neutral text pipeline: sources -> tokenizer -> token store -> packed / masked batches.

- :mod:`~crossframe.text.corpus`: documents with stable ids and the split by id hash
- :mod:`~crossframe.text.sources`: ``text-files``, ``jsonl``, ``python-stdlib``
- :mod:`~crossframe.text.tokenizers`: ``bytes``, ``chars``, ``bpe``
- :mod:`~crossframe.text.store`: :func:`prepare` a memory-mapped token store, :class:`TokenStore`
- :mod:`~crossframe.text.sequences`: packing, truncation, sliding windows
- :mod:`~crossframe.text.loader`: :class:`LMBatchLoader`, the seeded, resumable, sharded order
- :mod:`~crossframe.text.pipeline`: :func:`prepare_from_config`

Imports numpy and pydantic only; the ``tokenizers`` library is imported when a BPE tokenizer
trains or loads.
"""

from crossframe.text.corpus import Document, TextCorpus, split_of
from crossframe.text.loader import LMBatchLoader, eval_batches
from crossframe.text.sequences import pack, sliding_window_plan, sliding_windows, truncate
from crossframe.text.store import TokenSplit, TokenStore, prepare
from crossframe.text.tokenizers import BPETokenizer, BytesTokenizer, CharsTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "BPETokenizer",
    "BytesTokenizer",
    "CharsTokenizer",
    "Document",
    "LMBatchLoader",
    "TextCorpus",
    "TokenSplit",
    "TokenStore",
    "Tokenizer",
    "eval_batches",
    "load_tokenizer",
    "pack",
    "prepare",
    "sliding_window_plan",
    "sliding_windows",
    "split_of",
    "truncate",
]
