"""Continuous batching for ``crossframe serve``: a GPT's key/value cache with one row per request slot.

The server's scheduler keeps up to ``slots`` sequences in flight. Each decode step feeds every
active sequence's last token at its own position in one batched forward pass; a sequence that
joins between steps is prefilled alone (through :meth:`GPT.forward_cached`, exactly as
``TorchBackend.generate`` does) and its keys and values are copied into its slot. Past
``max_seq_len`` a sequence is recomputed over its last ``max_seq_len`` tokens without cache, as
``generate`` does, so a request gives the tokens ``crossframe generate`` gives with the same seed
(up to float rounding of the batched matmuls).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from crossframe.errors import CapabilityError
from crossframe_torch.models import GPT, _rotate


class SlotDecoder:
    """A batched KV cache ``[slots, heads, max_seq_len, head_dim]`` per layer, and the decode step over it."""

    def __init__(self, state: Any, slots: int) -> None:
        module = state.module
        if not isinstance(module, GPT):
            raise CapabilityError(f"serve: model '{state.setup.spec.name}' is not a language model")
        state.set_training(False)
        self.state, self.module, self.slots = state, module, slots
        self.window = module.max_seq_len
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.cached = np.zeros(slots, dtype=np.int64)  # positions held in each slot's cache

    def _run(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        if self.state.autocast_dtype is None:
            return fn()
        with torch.autocast(self.state.device.type, dtype=self.state.autocast_dtype):
            return fn()

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
            logits = self._run(lambda: self.module(ctx)[:, -1]).float().cpu().numpy()
            for row, i in enumerate(windowed):
                out[i] = logits[row]
        return np.stack(out)  # type: ignore[arg-type]

    def _prefill(self, slot: int, seq: Sequence[int]) -> np.ndarray:
        module = self.module
        ids = torch.tensor([list(seq)], dtype=torch.long, device=self.state.device)
        cache = module.new_cache()
        logits = self._run(lambda: module.forward_cached(ids, cache, 0, last_only=True)[:, -1])
        if not self.k:
            for ck, cv in zip(cache.k, cache.v, strict=True):
                assert ck is not None and cv is not None
                self.k.append(ck.new_zeros(self.slots, *ck.shape[1:]))
                self.v.append(cv.new_zeros(self.slots, *cv.shape[1:]))
        n = len(seq)
        for layer, (ck, cv) in enumerate(zip(cache.k, cache.v, strict=True)):
            assert ck is not None and cv is not None
            self.k[layer][slot, :, :n] = ck[0, :, :n]
            self.v[layer][slot, :, :n] = cv[0, :, :n]
        self.cached[slot] = n
        return logits[0].float().cpu().numpy()

    def _decode(self, slots: list[int], seqs: list[Sequence[int]]) -> np.ndarray:
        module, device = self.module, self.state.device
        positions = [len(s) - 1 for s in seqs]
        idx = torch.tensor(slots, dtype=torch.long, device=device)
        pos = torch.tensor(positions, dtype=torch.long, device=device)
        tokens = torch.tensor([[s[-1]] for s in seqs], dtype=torch.long, device=device)
        span = max(positions) + 1
        mask = (torch.arange(span, device=device)[None, :] <= pos[:, None])[:, None, None, :]  # [n, 1, 1, span]

        def forward() -> torch.Tensor:
            n = len(slots)
            x = F.embedding(tokens, module.wte)
            rope = None
            if module.wpe is not None:
                x = x + module.wpe[pos][:, None]
            else:
                rope = (module.rope_cos[pos][:, None, None], module.rope_sin[pos][:, None, None])
            x = module.drop(x)
            for layer, block in enumerate(module.h):
                attn = block.attn
                h = block.ln_1(x)
                d = h.shape[-1]
                q, k, v = (part.view(n, 1, attn.n_head, d // attn.n_head).transpose(1, 2)
                           for part in attn.qkv(h).split(d, dim=2))
                if rope is not None:
                    cos, sin = (r.to(q.dtype) for r in rope)
                    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
                ck, cv = self.k[layer], self.v[layer]
                ck[idx, :, pos] = k[:, :, 0].to(ck.dtype)
                cv[idx, :, pos] = v[:, :, 0].to(cv.dtype)
                keys, values = ck[idx, :, :span], cv[idx, :, :span]
                y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)
                x = x + attn.resid_drop(attn.proj(y.transpose(1, 2).reshape(n, 1, d)))
                x = x + block.mlp(block.ln_2(x))
            return module._head(x)[:, -1]

        logits = self._run(forward).float().cpu().numpy()
        for slot, p in zip(slots, positions, strict=True):
            self.cached[slot] = p + 1
        return logits
