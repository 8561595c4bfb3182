"""Mapping crossframe's device and precision names to JAX's."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from crossframe.errors import CapabilityError

#: JAX platform names that count as crossframe's ``gpu``
GPU_PLATFORMS = ("gpu", "cuda", "rocm", "metal")

#: precision name -> dtype of the forward pass (None: plain float32)
COMPUTE_DTYPES: dict[str, Any] = {"fp32": None, "bf16": jnp.bfloat16, "fp16": jnp.float16}

#: precisions a training state accepts; fp16 is forward-only (no loss scaling, see ``capabilities``)
TRAIN_PRECISIONS = ("fp32", "bf16")


def _platforms() -> set[str]:
    """Platforms of the devices JAX uses by default (its highest-priority backend), plus cpu."""
    return {d.platform.lower() for d in jax.devices()} | {"cpu"}


def available_devices() -> tuple[str, ...]:
    """Device names this machine offers to JAX: cpu always, gpu with CUDA/ROCm, tpu with a TPU."""
    platforms = _platforms()
    found = ["cpu"]
    if platforms & set(GPU_PLATFORMS):
        found.append("gpu")
    if "tpu" in platforms:
        found.append("tpu")
    return tuple(found)


def jax_device(name: str) -> Any:
    """The ``jax.Device`` for a crossframe device name (the first one of that kind)."""
    if name == "cpu":
        return jax.devices("cpu")[0]
    if name == "gpu":
        gpus = [d for d in jax.devices() if d.platform.lower() in GPU_PLATFORMS]
        if not gpus:
            raise CapabilityError("device: 'gpu' requested, but jax sees no GPU (install jax[cuda12] "
                                  "on a machine with a CUDA GPU)")
        return gpus[0]
    if name == "tpu":
        tpus = [d for d in jax.devices() if d.platform.lower() == "tpu"]
        if not tpus:
            raise CapabilityError("device: 'tpu' requested, but jax sees no TPU (install jax[tpu] on a TPU host)")
        return tpus[0]
    raise CapabilityError(f"device: unknown device '{name}'")


def compute_dtype(precision: str, training: bool = True) -> Any:
    """The forward-pass dtype for a precision name (None for fp32); refuses what cannot train."""
    if precision not in COMPUTE_DTYPES:
        raise CapabilityError(f"precision: unknown precision '{precision}'")
    if training and precision not in TRAIN_PRECISIONS:
        raise CapabilityError(f"precision: '{precision}' training is not supported by backend 'jax' "
                              "(no loss scaling yet); use bf16")
    return COMPUTE_DTYPES[precision]
