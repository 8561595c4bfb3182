"""Native ``tf.Module`` s for the core's architectures and exact native <-> canonical conversion.

Variables carry the canonical names, and TensorFlow's own layouts *are* the canonical ones
(dense ``[in, out]`` for ``x @ W``; conv kernels HWIO on NHWC data), so conversion is the
identity: weights go in with ``assign`` and come out as float32 numpy copies, bit for bit.
The forward passes are plain tf ops; no Keras.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec, Params
from crossframe_tensorflow.devices import tf

MODELS = ("mlp", "cnn")

ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "relu": tf.nn.relu,
    "tanh": tf.math.tanh,
    "gelu": lambda x: tf.nn.gelu(x, approximate=True),  # the tanh approximation, as the reference
}

Forward = Callable[[Mapping[str, tf.Tensor], tf.Tensor], tf.Tensor]


def _dense(h: tf.Tensor, w: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.nn.bias_add(tf.matmul(h, w), b)


def mlp_forward(spec: ModelSpec) -> Forward:
    """``mlp``: flatten, then dense layers with the activation between them."""
    flat = math.prod(spec.data_info.input_shape)
    n_layers = sum(1 for p in spec.table if p.layout == "dense")
    act = ACTIVATIONS[spec.params["activation"]]

    def forward(w: Mapping[str, tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        h = tf.reshape(x, [-1, flat])
        for i in range(n_layers):
            h = _dense(h, w[f"layers.{i}.weight"], w[f"layers.{i}.bias"])
            if i < n_layers - 1:
                h = act(h)
        return h

    return forward


def cnn_forward(spec: ModelSpec) -> Forward:
    """``cnn``: conv (SAME, stride 1) + activation + 2x2 max-pool blocks on NHWC, then two dense layers."""
    flat = next(p.shape[0] for p in spec.table if p.name == "fc.0.weight")
    n_conv = len(spec.params["channels"])
    act = ACTIVATIONS[spec.params["activation"]]

    def forward(w: Mapping[str, tf.Tensor], x: tf.Tensor) -> tf.Tensor:
        h = x
        for i in range(n_conv):
            h = tf.nn.bias_add(tf.nn.conv2d(h, w[f"conv.{i}.weight"], strides=1, padding="SAME"),
                               w[f"conv.{i}.bias"])
            h = tf.nn.max_pool2d(act(h), ksize=2, strides=2, padding="VALID")
        h = tf.reshape(h, [-1, flat])  # NHWC flatten order, as the canonical dense weights expect
        h = act(_dense(h, w["fc.0.weight"], w["fc.0.bias"]))
        return _dense(h, w["fc.1.weight"], w["fc.1.bias"])

    return forward


FORWARDS: dict[str, Callable[[ModelSpec], Forward]] = {"mlp": mlp_forward, "cnn": cnn_forward}


class Model(tf.Module):
    """A model's float32 variables under their canonical names, and its forward pass.

    ``model(x, dtype)`` computes in ``dtype`` (float32, or bfloat16 / float16 for mixed
    precision: weights and inputs are cast inside the forward) and returns float32 outputs.
    """

    def __init__(self, spec: ModelSpec, weights: Params) -> None:
        super().__init__(name=spec.name)
        if spec.name not in FORWARDS:
            raise CapabilityError(f"model.name: backend 'tensorflow' has no native '{spec.name}'")
        spec.check_weights(weights)
        self.spec = spec
        self._forward = FORWARDS[spec.name](spec)
        with self.name_scope:
            self.params = {p.name: tf.Variable(_canonical_array(weights[p.name]), name=p.name)
                           for p in spec.table}

    @property
    def ordered(self) -> list[tf.Variable]:
        """The variables in the order of the canonical table."""
        return [self.params[p.name] for p in self.spec.table]

    def __call__(self, x: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
        """Outputs (float32) for a batch ``x`` computed in ``dtype``."""
        if dtype == tf.float32:
            return self._forward(self.params, x)
        weights = {name: tf.cast(v, dtype) for name, v in self.params.items()}
        return tf.cast(self._forward(weights, tf.cast(x, dtype)), tf.float32)


def _canonical_array(value: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=np.float32)


def build_model(spec: ModelSpec, weights: Params) -> Model:
    """The native model for ``spec`` holding ``weights`` (create it under the target ``tf.device``)."""
    return Model(spec, weights)


def load_canonical(model: Model, weights: Params) -> None:
    """Assign canonical numpy weights to the model's variables, exactly."""
    model.spec.check_weights(weights)
    for p in model.spec.table:
        model.params[p.name].assign(_canonical_array(weights[p.name]))


def export_canonical(model: Model) -> Params:
    """The model's weights as canonical float32 numpy arrays (copies)."""
    return {p.name: np.array(model.params[p.name].numpy(), dtype=np.float32, copy=True) for p in model.spec.table}
