"""Generation from a lowered graph with a key/value cache per attention layer (torch).

:class:`GraphCache` holds the keys and values of every attention layer of a lowered decoder for a number of
rows (sequences) and, around one forward call (:meth:`GraphCache.at`), points the attention layers and the
position tables at it: the call's tokens sit at positions ``start..start+T-1``, or, when each row feeds one
token, at one position per row (the continuous batching of :mod:`crossframe_torch.serving`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from crossframe.nn.decoding import generate_with_cache
from crossframe_torch.lowering import Attention, GraphModule, Table


def is_graph_lm(module: Any) -> bool:
    """Whether ``module`` is a lowered graph that reads token ids (a decoder language model)."""
    return isinstance(module, GraphModule) and module.graph.takes_ids


def context_window(module: GraphModule) -> int:
    """The positions a lowered decoder attends over at most: its inputs' sequence length."""
    return int(module.graph.input_shape[0])


class GraphCache:
    """Keys and values ``[rows, kv_heads, length, head_dim]`` of each attention layer of ``module``."""

    def __init__(self, module: GraphModule, rows: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
        self.module, self.length = module, length
        self.attentions = [m for m in module.modules() if isinstance(m, Attention)]
        self.tables = [m for m in module.modules() if isinstance(m, Table) and m.add_positions]
        self.layers = [(torch.zeros(rows, m.kv, length, m.hd, dtype=dtype, device=device),
                        torch.zeros(rows, m.kv, length, m.hd, dtype=dtype, device=device)) for m in self.attentions]

    @contextmanager
    def at(self, start: int | torch.Tensor, rows: torch.Tensor | None = None, span: int = 0) -> Iterator[None]:
        """Within the block, the module's forward reads and extends this cache: tokens at positions
        ``start..start+T-1`` (an int), or one token per row at positions ``start`` (a tensor ``[B]``; ``span``
        is the largest + 1); batch row ``i`` is cache row ``rows[i]`` (None: row ``i``)."""
        for m, cache in zip(self.attentions, self.layers, strict=True):
            m.cache, m.start, m.rows, m.span = cache, start, rows, span
        for table in self.tables:
            table.start = start
        try:
            yield
        finally:
            for m in self.attentions:
                m.cache, m.start, m.rows, m.span = None, 0, None, 0
            for table in self.tables:
                table.start = 0


@torch.no_grad()
def graph_generate(state: Any, prompt: np.ndarray, max_new_tokens: int, sample: Callable[[np.ndarray], np.ndarray],
                   stop_ids: Collection[int] = ()) -> np.ndarray:
    """Extend ``prompt`` ``[B, T0]`` by ``max_new_tokens`` with the graph's KV cache (eval mode, the state's
    precision); see :func:`crossframe.nn.decoding.generate_with_cache`."""
    module: GraphModule = state.module
    state.set_training(False)
    window = context_window(module)
    b = int(np.asarray(prompt).shape[0])
    dtype = state.autocast_dtype or next(module.parameters()).dtype
    cache = GraphCache(module, b, window, dtype, state.device)

    def run(ids: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int64)).to(state.device)
        if state.autocast_dtype is None:  # the eager module: a compiled wrapper would not see the cache
            return module(x)[:, -1].float()
        with torch.autocast(state.device.type, dtype=state.autocast_dtype):
            return module(x)[:, -1].float()

    def step(ids: np.ndarray, start: int) -> np.ndarray:
        with cache.at(start):
            return run(ids).cpu().numpy()

    def full(ids: np.ndarray) -> np.ndarray:
        return run(ids).cpu().numpy()

    return generate_with_cache(step, full, prompt, max_new_tokens, sample, window, stop_ids)
