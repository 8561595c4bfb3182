"""Pure ASGI guard in front of the app: a body-size limit, and JSON bodies whatever their Content-Type.

A body over ``max_body_bytes`` gets 413 before the app sees it (at once when ``Content-Length``
says so, else as soon as the streamed body passes the limit). ``POST /v1/...`` bodies are read as
JSON whatever ``Content-Type`` the client sent (``curl -d`` sends a form type), as OpenAI's API does.
"""

from __future__ import annotations

import json
from typing import Any

from crossframe.serve.errors import error_body


class RequestGuard:
    """Buffers a request body up to the limit, then replays it to the app."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app, self.limit = app, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Refuse an oversized body with 413; otherwise pass the request on with its body."""
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send, 413 if declared.isdigit() else 400)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send, 413)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if scope["path"].startswith("/v1/"):
            headers.append((b"content-type", b"application/json"))
        else:
            headers += [(k, v) for k, v in scope["headers"] if k == b"content-type"]
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": headers}, replay, send)

    async def _refuse(self, send: Any, status: int) -> None:
        message = (f"request body exceeds this server's limit of {self.limit} bytes" if status == 413
                   else "Content-Length is not a number")
        payload = json.dumps(error_body(status, message)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
