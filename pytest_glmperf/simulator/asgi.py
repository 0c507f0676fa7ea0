"""Small raw-ASGI helpers: complete responses, request bodies and headers, error bodies.

:class:`HTTPError` is answered as SGLang's JSON error body before any stream starts.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["HTTPError", "Receive", "Scope", "Send", "error_body", "header", "read_body", "respond",
           "respond_json"]

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class HTTPError(Exception):
    """An error answered as SGLang's JSON error body before any stream starts."""

    def __init__(self, code: int, message: str, type_: str = "BadRequestError") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.type = type_


def error_body(message: str, type_: str, code: int) -> bytes:
    """SGLang's pre-stream error body (serving_base.py)."""
    return json.dumps({"object": "error", "message": message, "type": type_, "param": None,
                       "code": code}).encode()


async def respond(send: Send, status: int, body: bytes = b"",
                  content_type: bytes = b"application/json") -> None:
    """Send a complete, non-streaming response."""
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, obj: Any, status: int = 200) -> None:
    """Send *obj* as a JSON response."""
    await respond(send, status, json.dumps(obj).encode())


async def read_body(receive: Receive) -> bytes:
    """The whole request body."""
    parts: list[bytes] = []
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ConnectionResetError("client went away while sending the body")
        parts.append(msg.get("body", b""))
        if not msg.get("more_body"):
            return b"".join(parts)


def header(scope: Scope, name: bytes) -> str | None:
    """First value of a request header (name in lower case)."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None

