"""The loop's fast paths: quiet stretches between events, and torch's plain step, change no number or hook call."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import crossframe
from crossframe import hookimpl
from crossframe.backend import TrainSetup
from crossframe.data.dataset import DataInfo
from crossframe.models import build_model
from crossframe.plugins import get_plugin_manager

torch = pytest.importorskip("torch")

from crossframe_torch.backend import TorchBackend  # noqa: E402


class Recorder:
    """Notes every ``on_step_end`` (step, whether it carried logs) and stops the run after ``stop_at``."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.calls: list[tuple[int, bool]] = []

    @hookimpl
    def on_step_end(self, run: Any, step: int, batch: Any, logs: Any) -> None:
        self.calls.append((step, logs is not None))
        if step == self.stop_at:
            run.should_stop = True


def _with_recorder(recorder: Recorder, config: dict[str, Any]) -> Any:
    manager = get_plugin_manager()
    manager.register(recorder, "step-recorder")
    try:
        return crossframe.run(config, quiet=True)
    finally:
        manager.unregister(name="step-recorder")


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_every_step_reaches_on_step_end_and_logs_come_at_log_steps(workdir, tiny, backend: str) -> None:
    pytest.importorskip(backend)
    recorder = Recorder()
    config = {**tiny(steps=23, log_every=5, eval_every=7, checkpoint_every=11), "backend": backend}
    result = _with_recorder(recorder, config)
    assert result.steps == 23
    assert [step for step, _ in recorder.calls] == list(range(1, 24))
    assert [step for step, logged in recorder.calls if logged] == [5, 10, 15, 20, 23]
    checkpoints = sorted(int(p.name.split("_")[1]) for p in (result.run_dir / "checkpoints").glob("step_*"))
    assert checkpoints[-1] == 23 and set(checkpoints) <= {11, 22, 23}


def test_a_hook_stops_the_run_between_log_steps(workdir, tiny) -> None:
    recorder = Recorder(stop_at=7)
    result = _with_recorder(recorder, tiny(steps=20, log_every=5))
    assert result.status == "stopped" and result.steps == 7
    assert [step for step, _ in recorder.calls] == list(range(1, 8))
    assert result.checkpoint is not None and result.checkpoint.name == "step_7"


def _states(clip_norm: float | None) -> tuple[TorchBackend, Any]:
    spec = build_model("mlp", {"hidden": [16, 8]}, DataInfo("classification", (6,), 4))
    weights = spec.init(seed=5)
    backend = TorchBackend()
    setup = TrainSetup(spec, weights, "adamw", {"lr": 0.01, "weight_decay": 0.1}, clip_norm=clip_norm)
    return backend, backend.create_state(setup)


def test_the_plain_torch_step_is_the_general_step() -> None:
    backend, plain = _states(None)
    _, general = _states(None)
    assert plain.plain_step is not None
    general.plain_step = None  # the general step, with the same options
    rng = np.random.default_rng(0)
    for i in range(6):
        batch = {"x": rng.normal(size=(8, 6)).astype(np.float32), "y": rng.integers(0, 4, size=8)}
        lr = 0.01 * (i + 1) / 6
        plain, out_plain = backend.train_step(plain, batch, lr)
        general, out_general = backend.train_step(general, batch, lr)
        assert float(out_plain["loss"]) == float(out_general["loss"])
        if i == 2:  # an evaluation between steps puts the module in eval mode; both steps switch back
            backend.eval_step(plain, batch)
            backend.eval_step(general, batch)
    a, b = backend.export_state(plain), backend.export_state(general)
    for name in a[0]:
        np.testing.assert_array_equal(a[0][name], b[0][name], err_msg=name)
    for name in a[1]:
        np.testing.assert_array_equal(a[1][name], b[1][name], err_msg=name)
    assert plain.step == general.step == 6


def test_options_the_plain_step_lacks_take_the_general_step() -> None:
    _, clipped = _states(clip_norm=1.0)
    assert clipped.plain_step is None


@pytest.mark.parametrize("model", [
    {"name": "mlp", "hidden": [12, 7], "activation": "gelu", "dropout": 0.0},
    {"name": "graph",
     "layers": ["flatten", {"dense": 9}, "silu", {"sequential": [{"dense": 5}, "tanh"]}, {"dense": 4}]},
])
def test_a_graph_without_image_layers_runs_as_a_chain_with_the_plan_s_outputs(model: dict[str, Any]) -> None:
    from crossframe_torch.lowering import build_module
    from crossframe_torch.models import load_canonical

    params = {k: v for k, v in model.items() if k != "name"}
    spec = build_model(model["name"], params, DataInfo("classification", (3, 2, 1), 4))
    weights = spec.init(seed=2)
    module = build_module(spec.graph)
    load_canonical(module, spec, weights)
    assert module._chain is not None
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(5, 3, 2, 1)).astype(np.float32))
    chained = module(x)
    module._chain = None
    planned = module(x)
    torch.testing.assert_close(chained, planned, rtol=0, atol=0)
    np.testing.assert_allclose(chained.detach().numpy(), spec.forward(weights, x.numpy()), atol=1e-5, rtol=1e-5)


def test_a_graph_with_image_layers_or_residuals_keeps_its_plan() -> None:
    from crossframe_torch.lowering import build_module

    info = DataInfo("classification", (6, 6, 1), 3)
    cnn = build_model("cnn", {"channels": [2], "kernel_size": 3, "hidden": 5}, info)
    residual = build_model("graph", {"layers": ["flatten", {"dense": 4}, {"residual": [{"dense": 4}, "relu"]},
                                                {"dense": 3}]}, info)
    assert build_module(cnn.graph)._chain is None
    assert build_module(residual.graph)._chain is None
