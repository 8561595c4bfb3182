"""``train.freeze``: which canonical weights a run keeps exactly as they start."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from crossframe.errors import ConfigError
from crossframe.models.spec import ModelSpec


def frozen_names(spec: ModelSpec, patterns: Iterable[str], where: str = "train.freeze") -> frozenset[str]:
    """The canonical names matching any of ``patterns`` (exact names or fnmatch patterns); a pattern that
    matches nothing is a one-line error naming it."""
    names = [p.name for p in spec.table]
    out: set[str] = set()
    if getattr(spec, "base", None) is not None:  # LoRA: only the adapters train
        out.update(n for n in names if not n.endswith((".lora_a", ".lora_b")))
    for i, pattern in enumerate(patterns):
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(f"{where}.{i}: '{pattern}' matches no weight of model '{spec.name}' "
                              f"(names look like {', '.join(names[:3])})")
        out.update(hits)
    if out and len(out) == len(names):
        raise ConfigError(f"{where}: freezes every weight of model '{spec.name}'; nothing would train")
    return frozenset(out)
