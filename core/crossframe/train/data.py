"""The data a run trains and evaluates on: arrays (classifiers) or a token store (language models)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossframe.config.schema import RunConfig
from crossframe.config.validation import validate_params
from crossframe.data.dataset import DataInfo, Dataset
from crossframe.data.loader import BatchLoader
from crossframe.data.tabular import normalised
from crossframe.errors import ConfigError
from crossframe.plugins import component
from crossframe.train.splitting import split_dataset


@dataclass
class TokenEvalSet:
    """Validation tokens, evaluated in packed blocks (at most ``max_tokens`` of them)."""

    tokens: np.ndarray
    seq_len: int
    max_tokens: int | None = None
    stride: int | None = None
    task: str = "language_modeling"

    def eval_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """The (capped) validation tokens in order: packed blocks, or sliding windows with
        ``stride`` where every token is scored once with at least ``seq_len - stride`` of context."""
        from crossframe.text.loader import eval_batches
        from crossframe.text.sequences import sliding_windows

        data = self.tokens if self.max_tokens is None else self.tokens[: self.max_tokens + 1]
        if self.stride is None:
            yield from eval_batches(data, self.seq_len, batch_size, dtype=np.int64)
        else:
            yield from sliding_windows(data, self.seq_len, self.stride, batch_size, dtype=np.int64)


@dataclass
class TrainingData:
    """What the loop needs: a resumable training order, an evaluation set and the data's shape."""

    loader: Any  # BatchLoader | LMBatchLoader: .batch(step), .steps_per_epoch, .batch_size
    val: Any  # Dataset | TokenEvalSet: .eval_batches(batch_size), .task
    info: DataInfo
    tokenizer_dir: Path | None = None
    test: Any = None  # Dataset of data.split.test, or None
    transform: Any = None  # the fitted TabularTransform of a tabular source, saved with the run


def load_source(cfg: RunConfig) -> Any:
    """The configured source: a :class:`Dataset` or a text corpus (``data.split.group`` reaches a
    source whose schema has a ``group`` field)."""
    data_comp = component("dataset", cfg.data.name, "data.name")
    params = cfg.data.params
    if cfg.data.split.group is not None:
        if "group" not in getattr(data_comp.schema, "model_fields", {}):
            raise ConfigError(f"data.split.group: source '{cfg.data.name}' has no group ids; "
                              "csv, parquet, arrow and npz sources do")
        params = {**params, "group": cfg.data.split.group}
    return data_comp.obj(validate_params(data_comp.schema, params, "data"))


def load_training_data(cfg: RunConfig, world: Any = None, local_replicas: int = 1,
                       transform: Any = None) -> TrainingData:
    """Split the source and build the training order.

    A tabular source's transform is fitted on the training split, unless ``transform`` (a run's
    saved ``preprocess.json``) is given.

    A step's global batch is ``batch_size * grad_accum * local_replicas * world.world_size`` rows;
    the loader yields this process's part of it (see :mod:`crossframe.data.sharding`).
    """
    source = load_source(cfg)
    rank, world_size = (world.rank, world.world_size) if world is not None else (0, 1)
    batch = cfg.train.batch_size * cfg.train.grad_accum * local_replicas * world_size
    shard = {"rank": rank, "world_size": world_size, "micro_batches": cfg.train.grad_accum}
    if hasattr(source, "training_data"):  # a source that builds its own batches (instruction data)
        return TrainingData(*source.training_data(cfg, rank, world_size, batch))
    if isinstance(source, Dataset):
        train, val, test = split_dataset(source, cfg.data, cfg.seed)
        fitted = None
        if source.transform is not None:  # tabular: statistics of the training split only, or the run's own
            fitted = transform if transform is not None else source.transform.fit(train.x)
            train, val, test = (normalised(d, fitted) for d in (train, val, test))
        loader_cls = BatchLoader
        if cfg.train.sampler == "oversample":
            from crossframe.data.samplers import OversampleLoader as loader_cls  # type: ignore[assignment]
        return TrainingData(loader_cls(train, batch, cfg.seed, **shard), val, train.info, test=test,
                            transform=fitted)
    from crossframe.text.corpus import TextCorpus
    from crossframe.text.loader import LMBatchLoader

    if not isinstance(source, TextCorpus):
        raise ConfigError(f"data.name: '{cfg.data.name}' gives {type(source).__name__}, "
                          "neither a Dataset nor a text corpus")
    if cfg.train.sampler != "shuffle":
        raise ConfigError(f"train.sampler: '{cfg.train.sampler}' is for class-labelled arrays, not text")
    store = token_store(cfg, source)
    seq_len = cfg.text.seq_len
    loader = LMBatchLoader(store["train"], seq_len, batch, cfg.seed, dtype=np.int64, **shard)
    val = TokenEvalSet(np.asarray(store["val"].tokens), seq_len, cfg.text.max_eval_tokens, cfg.text.eval_stride)
    info = DataInfo("language_modeling", (seq_len,), store.vocab_size)
    return TrainingData(loader, val, info, store.directory / "tokenizer")


def store_key(cfg: RunConfig) -> str:
    """A short hash of what determines a token store: the source, its split and the tokenizer."""
    what = {"data": cfg.data.model_dump(mode="json", exclude={"split"}),  # text splits by val_fraction alone
            "tokenizer": cfg.text.tokenizer.model_dump(mode="json")}
    return hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def token_store(cfg: RunConfig, corpus: Any) -> Any:
    """The run's token store: ``text.store`` or a cache keyed by :func:`store_key`, prepared once."""
    from crossframe.text.pipeline import build_store
    from crossframe.text.store import TokenStore

    directory = Path(cfg.text.store) if cfg.text.store else Path(cfg.output_dir) / ".tokens" / store_key(cfg)
    if (directory / "meta.json").is_file():
        return TokenStore.open(directory)
    return build_store(corpus, cfg.text.tokenizer, directory, cfg.data.val_fraction, where="text.tokenizer")
