"""The backend conformance suite: subclass :class:`BackendConformance` and name your backend.

Every check goes through the public :class:`~crossframe.backend.Backend` interface only, and
each failure says what is wrong (which parameter, which layout, how far off) rather than just
that two arrays differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from crossframe.backend import Backend, DistillSetup, TrainSetup
from crossframe.checkpoint import load_checkpoint, save_checkpoint
from crossframe.data.dataset import DataInfo
from crossframe.errors import CapabilityError
from crossframe.models import build_model
from crossframe.models.spec import ModelSpec
from crossframe.testing import reference
from crossframe.testing.tolerance import network_tolerance, sgd_weight_tolerance

#: tiny architectures the suite builds for each model a backend claims
MODEL_CASES: dict[str, tuple[dict[str, Any], DataInfo]] = {
    "mlp": ({"hidden": [12, 7], "activation": "gelu"}, DataInfo("classification", (4, 3, 1), 5)),
    "cnn": ({"channels": [3, 4], "kernel_size": 3, "hidden": 6}, DataInfo("classification", (6, 5, 2), 3)),
    "gpt": ({"n_layer": 2, "n_head": 2, "d_model": 8, "max_seq_len": 8},
            DataInfo("language_modeling", (6,), 13)),
    # neutral layers: convolutions (grouped), a residual, norms, pooling, reshaping, positions,
    # grouped-query attention with rotary embeddings, a gated MLP and dropout, in one graph
    "graph": ({"layers": [
        {"conv2d": {"filters": 4, "kernel": 3, "padding": "same"}}, "relu",
        {"residual": [{"conv2d": {"filters": 4, "kernel": 3, "padding": "same", "groups": 2}}, {"norm": "layer"},
                      "gelu"]},
        {"pool": {"kind": "max", "size": 2}}, {"reshape": [3, 8]}, {"positional": 3},
        {"residual": [{"norm": "rms"}, {"attention": {"heads": 2, "kv_heads": 1, "rope": True}}]},
        {"residual": [{"norm": "layer"}, {"gated_mlp": 8}]},
        "flatten", {"dense": {"units": 6, "gain": 2.0}}, "silu", {"dropout": 0.0}, {"dense": "outputs"}]},
        DataInfo("classification", (6, 5, 2), 3)),
}
#: forward tolerance per model (float32 against the float64 reference)
MODEL_ATOL: dict[str, float] = {"gpt": 1e-4, "graph": 1e-4}
#: the ``low_rank`` model param for each case: factorised dense layers (``weight_u @ weight_v``)
LOW_RANK_CASES: dict[str, dict[str, int]] = {
    "mlp": {"layers.0": 2, "layers.2": 3},
    "cnn": {"fc.0": 2},
    "gpt": {"h.0.attn.qkv": 3, "h.1.mlp.proj": 4},
    "graph": {"9": 3, "12": 2},
}
OPTIMIZER_CASES: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
    "adam": {"lr": 0.05, "betas": (0.9, 0.99), "eps": 1e-8, "weight_decay": 0.05},
    "adamw": {"lr": 0.05, "betas": (0.8, 0.95), "eps": 1e-8, "weight_decay": 0.1},
    "rmsprop": {"lr": 0.01, "alpha": 0.9, "eps": 1e-8, "weight_decay": 0.05},
    "adagrad": {"lr": 0.05, "eps": 1e-10, "weight_decay": 0.05},
    "lion": {"lr": 0.01, "betas": (0.9, 0.99), "weight_decay": 0.1},
}


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


def _batch(info: DataInfo, n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    if info.task == "language_modeling":
        x = rng.integers(0, info.num_outputs, (n, *info.input_shape)).astype(np.int64)
        mask = (rng.random(x.shape) < 0.8).astype(np.float32)
        mask[:, 0] = 1.0
        return {"x": x, "y": np.roll(x, -1, axis=1), "mask": mask}
    return {"x": rng.normal(0.0, 1.0, (n, *info.input_shape)).astype(np.float32),
            "y": rng.integers(0, info.num_outputs, n).astype(np.int64)}


class BackendConformance:
    """Subclass as ``TestMyBackend(BackendConformance)`` and set ``backend``.

    Override :meth:`make_backend` to test an instance that is not registered (or a variant).
    ``atol`` bounds every float32 comparison against the float64 numpy references.
    """

    backend: ClassVar[str] = ""
    atol: ClassVar[float] = 1e-5

    # ------------------------------------------------------------------ helpers

    def make_backend(self) -> Backend:
        """The backend under test (by default: the registered one named ``backend``)."""
        from crossframe.train.runner import make_backend

        if not self.backend:
            raise pytest.UsageError(f"{type(self).__name__}: set `backend = \"<name>\"`")
        try:
            return make_backend(self.backend)
        except CapabilityError as exc:
            pytest.skip(str(exc))

    @pytest.fixture
    def impl(self) -> Backend:
        """The backend instance for one test."""
        return self.make_backend()

    def claimed_models(self, impl: Backend) -> list[str]:
        """Models the backend claims that the suite knows how to build."""
        return [m for m in impl.capabilities().models if m in MODEL_CASES]

    def spec(self, model: str) -> ModelSpec:
        """A tiny spec of ``model``."""
        params, info = MODEL_CASES[model]
        return build_model(model, params, info)

    def stateful_optimizer(self, impl: Backend) -> str:
        """The claimed optimizer with the most state (adamw, adam, then sgd)."""
        claimed = impl.capabilities().optimizers
        for name in ("adamw", "adam", "sgd"):
            if name in claimed:
                return name
        pytest.skip("backend claims none of sgd, adam, adamw")

    def linear_setup(self, optimizer: str, clip_norm: float | None = None, grad_accum: int = 1) -> TrainSetup:
        """A one-layer mlp, whose exact gradient the numpy reference knows."""
        spec = build_model("mlp", {"hidden": []}, DataInfo("classification", (6,), 4))
        weights = {k: v * 3 for k, v in spec.init(11).items()}
        weights["layers.0.bias"] = np.linspace(-0.5, 0.5, 4).astype(np.float32)
        return TrainSetup(spec, weights, optimizer, dict(OPTIMIZER_CASES[optimizer]), "cpu", "fp32",
                          grad_accum, clip_norm)

    # ------------------------------------------------------------------ checks

    def test_capabilities_are_declared(self, impl: Backend) -> None:
        """Capabilities name at least the CPU, fp32, single-device training and a model."""
        caps = impl.capabilities()
        assert "cpu" in caps.devices, f"capabilities.devices {caps.devices} must include 'cpu'"
        assert "fp32" in caps.precisions, f"capabilities.precisions {caps.precisions} must include 'fp32'"
        assert "single" in caps.strategies, f"capabilities.strategies {caps.strategies} must include 'single'"
        assert caps.models, "capabilities.models is empty"
        assert impl.framework_version(), "framework_version() is empty"
        assert impl.resolve_device("auto") in caps.devices
        assert impl.measure_peak_flops("cpu", "fp32") > 1e6, "measure_peak_flops must return FLOP/s"

    def test_canonical_round_trip_is_exact(self, impl: Backend) -> None:
        """canonical -> native -> canonical returns the very same float32 values, for every model."""
        for model in self.claimed_models(impl):
            spec = self.spec(model)
            weights = spec.init(5)
            back, _ = impl.export_state(impl.create_state(TrainSetup(spec, weights)))
            assert set(back) == set(weights), f"{model}: exported names {sorted(back)} != table {sorted(weights)}"
            for p in spec.table:
                got = back[p.name]
                assert got.shape == p.shape, (
                    f"{model}: '{p.name}' comes back with shape {got.shape}, canonical is {p.shape} "
                    f"(layout '{p.layout}')")
                assert got.dtype == np.float32, f"{model}: '{p.name}' comes back as {got.dtype}, not float32"
                assert np.array_equal(got, weights[p.name]), (
                    f"{model}: round trip changed '{p.name}' (layout '{p.layout}', max |diff| "
                    f"{_max_diff(got, weights[p.name]):.3g}); the native <-> canonical conversion is wrong")

    def test_forward_matches_numpy_reference(self, impl: Backend) -> None:
        """Outputs on canonical weights match the numpy reference forward within ``atol``."""
        for model in self.claimed_models(impl):
            spec = self.spec(model)
            weights = spec.init(6)
            x = _batch(spec.data_info, 9, 1)["x"]
            got = impl.predict(impl.inference_state(spec, weights), x)
            want = spec.forward(weights, x)
            assert got.shape == want.shape, f"{model}: predict gives shape {got.shape}, reference {want.shape}"
            diff = _max_diff(got, want)
            atol = max(self.atol, MODEL_ATOL.get(model, 0.0))
            assert diff <= atol, (
                f"{model}: forward differs from the numpy reference by {diff:.3g} (allowed {atol}); "
                f"check the weight layouts ({sorted({p.layout for p in spec.table})}) and the ops")

    def test_low_rank_outputs_match_numpy_reference(self, impl: Backend) -> None:
        """Models with factorised dense layers (model param ``low_rank``) match the reference too.

        A backend that cannot build them says so with a ``CapabilityError`` from ``inference_state``.
        """
        for model in self.claimed_models(impl):
            params, info = MODEL_CASES[model]
            spec = build_model(model, {**params, "low_rank": LOW_RANK_CASES[model]}, info)
            weights = spec.init(8)
            x = _batch(spec.data_info, 9, 2)["x"]
            try:
                state = impl.inference_state(spec, weights)
            except CapabilityError as exc:
                pytest.skip(f"{model} with low_rank: {exc}")
            got, want = impl.predict(state, x), spec.forward(weights, x)
            diff = _max_diff(got, want)
            atol = max(self.atol, MODEL_ATOL.get(model, 0.0))
            assert got.shape == want.shape and diff <= atol, (
                f"{model} with low_rank {LOW_RANK_CASES[model]}: forward differs from the numpy reference by "
                f"{diff:.3g} (allowed {atol}); a factorised layer computes (x @ weight_u) @ weight_v + bias")

    @pytest.mark.parametrize("optimizer", sorted(OPTIMIZER_CASES))
    def test_optimizer_steps_match_reference(self, impl: Backend, optimizer: str) -> None:
        """Two steps from given weights equal two numpy reference steps (state carried over)."""
        if optimizer not in impl.capabilities().optimizers:
            pytest.skip(f"backend does not claim '{optimizer}'")
        self._check_steps(impl, self.linear_setup(optimizer), steps=2)

    def test_clipping_matches_reference(self, impl: Backend) -> None:
        """Global-norm clipping: g * min(1, clip / (norm + 1e-6)); the pre-clip norm is reported."""
        self._check_steps(impl, self.linear_setup(self.stateful_optimizer(impl), clip_norm=0.05), steps=2,
                          check_norm=True)

    def _check_steps(self, impl: Backend, setup: TrainSetup, steps: int, check_norm: bool = False) -> None:
        state = impl.create_state(setup)
        params = {k: v.astype(np.float64) for k, v in setup.weights.items()}
        ref_state: dict[str, np.ndarray] = {}
        lr = float(setup.optimizer_params["lr"])
        for i in range(steps):
            batch = _batch(setup.spec.data_info, 16, 20 + i)
            loss, grads = reference.linear_softmax_grads(params, batch["x"], batch["y"])
            grads, norm = reference.clip_by_global_norm(grads, setup.clip_norm)
            params, ref_state = reference.optimizer_step(setup.optimizer, setup.optimizer_params, params, grads,
                                                         ref_state, lr, setup.decay_mask)
            state, out = impl.train_step(state, batch, lr)
            host = impl.fetch(out)
            assert abs(float(host["loss"]) - loss) <= self.atol, (
                f"{setup.optimizer} step {i + 1}: loss {float(host['loss']):.6f}, reference {loss:.6f}")
            if check_norm:
                assert "grad_norm" in host, "train_step must return 'grad_norm' when clipping is on"
                assert abs(float(host["grad_norm"]) - norm) <= 1e-4 * max(norm, 1.0), (
                    f"grad_norm {float(host['grad_norm']):.6f}, reference {norm:.6f} (before clipping)")
        weights, opt_state = impl.export_state(state)
        for name, want in params.items():
            diff = _max_diff(weights[name], want)
            assert diff <= self.atol, (
                f"{setup.optimizer}{' + clipping' if setup.clip_norm else ''}: '{name}' is {diff:.3g} away from "
                f"the reference after {steps} steps")
        for key, want in ref_state.items():
            if key == "step":
                got_step = int(np.asarray(opt_state.get("step", -1)).reshape(-1)[0])
                assert got_step == steps, f"optimizer state 'step' is {got_step}, expected {steps}"
                continue
            assert key in opt_state, f"canonical optimizer state lacks '{key}' (has {sorted(opt_state)[:4]}...)"
            diff = _max_diff(opt_state[key], want)
            assert diff <= self.atol, f"optimizer state '{key}' is {diff:.3g} away from the reference"

    def test_grad_accumulation_equals_one_big_batch(self, impl: Backend) -> None:
        """k micro-batches of b give the update of one batch of k*b."""
        big = self.linear_setup("sgd")
        small = self.linear_setup("sgd", grad_accum=4)
        s_big, s_small = impl.create_state(big), impl.create_state(small)
        for i in range(3):
            batch = _batch(big.spec.data_info, 32, 40 + i)
            s_big, _ = impl.train_step(s_big, batch, 0.1)
            s_small, _ = impl.train_step(s_small, batch, 0.1)
        a, b = impl.export_state(s_big)[0], impl.export_state(s_small)[0]
        for name in a:
            diff = _max_diff(a[name], b[name])
            assert diff <= self.atol, f"grad_accum=4 differs from one batch of 32 on '{name}' by {diff:.3g}"

    def test_gpt_grad_accumulation_with_masks(self, impl: Backend) -> None:
        """For language models, k masked micro-batches equal one batch (loss over counted tokens)."""
        if "gpt" not in impl.capabilities().models:
            pytest.skip("backend does not claim 'gpt'")
        spec = self.spec("gpt")
        weights = spec.init(2)
        # SGD, because reordered sums round linearly through it; Adam would turn a key bias's gradient,
        # zero in exact arithmetic and rounding noise in float32, into a full step (crossframe.testing.tolerance)
        setups = [TrainSetup(spec, weights, "sgd", {"lr": 0.1, "momentum": 0.9}, grad_accum=k, clip_norm=1.0)
                  for k in (1, 2)]
        states = [impl.create_state(s) for s in setups]
        for i in range(2):
            batch = _batch(spec.data_info, 8, 60 + i)
            states = [impl.train_step(s, batch, 0.1)[0] for s in states]
        a, b = (impl.export_state(s)[0] for s in states)
        seq, width = spec.data_info.input_shape[0], max(max(p.shape) for p in spec.table)
        depth = 2 * int(spec.params.get("n_layer", 1)) + 2
        allowed = max(self.atol, sgd_weight_tolerance(0.1, 2, network_tolerance(depth, 8 * seq * width, 1.0), 0.9))
        for name in a:
            diff = _max_diff(a[name], b[name])
            assert diff <= allowed, f"gpt: grad_accum=2 differs from one batch on '{name}' by {diff:.3g}"

    def test_eval_step_sums(self, impl: Backend) -> None:
        """eval_step returns loss sum, count and confusion counts that agree with the reference.

        An inference-only backend (``can_train`` false) is checked on an :meth:`~Backend.inference_state`.
        """
        setup = self.linear_setup("sgd")
        trains = impl.capabilities().can_train
        state = impl.create_state(setup) if trains else impl.inference_state(setup.spec, setup.weights)
        batch = _batch(setup.spec.data_info, 24, 3)
        host = impl.fetch(impl.eval_step(state, batch))
        logits = setup.spec.forward(setup.weights, batch["x"])
        assert int(host["count"]) == 24, f"eval_step count {host['count']}, expected 24"
        want_loss = reference.linear_softmax_grads(setup.weights, batch["x"], batch["y"])[0] * 24
        assert abs(float(host["loss_sum"]) - want_loss) <= 1e-4, f"loss_sum {host['loss_sum']}, ref {want_loss}"
        want_cm = np.zeros((4, 4), np.int64)
        np.add.at(want_cm, (batch["y"], logits.argmax(axis=1)), 1)
        assert np.array_equal(np.asarray(host["confusion"]), want_cm), "confusion matrix (rows: truth) differs"
        if "logits" in host:  # optional; score metrics (ROC-AUC, log-loss) read them when present
            got = np.asarray(host["logits"], np.float64)
            assert got.shape == logits.shape, f"eval_step logits have shape {got.shape}, expected {logits.shape}"
            diff = float(np.max(np.abs(got - logits)))
            assert diff <= self.atol, f"eval_step logits differ from the reference forward by {diff:.3g}"

    def _create_or_skip(self, impl: Backend, setup: TrainSetup, feature: str) -> Any:
        """A training state, or a skip when the backend cannot train or declines ``feature`` (CapabilityError)."""
        if not impl.capabilities().can_train:
            pytest.skip("backend cannot train")
        try:
            return impl.create_state(setup)
        except CapabilityError as exc:
            pytest.skip(f"backend declines {feature}: {exc}")

    def test_pruning_masks_hold_through_updates(self, impl: Backend) -> None:
        """With ``TrainSetup.masks``, pruned weights stay exactly 0 (adamw + weight decay); the rest follow
        the reference update. A backend that cannot keep masks must raise CapabilityError in create_state."""
        setup = self.linear_setup("adamw" if "adamw" in impl.capabilities().optimizers else
                                  self.stateful_optimizer(impl))
        mask = (np.random.default_rng(4).random(setup.weights["layers.0.weight"].shape) < 0.5).astype(np.float32)
        setup.masks = {"layers.0.weight": mask}
        state = self._create_or_skip(impl, setup, "pruning masks")
        params = {k: v.astype(np.float64) for k, v in setup.weights.items()}
        params["layers.0.weight"] = params["layers.0.weight"] * mask
        ref_state: dict[str, np.ndarray] = {}
        lr = float(setup.optimizer_params["lr"])
        for i in range(3):
            batch = _batch(setup.spec.data_info, 16, 70 + i)
            _, grads = reference.linear_softmax_grads(params, batch["x"], batch["y"])
            params, ref_state = reference.optimizer_step(setup.optimizer, setup.optimizer_params, params, grads,
                                                         ref_state, lr, setup.decay_mask)
            params["layers.0.weight"] = params["layers.0.weight"] * mask
            state, _ = impl.train_step(state, batch, lr)
        weights = impl.export_state(state)[0]
        got = weights["layers.0.weight"]
        assert np.count_nonzero(got[mask == 0]) == 0, (
            f"{np.count_nonzero(got[mask == 0])} pruned entries of 'layers.0.weight' are non-zero after 3 "
            "steps; masks must be applied inside the step, after the update")
        assert np.all(got[mask == 1] != setup.weights["layers.0.weight"][mask == 1]), "unpruned weights did not move"
        for name, want in params.items():
            diff = _max_diff(weights[name], want)
            assert diff <= self.atol, f"with masks, '{name}' is {diff:.3g} away from the masked reference update"

    def test_distillation_step_matches_reference(self, impl: Backend) -> None:
        """With ``TrainSetup.distill``, the loss is ``(1-a) * ce + a * T^2 * KL(teacher || student)`` with the
        teacher's logits computed in the step, and the update follows its exact gradient (numpy reference)."""
        setup = self.linear_setup("sgd")
        setup.optimizer_params = {"lr": 0.2}
        info = setup.spec.data_info
        teacher = build_model("mlp", {"hidden": [5], "activation": "tanh"}, info)  # another architecture
        teacher_weights = {k: v * 2 for k, v in teacher.init(8).items()}
        temperature, alpha = 2.5, 0.6
        setup.distill = DistillSetup(teacher, teacher_weights, temperature, alpha)
        state = self._create_or_skip(impl, setup, "distillation")
        params = {k: v.astype(np.float64) for k, v in setup.weights.items()}
        for i in range(2):
            batch = _batch(info, 16, 80 + i)
            t_logits = teacher.forward(teacher_weights, batch["x"])
            s_logits = setup.spec.forward(params, batch["x"])
            loss, grads = reference.linear_distill_grads(params, batch["x"], batch["y"], t_logits, temperature, alpha)
            kd = reference.distill_loss(s_logits, t_logits, temperature)
            state, out = impl.train_step(state, batch, 0.2)
            host = impl.fetch(out)
            assert abs(float(host["loss"]) - loss) <= self.atol, (
                f"distillation step {i + 1}: loss {float(host['loss']):.6f}, reference {loss:.6f} "
                f"(of which T^2 * KL {kd:.6f}); the step's loss must be the mixed one")
            if "distill_loss" in host:
                assert abs(float(host["distill_loss"]) - kd) <= self.atol, (
                    f"distill_loss {float(host['distill_loss']):.6f}, reference T^2 * KL {kd:.6f}")
            params = {k: p - 0.2 * grads[k] for k, p in params.items()}
        weights = impl.export_state(state)[0]
        for name, want in params.items():
            diff = _max_diff(weights[name], want)
            assert diff <= self.atol, (
                f"distillation: '{name}' is {diff:.3g} away from the reference after 2 steps; the KD gradient "
                f"must flow into the student only (teacher without gradients, same temperature on both sides)")

    def test_checkpoint_save_and_load(self, impl: Backend, tmp_path: Path) -> None:
        """Weights and optimizer state survive safetensors; training continues identically."""
        optimizer = self.stateful_optimizer(impl)
        setup = self.linear_setup(optimizer)
        state = impl.create_state(setup)
        for i in range(2):
            state, _ = impl.train_step(state, _batch(setup.spec.data_info, 16, i), 0.05)
        weights, opt = impl.export_state(state)
        save_checkpoint(tmp_path, 2, weights, opt, {"backend": self.backend}, keep=1)
        loaded = load_checkpoint(tmp_path)
        fresh = impl.create_state(self.linear_setup(optimizer))
        fresh = impl.load_state(fresh, loaded.weights, loaded.optimizer_state)
        w2, o2 = impl.export_state(fresh)
        for name in weights:
            assert np.array_equal(w2[name], weights[name]), f"weight '{name}' changed through save / load"
        for key in opt:
            assert np.allclose(o2[key], opt[key], atol=0, rtol=0), f"optimizer state '{key}' changed through load"
        batch = _batch(setup.spec.data_info, 16, 9)
        state, _ = impl.train_step(state, batch, 0.05)
        fresh, _ = impl.train_step(fresh, batch, 0.05)
        a, b = impl.export_state(state)[0], impl.export_state(fresh)[0]
        for name in a:
            assert _max_diff(a[name], b[name]) <= 1e-7, f"after loading, the next step differs on '{name}'"

    def test_training_objective_matches_reference(self, impl: Backend) -> None:
        """Class weights, focal loss and label smoothing (``TrainSetup.objective``): the step's loss and
        its SGD update equal :func:`crossframe.losses.reference_loss` and its float64 gradient."""
        from crossframe.losses import LossSetup

        if not impl.capabilities().weighted_losses:
            pytest.skip("backend does not claim weighted_losses")
        if "sgd" not in impl.capabilities().optimizers:
            pytest.skip("backend does not claim sgd")
        spec = build_model("mlp", {"hidden": []}, DataInfo("classification", (6,), 4))
        weights = {k: v * 3 for k, v in spec.init(4).items()}
        batch = _batch(spec.data_info, 12, 8)
        objective = LossSetup(class_weights=(1.0, 0.2, 4.0, 1.5), gamma=2.0, label_smoothing=0.1)
        lr = 0.5
        state = impl.create_state(TrainSetup(spec, weights, "sgd", {"lr": lr}, "cpu", objective=objective))
        state, out = impl.train_step(state, batch, lr)
        loss, grads = reference.linear_objective_grads(weights, batch["x"], batch["y"], objective)
        got = float(impl.fetch(out)["loss"])
        # float32 forward and backward of a 6x4 linear model against float64 (differences: ~1e-9)
        assert abs(got - loss) <= self.atol * max(1.0, loss), (
            f"weighted focal smoothed loss {got:.6f}, reference {loss:.6f} (see crossframe.losses)")
        after = impl.export_state(state)[0]
        for name, g in grads.items():
            diff = _max_diff(after[name], weights[name].astype(np.float64) - lr * g)
            assert diff <= self.atol, f"'{name}' after one SGD step on the objective is {diff:.3g} off the reference"

    @pytest.mark.parametrize("objective", ["output", "loss"])
    def test_input_gradients_match_finite_differences(self, impl: Backend, objective: str) -> None:
        """``input_gradients`` equals central differences (float64) of the numpy reference forward."""
        models = [m for m in self.claimed_models(impl) if m in ("mlp", "cnn")]
        if not models:
            pytest.skip("backend claims neither mlp nor cnn")
        for model in models:
            spec = self.spec(model)
            weights = spec.init(5)
            try:
                state = impl.inference_state(spec, weights)
                x = _batch(spec.data_info, 3, 9)["x"]
                targets = np.arange(len(x)) % spec.data_info.num_outputs
                got = impl.input_gradients(state, x, targets, objective)  # type: ignore[arg-type]
            except CapabilityError as exc:
                pytest.skip(str(exc))
            want = reference.input_gradients_fd(spec.reference_forward, weights, x, targets, objective)
            scale = max(1.0, float(np.max(np.abs(want))))
            diff = _max_diff(got, want)
            # float32 backward against float64 differences (step 1e-5: truncation ~1e-10, rounding ~1e-11)
            assert got.shape == x.shape and diff <= 1e-4 * scale, (
                f"{model}: input gradients ({objective}) differ from finite differences by {diff:.3g} "
                f"(allowed {1e-4 * scale:.3g})")

    def test_capability_errors_are_one_line(self, impl: Backend) -> None:
        """A run asking for a missing device or an unclaimed model fails before it starts."""
        from crossframe.config.loading import load_config
        from crossframe.train.runner import check_capabilities

        caps = impl.capabilities()
        config = load_config({"backend": self.backend} if self.backend else {}, resolve_components=False)
        missing = next((d for d in ("tpu", "gpu") if d not in caps.devices), None)
        if missing:
            with pytest.raises(CapabilityError) as info:
                check_capabilities(config, caps, missing, "mlp", training=caps.can_train)
            assert f"device: '{missing}' requested" in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(CapabilityError, match=r"model\.name: 'no-such-model' requested"):
            check_capabilities(config, caps, "cpu", "no-such-model", training=caps.can_train)
        if not caps.can_train:
            with pytest.raises(CapabilityError, match="inference-only and cannot train"):
                check_capabilities(config, caps, "cpu", "mlp")
