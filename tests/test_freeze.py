"""``train.freeze``: frozen weights come out of training bit-identical on every backend, the others move,
and a pattern that matches nothing is one line, exit 2, before anything is written."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import crossframe
from crossframe.checkpoint import load_checkpoint
from crossframe.cli.main import main
from tests.hf_models import TINY_LM_LAYERS

BACKENDS = [b for b in ("torch", "jax", "tensorflow") if importlib.util.find_spec(b)]
pytestmark = pytest.mark.slow

LAYERS = TINY_LM_LAYERS


def config(backend: str, freeze: list[str]) -> dict:
    return {"name": f"freeze-{backend}", "backend": backend, "device": "cpu", "seed": 0,
            "data": {"name": "python-stdlib", "max_files": 2, "val_fraction": 0.5},
            "text": {"tokenizer": {"name": "bytes"}, "seq_len": 8, "max_eval_tokens": 32},
            "model": {"name": "graph", "layers": LAYERS},
            "train": {"steps": 3, "batch_size": 2, "eval_every": 0, "clip_norm": 1.0,
                      "optimizer": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1}, "freeze": freeze}}


@pytest.mark.parametrize("backend", BACKENDS)
def test_frozen_weights_are_bit_identical_after_training(workdir: Path, backend: str) -> None:
    result = crossframe.run(config(backend, ["wte.*", "attn.*"]), quiet=True)
    from crossframe.config.loading import load_config
    from crossframe.models import spec_from_json

    loaded = load_checkpoint(result.run_dir)
    start = spec_from_json(loaded.state["model"]).init(load_config(result.run_dir / "config.yaml").seed)
    for name, value in loaded.weights.items():
        if name.startswith(("wte.", "attn.")):
            assert np.array_equal(value, start[name]), f"{backend}: frozen '{name}' changed"
        else:
            assert not np.array_equal(value, start[name]), f"{backend}: '{name}' did not train"


def test_a_pattern_that_matches_nothing_is_one_line(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    import json

    Path("c.json").write_text(json.dumps(config("torch", ["encoder.*"])))
    assert main(["run", "c.json", "-q"]) == 2
    err = capsys.readouterr().err
    assert "train.freeze.0: 'encoder.*' matches no weight" in err and "Traceback" not in err
    assert not Path("runs/freeze-torch").exists()


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("jax", "tensorflow")])
def test_jax_and_tensorflow_hold_no_optimizer_state_for_frozen_weights(backend: str) -> None:
    """Gradients are taken for the trainable weights only: the native optimizer has slots for those alone,
    a step leaves the frozen ones bit-identical, and the exported state has zeros in their slots."""
    from crossframe.backend import TrainSetup
    from crossframe.data.dataset import DataInfo
    from crossframe.models import build_model
    from crossframe.train.freezing import frozen_names
    from crossframe.train.runner import make_backend

    spec = build_model("graph", {"layers": LAYERS}, DataInfo("language_modeling", (8,), 256))
    frozen = frozen_names(spec, ["wte.*", "attn.*"])
    impl = make_backend(backend)
    weights = spec.init(0)
    state = impl.create_state(TrainSetup(spec, weights, "adamw", {"lr": 1e-2, "weight_decay": 0.1}, frozen=frozen))
    if backend == "jax":
        from crossframe_jax.optim import STATEFUL_LINK

        held = set(state.opt_state.inner[STATEFUL_LINK["adamw"]].mu)
    else:
        held = {key.split("/", 1)[1] for key in state.optimizer.slots}
    assert held == {p.name for p in spec.table} - frozen
    ids = np.random.default_rng(0).integers(0, 256, (2, 9))
    state, _ = impl.train_step(state, {"x": ids[:, :-1], "y": ids[:, 1:]}, 1e-2)
    after, opt = impl.export_state(state)
    for name in frozen:
        assert np.array_equal(after[name], weights[name]), name
        assert not opt[f"exp_avg/{name}"].any() and not opt[f"exp_avg_sq/{name}"].any(), name
    assert not np.array_equal(after["mlp.up.weight"], weights["mlp.up.weight"])
