"""SSE stream parsing: turns response body bytes into RequestRecord fields.

:class:`_StreamParser` consumes body pieces stamped by the socket read that completed them;
failures are marked on the record (``_fail``) with one of ``ERROR_KINDS``, never raised.
"""

from __future__ import annotations

import json
from typing import Any

from .records import FAILED, RequestRecord

try:  # optional speed-up, identical results; the stdlib parser is the fallback
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    from json import loads as _loads

__all__ = ["ERROR_KINDS"]

#: ``record.extra["error_kind"]`` values, one per way a request can fail.
ERROR_KINDS = (
    "http_status",    # the server answered >= 400 before streaming (its message is kept)
    "connect",        # the connection could not be opened
    "timeout",        # connect/read timeout, the first-token or stall limit, or the whole-request deadline
    "dropped",        # the connection broke (a stale keep-alive connection is first retried once)
    "stream_error",   # an {"error": ...} payload inside the stream (even under HTTP 200)
    "malformed",      # an SSE event that is not `data: <json object>`
    "no_done",        # the stream ended without `data: [DONE]`
    "aborted",        # the server finished the request with finish_reason "abort"
    "cancelled",      # the caller cancelled the request (Ctrl-C, level end)
    "client_error",   # a bug or misuse on our side; the message says what
)

_MAX_EVENT_BYTES = 16 << 20     # an unterminated SSE event larger than this is malformed
_ERROR_BODY_CHARS = 500


class _Malformed(ValueError):
    """An SSE event that is not `data: <json>`."""


def _slow_event_data(event: bytes) -> bytes | None:
    """Full SSE field parsing for events off the fast path: multi-line data, comments, `event:`.

    Returns the joined data, or None for a comment-only event.
    """
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        if name == b"data":
            data.append(value[1:] if value.startswith(b" ") else value)
        elif name not in (b"event", b"id", b"retry"):
            raise _Malformed(f"not an SSE field line: {line[:120]!r}")
    return b"\n".join(data) if data else None


def _error_message(error: Any) -> str:
    """The text of an OpenAI/SGLang error object, with its code when it has one."""
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or json.dumps(error)[:300]
        code = error.get("code") or error.get("type")
        return f"{message} (code {code})" if code is not None else str(message)
    return str(error)


class _StreamParser:
    """Turns response body pieces into record fields; one instance per request.

    ``feed`` is the hot path: join, split on blank lines, parse each event's JSON with a C
    parser and look only at the few keys that matter; usage totals wait for ``finish``.
    Parsing every event inline is deliberate: arrival stamps come from the socket read, so
    parsing never delays them, a C parse costs 1-3 us (the httpx stack ~8 us per chunk
    costs more), and only a real parse catches a malformed event, which is a failure.
    """

    def __init__(self, record: RequestRecord) -> None:
        self.record = record
        self.done = False
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.response_id: str | None = None
        self._buf = b""
        self._tokens_seen = 0    # cumulative completion tokens at the last token-bearing chunk

    def feed(self, piece: bytes, t: int) -> None:
        """Consume one body piece that was complete at perf_counter_ns ``t``."""
        record = self.record
        if record.first_byte_ns is None:
            record.first_byte_ns = t
        buf = self._buf + piece if self._buf else piece
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        if buf.endswith(b"\n\n"):
            self._buf = b""
        else:
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                self._buf = buf
                if len(buf) > _MAX_EVENT_BYTES:
                    self._fail("malformed", f"SSE event larger than {_MAX_EVENT_BYTES} bytes")
                    self._buf = b""
                return
            self._buf, buf = buf[cut + 2:], buf[:cut + 2]
        for event in buf[:-2].split(b"\n\n"):
            if event:
                self._event(event, t)

    def _event(self, event: bytes, t: int) -> None:
        if self.done:
            return
        if event.startswith(b"data: ") and b"\n" not in event:
            payload: bytes | None = event[6:]
        else:
            try:
                payload = _slow_event_data(event)
            except _Malformed as exc:
                self._fail("malformed", f"malformed SSE: {exc}")
                return
            if payload is None:
                return
        if payload == b"[DONE]":
            self.done = True
            self.record.done_ns = t
            return
        try:
            obj = _loads(payload)
        except ValueError:
            self._fail("malformed", f"malformed JSON in SSE event: {payload[:200]!r}")
            return
        if type(obj) is not dict:
            self._fail("malformed", f"SSE event is not a JSON object: {payload[:200]!r}")
            return
        self._chunk(obj, t)

    def _chunk(self, obj: dict[str, Any], t: int) -> None:
        if "error" in obj:
            self._fail("stream_error", f"error in stream: {_error_message(obj['error'])}")
            return
        if self.response_id is None:
            self.response_id = obj.get("id")
        usage = obj.get("usage")
        if usage:
            self.usage = usage
        content = other = False
        for choice in obj.get("choices") or ():
            delta = choice.get("delta")
            if delta:
                if delta.get("content"):
                    content = True
                elif delta.get("reasoning_content") or delta.get("tool_calls"):
                    other = True
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if content or other:
            self._token_chunk(t, content, usage)

    def _token_chunk(self, t: int, content: bool, usage: dict[str, Any] | None) -> None:
        """Record a token-bearing chunk; its tokens are the cumulative usage delta, else 1."""
        record = self.record
        record.chunk_ns.append(t)
        total = usage.get("completion_tokens") if usage else None
        if isinstance(total, int):
            record.chunk_tokens.append(max(total - self._tokens_seen, 0))
            self._tokens_seen = total
        else:
            record.chunk_tokens.append(1)
            self._tokens_seen += 1
        if record.first_token_ns is None:
            record.first_token_ns = t
        if content and record.first_content_ns is None:
            record.first_content_ns = t

    def finish(self) -> None:
        """The body ended cleanly: check the terminator and the finish reason."""
        if not self.done:
            tail = " (mid-event)" if self._buf.strip() else ""
            self._fail("no_done", f"stream ended without data: [DONE]{tail}")
        elif self.finish_reason == "abort":
            self._fail("aborted", "server aborted the request (finish_reason abort)")

    def apply_usage(self) -> None:
        """Copy the last usage seen (the final usage chunk) onto the record."""
        record, usage = self.record, self.usage
        if self.response_id is not None:
            record.extra["response_id"] = self.response_id
        if self.finish_reason is not None:
            record.extra["finish_reason"] = self.finish_reason
        if not isinstance(usage, dict):
            return
        record.prompt_tokens = usage.get("prompt_tokens")
        record.completion_tokens = usage.get("completion_tokens")
        reasoning = usage.get("reasoning_tokens")
        if reasoning is None:  # OpenAI-style servers nest it
            reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens")
        record.reasoning_tokens = reasoning
        record.cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")

    def _fail(self, kind: str, message: str) -> None:
        _fail(self.record, kind, message)


def _fail(record: RequestRecord, kind: str, message: str) -> None:
    """Mark the record failed; the first failure wins (it is the cause, later ones follow)."""
    if record.outcome == FAILED:
        return
    record.outcome = FAILED
    record.error = message
    record.extra["error_kind"] = kind


def _http_error_text(status: int, body: bytes) -> str:
    """`HTTP 503: <server message>` from an OpenAI/SGLang error body, or its raw text."""
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        inner = obj.get("error")
        message = _error_message(inner if isinstance(inner, dict) else obj)
    else:
        message = text.strip()
    return f"HTTP {status}: {message[:_ERROR_BODY_CHARS]}"

