"""Every registered layer on every installed backend against its numpy reference, forward and gradients.

One call in a plugin's test suite checks its layers (and the built-in ones) wherever they are implemented::

    from crossframe.testing.layers import assert_layers_conform

    def test_my_layers_conform():
        assert_layers_conform(kinds=["scale"])

Each layer kind runs on small examples: the built-in ones from :data:`BUILTIN_EXAMPLES`, a plugin's from its
class attribute ``examples`` (a list of ``(params, per-example input shape)``, e.g. ``[({}, (2, 4))]``).
For each example and backend, the layer alone is lowered as a graph, given weights of order one and a batch of
two, and compared with the float64 numpy reference:

- forward: within ``4 K u s * 8`` (``u`` the float32 unit roundoff, ``K`` the example's parameter count plus
  input size, a bound on any reduction's length, ``s`` the largest output magnitude + 1);
- gradients (of ``<out, c>`` for a random cotangent ``c``, by weights and by the input): their inner product
  with a random direction against the float64 central difference of the reference along it, within the same
  bound times two passes and the absolute sum of the terms.

A backend takes part when its plugin package has a ``layer_check`` module with
``forward_and_grads(spec, weights, x, cotangent)`` (the first-party backends do) and its framework is
installed. A plugin layer a backend does not implement is reported as ``not implemented``, not failed.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from crossframe.data.dataset import DataInfo
from crossframe.models.spec import ModelSpec
from crossframe.nn.graph import Graph, build_graph
from crossframe.nn.layers import ACTIVATION_FUNCTIONS, BUILTIN_LAYERS

U32 = 2.0**-24  # unit roundoff of float32
#: an example's params may hold this key: layers the checked one needs before it (``tied_head`` reads the
#: table of an ``embedding``); they are checked along with it
BEFORE = "__before__"
Example = tuple[dict[str, Any], tuple[int, ...]]

#: small examples of each built-in layer: (params, per-example input shape)
BUILTIN_EXAMPLES: dict[str, list[Example]] = {
    "dense": [({"units": 3}, (2, 4)), ({"units": 2, "bias": False, "gain": 2.0}, (5,))],
    "conv2d": [({"filters": 3, "kernel": 3, "padding": "same"}, (5, 5, 2)),
               ({"filters": 4, "kernel": 2, "stride": 2, "groups": 2, "padding": "valid"}, (6, 6, 4)),
               ({"filters": 2, "kernel": 3, "dilation": 2, "padding": 1}, (7, 6, 1))],
    "pool": [({"kind": "max", "size": 2}, (4, 4, 2)), ({"kind": "avg", "size": 2, "stride": 1}, (3, 4, 1)),
             ({"kind": "global_max"}, (3, 3, 2)), ({"kind": "global_avg"}, (3, 3, 2))],
    "flatten": [({}, (2, 3, 2))],
    "reshape": [({"shape": [3, -1]}, (2, 3, 2))],
    "embedding": [({"vocab": 7, "dim": 3}, (4,))],
    "positional": [({"max_len": 6}, (4, 3))],
    "norm": [({"kind": "layer"}, (3, 5)), ({"kind": "rms"}, (5,))],
    "dropout": [({"rate": 0.3}, (4,))],
    "activation": [({"fn": fn}, (2, 4)) for fn in ACTIVATION_FUNCTIONS],
    "gated_mlp": [({"hidden": 6}, (2, 4))],
    "attention": [({"heads": 2, "kv_heads": 1, "head_dim": 2, "rope": True}, (4, 5)),
                  ({"heads": 2, "qkv_bias": True}, (3, 4))],
    "sequential": [({"repeat": 2, "layers": [{"dense": 3}, "tanh"]}, (3,))],
    "residual": [({"layers": [{"norm": "rms"}, {"dense": 4}]}, (2, 4))],
    "tied_head": [({"embedding": "wte", BEFORE: [{"embedding": {"name": "wte", "vocab": 7, "dim": 3}}]}, (4,))],
}
BUILTIN_KINDS = {cls.kind for cls in BUILTIN_LAYERS}


@dataclass(frozen=True)
class LayerCheck:
    """The outcome of one layer example on one backend: ``ok``, ``failed``, ``not implemented`` or
    ``no example`` (a plugin layer without ``examples``), with a line saying why."""

    kind: str
    backend: str
    example: int
    status: str
    detail: str = ""

    def __str__(self) -> str:
        why = f" ({self.detail})" if self.detail else ""
        return f"{self.kind}[{self.example}] on {self.backend}: {self.status}{why}"


def layer_examples(kinds: Iterable[str] | None = None) -> dict[str, list[Example]]:
    """The examples of every registered layer kind (or of ``kinds``): built-in, or the class's ``examples``."""
    from crossframe.plugins import get_plugin_manager

    registered = get_plugin_manager().components("layer")
    wanted = list(kinds) if kinds is not None else sorted(registered)
    out: dict[str, list[Example]] = {}
    for kind in wanted:
        if kind in BUILTIN_KINDS:
            out[kind] = BUILTIN_EXAMPLES[kind]
        else:
            out[kind] = list(getattr(registered[kind].obj, "examples", None) or [])
    return out


