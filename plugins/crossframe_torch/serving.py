"""Continuous batching for ``crossframe serve``: a lowered decoder's key/value cache with one row per request slot.

The server's scheduler keeps up to ``slots`` sequences in flight. Each decode step feeds every
active sequence's last token at its own position in one batched forward pass of the lowered graph
(its attention layers read and write their slot's cache rows, :class:`crossframe_torch.decoding.GraphCache`);
a sequence that joins between steps is prefilled alone into its slot's rows. Past the context window a
sequence is recomputed over its last ``window`` tokens without cache, as ``generate`` does, so a request
gives the tokens ``crossframe generate`` gives with the same seed (up to float rounding of the batched
matmuls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from crossframe.errors import CapabilityError
from crossframe_torch.decoding import GraphCache, context_window, is_graph_lm


class SlotDecoder:
    """A batched KV cache ``[slots, kv_heads, window, head_dim]`` per attention layer, and the decode step over it."""

    def __init__(self, state: Any, slots: int) -> None:
        module = state.module
        if not is_graph_lm(module):
            raise CapabilityError(f"serve: model '{state.setup.spec.name}' is not a language model")
        state.set_training(False)
        self.state, self.module, self.slots = state, module, slots
        self.window = context_window(module)
        dtype = state.autocast_dtype or next(module.parameters()).dtype
        self.cache = GraphCache(module, slots, self.window, dtype, state.device)
        self.cached = np.zeros(slots, dtype=np.int64)  # positions held in each slot's cache

    def _run(self, fn: Callable[[], torch.Tensor]) -> np.ndarray:
        """Last-position logits ``[n, vocab]`` of ``fn()`` under the state's precision, as float32 numpy."""
        if self.state.autocast_dtype is None:
            return fn()[:, -1].float().cpu().numpy()
        with torch.autocast(self.state.device.type, dtype=self.state.autocast_dtype):
            return fn()[:, -1].float().cpu().numpy()

    def release(self, slot: int) -> None:
        """Forget ``slot``'s sequence; the slot is free for the next request."""
        self.cached[slot] = 0

    @torch.no_grad()
    def step(self, entries: Sequence[tuple[int, Sequence[int]]]) -> np.ndarray:
        """Next-token logits ``[n, vocab]`` (float32) for each ``(slot, token ids so far)``.

        A slot whose cache holds all but the last token decodes that token in the shared batch; a
        new slot is prefilled; a sequence longer than the context is recomputed over its window.
        """
        out: list[np.ndarray | None] = [None] * len(entries)
        decode, windowed = [], []
        for i, (slot, seq) in enumerate(entries):
            n = len(seq)
            if n > self.window:
                windowed.append(i)
            elif self.cached[slot] == n - 1 and n > 1:
                decode.append(i)
            else:
                out[i] = self._prefill(slot, seq)
        if decode:
            logits = self._decode([entries[i][0] for i in decode], [entries[i][1] for i in decode])
            for row, i in enumerate(decode):
                out[i] = logits[row]
        if windowed:
            ctx = torch.tensor([list(entries[i][1][-self.window:]) for i in windowed], dtype=torch.long,
                               device=self.state.device)
            logits = self._run(lambda: self.module(ctx))
            for row, i in enumerate(windowed):
                out[i] = logits[row]
        return np.stack(out)  # type: ignore[arg-type]

    def _prefill(self, slot: int, seq: Sequence[int]) -> np.ndarray:
        """The whole sequence into ``slot``'s cache rows (positions 0..n-1); its last logits."""
        device = self.state.device
        ids = torch.tensor([list(seq)], dtype=torch.long, device=device)
        with self.cache.at(0, rows=torch.tensor([slot], dtype=torch.long, device=device)):
            logits = self._run(lambda: self.module(ids))
        self.cached[slot] = len(seq)
        return logits[0]

    def _decode(self, slots: list[int], seqs: list[Sequence[int]]) -> np.ndarray:
        """Each sequence's last token at its own position against its slot's cache, in one batch."""
        device = self.state.device
        positions = [len(s) - 1 for s in seqs]
        rows = torch.tensor(slots, dtype=torch.long, device=device)
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        tokens = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long, device=device)
        with self.cache.at(pos, rows=rows, span=max(positions) + 1):
            logits = self._run(lambda: self.module(tokens))
        for slot, p in zip(slots, positions, strict=True):
            self.cached[slot] = p + 1
        return logits
