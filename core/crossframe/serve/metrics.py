"""The server's Prometheus metrics (prometheus-client), one registry per app.

Requests by route and status with latency histograms, batch sizes, queue depth and generated
tokens (``rate(crossframe_generated_tokens_total[1m])`` is tokens/s; the gauge
``crossframe_tokens_per_second`` is the same over the last decode steps).
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: routes named in the labels; any other path is counted as ``other`` (bounded cardinality)
ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/predict", "/v1/models", "/healthz", "/readyz",
          "/metrics", "/docs", "/openapi.json")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """Counters, histograms and gauges for one server, and the scheduler's :class:`Observer`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("crossframe_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("crossframe_request_seconds", "Request latency (to the last byte)",
                                 ["route", "status"], registry=r)
        self.batch_size = Histogram("crossframe_batch_size", "Rows per model call (decode step or predict batch)",
                                    ["kind"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("crossframe_batch_seconds", "Time per model call", ["kind"], registry=r)
        self.queue = Gauge("crossframe_queue_depth", "Requests waiting for the model", ["kind"], registry=r)
        self.tokens = Counter("crossframe_generated_tokens", "Tokens generated", registry=r)
        self.prompt_tokens = Counter("crossframe_prompt_tokens", "Prompt tokens received", registry=r)
        self.tokens_per_second = Gauge("crossframe_tokens_per_second",
                                       "Generated tokens per second over the last 10 s", registry=r)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()
        self._lock = threading.Lock()

    def route(self, path: str) -> str:
        """The label for ``path``."""
        return path if path in ROUTES else "other"

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        """One finished request."""
        route = self.route(path)
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, str(status)).observe(seconds)

    # the scheduler's Observer
    def batch(self, size: int, seconds: float, kind: str = "decode") -> None:
        """One model call of ``size`` rows."""
        self.batch_size.labels(kind).observe(size)
        self.batch_seconds.labels(kind).observe(seconds)
        if kind == "decode":
            self.tokens.inc(size)
            now = time.monotonic()
            with self._lock:
                self._recent.append((now, size))
                while self._recent and self._recent[0][0] < now - 10.0:
                    self._recent.popleft()
                span = max(now - self._recent[0][0], 1e-3)
                self.tokens_per_second.set(sum(n for _, n in self._recent) / span if len(self._recent) > 1 else 0.0)

    def queue_depth(self, waiting: int, kind: str = "decode") -> None:
        """Requests waiting for a slot or a batch."""
        self.queue.labels(kind).set(waiting)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI: times each HTTP request to its last byte and counts it by route and status."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Pass the request through, noting the status it got and when it ended."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.observe_request(scope["path"], scope["method"], status, time.perf_counter() - start)
