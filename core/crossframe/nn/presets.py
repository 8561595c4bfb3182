"""The built-in ``mlp``, ``cnn`` and ``gpt``: graphs of neutral layers under their historical canonical names.

``mlp_layers(params)``, ``cnn_layers(params)`` and ``gpt_layers(params)`` give the ``model.layers`` of each;
``build_mlp``, ``build_cnn`` and ``build_gpt`` (registered as ``mlp``, ``cnn`` and ``gpt``) turn them into
specs that every backend lowers like any other graph. Their parameter tables are the ones the hand-written
models had (shapes, layouts, initial distributions; names too, except the gpt's two tables, now
``wte.weight`` and ``wpe.weight`` as in an imported GPT-2, which :func:`crossframe.checkpoint.load_checkpoint`
renames on load). Checkpoints written before the models became graphs load and evaluate to the same loss
(``tests/test_nn_presets.py``).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import ConfigDict, Field, PositiveInt, ValidationInfo, field_validator

from crossframe.data.dataset import DataInfo
from crossframe.errors import ConfigError
from crossframe.models.gpt import INIT_STD, GPTParams
from crossframe.models.spec import LowRank, LowRankModelParams, ModelSpec, check_low_rank_layers
from crossframe.nn.graph import build_graph
from crossframe.nn.layers import BUILTIN_LAYERS, Layer

#: the presets' activation names -> the layer library's (their ``gelu`` is the tanh form)
ACTIVATION = {"relu": "relu", "tanh": "tanh", "gelu": "gelu_tanh"}
#: the cnn's dense layers, the ones its ``low_rank`` can factorise
CNN_DENSE = ["fc.0", "fc.1"]


class MLPParams(LowRankModelParams):
    """Params of ``model: {name: mlp}``."""

    model_config = ConfigDict(extra="forbid")
    hidden: list[PositiveInt] = Field(default_factory=lambda: [128, 64], description="hidden layer widths")
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="after each hidden activation, in training only")
    low_rank: LowRank

    @field_validator("low_rank")
    @classmethod
    def _known_layers(cls, value: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        n_layers = len(info.data.get("hidden", [])) + 1
        return check_low_rank_layers(value, [f"layers.{i}" for i in range(n_layers)])


class CNNParams(LowRankModelParams):
    """Params of ``model: {name: cnn}``."""

    model_config = ConfigDict(extra="forbid")
    channels: list[PositiveInt] = Field(default_factory=lambda: [16, 32], description="channels per conv block")
    kernel_size: PositiveInt = 3
    hidden: PositiveInt = 64
    activation: Literal["relu", "gelu", "tanh"] = "relu"
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="before the last dense layer, in training only")
    low_rank: LowRank

    @field_validator("low_rank")
    @classmethod
    def _known_layers(cls, value: dict[str, int]) -> dict[str, int]:
        return check_low_rank_layers(value, CNN_DENSE)

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("must be odd (padding is 'same')")
        return value


def mlp_layers(params: dict[str, Any]) -> list[Any]:
    """``model.layers`` of the ``mlp`` with ``params`` (``hidden``, ``activation``, ``dropout``): flatten, then
    dense layers named ``layers.{i}`` with the activation (and dropout, when asked for) between them."""
    act = ACTIVATION[params.get("activation", "relu")]
    hidden = list(params.get("hidden", [128, 64]))
    drop = [{"dropout": params["dropout"]}] if params.get("dropout") else []
    out: list[Any] = ["flatten"]
    for i, width in enumerate(hidden):
        out += [{"dense": {"name": f"layers.{i}", "units": width, "gain": 2.0}}, act, *drop]
    return [*out, {"dense": {"name": f"layers.{len(hidden)}", "units": "outputs", "gain": 1.0}}]


def cnn_layers(params: dict[str, Any]) -> list[Any]:
    """``model.layers`` of the ``cnn`` with ``params`` (``channels``, ``kernel_size``, ``hidden``,
    ``activation``, ``dropout``): 'same' conv + activation + 2x2 max-pool blocks named ``conv.{i}``, then
    ``fc.0``, ``fc.1`` (with dropout before ``fc.1``, when asked for)."""
    act = ACTIVATION[params.get("activation", "relu")]
    drop = [{"dropout": params["dropout"]}] if params.get("dropout") else []
    out: list[Any] = []
    for i, channels in enumerate(params.get("channels", [16, 32])):
        conv = {"name": f"conv.{i}", "filters": channels, "kernel": params.get("kernel_size", 3), "padding": "same"}
        out += [{"conv2d": conv}, act, {"pool": {"kind": "max", "size": 2}}]
    return [*out, "flatten", {"dense": {"name": "fc.0", "units": params.get("hidden", 64), "gain": 2.0}}, act, *drop,
            {"dense": {"name": "fc.1", "units": "outputs", "gain": 1.0}}]


def gpt_layers(params: dict[str, Any]) -> list[Any]:
    """``model.layers`` of the ``gpt`` with ``params`` (:class:`crossframe.models.gpt.GPTParams`): token table
    ``wte`` (plus learned positions ``wpe``, or rotary attention), ``n_layer`` pre-LayerNorm blocks ``h.{i}``
    (``ln_1``, ``attn``, ``ln_2``, ``mlp.fc``, GELU (tanh), ``mlp.proj``), ``ln_f``, and logits from ``wte``
    (tied) or ``lm_head``. GPT-2's initialisation: std 0.02, the residual projections 0.02 / sqrt(2 n_layer)."""
    d, n = int(params["d_model"]), int(params["n_layer"])
    ff = int(params.get("d_ff") or 4 * d)
    rate = float(params.get("dropout", 0.0))
    drop = [{"dropout": rate}] if rate else []
    residual_std = INIT_STD / math.sqrt(2 * n)
    rope = bool(params.get("rope", False))
    attention = {"name": "attn", "heads": int(params["n_head"]), "rope": rope,
                 "rope_base": float(params.get("rope_base", 10000.0)), "qkv_std": INIT_STD, "proj_std": residual_std,
                 "dropout": rate}
    block = [
        {"residual": {"name": "", "layers": [{"norm": {"name": "ln_1"}}, {"attention": attention}, *drop]}},
        {"residual": {"name": "", "layers": [{"norm": {"name": "ln_2"}},
                                             {"dense": {"name": "mlp.fc", "units": ff, "std": INIT_STD}},
                                             {"activation": {"name": "mlp.act", "fn": "gelu_tanh"}},  # named: the
                                             # two residuals share the path h.{i}, so unnamed layers would collide
                                             {"dense": {"name": "mlp.proj", "units": d, "std": residual_std}},
                                             *drop]}},
    ]
    positions = [] if rope else [{"positional": {"name": "wpe", "max_len": int(params["max_seq_len"])}}]
    head = ({"tied_head": "wte"} if params.get("tied_embeddings", True)
            else {"dense": {"name": "lm_head", "units": "outputs", "bias": False, "std": INIT_STD}})
    return [{"embedding": {"name": "wte", "vocab": "outputs", "dim": d}}, *positions, *drop,
            {"sequential": {"name": "h", "repeat": n, "layers": block}}, {"norm": {"name": "ln_f"}}, head]


