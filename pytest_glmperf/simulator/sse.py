"""SSE chunk bytes in SGLang's field order, and the writer that sends and stamps them.

:class:`ChunkFormat` pre-builds one request's chunk pieces so that each chunk is a few
string joins; :class:`SSEWriter` sends a batch of chunks as one ASGI body message and
records the send instant of each (for ``GET /glmperf/sends/{rid}``).
"""

from __future__ import annotations

import json
import time

from .asgi import Send
from .faults import error_type
from .metrics import SendRecord

__all__ = ["DONE", "EOS_TOKEN_ID", "ChunkFormat", "SSEWriter", "stream_error"]

EOS_TOKEN_ID = 154820          # matched_stop when a stream ends early ("stop"); placeholder id

DONE = b"data: [DONE]\n\n"
_TAIL = '},"logprobs":null,"finish_reason":null,"matched_stop":null}]'


class ChunkFormat:
    """Pre-built pieces of one request's SSE chunks (SGLang's sse_utils field order)."""

    def __init__(self, rid: str, model: str, prompt_tokens: int, cache_report: bool) -> None:
        self.head = (
            '{"id":' + json.dumps(rid) + ',"object":"chat.completion.chunk","created":'
            + str(int(time.time())) + ',"model":' + json.dumps(model)
        )
        choice = self.head + ',"choices":[{"index":0,"delta":{'
        self._reasoning = "data: " + choice + '"reasoning_content":"'
        self._content = "data: " + choice + '"reasoning_content":null,"content":"'
        self._choice = choice
        self.prompt_tokens = prompt_tokens
        self.cache_report = cache_report
        self.cached_tokens = 0

    def role(self) -> bytes:
        """The opening chunk: role only, no text (TTFT must not start on it)."""
        return ("data: " + self._choice
                + '"reasoning_content":null,"role":"assistant","content":""' + _TAIL
                + "}\n\n").encode()

    def token(self, reasoning: bool, text_json: str, usage: str | None) -> bytes:
        """A reasoning or content chunk; *text_json* is already JSON-escaped."""
        pre = self._reasoning if reasoning else self._content
        tail = _TAIL + (',"usage":' + usage if usage else "") + "}\n\n"
        return (pre + text_json + '"' + tail).encode()

    def usage(self, completion: int, reasoning: int) -> str:
        """SGLang's usage object (reasoning_tokens is top-level, not in details)."""
        details = f'{{"cached_tokens":{self.cached_tokens}}}' if self.cache_report else "null"
        p = self.prompt_tokens
        return (f'{{"prompt_tokens":{p},"total_tokens":{p + completion},'
                f'"completion_tokens":{completion},"prompt_tokens_details":{details},'
                f'"reasoning_tokens":{reasoning}}}')

    def finish(self, reason: str) -> bytes:
        """The finish chunk: empty delta, finish_reason set."""
        stop = str(EOS_TOKEN_ID) if reason == "stop" else "null"
        return ("data: " + self._choice + '"reasoning_content":null},"logprobs":null,'
                f'"finish_reason":"{reason}","matched_stop":{stop}}}]}}\n\n').encode()

    def usage_chunk(self, completion: int, reasoning: int) -> bytes:
        """The final usage chunk (choices empty)."""
        return ("data: " + self.head + ',"choices":[],"usage":'
                + self.usage(completion, reasoning) + "}\n\n").encode()

    def malformed(self) -> bytes:
        """An SSE line whose JSON is cut off (malformed fault)."""
        return ("data: " + self.head + ',"choices":[{"index":0,"delta":{"content":"' + "\n\n").encode()


def stream_error(code: int, message: str) -> bytes:
    """SGLang's in-stream error payload (sent under HTTP 200)."""
    err = {"object": "error", "message": message, "type": error_type(code), "param": None,
           "code": code}
    return b"data: " + json.dumps({"error": err}).encode() + b"\n\n"


class SSEWriter:
    """Writes one SSE response: headers lazily with the first chunk, stamps every write."""

    def __init__(self, send: Send, record: SendRecord) -> None:
        self.send = send
        self.record = record
        self.started = False
        self.ended = False

    async def flush(self, events: list[tuple[str, bytes, int]], more: bool = True) -> None:
        """Write *events* as one body message (nothing when empty and more is True)."""
        if self.ended or (not events and more):
            return
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-cache")]})
        body = b"".join(e[1] for e in events)
        await self.send({"type": "http.response.body", "body": body, "more_body": more})
        self.record.add(time.perf_counter_ns(), events)
        events.clear()
        self.ended = not more

