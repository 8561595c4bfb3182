"""Generation from a lowered graph with a key/value cache per attention layer (torch)."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import torch

from crossframe.nn.decoding import generate_with_cache
from crossframe_torch.lowering import Attention, GraphModule, Table


def is_graph_lm(module: Any) -> bool:
    """Whether ``module`` is a lowered graph that reads token ids (a decoder language model)."""
    return isinstance(module, GraphModule) and module.graph.takes_ids


@torch.no_grad()
def graph_generate(state: Any, prompt: np.ndarray, max_new_tokens: int, sample: Callable[[np.ndarray], np.ndarray],
                   stop_ids: Collection[int] = ()) -> np.ndarray:
    """Extend ``prompt`` ``[B, T0]`` by ``max_new_tokens`` with the graph's KV cache (eval mode, the state's
    precision); see :func:`crossframe.nn.decoding.generate_with_cache`."""
    module: GraphModule = state.module
    state.set_training(False)
    window = int(module.graph.input_shape[0])
    b = int(np.asarray(prompt).shape[0])
    attentions = [m for m in module.modules() if isinstance(m, Attention)]
    tables = [m for m in module.modules() if isinstance(m, Table) and m.add_positions]
    dtype = state.autocast_dtype or next(module.parameters()).dtype
    caches = [(torch.zeros(b, m.kv, window, m.hd, dtype=dtype, device=state.device),
               torch.zeros(b, m.kv, window, m.hd, dtype=dtype, device=state.device)) for m in attentions]

    def run(ids: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(state.device)
        if state.autocast_dtype is None:  # the eager module: a compiled wrapper would not see the cache
            return module(x)[:, -1].float()
        with torch.autocast(state.device.type, dtype=state.autocast_dtype):
            return module(x)[:, -1].float()

    def step(ids: np.ndarray, start: int) -> np.ndarray:
        for m, cache in zip(attentions, caches, strict=True):
            m.cache, m.start = cache, start
        for table in tables:
            table.start = start
        try:
            return run(ids).cpu().numpy()
        finally:
            for m in attentions:
                m.cache, m.start = None, 0
            for table in tables:
                table.start = 0

    def full(ids: np.ndarray) -> np.ndarray:
        return run(ids).cpu().numpy()

    return generate_with_cache(step, full, prompt, max_new_tokens, sample, window, stop_ids)
