"""The PyTorch backend: eager modules, torch.optim, autocast, optional torch.compile."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crossframe.backend import Backend, Capabilities, CompilePreference, TrainSetup, WorldInfo
from crossframe.errors import CapabilityError, ConfigError
from crossframe.models.spec import ModelSpec, Params
from crossframe_torch import devices, distributed
from crossframe_torch.models import (
    build_module,
    export_canonical,
    load_canonical,
    native_parameters,
    to_native,
)
from crossframe_torch.optim import SUPPORTED, build_optimizer, export_optimizer_state, load_optimizer_state

MODELS = ("mlp", "cnn", "gpt", "graph", "hf")


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
    #: pruning: (parameters, 0/1 masks in native layout on the device), multiplied in after each update
    masked: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
    #: distillation: the teacher (eval mode, no gradients), or its torch.compile'd wrapper
    teacher: Any = None
    #: the step of a plain classification run (see :func:`plain_step`), built once; None: the general step
    plain_step: Callable[[TorchState, dict[str, np.ndarray], float], tuple[TorchState, dict[str, Any]]] | None = None

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

    @torch.no_grad()
    def run_teacher(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's float32 outputs under the same autocast, without gradients."""
        if self.autocast_dtype is None:
            return self.teacher(x).float()
        with torch.autocast(self.device.type, dtype=self.autocast_dtype):
            return self.teacher(x).float()

    @torch.no_grad()
    def apply_masks(self) -> None:
        """``param *= mask`` for every masked parameter (one fused foreach kernel; no host sync)."""
        if self.masked is not None:
            torch._foreach_mul_(*self.masked)


