"""Continuous batching for language models: one scheduler thread, many sequences per decode step.

Requests wait in a queue; between decode steps the scheduler admits as many as there are free
slots, then runs one step for every active sequence at once (a :class:`Decoder` call), samples
each row with the request's own seeded sampler, and hands the token to the request's consumer.
A finished or cancelled sequence frees its slot for the next waiting request at the next step.

A backend offering ``batch_decoder(state, slots)`` (torch: a KV cache with one row per slot)
decodes one token per sequence per step; any other model (ONNX Runtime, or a backend without
one) goes through :class:`RecomputeDecoder`, which recomputes each context in one padded batch.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

log = logging.getLogger("crossframe.serve")


class Decoder(Protocol):
    """Next-token logits for many sequences at once; each sequence owns a slot until released."""

    window: int

    def step(self, entries: Sequence[tuple[int, Sequence[int]]]) -> np.ndarray:
        """Logits ``[n, vocab]`` of the next token for each ``(slot, token ids so far)``."""
        ...

    def release(self, slot: int) -> None:
        """The sequence in ``slot`` is done."""
        ...


class RecomputeDecoder:
    """A :class:`Decoder` over a plain ``predict(ids [B, T]) -> logits [B, T, V]``: no cache.

    Contexts (the last ``window`` tokens) are right-padded to one length and run as one batch;
    a causal model's logits at each row's last real position do not see the padding.
    """

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], window: int, pad_id: int = 0) -> None:
        self.predict, self.window, self.pad_id = predict, window, pad_id

    def step(self, entries: Sequence[tuple[int, Sequence[int]]]) -> np.ndarray:
        """One padded forward pass over every context."""
        contexts = [list(seq)[-self.window:] for _, seq in entries]
        length = max(len(c) for c in contexts)
        batch = np.full((len(contexts), length), self.pad_id, dtype=np.int64)
        for row, ctx in enumerate(contexts):
            batch[row, :len(ctx)] = ctx
        logits = self.predict(batch)
        last = np.asarray([len(c) - 1 for c in contexts])
        return np.asarray(logits[np.arange(len(contexts)), last], dtype=np.float32)

    def release(self, slot: int) -> None:
        """Nothing is held per slot."""


@dataclass
class Generation:
    """One request in the scheduler: its tokens so far and where its new tokens go."""

    prompt: list[int]
    max_tokens: int
    sample: Callable[[np.ndarray], np.ndarray]
    #: called from the scheduler thread with a new token id, or with ``None`` when done (see ``error``)
    emit: Callable[[int | None], None]
    tokens: list[int] = field(default_factory=list)
    slot: int = -1
    cancelled: bool = False
    error: str | None = None

    def cancel(self) -> None:
        """Stop at the next step (a stop string was seen, or the client went away)."""
        self.cancelled = True


class Observer(Protocol):
    """What the scheduler reports (the server's Prometheus metrics)."""

    def batch(self, size: int, seconds: float) -> None:
        """One decode step of ``size`` sequences took ``seconds``."""
        ...

    def queue_depth(self, waiting: int) -> None:
        """Requests waiting for a slot."""
        ...


class LMEngine:
    """The scheduler: admits waiting sequences between steps, up to ``slots`` at once."""

    def __init__(self, decoder: Decoder, slots: int, observer: Observer | None = None) -> None:
        self.decoder, self.slots, self.observer = decoder, slots, observer
        self.waiting: queue.Queue[Generation] = queue.Queue()
        self.active: list[Generation] = []
        self._free = list(range(slots))[::-1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="crossframe-serve-decode", daemon=True)

    def start(self) -> None:
        """Start the scheduler thread."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the step in progress and stop; sequences still running are ended with an error."""
        self._stop.set()
        self._thread.join(timeout)

    def submit(self, seq: Generation) -> None:
        """Queue ``seq``; it joins the batch at the next step with a free slot."""
        if seq.max_tokens == 0:
            seq.emit(None)
            return
        self.waiting.put(seq)
        if self.observer:
            self.observer.queue_depth(self.waiting.qsize())

    def _admit(self, block: bool) -> None:
        while self._free:
            try:
                seq = self.waiting.get(timeout=0.05) if block and not self.active else self.waiting.get_nowait()
            except queue.Empty:
                break
            if seq.cancelled:
                seq.emit(None)
                continue
            seq.slot = self._free.pop()
            self.active.append(seq)
        if self.observer:
            self.observer.queue_depth(self.waiting.qsize())

    def _finish(self, seq: Generation) -> None:
        self.decoder.release(seq.slot)
        self._free.append(seq.slot)
        seq.emit(None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._admit(block=True)
            for seq in [s for s in self.active if s.cancelled]:
                self.active.remove(seq)
                self._finish(seq)
            if not self.active:
                continue
            start = time.perf_counter()
            try:
                logits = self.decoder.step([(s.slot, s.prompt + s.tokens) for s in self.active])
            except Exception as exc:  # a failed step ends the sequences in it, never the server
                log.exception("decode step failed")
                for seq in self.active:
                    seq.error = f"decode failed: {type(exc).__name__}: {exc}".splitlines()[0]
                    self._finish(seq)
                self.active = []
                continue
            if self.observer:
                self.observer.batch(len(self.active), time.perf_counter() - start)
            still = []
            for seq, row in zip(self.active, logits, strict=True):
                token = int(np.asarray(seq.sample(row[None]))[0])
                seq.tokens.append(token)
                seq.emit(token)
                if len(seq.tokens) >= seq.max_tokens or seq.cancelled:
                    self._finish(seq)
                else:
                    still.append(seq)
            self.active = still
        for seq in self.active:
            seq.error = "server shutting down"
            self._finish(seq)
        self.active = []


def sequence_request(prompt: list[int], max_tokens: int, sample: Callable[[np.ndarray], np.ndarray],
                     emit: Callable[[int | None], None], window: int) -> Generation:
    """A scheduler entry; the prompt keeps its last ``window`` tokens (as ``crossframe generate`` does)."""
    return Generation(prompt=list(prompt)[-window:], max_tokens=max_tokens, sample=sample, emit=emit)


def describe(decoder: Any) -> str:
    """``kv-cache`` or ``recompute``: how ``decoder`` steps."""
    return "recompute" if isinstance(decoder, RecomputeDecoder) else "kv-cache"
