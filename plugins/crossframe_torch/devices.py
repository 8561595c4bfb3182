"""Mapping crossframe's device and precision names to torch's."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from crossframe.errors import CapabilityError


def available_devices() -> tuple[str, ...]:
    """Device names this machine offers to torch: cpu always, gpu with CUDA (or MPS), tpu with torch_xla."""
    found = ["cpu"]
    if torch.cuda.is_available() or (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        found.append("gpu")
    if importlib.util.find_spec("torch_xla") is not None:
        found.append("tpu")
    return tuple(found)


def torch_device(name: str) -> torch.device:
    """The ``torch.device`` for a crossframe device name."""
    if name == "cpu":
        return torch.device("cpu")
    if name == "gpu":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
            return torch.device("mps")
        raise CapabilityError("device: 'gpu' requested, but torch sees no CUDA or MPS device")
    if name == "tpu":
        try:
            import torch_xla.core.xla_model as xm  # type: ignore[import-not-found]
        except ImportError:
            raise CapabilityError("device: 'tpu' needs torch_xla (pip install torch_xla)") from None
        return xm.xla_device()
    raise CapabilityError(f"device: unknown device '{name}'")


def autocast_dtype(precision: str) -> Any:
    """The autocast dtype for a precision name, or None for fp32."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
