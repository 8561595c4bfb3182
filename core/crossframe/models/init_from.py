"""``model.init_from``: start a run from existing weights instead of a seeded initialisation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from crossframe.errors import ConfigError
from crossframe.models.spec import ModelSpec, Params

WHERE = "model.init_from"


def source_weights(source: str | Path, spec: ModelSpec) -> dict[str, np.ndarray]:
    """Canonical weights of ``source``: a Hugging Face directory (``config.json``), else a run or checkpoint."""
    path = Path(source)
    if not path.exists():
        raise ConfigError(f"{WHERE}: '{source}' does not exist")
    if (path / "config.json").is_file():
        from crossframe.hf.loading import load_architecture, load_weights

        context = spec.data_info.input_shape[0] if spec.data_info.input_shape else None
        weights, _ = load_weights(path, load_architecture(path, context))
        return weights
    from crossframe.checkpoint import load_checkpoint

    return dict(load_checkpoint(path).weights)


def initial_weights(source: str | Path, spec: ModelSpec, fresh: Mapping[str, np.ndarray]) -> Params:
    """``fresh`` with every weight ``source`` holds for this model (same name and shape) taken from it.
    Weights only the run has (LoRA adapters) keep their fresh values; any other weight ``source`` lacks,
    or holds with another shape, is a one-line error naming it."""
    loaded = source_weights(source, spec)
    out = dict(fresh)
    for p in spec.table:
        if p.name.endswith((".lora_a", ".lora_b")) and p.name not in loaded:
            continue
        if p.name not in loaded:
            raise ConfigError(f"{WHERE}: '{source}' has no weight '{p.name}' for model '{spec.name}'")
        if tuple(loaded[p.name].shape) != tuple(p.shape):
            raise ConfigError(f"{WHERE}: '{p.name}' in '{source}' has shape {tuple(loaded[p.name].shape)}, "
                              f"the model needs {tuple(p.shape)}")
        out[p.name] = np.asarray(loaded[p.name], np.float32)
    return out
