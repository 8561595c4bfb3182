"""Errors as the OpenAI API shapes them: one line of JSON with a 4xx (or 5xx) status."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
         405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
         429: "rate_limit_error", 503: "service_unavailable"}


class Json(JSONResponse):
    """Compact JSON escaped to ASCII: text holding a lone surrogate (a prompt may) still encodes."""

    def render(self, content: Any) -> bytes:
        """``content`` as one line of ASCII JSON."""
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode("ascii")


class APIError(Exception):
    """A request the server refuses: status, one-line message, and the offending field if any."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": " ".join(message.split()), "type": TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON response for an error (compact: one line)."""
    return Json(error_body(status, message, param, code), status_code=status, headers=headers)


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One line from pydantic's error list, and the field it names."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    field = ".".join(loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        return f"body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}", None
    if kind == "extra_forbidden":
        return f"unknown field '{field}'", field
    if kind == "missing":
        return f"missing field '{field}'", field
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{field or 'body'}: {first.get('msg', 'invalid')}{more}", field
