"""Pure JAX forward functions for the core's architectures, and native <-> canonical conversion.

The native parameters are a plain pytree: a dict from canonical name to ``jax.Array``. The
canonical layouts are JAX's own (dense ``[in, out]`` for ``x @ W``; conv kernels HWIO on NHWC
data through ``lax.conv_general_dilated``), so conversion is the identity; only placement on
the device and exact float32 host copies happen here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec, Params

Forward = Callable[[Mapping[str, jax.Array], jax.Array], jax.Array]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": partial(jax.nn.gelu, approximate=True),  # the tanh approximation, as the reference
}

CONV_DIMS = ("NHWC", "HWIO", "NHWC")


def _precision(dtype: Any) -> Any:
    """HIGHEST for float32 (no silent TF32 / bf16 passes on GPUs and TPUs), the default otherwise."""
    return lax.Precision.HIGHEST if dtype is None else lax.Precision.DEFAULT


def dense(x: jax.Array, w: jax.Array, b: jax.Array, precision: Any) -> jax.Array:
    """``x @ w + b`` with canonical ``[in, out]`` weights."""
    return jnp.matmul(x, w, precision=precision) + b


def conv2d_same(x: jax.Array, w: jax.Array, b: jax.Array, precision: Any) -> jax.Array:
    """Stride-1 'same' convolution, NHWC input and HWIO kernel (the canonical layouts)."""
    y = lax.conv_general_dilated(x, w, window_strides=(1, 1), padding="SAME", dimension_numbers=CONV_DIMS,
                                 precision=precision)
    return y + b


def max_pool2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 on NHWC, 'VALID' (odd trailing rows/columns dropped)."""
    # a Python -inf init lets JAX recognise the max monoid (reduce_window_max, differentiable)
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def _cast(params: Mapping[str, jax.Array], x: jax.Array, dtype: Any) -> tuple[Mapping[str, jax.Array], jax.Array]:
    if dtype is None:
        return params, x
    return {k: v.astype(dtype) for k, v in params.items()}, x.astype(dtype)


def make_forward(spec: ModelSpec, dtype: Any = None) -> Forward:
    """A pure ``fn(params, x) -> outputs`` for ``spec``; ``dtype`` is the compute dtype (None: fp32).

    With a compute dtype, parameters and inputs are cast inside the function (the master
    weights stay float32) and the outputs come back in that dtype.
    """
    p = spec.params
    act = ACTIVATIONS[p["activation"]]
    precision = _precision(dtype)
    if spec.name == "mlp":
        n_layers = len(p["hidden"]) + 1

        def mlp(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
            params, h = _cast(params, x, dtype)
            h = h.reshape(h.shape[0], -1)
            for i in range(n_layers):
                h = dense(h, params[f"layers.{i}.weight"], params[f"layers.{i}.bias"], precision)
                if i < n_layers - 1:
                    h = act(h)
            return h

        return mlp
    if spec.name == "cnn":
        n_conv = len(p["channels"])

        def cnn(params: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
            params, h = _cast(params, x, dtype)
            for i in range(n_conv):
                h = conv2d_same(h, params[f"conv.{i}.weight"], params[f"conv.{i}.bias"], precision)
                h = max_pool2(act(h))
            h = h.reshape(h.shape[0], -1)  # NHWC flatten order, as the canonical dense layer expects
            h = act(dense(h, params["fc.0.weight"], params["fc.0.bias"], precision))
            return dense(h, params["fc.1.weight"], params["fc.1.bias"], precision)

        return cnn
    raise CapabilityError(f"model.name: backend 'jax' has no native '{spec.name}'")


def to_native(layout: str, value: np.ndarray) -> np.ndarray:
    """Canonical layout -> JAX layout: the identity for every layout."""
    return value


def to_canonical(layout: str, value: np.ndarray) -> np.ndarray:
    """JAX layout -> canonical layout: the identity for every layout."""
    return value


def place(arrays: Mapping[str, np.ndarray], device: Any) -> dict[str, jax.Array]:
    """Fresh float32 device arrays (owned by JAX, so they can be donated) in canonical order."""
    host = {k: np.array(v, dtype=np.float32, copy=True) for k, v in arrays.items()}
    return jax.device_put(host, device)


def load_canonical(spec: ModelSpec, weights: Params, device: Any) -> dict[str, jax.Array]:
    """Canonical numpy weights as the native pytree on ``device``, checked against the table."""
    spec.check_weights(weights)
    return place({p.name: to_native(p.layout, weights[p.name]) for p in spec.table}, device)


def host_copy(values: Mapping[str, jax.Array]) -> dict[str, np.ndarray]:
    """Exact float32 numpy copies of device arrays (one transfer for the whole dict)."""
    host = jax.device_get(dict(values))
    return {k: np.array(v, dtype=np.float32, copy=True) for k, v in host.items()}


def export_canonical(params: Mapping[str, jax.Array], spec: ModelSpec) -> Params:
    """The native pytree as canonical float32 numpy arrays, in table order."""
    host = host_copy(params)
    return {p.name: to_canonical(p.layout, host[p.name]) for p in spec.table}
