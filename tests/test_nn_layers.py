"""crossframe.nn in the core: names, shapes, FLOPs, references, errors, plugin layers and `model show`."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from crossframe import hookimpl
from crossframe.data.dataset import DataInfo
from crossframe.errors import CapabilityError, ConfigError, CrossframeError
from crossframe.models import build_model
from crossframe.models import reference as old_ref
from crossframe.models.spec import ParamSpec
from crossframe.nn.layers import Conv2D, Layer
from crossframe.plugins import get_plugin_manager
from tests.nn_backends import graph_spec

ISSUE_EXAMPLE = """
- {conv2d: {filters: 32, kernel: 3, padding: same}}
- relu
- {residual: [{conv2d: {filters: 32, kernel: 3, padding: same}}, {norm: layer}, gelu]}
- {pool: {kind: max, size: 2}}
- flatten
- {dropout: 0.1}
- {dense: 10}
"""

LM = """
- {embedding: {name: wte, dim: 8}}
- {positional: {name: wpe, max_len: 6}}
- {sequential: {name: h, repeat: 2, layers: [
    {residual: {name: "", layers: [{norm: {name: ln_1}}, {attention: {name: attn, heads: 2, rope: true}}]}},
    {residual: {name: "", layers: [{norm: {name: ln_2, kind: rms}}, {gated_mlp: {name: mlp, hidden: 16}}]}}]}}