class TorchBackend(Backend):
    """crossframe on PyTorch."""

    name = "torch"
    export_module = "crossframe_torch.export"
    int8_module = "crossframe_torch.quantize"

    def framework_version(self) -> str:
        """torch's version."""
        return torch.__version__

    def capabilities(self) -> Capabilities:
        """CPU always; GPU with CUDA or MPS; TPU with torch_xla."""
        return Capabilities(
            devices=devices.available_devices(),
            precisions=("fp32", "bf16", "fp16"),
            strategies=distributed.STRATEGIES,
            models=MODELS,
            optimizers=SUPPORTED,
            compile=True,
            weighted_losses=True,
            private_strategies=("single", "data_parallel"),  # DP-SGD: clipped sums all-reduced, noise once
            notes={"tpu": "install torch_xla", "gpu": "no CUDA or MPS device visible to torch"},
        )

    def init_distributed(self, world: WorldInfo, device: str) -> None:
        """Join the process group: gloo on CPU, nccl on CUDA, timeout ``world.collective_timeout_s``."""
        distributed.init(world, device)

    def launch_workers(self, job: Any) -> None:
        """Run the job's workers under torch's elastic launcher (what ``torchrun`` runs)."""
        distributed.launch_workers(job)

    def shutdown_distributed(self) -> None:
        """Destroy the process group."""
        distributed.shutdown()

    def max_over_ranks(self, value: int) -> int:
        """An all-reduce (MAX) over the process group; ``value`` itself outside one."""
        return distributed.max_over_ranks(value)

    def input_gradients(self, state: Any, x: np.ndarray, targets: np.ndarray,
                        objective: str = "output") -> np.ndarray:
        """Gradients of outputs (or losses) with respect to inputs (see :mod:`crossframe_torch.explain`)."""
        from crossframe_torch.explain import input_gradients

        return input_gradients(state, x, targets, objective)

    def set_threads(self, threads: int) -> None:
        """``torch.set_num_threads``; one inter-op thread where torch still allows the change."""
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # only allowed before the first parallel op
            torch.set_num_interop_threads(1)

    def compile_preference(self, device: str, strategy: str) -> CompilePreference:
        """``train.compile: auto``: torch.compile off on CPU (measured slower per step, and it costs seconds
        of compilation), on for GPUs (not measured here); never with ``fully_sharded``."""
        if strategy == "fully_sharded":
            return CompilePreference(False, "torch.compile is not supported with fully_sharded", measurable=False)
        if device == "cpu":
            return CompilePreference(False, "torch.compile on CPU: slower steps (0.7-0.8x in "
                                            "benchmarks/compile_choice) after seconds of compilation")
        return CompilePreference(True, f"torch.compile on {device}: fused kernels (the usual win on accelerators; "
                                       "measure with python -m benchmarks --only compile_choice)")

    def measure_peak_flops(self, device: str, precision: str) -> float:
        """Matmul FLOP/s of torch on ``device`` at ``precision`` (a short probe, for MFU)."""
        from crossframe.perf import probe_peak

        dev = devices.torch_device(device)
        size = 4096 if dev.type != "cpu" else 1024
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        a, b = (torch.rand(size, size, device=dev, dtype=dtype) for _ in range(2))

        def once() -> None:
            torch.mm(a, b)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        return probe_peak(once, size)

    def device_memory_mb(self, device: str) -> float | None:
        """CUDA memory allocated by this process now (``torch.cuda.memory_allocated``); None off CUDA."""
        dev = devices.torch_device(device)
        return torch.cuda.memory_allocated(dev) / 2**20 if dev.type == "cuda" else None

    def profiler(self, directory: Any, device: str) -> Any:
        """The framework's own profiler over ``--profile N`` steps (see :mod:`crossframe_torch.profiling`)."""
        from crossframe_torch.profiling import profile

        return profile(directory, device)

    def peak_device_memory_mb(self, device: str) -> float | None:
        """Peak CUDA memory allocated by this process (``torch.cuda.max_memory_allocated``); None off CUDA."""
        dev = devices.torch_device(device)
        if dev.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(dev) / 2**20

    # ------------------------------------------------------------------ state

    def create_state(self, setup: TrainSetup) -> TorchState:
        """Build the module from canonical weights and its optimizer on the device."""
        torch.manual_seed(setup.seed)
        device = devices.torch_device(setup.device)
        module = build_module(setup.spec, activation_checkpointing=setup.activation_checkpointing)
        load_canonical(module, setup.spec, setup.weights)
        module.to(device)
        distributed.check_setup(setup)
        module = distributed.shard_module(module, setup, device)  # FSDP for fully_sharded
        params = native_parameters(module, setup.spec)
        for name in setup.frozen:  # train.freeze: no gradient, and not in the optimizer
            params[name].requires_grad_(False)
        optimizer = build_optimizer(setup, {n: p for n, p in params.items() if n not in setup.frozen}, device)
        dtype = devices.autocast_dtype(setup.precision)
        scaler = torch.amp.GradScaler(device.type) if setup.precision == "fp16" else None
        wrapped = distributed.data_parallel(module, setup, device)  # DDP for data_parallel
        forward = torch.compile(wrapped) if setup.compile else wrapped
        state = TorchState(setup, module, forward, params, optimizer, scaler, device, dtype)
        if setup.masks:
            state.masked = _native_masks(setup, params, device)
            state.apply_masks()
        if setup.distill is not None:
            state.teacher = _teacher(setup, device)
        state.plain_step = plain_step(state)
        return state

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
        if distributed.sharded(state.setup):
            return distributed.export_sharded(state)
        weights = export_canonical(state.module, state.setup.spec)
        layouts = {p.name: p.layout for p in state.setup.spec.table}
        assert state.optimizer is not None
        opt = export_optimizer_state(state.optimizer, state.setup.optimizer, state.params, layouts, state.step)
        return weights, opt

    def load_state(self, state: TorchState, weights: Params, optimizer_state: Params | None) -> TorchState:
        """Install canonical weights (and optimizer state)."""
        if distributed.sharded(state.setup):
            return distributed.load_sharded(state, weights, optimizer_state)
        load_canonical(state.module, state.setup.spec, weights)
        if optimizer_state is not None and state.optimizer is not None:
            layouts = {p.name: p.layout for p in state.setup.spec.table}
            state.step = load_optimizer_state(state.optimizer, state.setup.optimizer, state.params, layouts,
                                              optimizer_state)
        state.apply_masks()
        return state

    # ------------------------------------------------------------------ steps

    def _inputs(self, state: TorchState, batch: dict[str, np.ndarray]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        device = state.device

        def put(a: np.ndarray) -> torch.Tensor:
            return to_device(a, device)

        x, y = put(batch["x"]), put(batch["y"])
        mask = None
        if state.setup.loss == "token_cross_entropy":
            y = y.long()
            if batch.get("mask") is not None:
                mask = put(np.asarray(batch["mask"], dtype=np.float32))
        return x, y, mask

    def _loss(self, state: TorchState, out: torch.Tensor, y: torch.Tensor, reduction: str = "mean",
              train: bool = False) -> torch.Tensor:
        if out.dtype != torch.float32:
            out = out.float()
        objective = state.setup.objective
        if train and objective is not None and state.setup.loss == "cross_entropy":
            from crossframe_torch.losses import per_example

            per = per_example(out, y, objective)
            return per.mean() if reduction == "mean" else per.sum()
        if state.setup.loss == "cross_entropy":
            return F.cross_entropy(out, y, reduction=reduction)
        per_example = F.mse_loss(out, y, reduction="none").mean(dim=1)
        return per_example.mean() if reduction == "mean" else per_example.sum()

    @staticmethod
    def _token_loss_sum(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``sum(ce * mask)`` over a ``[B, T, V]`` logits block (all tokens when there is no mask)."""
        flat = logits.float().flatten(0, 1)
        if mask is None:
            return F.cross_entropy(flat, y.flatten(), reduction="sum")
        return (F.cross_entropy(flat, y.flatten(), reduction="none") * mask.flatten()).sum()

    @staticmethod
    def _token_count(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | int:
        """Counted target tokens: ``mask.sum()`` on the device, or ``B * T`` without a mask."""
        return y.numel() if mask is None else mask.sum()

    def train_step(self, state: TorchState, batch: dict[str, np.ndarray], lr: float
                   ) -> tuple[TorchState, dict[str, Any]]:
        """Accumulate gradients over ``grad_accum`` micro-batches, clip, step; no host sync.

        Language models: each micro-batch adds ``sum(ce * mask) / total`` with ``total`` the counted
        tokens of the *whole* batch, so accumulation is exact however the mask falls. (A batch whose
        mask is all zeros gives loss 0 and zero gradients, not NaN.)
        """
        if state.plain_step is not None:
            return state.plain_step(state, batch, lr)
        if state.setup.privacy is not None:  # DP-SGD: per-example clipping plus the core's noise
            from crossframe_torch import privacy

            return privacy.train_step(state, batch, lr)
        opt, k = state.optimizer, state.setup.grad_accum
        assert opt is not None
        for group in opt.param_groups:
            group["lr"] = lr
        state.set_training(True)
        x, y, mask = self._inputs(state, batch)
        tokens = state.setup.loss == "token_cross_entropy"
        if tokens:
            count = self._token_count(y, mask)
            if mask is not None and distributed.active(state.setup):
                count = distributed.mean_over_ranks(count)  # DDP averages: divide by global tokens / W
            total = count if isinstance(count, int) else torch.where(count > 0, count, torch.ones_like(count))
        xs, ys = (x, y) if k == 1 else (x.chunk(k), y.chunk(k))
        ms = mask if (k == 1 or mask is None) else mask.chunk(k)
        distill = state.setup.distill
        acc = kd_acc = None
        graph = state.setup.spec.graph
        adapter_dropout = graph is not None and graph.lora_dropout > 0
        for i in range(k):
            if adapter_dropout:  # train.lora.dropout: the core's masks for this call (crossframe.nn.lora_dropout)
                from crossframe_torch.adapters import set_dropout_call

                set_dropout_call(state.module, state.setup.seed, state.step * k + i)
            if k > 1 and distributed.active(state.setup):
                distributed.sync_gradients(state.forward, i == k - 1)  # DDP: one all-reduce per step
            xi, yi, mi = (xs, ys, ms) if k == 1 else (xs[i], ys[i], None if ms is None else ms[i])
            out = state.run_forward(xi)
            if tokens:
                loss = self._token_loss_sum(out, yi, mi) / total
            else:
                loss = self._loss(state, out, yi, train=True)
                if k > 1:
                    loss = loss / k
            if distill is not None:
                kd = _distill_term(out, state.run_teacher(xi), distill.temperature, mi)
                kd = kd / total if tokens else (kd.mean() / k if k > 1 else kd.mean())
                loss = (1.0 - distill.alpha) * loss + distill.alpha * kd
                kd_acc = kd.detach() if kd_acc is None else kd_acc + kd.detach()
            (state.scaler.scale(loss) if state.scaler else loss).backward()
            acc = loss.detach() if acc is None else acc + loss.detach()
        out_values: dict[str, Any] = {"loss": acc}
        if kd_acc is not None:
            out_values["distill_loss"] = kd_acc
        if state.setup.clip_norm is not None:
            if state.scaler:
                state.scaler.unscale_(opt)
            out_values["grad_norm"] = torch.nn.utils.clip_grad_norm_(
                state.module.parameters(), state.setup.clip_norm, foreach=True)
        if state.scaler:
            state.scaler.step(opt)
            state.scaler.update()
        else:
            opt.step()
        if state.masked is not None:
            state.apply_masks()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        if distributed.active(state.setup):
            out_values = distributed.plain_outputs({**out_values, "loss": distributed.mean_over_ranks(acc)})
        return state, out_values

    @torch.no_grad()
    def eval_step(self, state: TorchState, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """Device sums for one batch: loss, count, and the confusion matrix or error sums."""
        state.set_training(False)
        x, y, mask = self._inputs(state, batch)
        out = state.run_forward(x).float()
        if state.setup.loss == "token_cross_entropy":
            return {"loss_sum": self._token_loss_sum(out, y, mask), "count": self._token_count(y, mask)}
        sums: dict[str, Any] = {"loss_sum": self._loss(state, out, y, "sum"), "count": len(y)}
        if state.setup.loss == "cross_entropy":
            classes = out.shape[1]
            pred = out.argmax(dim=1)
            sums["confusion"] = torch.bincount(y * classes + pred, minlength=classes * classes).view(classes, classes)
            sums["logits"] = out  # kept by the loop only for score metrics (ROC-AUC, log-loss, ...)
        else:
            err = out - y
            sums["abs_err_sum"] = err.abs().sum()
            sums["sq_err_sum"] = (err * err).sum()
            sums["outputs"] = y.shape[1]
        return sums

    @torch.no_grad()
    def predict(self, state: TorchState, x: np.ndarray) -> np.ndarray:
        """Outputs as float32 numpy (language models: logits ``[B, T, vocab]`` for int token ids)."""
        state.set_training(False)
        dtype = np.int64 if state.setup.loss == "token_cross_entropy" else np.float32
        inputs = torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)).to(state.device)
        return state.run_forward(inputs).float().cpu().numpy()

    @torch.no_grad()
    def generate(self, state: TorchState, prompt: np.ndarray, max_new_tokens: int,
                 sample: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Extend ``prompt`` (int ids ``[B, T0]``) by ``max_new_tokens``, returning ``[B, T0 + n]``.

        The prompt runs once, filling each attention layer's key/value cache; then each new token runs
        alone against the cache (:mod:`crossframe_torch.decoding`). ``sample`` gets the last position's logits
        ``[B, vocab]`` as float32 numpy and returns the next ids ``[B]``. In eval mode (no dropout), under the
        state's precision. Past the context window each further token is computed by a full forward
        without cache over the last ``window`` tokens (a sliding window, as nanoGPT's ``generate`` does).
        """
        from crossframe_torch.decoding import graph_generate, is_graph_lm

        if not is_graph_lm(state.module):
            raise CapabilityError(f"generate: model '{state.setup.spec.name}' is not a language model")
        return graph_generate(state, prompt, max_new_tokens, sample)

    def batch_decoder(self, state: TorchState, slots: int) -> Any:
        """A KV cache of ``slots`` rows with a batched decode step, for continuous batching in ``crossframe serve``."""
        from crossframe_torch.serving import SlotDecoder

        return SlotDecoder(state, slots)

    def fetch(self, values: Any) -> Any:
        """Tensors to numpy, through lists, tuples and dicts.

        A list of step outputs (dicts of scalar tensors, as the loop gathers between log steps)
        is stacked per key and copied in one transfer instead of one per value.
        """
        if isinstance(values, list) and values and type(values[0]) is dict:
            window = _stacked_window(values)
            if window is not None:
                return window
        if isinstance(values, torch.Tensor):
            return values.detach().cpu().numpy()
        if isinstance(values, dict):
            return {k: self.fetch(v) for k, v in values.items()}
        if isinstance(values, (list, tuple)):
            return type(values)(self.fetch(v) for v in values)
        return values


def _stacked_window(values: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The loop's window of step outputs (dicts with the same keys of scalar tensors) copied to the host in one
    transfer per key, or None when ``values`` is anything else.

    ``torch.stack`` itself checks that every value is a tensor of one shape: a stacked column of rank 1 means
    scalars. At the end of each log window this costs about a third of checking every value first in Python.
    """
    keys = tuple(values[0])
    if set(map(type, values)) != {dict} or set(map(len, values)) != {len(keys)}:
        return None
    try:
        columns = [torch.stack([v[k] for v in values]) for k in keys]
    except (KeyError, TypeError, RuntimeError):
        return None
    if any(column.ndim != 1 for column in columns):
        return None
    host = list(zip(keys, (column.detach().cpu().numpy() for column in columns), strict=True))
    return [{key: column[i] for key, column in host} for i in range(len(values))]


def to_device(a: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host batch array as a tensor on ``device``: shared memory on the CPU (no copy), else one copy
    (asynchronous to CUDA)."""
    tensor = torch.from_numpy(np.ascontiguousarray(a))
    return tensor if device.type == "cpu" else tensor.to(device, non_blocking=device.type == "cuda")


# ---------------------------------------------------------------------- the plain step


def plain_step(state: TorchState) -> Callable[[TorchState, dict[str, np.ndarray], float],
                                              tuple[TorchState, dict[str, Any]]] | None:
    """The training step of a run that needs none of the general step's options, or None.

    Plain means: one micro-batch, classification with plain cross-entropy, no clipping, loss scaling, pruning
    masks, teacher, DP-SGD, LoRA dropout or data parallelism. Then the step is forward, loss, backward, update,
    with everything else decided here once: on a small model the general step's per-call checks cost a few
    percent of the step (about 20 us on the quickstart MLP, whose whole step takes about 650 us on one core).
    The numbers are the general step's: the same calls in the same order.
    """
    setup, opt = state.setup, state.optimizer
    graph = setup.spec.graph
    if (opt is None or setup.privacy is not None or setup.grad_accum != 1 or setup.distill is not None
            or setup.clip_norm is not None or state.scaler is not None or state.masked is not None
            or setup.loss != "cross_entropy" or setup.objective is not None or distributed.active(setup)
            or (graph is not None and graph.lora_dropout > 0)):
        return None
    groups, module, forward, device = opt.param_groups, state.module, state.run_forward, state.device

    def step(state: TorchState, batch: dict[str, np.ndarray], lr: float) -> tuple[TorchState, dict[str, Any]]:
        for group in groups:
            group["lr"] = lr
        if not module.training:
            module.train()
        x, y = to_device(batch["x"], device), to_device(batch["y"], device)
        out = forward(x)
        loss = F.cross_entropy(out if out.dtype == torch.float32 else out.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        return state, {"loss": loss.detach()}

    return step


# ---------------------------------------------------------------------- pruning masks and distillation


def _native_masks(setup: TrainSetup, params: dict[str, torch.nn.Parameter], device: torch.device
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Canonical 0/1 masks as native-layout tensors on the device, paired with their parameters."""
    assert setup.masks is not None
    layouts = {p.name: (p.layout, p.shape) for p in setup.spec.table}
    targets, masks = [], []
    for name, mask in setup.masks.items():
        if name not in layouts:
            raise ConfigError(f"masks: '{name}' is not a parameter of model '{setup.spec.name}'")
        layout, shape = layouts[name]
        if tuple(np.shape(mask)) != tuple(shape):
            raise ConfigError(f"masks: '{name}' has shape {tuple(np.shape(mask))}, the parameter has {tuple(shape)}")
        param = params[name]
        native = to_native(layout, torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)))
        targets.append(param)
        masks.append(native.to(device=device, dtype=param.dtype).contiguous())
    return targets, masks


def _teacher(setup: TrainSetup, device: torch.device) -> Any:
    """The teacher module from canonical weights, on ``device``, in eval mode, without gradients."""
    assert setup.distill is not None
    if setup.loss == "mse":
        raise CapabilityError("train.distill: distillation needs logits (classification or language modelling), "
                              "not regression outputs")
    module = build_module(setup.distill.spec)
    load_canonical(module, setup.distill.spec, setup.distill.weights)
    module.to(device).eval().requires_grad_(False)
    return torch.compile(module) if setup.compile else module


def _distill_term(student: torch.Tensor, teacher: torch.Tensor, temperature: float,
                  mask: torch.Tensor | None) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` per example ``[B]``, or summed over counted tokens."""
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1) * (temperature * temperature)
    if kl.ndim == 1:
        return kl
    return kl.sum() if mask is None else (kl * mask).sum()
