"""Model FLOPs per training step, where the estimate is standard (used for MFU in the training logs)."""

from __future__ import annotations

from crossframe.models.spec import ModelSpec


def flops_per_step(spec: ModelSpec, tokens_per_step: int) -> float | None:
    """Training FLOPs (forward + backward) of one optimizer step, for models where the estimate is
    standard (``gpt``: 6N + 12 L T d per token); ``None`` otherwise."""
    if spec.name != "gpt":
        return None
    from crossframe.models.gpt import GPTParams, flops_per_token

    base = getattr(spec, "base", spec)  # LoRA: the adapters' few FLOPs are left out of the estimate
    params = GPTParams.model_validate(base.params)
    return flops_per_token(params, spec.data_info.num_outputs, spec.data_info.input_shape[0]) * tokens_per_step
