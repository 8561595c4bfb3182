"""The ASGI app (FastAPI): OpenAI-compatible completions, predictions, health, readiness and metrics.

``build_app(model, options)`` wires a :class:`~crossframe.serve.loading.ServedModel` to its
batcher (a continuous-batching scheduler for a language model, a micro-batcher for a classifier
or regressor), API keys, limits and Prometheus metrics. OpenAPI docs are at ``/docs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from crossframe.errors import CrossframeError
from crossframe.sampling import make_sampler, softmax
from crossframe.serve.batching import MicroBatcher
from crossframe.serve.decoding import LMEngine, RecomputeDecoder, describe, sequence_request
from crossframe.serve.errors import APIError, Json, error_response, validation_message
from crossframe.serve.guard import RequestGuard
from crossframe.serve.keys import KeyStore, RateLimiter
from crossframe.serve.loading import ServedModel
from crossframe.serve.metrics import MetricsMiddleware, ServerMetrics
from crossframe.serve.schemas import ChatRequest, CompletionRequest, PredictRequest
from crossframe.serve.text import TextStream, render_chat

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc")


@dataclass
class ServeOptions:
    """How the server batches and what it allows."""

    max_batch: int = 32  # sequences per decode step (language models) or rows per predict batch
    max_wait_ms: float = 0.0  # how long a classifier batch waits to fill (0: it takes what is queued)
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 1024  # the largest max_tokens a request may ask for
    api_keys: Path | None = None


class Server:
    """The per-app state: the model, its batcher, keys and metrics."""

    def __init__(self, model: ServedModel, options: ServeOptions) -> None:
        self.model, self.options = model, options
        self.metrics = ServerMetrics()
        self.keys = KeyStore(options.api_keys) if options.api_keys else None
        self.limiter = RateLimiter()
        self.engine: LMEngine | None = None
        self.batcher: MicroBatcher | None = None
        self.ready = False
        self.draining = False
        self.created = int(time.time())

    async def start(self) -> None:
        """Start the batcher on the running loop."""
        model, options = self.model, self.options
        if model.is_language_model:
            decoder = (model.batch_decoder(options.max_batch) if model.batch_decoder
                       else RecomputeDecoder(model.predict, model.window, model.tokenizer.eot_id))
            self.engine = LMEngine(decoder, options.max_batch, self.metrics)
            self.decoding = describe(decoder)
            self.engine.start()
        else:
            self.batcher = MicroBatcher(model.predict, options.max_batch, options.max_wait_ms, self.metrics)
            self.batcher.start()
        self.ready = True

    async def stop(self) -> None:
        """Stop the batcher (uvicorn has let every in-flight request finish by now)."""
        self.ready = False
        if self.engine is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.stop)
        if self.batcher is not None:
            await self.batcher.stop()

    # ------------------------------------------------------------------ checks

    def authorize(self, request: Request) -> None:
        """401 for a missing, wrong or revoked key; 429 past the key's rate limit."""
        if self.keys is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        caller = self.keys.check(token.strip() if scheme.lower() == "bearer" else None)
        if caller is None:
            raise APIError(401, "missing, invalid or revoked API key (send 'Authorization: Bearer KEY')",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        wait = self.limiter.allow(caller)
        if wait > 0:
            raise APIError(429, f"rate limit of {caller.rate_per_minute} requests per minute reached for key "
                                f"'{caller.name}'", code="rate_limit_exceeded",
                           headers={"Retry-After": str(max(1, round(wait)))})

    def check_model(self, name: str | None, language_model: bool) -> None:
        """404 for another model's name; 400 when the endpoint does not fit the model's task."""
        if name is not None and name != self.model.name:
            raise APIError(404, f"model '{name}' is not served here (this server serves '{self.model.name}')",
                           param="model", code="model_not_found")
        if language_model and not self.model.is_language_model:
            raise APIError(400, f"model '{self.model.name}' is a {self.model.task} model; use /v1/predict")
        if not language_model and self.model.is_language_model:
            raise APIError(400, f"model '{self.model.name}' is a language model; use /v1/completions")
        if not self.ready or self.draining:
            raise APIError(503, "server is not ready")

    # ------------------------------------------------------------------ generation

    async def generate(self, prompt_ids: list[int], body: Any, max_tokens: int) -> tuple[Any, AsyncIterator[int]]:
        """Queue a generation; returns its scheduler entry and an async iterator of its tokens."""
        if max_tokens > self.options.max_tokens_limit:
            raise APIError(400, f"max_tokens: {max_tokens} exceeds this server's limit of "
                                f"{self.options.max_tokens_limit}", param="max_tokens")
        seed = body.seed if body.seed is not None else secrets.randbits(63)
        try:
            sample = make_sampler(body.temperature, body.top_k, body.top_p, seed)
        except ValueError as exc:
            raise APIError(400, str(exc)) from None
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[int | None] = asyncio.Queue()

        def emit(token: int | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): nobody listens
                loop.call_soon_threadsafe(tokens.put_nowait, token)

        entry = sequence_request(prompt_ids, max_tokens, sample, emit, self.model.window)
        assert self.engine is not None
        self.engine.submit(entry)
        self.metrics.prompt_tokens.inc(len(prompt_ids))

        async def stream() -> AsyncIterator[int]:
            try:
                while True:
                    token = await tokens.get()
                    if token is None:
                        if entry.error:
                            raise RuntimeError(entry.error)
                        return
                    yield token
            finally:
                entry.cancel()

        return entry, stream()


def build_app(model: ServedModel, options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI app serving ``model``; start it with uvicorn (see :func:`crossframe.serve.server.serve`)."""
    options = options or ServeOptions()
    server = Server(model, options)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title=f"crossframe serve: {model.name}", version="1",
                  description=f"{model.task} model '{model.name}' ({model.engine}), served by crossframe",
                  lifespan=lifespan, default_response_class=Json)
    app.state.server = server
    _errors(app)
    _routes(app, server)
    app.add_middleware(RequestGuard, max_body_bytes=options.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)
    return app


def _errors(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = validation_message(list(exc.errors()))
        return error_response(400, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(CrossframeError)
    async def crossframe_error(request: Request, exc: CrossframeError) -> JSONResponse:
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:  # a bug: still one line of JSON
        return error_response(500, f"internal error ({type(exc).__name__}); see the server log")


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, separators=(',', ':'))}\n\n"


def _routes(app: FastAPI, server: Server) -> None:
    model = server.model

    @app.get("/healthz", summary="Liveness")
    async def healthz() -> dict[str, str]:
        """200 while the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness")
    async def readyz() -> JSONResponse:
        """200 once the model is loaded and its batcher runs; 503 before, and while draining."""
        alive = server.engine is None or server.engine._thread.is_alive()
        ok = server.ready and alive and not server.draining
        return Json({"status": "ready" if ok else "unavailable", "model": model.name,
                             "engine": model.engine}, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        """Request counts and latencies by route and status, batch sizes, queue depth, tokens/s."""
        content, content_type = server.metrics.render()
        return Response(content, media_type=content_type)

    @app.get("/v1/models", summary="The served model")
    async def list_models(request: Request) -> dict[str, Any]:
        """The one model this server serves, OpenAI-style."""
        server.authorize(request)
        return {"object": "list", "data": [{"id": model.name, "object": "model", "created": server.created,
                                            "owned_by": "crossframe", "task": model.task, "engine": model.engine}]}

    @app.post("/v1/completions", summary="Text completion (OpenAI-compatible)")
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """Continue ``prompt``; ``stream: true`` sends server-sent events."""
        server.authorize(request)
        server.check_model(body.model, language_model=True)
        prompt_ids = model.tokenizer.encode(body.prompt) if body.prompt else [model.tokenizer.eot_id]
        return await _complete(server, body, prompt_ids, body.max_tokens or 0, chat=False,
                               echo=body.prompt if body.echo else "")

    @app.post("/v1/chat/completions", summary="Chat completion (OpenAI-compatible)")
    async def chat_completions(body: ChatRequest, request: Request) -> Any:
        """Reply to ``messages`` through the model's chat template."""
        server.authorize(request)
        server.check_model(body.model, language_model=True)
        if model.chat_template is None:
            raise APIError(400, f"model '{model.name}' has no chat template (start the server with "
                                f"--chat-template FILE, or put chat_template.jinja in the run directory)")
        prompt = render_chat(model.chat_template, [m.model_dump(exclude_none=True) for m in body.messages],
                             model.tokenizer.decode([model.tokenizer.eot_id]))
        limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
        max_tokens = limit if limit is not None else min(256, server.options.max_tokens_limit)
        return await _complete(server, body, model.tokenizer.encode(prompt) or [model.tokenizer.eot_id],
                               max_tokens, chat=True)

    @app.post("/v1/predict", summary="Scores and labels for a batch of examples")
    async def predict(body: PredictRequest, request: Request) -> JSONResponse:
        """Each example of ``inputs`` (the model's input shape, or flat) gets outputs; classifiers get
        softmax scores, the label and its score."""
        server.authorize(request)
        server.check_model(body.model, language_model=False)
        x = _table_rows(model, body.rows) if body.rows is not None else _examples(body.inputs or [], model.input_shape)
        assert server.batcher is not None
        out = await server.batcher.predict(x)
        data: list[dict[str, Any]] = []
        if model.task == "classification":
            probs = softmax(out.astype(np.float64))
            best = probs.argmax(axis=1)
            for i, (row, k) in enumerate(zip(probs.tolist(), best.tolist(), strict=True)):
                label = model.class_names[k] if k < len(model.class_names) else str(k)
                data.append({"index": i, "label": label, "class_index": k, "score": row[k], "scores": row})
        else:
            data = [{"index": i, "values": row} for i, row in enumerate(out.reshape(len(out), -1).tolist())]
        # a JSONResponse directly: FastAPI's encoder would walk every score again
        return Json({"object": "list", "model": model.name, "task": model.task, "data": data})


def _table_rows(model: Any, rows: list[dict[str, Any]]) -> np.ndarray:
    """Raw table records through the run's saved transform (``preprocess.json``); 400 naming what is wrong."""
    if model.transform is None:
        raise APIError(400, f"rows: model '{model.name}' was not trained on a table; send 'inputs'", param="rows")
    from crossframe.errors import DataError

    try:
        return model.transform.rows(rows).reshape(len(rows), *model.input_shape)
    except DataError as exc:
        raise APIError(400, str(exc), param="rows") from None


def _examples(inputs: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    """``inputs`` as float32 ``[n, *shape]``; 400 naming what is wrong."""
    try:
        x = np.asarray(inputs, dtype=np.float32)
    except (ValueError, TypeError):
        raise APIError(400, f"inputs: each example must be a number array of shape {list(shape)} "
                            f"(or {int(np.prod(shape))} numbers)", param="inputs") from None
    size = int(np.prod(shape))
    if x.shape[1:] != shape:
        if x.ndim == 2 and x.shape[1] == size:
            x = x.reshape(len(x), *shape)
        else:
            raise APIError(400, f"inputs: examples have shape {list(x.shape[1:])}; this model takes "
                                f"{list(shape)} (or {size} numbers)", param="inputs")
    if not np.isfinite(x).all():
        raise APIError(400, "inputs: every value must be a finite number", param="inputs")
    return x


async def _complete(server: Server, body: Any, prompt_ids: list[int], max_tokens: int, chat: bool,
                    echo: str = "") -> Any:
    model = server.model
    entry, tokens = await server.generate(prompt_ids, body, max_tokens)
    text = TextStream(model.tokenizer, body.stops())
    ident = ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    kind = "chat.completion" if chat else "text_completion"

    def choice(piece: str, finish: str | None, final: bool) -> dict[str, Any]:
        if not chat:
            return {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
        key = "message" if final else "delta"
        return {"index": 0, key: {"role": "assistant", "content": piece}, "logprobs": None, "finish_reason": finish}

    def finish_reason() -> str:
        return "stop" if text.stopped else "length"

    if not body.stream:
        try:
            async for token in tokens:
                text.push(token)
                if text.stopped:
                    break
        except RuntimeError as exc:
            raise APIError(503, str(exc)) from None
        finally:
            await tokens.aclose()
        return Json({"id": ident, "object": kind, "created": created, "model": model.name,
                             "choices": [choice(echo + text.text, finish_reason(), final=True)],
                             "usage": _usage(len(prompt_ids), len(entry.tokens))})

    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunk_kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str, finish: str | None) -> str:
        data = {"id": ident, "object": chunk_kind, "created": created, "model": model.name,
                "choices": [choice(piece, finish, final=False)]}
        if include_usage:
            data["usage"] = None
        return _sse(data)

    async def events() -> AsyncIterator[str]:
        try:
            if echo:
                yield chunk(echo, None)
            async for token in tokens:
                piece = text.push(token)
                if piece:
                    yield chunk(piece, None)
                if text.stopped:
                    break
            rest = text.finish()
            yield chunk(rest, finish_reason())
            if include_usage:
                yield _sse({"id": ident, "object": chunk_kind, "created": created, "model": model.name,
                            "choices": [], "usage": _usage(len(prompt_ids), len(entry.tokens))})
            yield _sse("[DONE]")
        except RuntimeError as exc:  # the scheduler ended this sequence (a failed step, shutdown)
            yield _sse({"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}})
        finally:
            await tokens.aclose()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
