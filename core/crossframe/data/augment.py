"""Seeded, resumable augmentation in the numpy pipeline, so every backend trains on the same batches.

``train.augment`` is a list of one-key mappings, applied in order to each training batch's ``x``:

- ``{flip: horizontal}`` (or ``vertical``): each image ``[H, W, C]`` is mirrored with probability 1/2;
- ``{random_crop: {padding: 2}}``: zero-pad each side by ``padding``, then cut an ``H x W`` window at
  a random offset (each example its own);
- ``{noise: 0.05}``: add Gaussian noise of that standard deviation;
- ``{token_mask: {rate: 0.15, id: 0}}`` (language models): replace each input token by ``id`` with
  probability ``rate`` (targets are untouched).

The random numbers of step ``s`` come from ``numpy.random.default_rng([seed, s, rank, 0xA6])``:
a pure function of the step, so a resumed run, and a run on another backend, see the same bits.
Evaluation batches are never augmented.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator

from crossframe.errors import ConfigError

Batch = dict[str, np.ndarray]
Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]
_STREAM = 0xA6  # keeps augmentation bits apart from any other stream seeded by (seed, step)


def _flip(value: Any) -> Augment:
    if value not in ("horizontal", "vertical"):
        raise ValueError(f"flip: must be 'horizontal' or 'vertical', got {value!r}")
    axis = 2 if value == "horizontal" else 1

    def flip(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _images(x, "flip")
        chosen = rng.random(len(x)) < 0.5
        out = x.copy()
        out[chosen] = np.flip(x[chosen], axis=axis)
        return out

    return flip


def _random_crop(value: Any) -> Augment:
    padding = value.get("padding") if isinstance(value, dict) else None
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 1 or set(value) - {"padding"}:
        raise ValueError(f"random_crop: must be {{padding: N}} with an integer N >= 1, got {value!r}")

    def crop(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        _images(x, "random_crop")
        b, h, w, _ = x.shape
        padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        dy = rng.integers(0, 2 * padding + 1, b)
        dx = rng.integers(0, 2 * padding + 1, b)
        out = np.empty_like(x)
        offsets = dy * (2 * padding + 1) + dx
        for offset in np.unique(offsets):  # one slice per distinct window: (2P + 1)^2 at most
            rows = np.flatnonzero(offsets == offset)
            oy, ox = divmod(int(offset), 2 * padding + 1)
            out[rows] = padded[rows, oy:oy + h, ox:ox + w]
        return out

    return crop


def _noise(value: Any) -> Augment:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"noise: must be a standard deviation >= 0, got {value!r}")
    std = float(value)

    def noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return x + (rng.standard_normal(x.shape, dtype=np.float32) * np.float32(std)).astype(x.dtype)

    return noise


def _token_mask(value: Any) -> Augment:
    ok = isinstance(value, dict) and not set(value) - {"rate", "id"} and "rate" in value
    rate, token = (value.get("rate"), value.get("id", 0)) if isinstance(value, dict) else (None, None)
    if not ok or not isinstance(rate, (int, float)) or not 0 <= rate < 1 or not isinstance(token, int) or token < 0:
        raise ValueError(f"token_mask: must be {{rate: R, id: N}} with 0 <= R < 1 and a token id N >= 0, got {value!r}")

    def mask(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        chosen = rng.random(x.shape) < rate
        return np.where(chosen, np.asarray(token, dtype=x.dtype), x)

    return mask


AUGMENTATIONS: dict[str, Callable[[Any], Augment]] = {
    "flip": _flip, "random_crop": _random_crop, "noise": _noise, "token_mask": _token_mask,
}


def _images(x: np.ndarray, name: str) -> None:
    if x.ndim != 4:
        raise ConfigError(f"train.augment: '{name}' needs image batches [B, H, W, C]; got shape {x.shape}")


def parse(entries: list[dict[str, Any]]) -> list[Augment]:
    """The augmentation functions of ``train.augment`` entries (raises ``ValueError`` naming the entry)."""
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ValueError(f"entry {i} must be one mapping like {{flip: horizontal}}, got {entry!r}")
        (name, value), = entry.items()
        if name not in AUGMENTATIONS:
            raise ValueError(f"entry {i}: unknown augmentation '{name}'; use one of {', '.join(AUGMENTATIONS)}")
        out.append(AUGMENTATIONS[name](value))
    return out


def _validated(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    parse(entries)
    return entries


#: the config type of ``train.augment``: checked at load time, kept as written
AugmentList = Annotated[list[dict[str, Any]], AfterValidator(_validated)]


def augment_batch(batch: Batch, augments: list[Augment], seed: int, step: int, rank: int = 0) -> Batch:
    """``batch`` with its ``x`` augmented for 0-based ``step`` (a pure function of its arguments)."""
    rng = np.random.default_rng([seed, step, rank, _STREAM])
    x = batch["x"]
    for fn in augments:
        x = fn(x, rng)
    return {**batch, "x": x}


class AugmentedLoader:
    """A training loader whose batches are augmented; everything else is the wrapped loader's."""

    def __init__(self, loader: Any, entries: list[dict[str, Any]], seed: int) -> None:
        self.loader, self.augments, self.seed = loader, parse(entries), seed
        self.batch(0)  # an augmentation that does not fit the data fails here, before any training

    def batch(self, step: int) -> Batch:
        """The wrapped loader's batch at ``step``, augmented."""
        return augment_batch(self.loader.batch(step), self.augments, self.seed, step,
                             getattr(self.loader, "rank", 0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def augmented(loader: Any, entries: list[dict[str, Any]], seed: int) -> Any:
    """``loader`` wrapped by :class:`AugmentedLoader`, or unchanged when ``entries`` is empty."""
    return AugmentedLoader(loader, entries, seed) if entries else loader
