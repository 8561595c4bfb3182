"""The run's train / val / test parts of an array dataset, as ``data.split`` asks (see
:mod:`crossframe.data.splits` for the seeded index rules)."""

from __future__ import annotations

import numpy as np

from crossframe.config.schema import DataConfig
from crossframe.data.dataset import Dataset
from crossframe.data.splits import holdout, kfold
from crossframe.errors import ConfigError


def _is_plain(data: DataConfig) -> bool:
    sp = data.split
    return sp.val is None and sp.test == 0 and not sp.stratify and sp.group is None and sp.folds is None


def split_dataset(source: Dataset, data: DataConfig, seed: int) -> tuple[Dataset, Dataset, Dataset | None]:
    """``(train, val, test)``; ``test`` is ``None`` unless ``data.split.test`` is set.

    Without a ``split`` section the split is the source's own validation part or the seeded
    ``val_fraction`` split runs have always had. With ``folds``/``fold``, validation is that fold
    of everything but the test part (a source's own validation part joins the pool).
    """
    if _is_plain(data):
        train, val = source.split(data.val_fraction, seed)
        return train, val, None
    sp = data.split
    if sp.stratify and source.task != "classification":
        raise ConfigError(f"data.split.stratify: needs class labels; this dataset is {source.task}")
    if sp.group is not None and source.groups is None:
        raise ConfigError(f"data.split.group: source '{data.name}' gave no group ids for '{sp.group}'")
    pool = source
    own_val = None
    if source.x_val is not None and source.y_val is not None:
        own_val = Dataset(source.x_val, source.y_val, source.task, class_names=source.class_names,
                          transform=source.transform)
        if sp.folds is not None:  # cross-validation folds all labelled examples
            pool = Dataset(np.concatenate([source.x, source.x_val]), np.concatenate([source.y, source.y_val]),
                           source.task, class_names=source.class_names, transform=source.transform)
            own_val = None
        else:
            pool = source.subset(np.arange(len(source)))
    if sp.group is not None and pool.groups is None:
        raise ConfigError("data.split.group: a source's own validation part has no group ids; drop 'folds'")

    def strata(ds: Dataset) -> dict[str, np.ndarray | None]:
        return {"labels": ds.y if sp.stratify else None, "groups": ds.groups}

    n = len(pool)
    test = None
    if sp.folds is not None or own_val is not None:
        if sp.test > 0:
            rest_idx, _, test_idx = holdout(n, 0.0, sp.test, seed, **strata(pool))
            test, pool = pool.subset(test_idx), pool.subset(rest_idx)
        if own_val is not None:
            return pool, own_val, test
        assert sp.fold is not None and sp.folds is not None
        folds = kfold(len(pool), sp.folds, seed, **strata(pool))
        val_idx = folds[sp.fold]
        train_idx = np.sort(np.concatenate([f for i, f in enumerate(folds) if i != sp.fold]))
        return pool.subset(train_idx), pool.subset(val_idx), test
    train_idx, val_idx, test_idx = holdout(n, sp.val if sp.val is not None else data.val_fraction, sp.test, seed,
                                           **strata(pool))
    return pool.subset(train_idx), pool.subset(val_idx), pool.subset(test_idx) if sp.test > 0 else None
