"""The classification training loss of :mod:`crossframe.losses` in torch (per example, float32)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from crossframe.losses import LossSetup


def per_example(logits: torch.Tensor, y: torch.Tensor, setup: LossSetup) -> torch.Tensor:
    """``w[y] * -sum_c q_c (1 - p_c)^gamma log p_c`` per example ``[B]``."""
    logp = F.log_softmax(logits.float(), dim=1)
    k = logits.shape[1]
    eps = setup.label_smoothing
    q = F.one_hot(y.long(), k).to(logp.dtype) * (1.0 - eps) + eps / k
    terms = q * logp
    if setup.gamma:
        terms = terms * (1.0 - logp.exp()).pow(setup.gamma)
    per = -terms.sum(dim=1)
    if setup.class_weights is not None:
        weights = torch.tensor(setup.class_weights, dtype=per.dtype, device=per.device)
        per = per * weights[y.long()]
    return per
