"""Seeded index splits: hold-out (train / val / test) and k folds, plain, stratified or grouped.

Every function returns index arrays into ``range(n)`` and depends only on its arguments, so a
resumed run, ``crossframe eval`` and each ``crossframe cv`` fold recompute the same split.

- **Stratified** (class labels given): each class's examples are shuffled and laid end to end,
  class after class; a hold-out part takes evenly spaced positions of that order (so every class
  gives ``floor`` or ``ceil`` of its share), and fold ``i`` takes positions ``i, i + k, ...``
  (every class's count in a fold is within one example of ``n_c / k``).
- **Grouped** (group ids given): whole groups move together. Hold-out parts take shuffled groups
  until they reach their share; folds take groups largest first, each into the emptiest fold.
"""

from __future__ import annotations

import numpy as np

from crossframe.errors import ConfigError, DataError

#: the seed stream of splits (mixed with the run's seed)
SPLIT_STREAM = 7919


def _rng(seed: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_STREAM, salt])


def _check(n: int, labels: np.ndarray | None, groups: np.ndarray | None) -> None:
    if labels is not None and groups is not None:
        raise ConfigError("data.split: 'stratify' and 'group' together are not supported; choose one")
    for name, arr in (("labels", labels), ("groups", groups)):
        if arr is not None and len(arr) != n:
            raise DataError(f"data.split: {len(arr)} {name} for {n} examples")


def class_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices sorted by class (each class shuffled with ``seed``), the order stratified splits deal from."""
    rng = _rng(seed, 1)
    labels = np.asarray(labels)
    return np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
                          ) if len(labels) else np.zeros(0, np.int64)


def evenly_spaced(n: int, picks: int) -> np.ndarray:
    """A boolean mask of ``picks`` of ``n`` positions spread evenly (any run of ``L`` consecutive
    positions holds ``floor`` or ``ceil`` of ``L * picks / n`` of them)."""
    i = np.arange(n, dtype=np.int64)
    return (i + 1) * picks // max(n, 1) > i * picks // max(n, 1)


def holdout(n: int, val: float, test: float, seed: int, *, labels: np.ndarray | None = None,
            groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, val, test)`` index arrays with about ``val`` and ``test`` of the ``n`` examples."""
    _check(n, labels, groups)
    n_val, n_test = round(n * val), round(n * test)
    if n_val + n_test >= n:
        raise DataError(f"data.split: val {val} and test {test} leave no training examples of {n}")
    if groups is not None:
        return _group_holdout(np.asarray(groups), n_val, n_test, seed)
    if labels is None:
        order = _rng(seed, 0).permutation(n)
        return np.sort(order[n_val + n_test:]), np.sort(order[:n_val]), np.sort(order[n_val:n_val + n_test])
    order = class_order(labels, seed)
    in_val = evenly_spaced(n, n_val)
    rest = order[~in_val]
    in_test = evenly_spaced(len(rest), n_test)
    return np.sort(rest[~in_test]), np.sort(order[in_val]), np.sort(rest[in_test])


def _group_holdout(groups: np.ndarray, n_val: int, n_test: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    part = np.zeros(len(names), np.int64)  # 0 train, 1 val, 2 test
    filled = [0, 0, 0]
    for g in _rng(seed, 2).permutation(len(names)):
        for which, want in ((1, n_val), (2, n_test)):
            if filled[which] < want:
                part[g] = which
                filled[which] += int(counts[g])
                break
    if (part == 0).sum() == 0:
        raise DataError(f"data.split.group: {len(names)} groups leave none for training; lower val or test")
    where = part[inverse]
    return np.flatnonzero(where == 0), np.flatnonzero(where == 1), np.flatnonzero(where == 2)


def kfold(n: int, k: int, seed: int, *, labels: np.ndarray | None = None,
          groups: np.ndarray | None = None) -> list[np.ndarray]:
    """``k`` disjoint index arrays that cover ``range(n)``: fold ``i`` is validation of run ``i``."""
    _check(n, labels, groups)
    if k < 2:
        raise ConfigError(f"--folds: {k} folds; use at least 2")
    if groups is not None:
        names, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
        if len(names) < k:
            raise DataError(f"data.split.group: {len(names)} groups cannot fill {k} folds")
        shuffled = _rng(seed, 3).permutation(len(names))
        by_size = shuffled[np.argsort(-counts[shuffled], kind="stable")]
        fold_of, sizes = np.zeros(len(names), np.int64), np.zeros(k, np.int64)
        for g in by_size:
            fold_of[g] = int(np.argmin(sizes))
            sizes[fold_of[g]] += counts[g]
        where = fold_of[inverse.reshape(-1)]
        return [np.flatnonzero(where == i) for i in range(k)]
    if n < k:
        raise DataError(f"--folds: {k} folds of {n} examples; use at most {n}")
    order = class_order(labels, seed) if labels is not None else _rng(seed, 0).permutation(n)
    return [np.sort(order[i::k]) for i in range(k)]
