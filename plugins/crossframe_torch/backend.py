"""The PyTorch backend: eager modules, torch.optim, autocast, optional torch.compile."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crossframe.backend import Backend, Capabilities, TrainSetup
from crossframe.models.spec import ModelSpec, Params
from crossframe_torch import devices
from crossframe_torch.models import build_module, export_canonical, load_canonical, native_parameters
from crossframe_torch.optim import SUPPORTED, build_optimizer, export_optimizer_state, load_optimizer_state

MODELS = ("mlp", "cnn")


@dataclass
class TorchState:
    """The native state of a torch run (mutated in place by the steps)."""

    setup: TrainSetup
    module: torch.nn.Module
    forward: Any  # the module, or its torch.compile'd wrapper
    params: dict[str, torch.nn.Parameter]
    optimizer: torch.optim.Optimizer | None
    scaler: Any
    device: torch.device
    autocast_dtype: Any
    step: int = 0

    def set_training(self, training: bool) -> None:
        """Switch train / eval mode only when it changes (``Module.train`` walks every submodule)."""
        if self.module.training != training:
            self.module.train(training)

    def run_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass under this precision's autocast (none at all for fp32)."""
        if self.autocast_dtype is None:
            return self.forward(x)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self.forward(x)


class TorchBackend(Backend):
    """crossframe on PyTorch."""

    name = "torch"

    def framework_version(self) -> str:
        """torch's version."""
        return torch.__version__

    def capabilities(self) -> Capabilities:
        """CPU always; GPU with CUDA or MPS; TPU with torch_xla."""
        return Capabilities(
            devices=devices.available_devices(),
            precisions=("fp32", "bf16", "fp16"),
            strategies=("single",),
            models=MODELS,
            optimizers=SUPPORTED,
            compile=True,
            notes={"tpu": "install torch_xla", "gpu": "no CUDA or MPS device visible to torch",
                   "data_parallel": "coming with torch DDP", "fully_sharded": "coming with torch FSDP"},
        )

    # ------------------------------------------------------------------ state

    def create_state(self, setup: TrainSetup) -> TorchState:
        """Build the module from canonical weights and its optimizer on the device."""
        torch.manual_seed(setup.seed)
        device = devices.torch_device(setup.device)
        module = build_module(setup.spec)
        load_canonical(module, setup.spec, setup.weights)
        module.to(device)
        params = native_parameters(module, setup.spec)
        optimizer = build_optimizer(setup, params, device)
        dtype = devices.autocast_dtype(setup.precision)
        scaler = torch.amp.GradScaler(device.type) if setup.precision == "fp16" else None
        forward = torch.compile(module) if setup.compile else module
        return TorchState(setup, module, forward, params, optimizer, scaler, device, dtype)

    def inference_state(self, spec: ModelSpec, weights: Params, device: str = "cpu",
                        precision: str = "fp32") -> TorchState:
        """A state without an optimizer, for :meth:`predict`."""
        setup = TrainSetup(spec, weights, device=device, precision=precision)  # type: ignore[arg-type]
        torch_device = devices.torch_device(device)
        module = build_module(spec)
        load_canonical(module, spec, weights)
        module.to(torch_device)
        return TorchState(setup, module, module, native_parameters(module, spec), None, None,
                          torch_device, devices.autocast_dtype(precision))

    def export_state(self, state: TorchState) -> tuple[Params, Params]:
        """Canonical weights and optimizer state."""
        weights = export_canonical(state.module, state.setup.spec)
        layouts = {p.name: p.layout for p in state.setup.spec.table}
        assert state.optimizer is not None
        opt = export_optimizer_state(state.optimizer, state.setup.optimizer, state.params, layouts, state.step)
        return weights, opt

    def load_state(self, state: TorchState, weights: Params, optimizer_state: Params | None) -> TorchState:
        """Install canonical weights (and optimizer state)."""
        load_canonical(state.module, state.setup.spec, weights)
        if optimizer_state is not None and state.optimizer is not None:
            layouts = {p.name: p.layout for p in state.setup.spec.table}
            state.step = load_optimizer_state(state.optimizer, state.setup.optimizer, state.params, layouts,
                                              optimizer_state)
        return state

    # ------------------------------------------------------------------ steps

    def _inputs(self, state: TorchState, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        non_blocking = state.device.type == "cuda"
        x = torch.from_numpy(batch["x"]).to(state.device, non_blocking=non_blocking)
        y = torch.from_numpy(batch["y"]).to(state.device, non_blocking=non_blocking)
        return x, y

    def _loss(self, state: TorchState, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        if out.dtype != torch.float32:
            out = out.float()
        if state.setup.loss == "cross_entropy":
            return F.cross_entropy(out, y, reduction=reduction)
        per_example = F.mse_loss(out, y, reduction="none").mean(dim=1)
        return per_example.mean() if reduction == "mean" else per_example.sum()

    def train_step(self, state: TorchState, batch: dict[str, np.ndarray], lr: float
                   ) -> tuple[TorchState, dict[str, Any]]:
        """Accumulate gradients over ``grad_accum`` micro-batches, clip, step; no host sync."""
        opt, k = state.optimizer, state.setup.grad_accum
        assert opt is not None
        for group in opt.param_groups:
            group["lr"] = lr
        state.set_training(True)
        x, y = self._inputs(state, batch)
        xs, ys = (x, y) if k == 1 else (x.chunk(k), y.chunk(k))
        total = None
        for i in range(k):
            xi, yi = (xs, ys) if k == 1 else (xs[i], ys[i])
            loss = self._loss(state, state.run_forward(xi), yi)
            if k > 1:
                loss = loss / k
            (state.scaler.scale(loss) if state.scaler else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        out: dict[str, Any] = {"loss": total}
        if state.setup.clip_norm is not None:
            if state.scaler:
                state.scaler.unscale_(opt)
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                state.module.parameters(), state.setup.clip_norm, foreach=True)
        if state.scaler:
            state.scaler.step(opt)
            state.scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        return state, out

    @torch.no_grad()
    def eval_step(self, state: TorchState, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Device sums for one batch: loss, count, and the confusion matrix or error sums."""
        state.set_training(False)
        x, y = self._inputs(state, batch)
        out = state.run_forward(x).float()
        sums: dict[str, Any] = {"loss_sum": self._loss(state, out, y, "sum"), "count": len(y)}
        if state.setup.loss == "cross_entropy":
            classes = out.shape[1]
            pred = out.argmax(dim=1)
            sums["confusion"] = torch.bincount(y * classes + pred, minlength=classes * classes).view(classes, classes)
        else:
            err = out - y
            sums["abs_err_sum"] = err.abs().sum()
            sums["sq_err_sum"] = (err * err).sum()
            sums["outputs"] = y.shape[1]
        return sums

    @torch.no_grad()
    def predict(self, state: TorchState, x: np.ndarray) -> np.ndarray:
        """Outputs as float32 numpy."""
        state.set_training(False)
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(state.device)
        return state.run_forward(inputs).float().cpu().numpy()

    def fetch(self, values: Any) -> Any:
        """Tensors to numpy, through lists, tuples and dicts.

        A list of step outputs (dicts of scalar tensors, as the loop gathers between log steps)
        is stacked per key and copied in one transfer instead of one per value.
        """
        if isinstance(values, list) and values and all(isinstance(v, dict) for v in values):
            keys = values[0].keys()
            if all(v.keys() == keys for v in values) and all(
                    isinstance(v[k], torch.Tensor) and v[k].ndim == 0 for v in values for k in keys):
                stacked = {k: torch.stack([v[k] for v in values]).cpu().numpy() for k in keys}
                return [{k: stacked[k][i] for k in keys} for i in range(len(values))]
        if isinstance(values, torch.Tensor):
            return values.detach().cpu().numpy()
        if isinstance(values, dict):
            return {k: self.fetch(v) for k, v in values.items()}
        if isinstance(values, (list, tuple)):
            return type(values)(self.fetch(v) for v in values)
        return values
