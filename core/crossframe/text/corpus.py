"""Documents, text corpora and the split by document id.

A document is a string with a stable id (a relative path, ``path:line`` for JSON Lines). The
train / validation split hashes the id, so it needs no seed, no count of the corpus and no
second pass: a document keeps its split when the corpus grows, shrinks or is reordered, and the
same id lands in the same split on every machine.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from crossframe.errors import ConfigError

Split = Literal["train", "val"]

#: resolution of the split: a document is in validation when crc32(id) % SPLIT_BUCKETS < fraction * SPLIT_BUCKETS
SPLIT_BUCKETS = 10_000


@dataclass(frozen=True)
class Document:
    """One document: its stable ``id`` and its ``text``."""

    id: str
    text: str


def split_of(doc_id: str, val_fraction: float) -> Split:
    """``"val"`` or ``"train"`` for a document id: ``crc32(id) % 10000 < val_fraction * 10000``.

    A pure function of the id: stable when documents are added or removed, and the same on every
    machine. Validation holds about ``val_fraction`` of the documents (not of the tokens).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction: must be in [0, 1) (got {val_fraction})")
    bucket = zlib.crc32(doc_id.encode("utf-8", "surrogatepass")) % SPLIT_BUCKETS
    return "val" if bucket < round(val_fraction * SPLIT_BUCKETS) else "train"


def texts(documents: Iterable[Document | str]) -> Iterator[str]:
    """The text of each document (plain strings pass through)."""
    for doc in documents:
        yield doc.text if isinstance(doc, Document) else doc


def as_documents(documents: Iterable[Document | str]) -> Iterator[Document]:
    """:class:`Document` objects; a plain string gets its position as id (``"#0"``, ``"#1"``, ...).

    Position ids are only stable while the strings keep their order; sources give real ids.
    """
    for i, doc in enumerate(documents):
        yield doc if isinstance(doc, Document) else Document(f"#{i}", doc)


@dataclass
class TextCorpus:
    """A re-iterable, lazily read collection of documents from one source.

    Iterating it reads the source again from the start (nothing is held in memory), so it can be
    walked once to train a tokenizer and once more to tokenise.
    """

    source: str
    params: dict[str, Any]
    iterate: Callable[[], Iterator[Document]] = field(repr=False)
    val_fraction: float | None = None
    part: Split | None = None

    def __iter__(self) -> Iterator[Document]:
        """The documents, in the source's stable order (only this part's, after :meth:`split`)."""
        for doc in self.iterate():
            if self.part is None or split_of(doc.id, self.val_fraction or 0.0) == self.part:
                yield doc

    def split(self, val_fraction: float, seed: int = 0) -> tuple[TextCorpus, TextCorpus]:
        """The training and validation parts, by hashing document ids (``seed`` is not used).

        Same signature as :meth:`crossframe.data.Dataset.split`; the split is by id so that it
        stays put when the corpus grows, which a seeded permutation would not.
        """
        split_of("", val_fraction)  # validates the fraction
        return (TextCorpus(self.source, self.params, self.iterate, val_fraction, "train"),
                TextCorpus(self.source, self.params, self.iterate, val_fraction, "val"))

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (stored in a token store's ``meta.json``)."""
        out: dict[str, Any] = {"source": self.source, "params": self.params}
        if self.part is not None:
            out.update(part=self.part, val_fraction=self.val_fraction)
        return out