def checkable_backends() -> list[str]:
    """Registered backends whose package offers ``layer_check`` and whose framework is installed."""
    from crossframe.errors import CrossframeError
    from crossframe.plugins import get_plugin_manager
    from crossframe.train.runner import make_backend

    names = []
    for name, comp in sorted(get_plugin_manager().components("backend").items()):
        package = _package(comp.obj)
        if not package or importlib.util.find_spec(f"{package}.layer_check") is None:
            continue
        try:
            make_backend(name)
        except CrossframeError:  # its framework is not installed
            continue
        names.append(name)
    return names


def _package(factory: object) -> str:
    """The top-level package of a backend plugin (where its ``layer_check`` module lives)."""
    return str(getattr(factory, "__module__", "") or "").split(".")[0]


def _implemented(kind: str, backend: str) -> bool:
    from crossframe.plugins import get_plugin_manager

    return kind in BUILTIN_KINDS or backend in get_plugin_manager().components("layer")[kind].extra


def _driver(backend: str) -> Any:
    from crossframe.plugins import get_plugin_manager

    comp = get_plugin_manager().components("backend")[backend]
    return importlib.import_module(f"{_package(comp.obj)}.layer_check").forward_and_grads


def example_spec(kind: str, params: Mapping[str, Any], input_shape: tuple[int, ...]) -> ModelSpec:
    """A spec of the one layer ``{kind: params}`` (after the example's ``__before__`` layers, if any) on
    per-example inputs of ``input_shape``."""
    from crossframe.nn.model import registry_lookup

    own = {k: v for k, v in params.items() if k != BEFORE}
    layers = [*params.get(BEFORE, []), {kind: own}]
    graph = build_graph(layers, tuple(input_shape), 3, registry_lookup, where=f"example of '{kind}'")
    info = DataInfo("regression", tuple(input_shape), 3)
    return ModelSpec("graph", {"layers": layers}, info, graph.table, graph.reference, graph=graph)


def _inputs(graph: Graph, rng: np.random.Generator) -> np.ndarray:
    shape = (2, *graph.input_shape)
    if graph.takes_ids:
        vocab = int(getattr(graph.nodes()[0].layer, "vocab", 2))
        return rng.integers(0, vocab, shape)
    return rng.normal(size=shape).astype(np.float32)


def directional_derivative(graph: Graph, weights: Mapping[str, np.ndarray], x: np.ndarray, cot: np.ndarray,
                 dw: Mapping[str, np.ndarray], dx: np.ndarray | None, eps: float = 1e-6) -> float:
    """``d/dt <f(w + t dw, x + t dx), cot>`` at 0, by float64 central differences of the graph's numpy reference."""
    def at(t: float) -> float:
        w = {k: np.asarray(v, np.float64) + t * dw[k] for k, v in weights.items()}
        xi = x if dx is None else np.asarray(x, np.float64) + t * dx
        return float(np.sum(graph.reference(w, xi) * cot))

    return (at(eps) - at(-eps)) / (2 * eps)


