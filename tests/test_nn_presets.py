"""The hand-written mlp and cnn, rebuilt as graphs: the same table, so checkpoints and seeds carry over."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from crossframe.data.dataset import DataInfo
from crossframe.models import build_model
from crossframe.nn.presets import cnn_layers, mlp_layers

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
CASES = {
    "mlp": (mlp_layers, {"hidden": [12, 7], "activation": "gelu"}, DataInfo("classification", (4, 3, 1), 5)),
    "cnn": (cnn_layers, {"channels": [3, 4], "kernel_size": 3, "hidden": 6, "activation": "tanh"},
            DataInfo("classification", (6, 5, 2), 3)),
}


def pair(model: str) -> tuple[Any, Any]:
    layers, params, info = CASES[model]
    return build_model(model, params, info), build_model("graph", {"layers": layers(params)}, info)


@pytest.mark.parametrize("model", list(CASES))
def test_a_hand_written_checkpoint_is_a_graph_checkpoint(model: str) -> None:
    hand, graph = pair(model)
    assert hand.table == graph.table  # names, shapes, layouts, initialisers, decay
    weights = hand.init(4)  # what an old run would have saved
    graph.check_weights(weights)
    assert all(np.array_equal(weights[k], v) for k, v in graph.init(4).items())  # same seed, same weights
    x = np.random.default_rng(0).normal(size=(5, *hand.data_info.input_shape)).astype(np.float32)
    np.testing.assert_allclose(graph.forward(weights, x), hand.forward(weights, x), rtol=0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_graph_predicts_what_the_hand_written_model_does(backend: str) -> None:
    from crossframe.train.runner import make_backend

    impl = make_backend(backend)
    for model in CASES:
        hand, graph = pair(model)
        weights = {k: v + 0.1 for k, v in hand.init(1).items()}
        x = np.random.default_rng(1).normal(size=(7, *hand.data_info.input_shape)).astype(np.float32)
        want = impl.predict(impl.inference_state(hand, weights), x)
        got = impl.predict(impl.inference_state(graph, weights), x)
        # the same float32 ops in the same order on the same backend; allow the last bits of a different fusion
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=f"{backend}/{model}")
