"""What the text pipeline registers: its tokenizers and its text sources.

``crossframe.builtin`` calls these from its ``register_tokenizers`` / ``register_datasets``
hooks, so the names live next to the code they name.
"""

from __future__ import annotations

from typing import Any


def register_tokenizers(register: Any) -> None:
    """Register ``bytes``, ``chars`` and ``bpe``: ``factory(params) -> Tokenizer`` (``chars`` and
    ``bpe`` come back untrained: call ``train(documents)``)."""
    from crossframe.text.tokenizers import TOKENIZERS

    for name, (schema, factory, _cls, description) in TOKENIZERS.items():
        register(name, factory, schema=schema, description=description)


def register_datasets(register: Any) -> None:
    """Register the text sources ``text-files``, ``jsonl`` and ``python-stdlib``:
    ``loader(params) -> TextCorpus`` (documents, not arrays)."""
    from crossframe.text.sources import SOURCES

    for name, (schema, loader, description) in SOURCES.items():
        register(name, loader, schema=schema, description=description)
    from crossframe.text.instructions import InstructionParams, load_instructions

    register("instructions", load_instructions, schema=InstructionParams,
             description="prompt/response or chat JSONL, loss on the answers only, packed")
