"""The JAX model functions of a spec (its graph, lowered), and native <-> canonical conversion.

The native parameters are a plain pytree: a dict from canonical name to ``jax.Array``. The
canonical layouts are JAX's own (dense ``[in, out]`` for ``x @ W``; conv kernels HWIO on NHWC
data through ``lax.conv_general_dilated``; embeddings ``[vocab, d]``), so conversion is the
identity; only placement on the device and exact float32 host copies happen here. A factorised
(``low_rank``) linear has ``<prefix>.weight_u`` ``[in, r]`` and ``<prefix>.weight_v``
``[r, out]`` instead of ``<prefix>.weight`` and runs as two matmuls.

Every model (``mlp``, ``cnn`` and ``gpt`` included) is a graph of neutral layers; its forward is
``fn(params, x, *, train=False, rng=None)`` from :func:`crossframe_jax.lowering.make_forward`, and
generation runs on the lowering's key/value cache (:mod:`crossframe_jax.decoding`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from crossframe.errors import CapabilityError
from crossframe.models.spec import ModelSpec, Params

Forward = Callable[..., jax.Array]  # fn(params, x, *, train=False, rng=None) -> outputs


def make_forward(spec: ModelSpec, dtype: Any = None, *, remat: bool = False, device: Any = None) -> Forward:
    """A pure ``fn(params, x, *, train=False, rng=None) -> outputs`` for ``spec`` (a graph).

    ``dtype`` is the compute dtype (None: fp32). With a compute dtype, parameters and inputs are
    cast inside the function (the master weights stay float32) and the outputs come back in that
    dtype. ``remat`` recomputes each block of a repeated ``sequential`` in the backward pass
    (``train.activation_checkpointing``); ``device`` picks the attention kernel (cuDNN's fused one
    on NVIDIA GPUs in bf16/fp16).
    """
    if spec.graph is None:
        raise CapabilityError(f"model.name: backend 'jax' has no native '{spec.name}' (it lowers graphs of "
                              "neutral layers)")
    from crossframe_jax.lowering import make_forward as lower

    return lower(spec.graph, dtype, remat=remat, device=device)


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