- {norm: {name: ln_f}}
- {dense: {name: lm_head, units: outputs, bias: false}}
"""

DIGITS = DataInfo("classification", (8, 8, 1), 10)


def graph(layers: Any, info: DataInfo = DIGITS) -> Any:
    return build_model("graph", {"layers": yaml.safe_load(layers) if isinstance(layers, str) else layers}, info)


def test_the_issue_example_has_stable_canonical_names_shapes_and_flops() -> None:
    spec = graph(ISSUE_EXAMPLE)
    table = {p.name: (p.shape, p.layout) for p in spec.table}
    assert table == {"0.weight": ((3, 3, 1, 32), "conv2d"), "0.bias": ((32,), "bias"),
                     "2.0.weight": ((3, 3, 32, 32), "conv2d"), "2.0.bias": ((32,), "bias"),
                     "2.1.weight": ((32,), "norm_scale"), "2.1.bias": ((32,), "norm_bias"),
                     "6.weight": ((4 * 4 * 32, 10), "dense"), "6.bias": ((10,), "bias")}
    rows = {name: (kind, shape, params, flops) for name, kind, shape, params, flops in spec.graph.summary_rows()}
    assert rows["0"] == ("conv2d", "(8, 8, 32)", 3 * 3 * 32 + 32, 2 * 8 * 8 * 32 * 9)
    assert rows["3"][1] == "(4, 4, 32)" and rows["4"][1] == "(512,)"
    assert rows["6"][3] == 2 * 512 * 10
    assert spec.param_count == sum(r[2] for name, r in rows.items() if "." not in name)
    # seeded: the same weights for the same seed, different for another, each parameter its own stream
    a, b = spec.init(0), spec.init(0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["0.weight"], spec.init(1)["0.weight"])
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)
    assert spec.forward(a, x).shape == (3, 10)


def test_a_transformer_graph_names_its_parameters_like_gpt() -> None:
    spec = graph(LM, DataInfo("language_modeling", (6,), 20))
    names = [p.name for p in spec.table]
    assert names[:3] == ["wte.weight", "wpe.weight", "h.0.ln_1.weight"]
    assert {"h.0.attn.qkv.weight", "h.1.attn.proj.bias", "h.1.mlp.gate.weight", "ln_f.bias", "lm_head.weight"} <= set(
        names)
    tokens = np.random.default_rng(0).integers(0, 20, (2, 6))
    assert spec.forward(spec.init(0), tokens).shape == (2, 6, 20)


@given(h=st.integers(1, 7), w=st.integers(1, 7), c=st.integers(1, 3), out=st.integers(1, 3),
       k=st.sampled_from([1, 3, 5]), seed=st.integers(0, 999))
def test_conv_same_and_max_pool_agree_with_the_hand_written_references(h: int, w: int, c: int, out: int, k: int,
                                                                       seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, h, w, c))
    kernel, bias = rng.normal(size=(k, k, c, out)), rng.normal(size=out)
    conv = Conv2D(filters=out, kernel=k, padding="same")
    np.testing.assert_allclose(conv.reference({"weight": kernel, "bias": bias}, x),
                               old_ref.conv2d_same(x, kernel, bias), rtol=1e-12, atol=1e-12)
    if h >= 2 and w >= 2:
        pooled = graph([{"pool": {"kind": "max", "size": 2}}, "flatten", {"dense": 2}],
                       DataInfo("classification", (h, w, c), 2)).graph.root.children[0]
        np.testing.assert_array_equal(pooled.reference({}, x), old_ref.max_pool2(x))


@given(size=st.integers(3, 7), stride=st.integers(1, 3), dilation=st.integers(1, 2), groups=st.sampled_from([1, 2]),
       padding=st.sampled_from(["same", "valid", 1]), seed=st.integers(0, 999))
def test_conv_reference_equals_the_definition(size: int, stride: int, dilation: int, groups: int, padding: Any,
                                              seed: int) -> None:
    """Against the sum in the definition, one output at a time (zero padding, groups split the channels)."""
    rng = np.random.default_rng(seed)
    cin, cout, k = 2 * groups, 2 * groups, 2
    if (k - 1) * dilation + 1 > size:
        return
    conv = Conv2D(filters=cout, kernel=k, stride=stride, dilation=dilation, groups=groups, padding=padding)
    x = rng.normal(size=(1, size, size, cin))
    wt = rng.normal(size=(k, k, cin // groups, cout))
    got = conv.reference({"weight": wt, "bias": np.zeros(cout)}, x)
    (pt, _), (pl, _) = conv.pads((size, size, cin))
    assert got.shape[1:] == conv.output_shape((size, size, cin))
    per_in, per_out = cin // groups, cout // groups
    for i in range(got.shape[1]):
        for j in range(got.shape[2]):
            for o in range(cout):
                g = o // per_out
                total = 0.0
                for a in range(k):
                    for b in range(k):
                        r, s = i * stride + a * dilation - pt, j * stride + b * dilation - pl
                        if 0 <= r < size and 0 <= s < size:
                            total += x[0, r, s, g * per_in:(g + 1) * per_in] @ wt[a, b, :, o]
                assert got[0, i, j, o] == pytest.approx(total, abs=1e-10)


@given(t=st.integers(2, 6), cut=st.integers(1, 5), kv=st.sampled_from([1, 2]), seed=st.integers(0, 999))
def test_attention_is_causal_and_grouped_query_shares_heads(t: int, cut: int, kv: int, seed: int) -> None:
    cut = min(cut, t - 1)
    spec = graph_spec([{"attention": {"heads": 2, "kv_heads": kv, "rope": True, "rope_base": 100.0}}], (t, 4))
    node = spec.graph.root.children[0]
    assert spec.table[0].shape == (4, (2 + 2 * kv) * 2)
    rng = np.random.default_rng(seed)
    w = {k: rng.normal(size=v.shape) for k, v in spec.init(0).items()}
    x = rng.normal(size=(1, t, 4))
    changed = x.copy()
    changed[:, cut:] = rng.normal(size=changed[:, cut:].shape)  # a different future
    np.testing.assert_allclose(node.reference(w, x)[:, :cut], node.reference(w, changed)[:, :cut], atol=1e-12)


@pytest.mark.parametrize(("layers", "message"), [
    ([{"dense": {"unitz": 3}}], "model.layers.0.dense"),
    ([{"dense": 3}, {"residual": [{"dense": 4}]}], "a residual body must keep the shape"),
    (["flatten", {"conv2d": 3}, {"dense": 10}], "model.layers.1: conv2d needs inputs of rank 3"),
    ([{"pool": {"kind": "max", "size": 9}}, "flatten", {"dense": 10}], "does not fit"),
    (["flatten", {"dense": 7}], "the last layer gives (7,)"),
    ([{"dense": {"units": 3, "name": "a"}}, {"dense": {"units": 10, "name": "a"}}], "repeats the name"),
    ([{"dense": 3, "relu": None}], "one {kind: params} mapping"),
    ([{"dense": {"units": 10, "name": ""}}], "only a container (sequential, residual) may have an empty name"),
])
def test_bad_layers_are_one_line_config_errors(layers: list, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        graph(layers)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_layer_is_named_with_a_suggestion() -> None:
    with pytest.raises(CrossframeError, match="unknown layer 'dens'; did you mean 'dense'"):
        graph([{"dens": 10}])


class Scale(Layer):
    """``x * s``: one learned scalar per channel (a plugin's layer)."""

    kind: ClassVar[str] = "scale"
    implementations: ClassVar[dict[str, str]] = {}

    def param_specs(self, shape: tuple[int, ...]) -> list[ParamSpec]:
        return [ParamSpec("scale", (shape[-1],), "norm_scale", "ones", decay=False)]

    def flops(self, shape: tuple[int, ...]) -> int:
        return math.prod(shape)

    def reference(self, w: Any, x: np.ndarray, train: bool = False) -> np.ndarray:
        return x * w["scale"]


def torch_scale(layer: Scale, shape: tuple[int, ...]) -> Any:
    """The plugin's torch implementation of ``scale``."""
    import torch

    class TorchScale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(shape[-1]))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.scale

    return TorchScale()


