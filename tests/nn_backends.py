"""Run a lowered graph on one backend: forward and gradients, as canonical numpy (test helpers)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from crossframe.data.dataset import DataInfo
from crossframe.models.spec import ModelSpec
from crossframe.nn.graph import Graph, build_graph
from crossframe.nn.model import registry_lookup

BACKENDS = ("torch", "jax", "tensorflow")
U32 = 2.0**-24  # unit roundoff of float32


def graph_spec(layers: list[Any], input_shape: tuple[int, ...]) -> ModelSpec:
    """A spec around the graph of ``layers`` (no dataset check: any output shape)."""
    graph = build_graph(layers, input_shape, 3, registry_lookup)
    info = DataInfo("regression", tuple(input_shape), 3)
    return ModelSpec("graph", {"layers": layers}, info, graph.table, graph.reference, graph=graph)


def forward_and_grads(backend: str, spec: ModelSpec, weights: Mapping[str, np.ndarray], x: np.ndarray,
                      cotangent: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray | None]:
    """``(outputs, d<out, cot>/d weights (canonical layouts), d<out, cot>/dx or None for ids)`` in float32."""
    return {"torch": _torch, "jax": _jax, "tensorflow": _tf}[backend](spec, weights, x, cotangent)


def _torch(spec: ModelSpec, weights: Any, x: np.ndarray, cot: np.ndarray) -> Any:
    import torch

    from crossframe_torch.models import build_module, load_canonical, native_parameters, to_canonical

    module = build_module(spec)
    load_canonical(module, spec, dict(weights))
    module.eval()
    ids = spec.graph.takes_ids
    xt = torch.from_numpy(x.astype(np.int64 if ids else np.float32))
    if not ids:
        xt.requires_grad_(True)
    out = module(xt)
    (out * torch.from_numpy(cot.astype(np.float32))).sum().backward()
    native = native_parameters(module, spec)
    grads = {p.name: to_canonical(p.layout, native[p.name].grad).numpy() for p in spec.table}
    return out.detach().numpy(), grads, None if ids else xt.grad.numpy()


def _jax(spec: ModelSpec, weights: Any, x: np.ndarray, cot: np.ndarray) -> Any:
    import jax
    import jax.numpy as jnp

    from crossframe_jax.models import make_forward

    fn = make_forward(spec)
    params = {k: jnp.asarray(v, jnp.float32) for k, v in weights.items()}
    ids = spec.graph.takes_ids
    xj = jnp.asarray(x, jnp.int32 if ids else jnp.float32)
    c = jnp.asarray(cot, jnp.float32)

    def objective(p: Any, xi: Any) -> Any:
        return jnp.sum(fn(p, xi) * c)

    out = jax.jit(fn)(params, xj)
    if ids:
        gp = jax.jit(jax.grad(objective))(params, xj)
        return np.asarray(out), {k: np.asarray(v) for k, v in gp.items()}, None
    gp, gx = jax.jit(jax.grad(objective, argnums=(0, 1)))(params, xj)
    return np.asarray(out), {k: np.asarray(v) for k, v in gp.items()}, np.asarray(gx)


def _tf(spec: ModelSpec, weights: Any, x: np.ndarray, cot: np.ndarray) -> Any:
    from crossframe_tensorflow.devices import tf
    from crossframe_tensorflow.models import build_model

    model = build_model(spec, dict(weights))
    ids = spec.graph.takes_ids
    xt = tf.constant(x.astype(np.int32 if ids else np.float32))
    variables = [model.params[p.name] for p in spec.table]
    with tf.GradientTape() as tape:
        if not ids:
            tape.watch(xt)
        out = model(xt)
        objective = tf.reduce_sum(out * tf.constant(cot.astype(np.float32)))
    targets = variables + ([] if ids else [xt])
    grads = tape.gradient(objective, targets)
    by_name = {p.name: _dense_grad(g, tf).numpy() for p, g in zip(spec.table, grads, strict=False)}
    return out.numpy(), by_name, None if ids else grads[-1].numpy()


def _dense_grad(g: Any, tf: Any) -> Any:
    return tf.convert_to_tensor(g)  # embedding gradients arrive as IndexedSlices


def directional_derivative(graph: Graph, weights: Mapping[str, np.ndarray], x: np.ndarray, cot: np.ndarray,
                           dw: Mapping[str, np.ndarray], dx: np.ndarray | None, eps: float = 1e-6) -> float:
    """``d/dt <f(w + t dw, x + t dx), cot>`` at 0, by float64 central differences of the numpy reference."""
    def at(t: float) -> float:
        w = {k: np.asarray(v, np.float64) + t * dw[k] for k, v in weights.items()}
        xi = x if dx is None else np.asarray(x, np.float64) + t * dx
        return float(np.sum(graph.reference(w, xi) * cot))

    return (at(eps) - at(-eps)) / (2 * eps)
