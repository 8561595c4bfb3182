"""The built-in mlp and cnn are graphs of neutral layers; checkpoints the hand-written models wrote still load.

``tests/fixtures/hand_written`` holds runs the hand-written mlp and cnn trained (at commit 7bd526d, by
``tests/fixtures/hand_written/make.py``) and the validation loss that code evaluated each checkpoint to on
every backend.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from crossframe.checkpoint import load_checkpoint
from crossframe.data.dataset import DataInfo
from crossframe.errors import ConfigError
from crossframe.models import build_model, spec_from_json

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
FIXTURES = Path(__file__).parent / "fixtures" / "hand_written"
LOSSES = json.loads((FIXTURES / "losses.json").read_text())
#: the loss is a mean over ~360 float32 log-softmaxes of a net a few layers deep: a few ulps of 2.3 apart
LOSS_RTOL = 1e-5


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_the_built_in_models_are_graphs_with_the_hand_written_table(model: str) -> None:
    checkpoint = load_checkpoint(FIXTURES / model)
    spec = spec_from_json(checkpoint.state["model"])
    assert spec.name == model and spec.graph is not None
    spec.check_checkpoint(checkpoint.weights, checkpoint.optimizer_state, "fixture")  # names, shapes, dtypes
    x = np.random.default_rng(0).normal(size=(3, *spec.data_info.input_shape))
    np.testing.assert_allclose(spec.forward(checkpoint.weights, x),
                               spec.graph.reference(checkpoint.weights, x), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hand_written_checkpoint_evaluates_to_the_same_loss(backend: str, tmp_path: Path) -> None:
    from crossframe.train.evaluate import evaluate

    for model in ("mlp", "cnn"):
        run = shutil.copytree(FIXTURES / model, tmp_path / model)
        got = evaluate(run, backend=backend)["val/loss"]
        assert got == pytest.approx(LOSSES[model][backend], rel=LOSS_RTOL), f"{backend}/{model}"


def test_the_table_is_the_hand_written_one() -> None:
    """Names, shapes, layouts and initial distributions as the hand-written mlp drew them (so seeds carry over)."""
    info = DataInfo("classification", (4, 3, 1), 5)
    spec = build_model("mlp", {"hidden": [6], "low_rank": {"layers.0": 2}}, info)
    got = [(p.name, p.shape, p.layout, p.init, p.scale, p.decay) for p in spec.table]
    factor = math.sqrt(math.sqrt(2.0 / 12)) / 2 ** 0.25  # each factor's std, so that U @ V has the kernel's
    assert got == [("layers.0.weight_u", (12, 2), "dense", "normal", pytest.approx(factor), True),
                   ("layers.0.weight_v", (2, 6), "dense", "normal", pytest.approx(factor), True),
                   ("layers.0.bias", (6,), "bias", "zeros", 0.0, False),
                   ("layers.1.weight", (6, 5), "dense", "normal", pytest.approx(math.sqrt(1.0 / 6)), True),
                   ("layers.1.bias", (5,), "bias", "zeros", 0.0, False)]


def test_a_cnn_on_images_too_small_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"model.channels: 3 pooling blocks shrink \(4, 4\) images"):
        build_model("cnn", {"channels": [2, 2, 2]}, DataInfo("classification", (4, 4, 1), 3))
    with pytest.raises(ConfigError, match="needs image inputs"):
        build_model("cnn", {}, DataInfo("classification", (16,), 3))
