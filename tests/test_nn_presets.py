"""The built-in mlp, cnn and gpt are graphs of neutral layers; checkpoints the hand-written models wrote still load.

``tests/fixtures/hand_written`` holds runs the hand-written mlp and cnn trained (at commit 7bd526d) and the
hand-written gpt trained (at 8935100; learned positions, and rotary with an untied head), by
``tests/fixtures/hand_written/make.py``, and the validation loss that code evaluated each checkpoint to on
every backend. The gpt's two tables were then named ``wte`` and ``wpe``; loading renames them.
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
FIXTURE_MODELS = ["mlp", "cnn", "gpt", "gpt_rope"]


def runnable_copy(model: str, tmp_path: Path) -> Path:
    """A copy of the fixture run ``model`` whose config reads the fixture corpus where it lies now."""
    run = shutil.copytree(FIXTURES / model, tmp_path / model)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("CORPUS", str((FIXTURES / "gpt_corpus.jsonl").resolve())))
    return run


@pytest.mark.parametrize("model", FIXTURE_MODELS)
def test_the_built_in_models_are_graphs_with_the_hand_written_table(model: str) -> None:
    checkpoint = load_checkpoint(FIXTURES / model)
    spec = spec_from_json(checkpoint.state["model"])
    assert spec.name == model.removesuffix("_rope") and spec.graph is not None
    spec.check_checkpoint(checkpoint.weights, checkpoint.optimizer_state, "fixture")  # names, shapes, dtypes
    x = np.random.default_rng(0).normal(size=(3, *spec.data_info.input_shape))
    np.testing.assert_allclose(spec.forward(checkpoint.weights, x),
                               spec.graph.reference(checkpoint.weights, x), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_hand_written_checkpoint_evaluates_to_the_same_loss(backend: str, tmp_path: Path) -> None:
    from crossframe.train.evaluate import evaluate

    for model in FIXTURE_MODELS:
        got = evaluate(runnable_copy(model, tmp_path), backend=backend)["val/loss"]
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


def test_a_hand_written_gpt_checkpoint_is_renamed_on_load() -> None:
    """The old table names, as weights and as optimizer slots, become the graph's; nothing else changes."""
    from crossframe.checkpoint import load_tensors

    where = FIXTURES / "gpt" / "checkpoints" / "step_12"
    raw, raw_slots = load_tensors(where / "model.safetensors"), load_tensors(where / "optimizer.safetensors")
    assert {"wte", "wpe"} <= set(raw) and any(k.endswith("/wte") for k in raw_slots)
    checkpoint = load_checkpoint(FIXTURES / "gpt")
    assert "wte" not in checkpoint.weights and "wpe" not in checkpoint.weights
    np.testing.assert_array_equal(checkpoint.weights["wte.weight"], raw["wte"])
    np.testing.assert_array_equal(checkpoint.weights["wpe.weight"], raw["wpe"])
    assert len(checkpoint.weights) == len(raw) and len(checkpoint.optimizer_state) == len(raw_slots)
    for key, value in raw_slots.items():
        slot, _, name = key.rpartition("/")
        np.testing.assert_array_equal(checkpoint.optimizer_state[f"{slot}/{name}.weight" if name in ("wte", "wpe")
                                                                 else key], value)


@pytest.mark.parametrize("model", ["gpt", "gpt_rope"])
def test_a_hand_written_gpt_resumes_and_trains_on(model: str, tmp_path: Path) -> None:
    """Resuming a hand-written gpt run takes its optimizer state under the new names and keeps training."""
    import crossframe

    run = runnable_copy(model, tmp_path)
    result = crossframe.run(run / "config.yaml", overrides=["train.steps=14"], resume=run, quiet=True)
    assert result.status == "completed" and result.steps == 14
    assert load_checkpoint(run).step == 14 and "wte.weight" in load_checkpoint(run).weights
