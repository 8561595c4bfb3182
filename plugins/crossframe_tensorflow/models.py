"""The native ``tf.Module`` of a model (every model is a graph of neutral layers, lowered by
:mod:`crossframe_tensorflow.lowering`) and exact native <-> canonical conversion.

Variables carry the canonical names, and TensorFlow's own layouts *are* the canonical ones
(dense ``[in, out]`` for ``x @ W``; conv kernels HWIO on NHWC data; embeddings ``[vocab, dim]``
for ``tf.gather``), so conversion is the identity: weights go in with ``assign`` and come out as
float32 numpy copies, bit for bit. The forward passes are plain tf ops; no Keras. A factorised
(``low_rank``) linear holds ``<prefix>.weight_u`` ``[in, r]`` and ``<prefix>.weight_v``
``[r, out]`` and runs as two matmuls.
"""

from __future__ import annotations

import re

import numpy as np

from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec, Params
from crossframe_tensorflow.devices import tf

MODELS = ("mlp", "cnn", "gpt", "graph", "hf")
RNG_ALG = "philox"  # dropout masks: the same bits on CPU and GPU for a given seed


class Model(tf.Module):
    """A model's float32 variables under their canonical names, and its forward pass.

    ``model(x, dtype)`` computes in ``dtype`` (float32, or bfloat16 / float16 for mixed
    precision: weights and float inputs are cast inside the forward) and returns float32
    outputs. ``training`` and ``seed`` (an int ``[2]`` tensor) matter only to models with
    randomness (dropout) or activation checkpointing.
    """

    def __init__(self, spec: ModelSpec, weights: Params) -> None:
        super().__init__(name=module_name(spec.name))
        spec.check_weights(weights)
        self.spec = spec
        with self.name_scope:
            self.params = {p.name: tf.Variable(_canonical_array(weights[p.name]), name=p.name)
                           for p in spec.table}

    @property
    def ordered(self) -> list[tf.Variable]:
        """The variables in the order of the canonical table."""
        return [self.params[p.name] for p in self.spec.table]

    @property
    def uses_rng(self) -> bool:
        """Whether a training forward draws random numbers (and so needs a ``seed``)."""
        return False

    def weight(self, name: str, dtype: tf.DType) -> tf.Tensor:
        """Parameter ``name`` in ``dtype``: the variable itself in float32, else a cast of it.

        The cast happens where the weight is used, so a block under ``tf.recompute_grad``
        reads its variables itself (recompute_grad differentiates variables read inside the
        block, not tensors captured from outside it).
        """
        v = self.params[name]
        return v if dtype == tf.float32 else tf.cast(v, dtype)

    def __call__(self, x: tf.Tensor, dtype: tf.DType = tf.float32, *, training: bool = False,
                 seed: tf.Tensor | None = None) -> tf.Tensor:
        """Outputs (float32) for a batch ``x`` computed in ``dtype``."""
        raise NotImplementedError


def module_name(model: str) -> str:
    """A ``tf.Module`` name for model ``model`` (a plugin's model may be named ``my-model``: not an identifier)."""
    name = re.sub(r"\W", "_", model)
    return name if name[:1].isalpha() else f"model_{name}"


def _canonical_array(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.float32)


def build_model(spec: ModelSpec, weights: Params, activation_checkpointing: bool = False) -> Model:
    """The native model for ``spec`` holding ``weights`` (create it under the target ``tf.device``).

    ``activation_checkpointing`` recomputes each block of a repeated ``sequential`` (a transformer's
    layers) in the backward pass of a training step (``tf.recompute_grad``); a graph without one
    ignores it.
    """
    if spec.graph is None:
        raise CapabilityError(f"model.name: backend 'tensorflow' runs graphs of neutral layers; '{spec.name}' "
                              f"is not one")
    from crossframe_tensorflow.lowering import GraphModel  # neutral layers: one lowering for every graph

    return GraphModel(spec, weights, activation_checkpointing)


def load_canonical(model: Model, weights: Params) -> None:
    """Assign canonical numpy weights to the model's variables, exactly."""
    model.spec.check_weights(weights)
    for p in model.spec.table:
        model.params[p.name].assign(_canonical_array(weights[p.name]))


def export_canonical(model: Model) -> Params:
    """The model's weights as canonical float32 numpy arrays (copies)."""
    return {p.name: np.array(model.params[p.name].numpy(), dtype=np.float32, copy=True) for p in model.spec.table}
