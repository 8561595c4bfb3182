"""A local Hugging Face directory as a crossframe model: its spec (a graph) and canonical weights.

``model: {name: hf, path: DIR}`` builds the graph from ``DIR/config.json`` for the data's sequence length;
the run starts from the directory's weights instead of a seeded initialisation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from crossframe.data.dataset import DataInfo
from crossframe.errors import ConfigError
from crossframe.hf.architectures import Architecture, architecture, read_config
from crossframe.hf.weights import check_shapes, read_tensors, to_canonical, weight_files
from crossframe.models.spec import ModelSpec, Params
from crossframe.nn.graph import build_graph
from crossframe.nn.model import registry_lookup


class HFParams(BaseModel):
    """Params of ``model: {name: hf}``."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="a local directory with config.json and model.safetensors (nothing is downloaded)")
    context: PositiveInt | None = Field(None, description="sequence length (default: the data's)")
    config: dict[str, Any] | None = Field(None, description="filled from config.json when the run starts, so a run "
                                                            "rebuilds its model without the directory")


class PretrainedSpec(ModelSpec):
    """A spec whose initial weights are the pretrained ones (read when first asked for)."""

    def init(self, seed: int) -> Params:
        """The directory's weights (the seed does not matter), as float32 master weights."""
        weights, _ = load_weights(Path(self.params["path"]), architecture_of(self))
        return {k: np.asarray(v, np.float32) for k, v in weights.items()}


def load_architecture(directory: str | Path, context: int | None = None) -> Architecture:
    """The architecture of ``directory``'s ``config.json`` for sequences of ``context`` tokens."""
    directory = Path(directory)
    return architecture(read_config(directory), context, source=str(directory / "config.json"))


def build_spec(arch: Architecture, directory: str | Path, params: dict[str, Any] | None = None) -> ModelSpec:
    """The spec of ``arch`` (a graph of neutral layers) for token sequences of ``arch.context``."""
    info = DataInfo("language_modeling", (arch.context,), arch.vocab)
    graph = build_graph(arch.layers, info.input_shape, info.num_outputs, registry_lookup,
                        where=f"{directory}/config.json")
    spec = PretrainedSpec("hf", dict(params or {"path": str(directory), "context": arch.context}), info,
                          graph.table, graph.reference, graph=graph)
    spec.graph_arch = arch  # type: ignore[attr-defined]
    return spec


def load_weights(directory: Path, arch: Architecture) -> tuple[dict[str, np.ndarray], list[Path]]:
    """Canonical weights in their stored dtype (views where no concatenation is needed), and the files read."""
    files = weight_files(directory)
    weights = to_canonical(arch, read_tensors(files), str(directory))
    if "wpe.weight" in weights and len(weights["wpe.weight"]) > arch.context:  # positions beyond the context
        weights["wpe.weight"] = weights["wpe.weight"][: arch.context]
    return weights, files


def load_pretrained(directory: str | Path, context: int | None = None) -> tuple[ModelSpec, dict[str, np.ndarray]]:
    """``(spec, canonical weights)`` of the model in ``directory``; weights keep their stored dtype."""
    directory = Path(directory)
    arch = load_architecture(directory, context)
    spec = build_spec(arch, directory)
    weights, _ = load_weights(directory, arch)
    check_shapes({p.name: p.shape for p in spec.table}, weights, str(directory))
    return spec, weights


def build_hf_model(params: HFParams, info: DataInfo) -> ModelSpec:
    """The ``hf`` model for ``info``'s token sequences (registered as ``model: {name: hf, path: DIR}``)."""
    if info.task != "language_modeling" or len(info.input_shape) != 1:
        raise ConfigError(f"model.name: 'hf' needs token sequences; the data gives {info.task} {info.input_shape}")
    directory = Path(params.path)
    context = params.context or info.input_shape[0]
    config = params.config if params.config is not None else read_config(directory)
    arch = architecture(config, context, source=str(directory / "config.json"))
    if info.num_outputs > arch.vocab:
        raise ConfigError(f"model.path: the tokenizer has {info.num_outputs} ids, the model's vocab_size is "
                          f"{arch.vocab}")
    return build_spec(arch, directory, {**params.model_dump(), "context": context, "config": config})


def architecture_of(spec: ModelSpec) -> Architecture:
    """The architecture an ``hf`` spec (or one rebuilt from a checkpoint) was built from."""
    arch = getattr(spec, "graph_arch", None)
    if arch is not None:
        return arch
    config = spec.params.get("config") or read_config(Path(spec.params["path"]))
    return architecture(config, spec.params.get("context"))
