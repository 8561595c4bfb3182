"""Coalescing classifier requests: rows from many requests go through the model as one batch.

The first waiting request opens a batch and every request already queued joins it, up to
``max_batch`` rows; with ``max_wait_ms`` > 0 the batch also waits that long for more. The model
runs in one worker thread, so the event loop keeps answering while a batch runs, batches never
overlap, and the requests that queue meanwhile form the next batch. A request larger than
``max_batch`` runs as a batch of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


class MicroBatcher:
    """``await batcher.predict(x)``: ``x`` ``[n, ...]`` joins the next batch; returns its ``[n, ...]`` rows."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait_ms: float,
                 observer: Any = None) -> None:
        self.run, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000.0
        self.observer = observer
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="crossframe-serve-predict")

    def start(self) -> None:
        """Start the batching task on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop batching (requests in flight have finished by the time the server calls this)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._pool.shutdown(wait=True)

    async def predict(self, x: np.ndarray) -> np.ndarray:
        """The model's outputs for ``x``, computed in a shared batch."""
        assert self._queue is not None, "MicroBatcher.start() was not called"
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((x, future))
        self._depth()
        return await future

    def _depth(self) -> None:
        if self.observer and self._queue is not None:
            self.observer.queue_depth(self._queue.qsize(), kind="predict")

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        pending: tuple[np.ndarray, asyncio.Future] | None = None
        while True:
            first = pending or await self._queue.get()
            pending = None
            batch, rows = [first], len(first[0])
            deadline = loop.time() + self.max_wait
            while rows < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0 and self._queue.empty():
                    break
                try:
                    item = (self._queue.get_nowait() if timeout <= 0
                            else await asyncio.wait_for(self._queue.get(), timeout))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if rows + len(item[0]) > self.max_batch:
                    pending = item  # opens the next batch
                    break
                batch.append(item)
                rows += len(item[0])
            self._depth()
            live = [(x, f) for x, f in batch if not f.done()]
            if not live:
                continue
            start = time.perf_counter()
            try:
                out = await loop.run_in_executor(self._pool, self.run, np.concatenate([x for x, _ in live]))
            except Exception as exc:  # the batch's requests fail; the server goes on
                for _, f in live:
                    if not f.done():
                        f.set_exception(exc)
                continue
            if self.observer:
                self.observer.batch(len(out), time.perf_counter() - start, kind="predict")
            offset = 0
            for x, f in live:
                if not f.done():
                    f.set_result(out[offset:offset + len(x)])
                offset += len(x)