def builtin_lookup(kind: str, where: str) -> type[Layer]:
    """A built-in layer class by kind (the presets use nothing else, so they need no plugin registry)."""
    return {cls.kind: cls for cls in BUILTIN_LAYERS}[kind]


def preset_spec(name: str, params: MLPParams | CNNParams | GPTParams, layers: list[Any], info: DataInfo) -> ModelSpec:
    """The spec named ``name`` of the graph ``layers`` on ``info``'s inputs (reference = the graph's)."""
    graph = build_graph(layers, info.input_shape, info.num_outputs, builtin_lookup, where=f"model ({name})",
                        low_rank=params.low_rank)
    return ModelSpec(name, params.model_dump(), info, graph.table, graph.reference, graph=graph)


def build_mlp(params: MLPParams, info: DataInfo) -> ModelSpec:
    """The spec of an MLP from ``info.input_shape`` (flattened) to ``info.num_outputs``."""
    return preset_spec("mlp", params, mlp_layers(params.model_dump()), info)


def build_cnn(params: CNNParams, info: DataInfo) -> ModelSpec:
    """The spec of a CNN on NHWC images ``info.input_shape == (H, W, C)``."""
    if len(info.input_shape) != 3:
        raise ConfigError(f"model.name: 'cnn' needs image inputs (H, W, C); the dataset gives {info.input_shape}")
    h, w = info.input_shape[:2]
    if h >> len(params.channels) == 0 or w >> len(params.channels) == 0:
        raise ConfigError(f"model.channels: {len(params.channels)} pooling blocks shrink "
                          f"{info.input_shape[:2]} images to nothing; use fewer")
    return preset_spec("cnn", params, cnn_layers(params.model_dump()), info)


def build_gpt(params: GPTParams, info: DataInfo) -> ModelSpec:
    """The spec of a GPT whose vocabulary is ``info.num_outputs`` and context ``info.input_shape[0]``."""
    if len(info.input_shape) != 1:
        raise ConfigError(f"model.name: 'gpt' needs token sequences; the dataset gives inputs of shape "
                          f"{info.input_shape}")
    if info.input_shape[0] > params.max_seq_len:
        raise ConfigError(f"model.max_seq_len: {params.max_seq_len} is shorter than the data's sequences "
                          f"({info.input_shape[0]} tokens)")
    return preset_spec("gpt", params, gpt_layers(params.model_dump()), info)