class ScalePlugin:
    @hookimpl
    def register_layers(self, register: Any) -> None:
        register("scale", Scale, description="per-channel scale", torch="tests.test_nn_layers:torch_scale")


def test_a_plugin_layer_runs_where_it_is_implemented_and_is_named_where_it_is_not() -> None:
    get_plugin_manager().register(ScalePlugin(), "scale-plugin")
    spec = graph(["flatten", {"dense": 4}, {"scale": {"name": "s"}}, {"dense": 10}])
    assert [p.name for p in spec.table][2] == "s.scale"
    weights = {k: v + 0.5 for k, v in spec.init(0).items()}
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 1)).astype(np.float32)
    if importlib.util.find_spec("torch"):
        import torch

        from crossframe_torch.models import build_module, load_canonical

        module = build_module(spec)
        load_canonical(module, spec, weights)
        out = module(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(out, spec.graph.reference(weights, x), atol=1e-5)
    if importlib.util.find_spec("jax"):
        from crossframe_jax.models import make_forward

        with pytest.raises(CapabilityError, match="backend 'jax' has no implementation of layer 'scale'"):
            make_forward(spec)


def test_model_show_prints_the_layer_table_without_a_framework(tmp_path: Any) -> None:
    config = tmp_path / "cnn.yaml"
    config.write_text(yaml.safe_dump({"data": {"name": "digits"},
                                      "model": {"name": "graph", "layers": yaml.safe_load(ISSUE_EXAMPLE)}}))
    code = ("import json, sys, contextlib, io\n"
            "from crossframe.cli.main import main\n"
            "buf = io.StringIO()\n"
            f"with contextlib.redirect_stdout(buf): rc = main(['model', 'show', {str(config)!r}, '--json'])\n"
            "print(json.dumps({'rc': rc, 'out': json.loads(buf.getvalue()),"
            " 'frameworks': sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules)}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0 and result["frameworks"] == []
    table = result["out"]
    assert table["params"] == graph(ISSUE_EXAMPLE).param_count
    assert [row["name"] for row in table["layers"]][:4] == ["0", "1", "2", "2.0"]
    assert table["layers"][1]["kind"] == "relu" and table["layers"][0]["output"] == "(8, 8, 32)"
