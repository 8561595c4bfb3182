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

from crossframe.config.validation import describe, validate_params
from crossframe.errors import ConfigError
from crossframe.text.corpus import TextCorpus
from crossframe.text.store import TokenStore, prepare


class _Component(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(min_length=1)

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TextDataConfig(_Component):
    """``data``: a text source and the fraction of documents held out for validation."""

    val_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of documents (by id hash) in 'val'")


class PrepareConfig(BaseModel):
    """The config of ``crossframe data prepare``."""

    model_config = ConfigDict(extra="forbid")
    data: TextDataConfig
    tokenizer: _Component = Field(default_factory=lambda: _Component(name="bytes"))
    out_dir: Path
    dtype: Literal["auto", "uint16", "uint32"] = "auto"


def prepare_from_config(config: dict[str, Any] | PrepareConfig) -> TokenStore:
    """Validate ``config``, read the source, train the tokenizer if it needs it, write the store."""
    from crossframe.plugins import component

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
    maker = component("tokenizer", config.tokenizer.name, "tokenizer.name")
    tokenizer = maker.obj(validate_params(maker.schema, config.tokenizer.params, "tokenizer"))
    if getattr(tokenizer, "trainable", False) and not tokenizer.trained:
        train_part = corpus.split(config.data.val_fraction)[0] if config.data.val_fraction > 0 else corpus
        tokenizer.train(train_part)
    return prepare(corpus, tokenizer, config.out_dir, val_fraction=config.data.val_fraction, dtype=config.dtype)
