"""``crossframe.testing.layers``: every registered layer on every installed backend against its numpy reference,
and a plugin's layer registered through the plugin manager, checked the same way (and caught when wrong)."""

from __future__ import annotations

import importlib.util
from typing import Any, ClassVar

import numpy as np
import pytest

from crossframe import hookimpl
from crossframe.models.spec import ParamSpec
from crossframe.nn.layers import Layer
from crossframe.testing.layers import BUILTIN_EXAMPLES, BUILTIN_KINDS, assert_layers_conform, check_layers

INSTALLED = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]


class Scale(Layer):
    """``x * s``: one learned scale per channel (a plugin's layer)."""

    kind: ClassVar[str] = "scale"
    examples: ClassVar[list[tuple[dict, tuple]]] = [({}, (3,)), ({}, (2, 4))]

    def param_specs(self, shape: tuple[int, ...]) -> list[ParamSpec]:
        return [ParamSpec("scale", (shape[-1],), "norm_scale", "ones", decay=False)]

    def reference(self, w: Any, x: np.ndarray, train: bool = False) -> np.ndarray:
        return x * w["scale"]


class OffScale(Scale):
    """The same layer whose torch implementation is wrong (it doubles the scale)."""

    kind: ClassVar[str] = "off_scale"


def torch_scale(layer: Scale, shape: tuple[int, ...], factor: float = 1.0) -> Any:
    """torch: ``fn(layer, in_shape) -> nn.Module`` with the parameters under their local names."""
    import torch

    class TorchScale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(shape[-1]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale * factor

    return TorchScale()


def torch_off_scale(layer: Scale, shape: tuple[int, ...]) -> Any:
    return torch_scale(layer, shape, factor=2.0)


def jax_scale(layer: Scale, shape: tuple[int, ...], prefix: str) -> Any:
    """jax: ``fn(layer, in_shape, prefix) -> f(params, x, ctx)``."""
    return lambda params, x, ctx: x * params[f"{prefix}scale"]


class ScalePlugin:
    @hookimpl
    def register_layers(self, register: Any) -> None:
        here = "tests.test_layer_conformance"
        register("scale", Scale, description="per-channel scale", torch=f"{here}:torch_scale",
                 jax=f"{here}:jax_scale")  # no tensorflow implementation
        register("off_scale", OffScale, description="a wrong one", torch=f"{here}:torch_off_scale")


def test_every_built_in_layer_has_examples() -> None:
    assert set(BUILTIN_EXAMPLES) == BUILTIN_KINDS


@pytest.mark.slow
def test_every_built_in_layer_conforms_on_every_installed_backend() -> None:
    results = assert_layers_conform(kinds=sorted(BUILTIN_KINDS))
    assert {r.backend for r in results} == set(INSTALLED)
    assert all(r.status == "ok" for r in results)
    assert len(results) == len(INSTALLED) * sum(len(v) for v in BUILTIN_EXAMPLES.values())


@pytest.mark.skipif(not INSTALLED, reason="no backend installed")
def test_a_plugin_layer_is_checked_where_it_is_implemented(crossframe_plugins: Any) -> None:
    crossframe_plugins.register(ScalePlugin(), "scale-plugin")
    results = check_layers(kinds=["scale", "off_scale"])
    status = {(r.kind, r.backend, r.example): r.status for r in results}
    for backend in INSTALLED:
        for i in range(len(Scale.examples)):
            assert status[("scale", backend, i)] == ("not implemented" if backend == "tensorflow" else "ok")
    if "torch" in INSTALLED:  # the wrong implementation is caught, and named
        off = [r for r in results if r.kind == "off_scale" and r.backend == "torch"]
        assert off and all(r.status == "failed" and "forward differs" in r.detail for r in off)
        with pytest.raises(AssertionError, match=r"off_scale\[0\] on torch: failed"):
            assert_layers_conform(kinds=["off_scale"], backends=["torch"])


def test_a_plugin_layer_without_examples_is_named(crossframe_plugins: Any) -> None:
    class Bare(Scale):
        kind: ClassVar[str] = "bare"
        examples: ClassVar[list[tuple[dict, tuple]]] = []

    class BarePlugin:
        @hookimpl
        def register_layers(self, register: Any) -> None:
            register("bare", Bare, torch="tests.test_layer_conformance:torch_scale")

    crossframe_plugins.register(BarePlugin(), "bare-plugin")
    with pytest.raises(AssertionError, match=r"bare\[0\] on \w+: no example"):
        assert_layers_conform(kinds=["bare"], backends=INSTALLED[:1] or ["torch"])


@pytest.mark.skipif("tensorflow" not in INSTALLED, reason="tensorflow not installed")
def test_a_run_on_a_backend_without_the_layer_stops_in_one_line(crossframe_plugins: Any, crossframe_cli: Any,
                                                               tmp_path: Any) -> None:
    import yaml

    crossframe_plugins.register(ScalePlugin(), "scale-plugin")
    config = tmp_path / "scaled.yaml"
    config.write_text(yaml.safe_dump({
        "backend": "tensorflow", "output_dir": str(tmp_path / "runs"),
        "data": {"name": "synthetic", "samples": 32, "features": 4, "classes": 3},
        "model": {"name": "graph", "layers": [{"dense": 4}, "scale", {"dense": "outputs"}]},
        "train": {"steps": 2, "batch_size": 8}}))
    result = crossframe_cli("run", str(config), "--quiet")
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "model.layers: backend 'tensorflow' has no implementation of layer 'scale' (" in lines[0]
    assert "'scale' runs on jax, torch" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing was started
