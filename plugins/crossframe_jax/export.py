"""Exports from the jax backend: ONNX through jax2onnx, and ``jax.export`` serialised StableHLO.

Both trace the backend's own pure forward (:func:`crossframe_jax.models.make_forward`, float32,
the request's canonical weights closed over as constants) on an input whose batch axis, and
sequence axis for token models (``t <= max_seq_len``), are symbolic, so the artefacts run on any
batch size and length.

Two jax2onnx 0.17 limits are worked around here, both checked by verification in ONNX Runtime:

- ``jax.nn.dot_product_attention(..., is_causal=True)`` converts only with a static sequence
  length, so while converting, causal attention is expressed as the same attention with an
  explicit lower-triangular mask (which it converts with a symbolic length);
- ``lax.reduce_window`` max pooling on NHWC becomes an ONNX ``MaxPool`` over a 6-d tensor, which
  ONNX Runtime cannot run; such pools are rewritten to ``Transpose -> MaxPool (2-d) -> Transpose``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from crossframe.errors import CapabilityError, CrossframeError
from crossframe.export.base import ExportArtifact, ExportRequest
from crossframe.export.failure import export_failure
from crossframe.export.files import atomic_output
from crossframe.export.quiet import quiet_converters
from crossframe.export.verify import is_token_model, trace_example
from crossframe.security.artifacts import artifact_bytes, write_artifact
from crossframe_jax.models import load_canonical, make_forward

FORMATS = ("onnx", "stablehlo")
FILES = {"onnx": "model.onnx", "stablehlo": "model.stablehlo"}


_quiet = functools.partial(quiet_converters, "jax2onnx", "onnx_ir")
"""Silence jax2onnx's and onnx_ir's advisory log lines and warnings while converting."""


def input_spec(request: ExportRequest) -> jax.ShapeDtypeStruct:
    """The traced input: symbolic ``b`` (and ``t <= max_seq_len`` for tokens), other axes as in the data."""
    if is_token_model(request):
        shape = jax_export.symbolic_shape("b, t", constraints=(f"t <= {int(request.spec.params['max_seq_len'])}",))
        return jax.ShapeDtypeStruct(shape, jnp.int32)
    dims = ", ".join(str(int(d)) for d in request.spec.data_info.input_shape)
    return jax.ShapeDtypeStruct(jax_export.symbolic_shape(f"b, {dims}"), jnp.float32)


def native_function(request: ExportRequest) -> Callable[[jax.Array], jax.Array]:
    """``x -> outputs`` (float32) of the backend's forward with the request's weights as constants."""
    params = load_canonical(request.spec, request.weights, jax.devices("cpu")[0])
    forward = make_forward(request.spec)

    def fn(x: jax.Array) -> jax.Array:
        return forward(params, x).astype(jnp.float32)

    return fn


def export(request: ExportRequest, fmt: str, options: dict[str, Any]) -> ExportArtifact:
    """Write ``fmt`` (``onnx`` or ``stablehlo``) under ``request.out_dir``."""
    if fmt not in FORMATS:
        raise CapabilityError(f"export: backend 'jax' cannot write '{fmt}' (it writes 'onnx' or 'stablehlo')")
    x = trace_example(request)
    tokens = is_token_model(request)
    path = Path(request.out_dir) / FILES[fmt]
    extra: dict[str, Any] = {"traced_shape": list(x.shape), "precision": "fp32",
                             "input_dtype": "int32" if tokens else "float32",
                             "dynamic_axes": {"0": "b", "1": "t"} if tokens else {"0": "b"}}
    try:
        fn = native_function(request)
        with _quiet(), atomic_output(path) as tmp:
            if fmt == "onnx":
                extra["opset"] = _write_onnx(fn, request, int(options.get("opset", 18)), tmp, path.name)
            else:
                platforms = tuple(dict.fromkeys(("cpu", jax_export.default_export_platform())))
                exported = jax_export.export(jax.jit(fn), platforms=platforms)(input_spec(request))
                write_artifact(tmp, bytes(exported.serialize()), name=path.name)  # sealed with security.encrypt
                extra["platforms"] = list(platforms)
    except CrossframeError:
        raise
    except Exception as exc:
        raise export_failure("jax", fmt, request.spec.name, exc) from None
    return ExportArtifact(fmt, path, "jax", fmt, extra)


# --------------------------------------------------------------------------- onnx


def _write_onnx(fn: Callable[[jax.Array], jax.Array], request: ExportRequest, opset: int, path: Path,
                final: str) -> int:
    """jax2onnx to ``path`` (with the two rewrites above); checked for untranslated ops; returns the opset."""
    from jax2onnx import to_onnx

    from crossframe.export.onnx_runtime import check_onnx_model

    proto = to_onnx(_causal_as_mask(fn), [input_spec(request)], model_name=request.spec.name, opset=opset,
                    input_names=["x"], output_names=["y"])
    rewrite_nhwc_pools(proto)
    written = check_onnx_model(proto, "jax", request.spec.name)
    write_artifact(path, proto.SerializeToString(), name=final)  # sealed in memory with security.encrypt
    return written


def _causal_as_mask(fn: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """``fn`` traced with causal ``dot_product_attention`` calls given an explicit lower-triangular mask.

    jax2onnx swaps ``jax.nn.dot_product_attention`` for its own binding while it converts; this
    wraps whatever is installed there (so it runs inside the conversion) only for the duration of
    the trace, and restores it after.
    """

    def traced(x: jax.Array) -> jax.Array:
        attend = jax.nn.dot_product_attention

        def causal_by_mask(query: jax.Array, key: jax.Array, value: jax.Array, bias: Any = None,
                           mask: Any = None, *, is_causal: bool = False, **kwargs: Any) -> jax.Array:
            if is_causal:
                causal = jnp.tril(jnp.ones((query.shape[1], key.shape[1]), dtype=bool))[None, None]
                mask = causal if mask is None else jnp.logical_and(mask, causal)
            return attend(query, key, value, bias, mask, **kwargs)

        jax.nn.dot_product_attention = causal_by_mask
        try:
            return fn(x)
        finally:
            jax.nn.dot_product_attention = attend

    return traced


def rewrite_nhwc_pools(model: Any) -> int:
    """Rewrite ``Unsqueeze, Unsqueeze, MaxPool (k-d over every axis), Squeeze`` into a 2-d/3-d MaxPool.

    jax2onnx lowers ``reduce_window`` max pooling by adding two unit axes and pooling over all
    the original ones (a window of 1 on batch and channels); ONNX Runtime pools at most 3 spatial
    axes. Where exactly two axes have a unit window (batch and channels), the pool becomes
    ``Transpose`` to channels-first, ``MaxPool`` over the windowed axes, ``Transpose`` back.
    Returns how many pools were rewritten.
    """
    from onnx import helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rewritten, removed_values = 0, set()
    for pool in [n for n in graph.node if n.op_type == "MaxPool"]:
        first = producer.get(pool.input[0])
        outer = producer.get(first.input[0]) if first is not None and first.op_type == "Unsqueeze" else None
        users = consumers.get(pool.output[0], [])
        if outer is None or outer.op_type != "Unsqueeze" or len(users) != 1 or users[0].op_type != "Squeeze":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
        kernel = list(attrs.get("kernel_shape", []))
        rank = len(kernel)
        strides = list(attrs.get("strides", [1] * rank))
        pads = list(attrs.get("pads", [0] * 2 * rank))
        dilations = list(attrs.get("dilations", [1] * rank))
        unit = [i for i in range(rank) if kernel[i] == 1 and strides[i] == 1 and pads[i] == pads[i + rank] == 0]
        window = [i for i in range(rank) if i not in unit]
        if len(unit) != 2 or not 1 <= len(window) <= 3 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        perm = unit + window
        inverse = [perm.index(i) for i in range(rank)]
        squeeze = users[0]
        source, target, tag = outer.input[0], squeeze.output[0], pool.name or f"pool{rewritten}"
        extra = {k: v for k, v in attrs.items() if k not in ("kernel_shape", "strides", "pads", "dilations")}
        new_nodes = [
            helper.make_node("Transpose", [source], [f"{tag}_cf"], name=f"{tag}_to_cf", perm=perm),
            helper.make_node("MaxPool", [f"{tag}_cf"], [f"{tag}_pooled"], name=f"{tag}_2d",
                             kernel_shape=[kernel[i] for i in window], strides=[strides[i] for i in window],
                             pads=[pads[i] for i in window] + [pads[i + rank] for i in window],
                             dilations=[dilations[i] for i in window], **extra),
            helper.make_node("Transpose", [f"{tag}_pooled"], [target], name=f"{tag}_to_cl", perm=inverse),
        ]
        index = list(graph.node).index(squeeze)
        for offset, node in enumerate(new_nodes):
            graph.node.insert(index + offset, node)
        for node in (squeeze, pool, first, outer):
            if node is not outer or len(consumers.get(outer.output[0], [])) == 1:
                graph.node.remove(node)
                removed_values.update(node.output)
        rewritten += 1
    kept = [v for v in graph.value_info if v.name not in removed_values or v.name == ""]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return rewritten


# --------------------------------------------------------------------------- stablehlo


def load(artifact: ExportArtifact) -> Callable[[np.ndarray], np.ndarray]:
    """Run a ``stablehlo`` artefact: ``jax.export.deserialize`` and call it (jit, one trace per shape)."""
    if artifact.format != "stablehlo":
        raise CapabilityError(f"export: backend 'jax' cannot load '{artifact.format}' artefacts")
    data = artifact_bytes(artifact.path)  # a sealed file is decrypted in memory (one line without the key)
    try:
        exported = jax_export.deserialize(bytearray(data))
    except Exception as exc:
        raise export_failure("jax", artifact.format, str(artifact.extra.get("model", "?")), exc) from None
    call = jax.jit(exported.call)
    dtype = np.dtype(artifact.extra.get("input_dtype", "float32"))

    def run(x: np.ndarray) -> np.ndarray:
        return np.array(jax.device_get(call(np.ascontiguousarray(x, dtype=dtype))), dtype=np.float32, copy=True)

    return run