def check_example(kind: str, params: Mapping[str, Any], input_shape: tuple[int, ...], backend: str,
                  seed: int = 0) -> str:
    """Run one example on ``backend``; ``""`` when it matches the reference, else what differs (one line)."""
    spec = example_spec(kind, params, input_shape)
    rng = np.random.default_rng(seed)
    weights = {p.name: (rng.normal(size=p.shape) * 0.5 + (1.0 if p.init == "ones" else 0.0)).astype(np.float32)
               for p in spec.table}
    x = _inputs(spec.graph, rng)
    ref = spec.graph.reference(weights, x)
    cot = rng.normal(size=ref.shape)
    out, grads, gx = _driver(backend)(spec, weights, x, cot)
    reduction = sum(math.prod(p.shape) for p in spec.table) + math.prod(input_shape)
    scale = float(np.abs(ref).max(initial=0.0)) + 1.0
    bound = max(4 * reduction * U32 * scale * 8, 1e-6)
    if tuple(out.shape) != tuple(ref.shape):
        return f"output shape {tuple(out.shape)}, the reference gives {tuple(ref.shape)}"
    worst = float(np.abs(np.asarray(out, np.float64) - ref).max(initial=0.0))
    if not worst <= bound:
        return f"forward differs from the reference by {worst:.3g} (allowed {bound:.3g})"
    dw = {k: rng.normal(size=v.shape) for k, v in weights.items()}
    dx = None if gx is None else rng.normal(size=x.shape)
    expected = directional_derivative(spec.graph, weights, x, cot, dw, dx)
    terms = [np.asarray(grads[k], np.float64) * dw[k] for k in weights]
    if dx is not None:
        terms.append(np.asarray(gx, np.float64) * dx)
    got = float(sum(t.sum() for t in terms))
    magnitude = float(sum(np.abs(t).sum() for t in terms)) + 1e-3
    allowed = 8 * 4 * reduction * U32 * scale * magnitude + 1e-6
    if not abs(got - expected) <= allowed:
        return f"gradients: directional derivative {got:.6g}, the reference's {expected:.6g} (allowed {allowed:.3g})"
    return ""


def check_layers(kinds: Iterable[str] | None = None, backends: Iterable[str] | None = None,
                 seed: int = 0) -> list[LayerCheck]:
    """Check every example of every registered layer (or of ``kinds``) on every checkable backend (or
    ``backends``); one :class:`LayerCheck` per example and backend."""
    examples = layer_examples(kinds)
    results = []
    for backend in list(backends) if backends is not None else checkable_backends():
        for kind, cases in examples.items():
            if not cases:
                results.append(LayerCheck(kind, backend, 0, "no example",
                                          "give the layer class an 'examples' list of (params, input shape)"))
                continue
            for i, (params, shape) in enumerate(cases):
                if not _implemented(kind, backend):
                    results.append(LayerCheck(kind, backend, i, "not implemented"))
                    continue
                try:
                    problem = check_example(kind, params, tuple(shape), backend, seed + i)
                except Exception as exc:  # a crash is a failure of this layer, named with the rest
                    problem = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                results.append(LayerCheck(kind, backend, i, "failed" if problem else "ok", problem))
    return results


def assert_layers_conform(kinds: Iterable[str] | None = None, backends: Iterable[str] | None = None,
                          seed: int = 0) -> list[LayerCheck]:
    """:func:`check_layers`, raising ``AssertionError`` that lists every failure (and every layer without
    examples); returns the results otherwise."""
    results = check_layers(kinds, backends, seed)
    bad = [r for r in results if r.status in ("failed", "no example")]
    if bad:
        raise AssertionError("layers that do not conform:\n" + "\n".join(f"  {r}" for r in bad))
    return results
