"""From a config to a token store: source -> tokenizer (trained on the train split) -> prepare.

This is what ``crossframe data prepare CONFIG`` runs::

    data: {name: python-stdlib, exclude_tests: true, val_fraction: 0.05}
    tokenizer: {name: bpe, vocab_size: 8192}
    out_dir: data/stdlib-bpe
    dtype: auto

Sources and tokenizers are looked up in the plugin registry, so a plugin's own work here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crossframe.errors import ConfigError
from crossframe.plugins import component
from crossframe.text.corpus import TextCorpus
from crossframe.text.store import TokenStore, prepare
from crossframe.validation import ComponentConfig, describe, validate_params


class TextDataConfig(ComponentConfig):
    """``data``: a text source and the fraction of documents held out for validation."""

    val_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of documents (by id hash) in 'val'")


class PrepareConfig(BaseModel):
    """The config of ``crossframe data prepare``."""

    model_config = ConfigDict(extra="forbid")
    data: TextDataConfig
    tokenizer: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="bytes"))
    out_dir: Path
    dtype: Literal["auto", "uint16", "uint32"] = "auto"


def prepare_from_config(config: dict[str, Any] | PrepareConfig) -> TokenStore:
    """Validate ``config``, read the source, train the tokenizer if it needs it, write the store."""
    if not isinstance(config, PrepareConfig):
        try:
            config = PrepareConfig.model_validate(config)
        except ValidationError as exc:
            raise ConfigError(describe(exc, PrepareConfig)) from None
    source = component("dataset", config.data.name, "data.name")
    corpus = source.obj(validate_params(source.schema, config.data.params, "data"))
    if not isinstance(corpus, TextCorpus):
        raise ConfigError(f"data.name: '{config.data.name}' is not a text source (it gives "
                          f"{type(corpus).__name__}, not documents)")
    return build_store(corpus, config.tokenizer, config.out_dir, config.data.val_fraction, config.dtype)


def build_store(corpus: TextCorpus, tokenizer_config: ComponentConfig, out_dir: str | Path, val_fraction: float,
                dtype: str = "auto", where: str = "tokenizer") -> TokenStore:
    """Make the configured tokenizer, train it on the training documents if it learns, and prepare
    the store (the one path from a corpus to a token store)."""
    maker = component("tokenizer", tokenizer_config.name, f"{where}.name")
    tokenizer = maker.obj(validate_params(maker.schema, tokenizer_config.params, where))
    if getattr(tokenizer, "trainable", False) and not tokenizer.trained:
        tokenizer.train(corpus.split(val_fraction)[0] if val_fraction > 0 else corpus)
    return prepare(corpus, tokenizer, out_dir, val_fraction=val_fraction, dtype=dtype)
