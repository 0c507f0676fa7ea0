"""SSE chunk bytes in SGLang's field order, and the writer that sends and stamps them.

One wire format per endpoint, each pre-building a request's chunk pieces so that a chunk is
a few string joins: :class:`ChunkFormat` (``/v1/chat/completions``: role, reasoning and
content deltas, finish chunk), :class:`CompletionFormat` (``/v1/completions``: text deltas,
the finish reason on the last one) and :class:`GenerateFormat` (native ``/generate``:
cumulative text, output ids and ``meta_info`` in every chunk). They share one interface, so
the response writer in chat.py runs the same loop, faults included, for all three.
:class:`SSEWriter` sends a batch of chunks as one ASGI body message and records the send
instant of each (for ``GET /glmperf/sends/{rid}``).
"""

from __future__ import annotations

import json
import time
from typing import Any

from .asgi import Send
from .faults import error_type
from .metrics import SendRecord
from .tokenizer import output_ids, output_text

__all__ = ["DONE", "EOS_TOKEN_ID", "ChunkFormat", "CompletionFormat", "GenerateFormat",
           "SSEWriter", "WireFormat", "stream_error"]

EOS_TOKEN_ID = 154820          # matched_stop when a stream ends early ("stop"); placeholder id

DONE = b"data: [DONE]\n\n"
_TAIL = '},"logprobs":null,"finish_reason":null,"matched_stop":null}]'


def _matched(reason: str) -> str:
    return str(EOS_TOKEN_ID) if reason == "stop" else "null"


class WireFormat:
    """One request's chunks on one endpoint; the defaults are the OpenAI-style ones."""

    def __init__(self, prompt_tokens: int, cache_report: bool) -> None:
        self.prompt_tokens = prompt_tokens
        self.cache_report = cache_report
        self.cached_tokens = 0

    def opening(self) -> bytes | None:
        """A chunk before the first token (chat's role chunk), or None."""
        return None

    def token(self, reasoning: bool, start: int, tokens: int, usage: str | None,
              finish: str | None) -> bytes:
        """The chunk of output tokens ``start .. start+tokens-1``; *finish* on the last one."""
        raise NotImplementedError

    def closing(self, reason: str) -> bytes | None:
        """A chunk after the last token (chat's finish chunk), or None."""
        return None

    def usage(self, completion: int, reasoning: int, omit_null: bool = False) -> str:
        """SGLang's usage object (reasoning_tokens is top-level, not in details);
        ``omit_null`` drops a null ``prompt_tokens_details`` (pydantic's exclude_none)."""
        details = f'{{"cached_tokens":{self.cached_tokens}}}' if self.cache_report else "null"
        p = self.prompt_tokens
        field = "" if omit_null and details == "null" else f'"prompt_tokens_details":{details},'
        return (f'{{"prompt_tokens":{p},"total_tokens":{p + completion},'
                f'"completion_tokens":{completion},{field}"reasoning_tokens":{reasoning}}}')

    def usage_chunk(self, completion: int, reasoning: int) -> bytes:
        """The final usage chunk (choices empty)."""
        raise NotImplementedError

    def error(self, code: int, message: str) -> bytes:
        """An in-stream error (sent under HTTP 200)."""
        return stream_error(code, message)

    def malformed(self) -> bytes:
        """An SSE line whose JSON is cut off (malformed fault)."""
        raise NotImplementedError

    def response(self, content: str, reasoning_text: str, reason: str, completion: int,
                 reasoning: int) -> dict[str, Any]:
        """The non-streaming response object."""
        raise NotImplementedError


class ChunkFormat(WireFormat):
    """``/v1/chat/completions`` chunks (SGLang's sse_utils field order)."""

    def __init__(self, rid: str, model: str, prompt_tokens: int, cache_report: bool) -> None:
        super().__init__(prompt_tokens, cache_report)
        self.rid, self.model = rid, model
        self.head = (
            '{"id":' + json.dumps(rid) + ',"object":"chat.completion.chunk","created":'
            + str(int(time.time())) + ',"model":' + json.dumps(model)
        )
        choice = self.head + ',"choices":[{"index":0,"delta":{'
        self._reasoning = "data: " + choice + '"reasoning_content":"'
        self._content = "data: " + choice + '"reasoning_content":null,"content":"'
        self._choice = choice

    def opening(self) -> bytes:
        """The role chunk: role only, no text (TTFT must not start on it)."""
        return ("data: " + self._choice
                + '"reasoning_content":null,"role":"assistant","content":""' + _TAIL
                + "}\n\n").encode()

    def token(self, reasoning: bool, start: int, tokens: int, usage: str | None,
              finish: str | None) -> bytes:
        """A reasoning or content delta; the finish reason comes in its own chunk."""
        pre = self._reasoning if reasoning else self._content
        tail = _TAIL + (',"usage":' + usage if usage else "") + "}\n\n"
        return (pre + output_text(start, tokens, json_escaped=True) + '"' + tail).encode()

    def closing(self, reason: str) -> bytes:
        """The finish chunk: empty delta, finish_reason set."""
        return ("data: " + self._choice + '"reasoning_content":null},"logprobs":null,'
                f'"finish_reason":"{reason}","matched_stop":{_matched(reason)}}}]}}\n\n').encode()

    def usage_chunk(self, completion: int, reasoning: int) -> bytes:
        return ("data: " + self.head + ',"choices":[],"usage":'
                + self.usage(completion, reasoning) + "}\n\n").encode()

    def malformed(self) -> bytes:
        return ("data: " + self.head + ',"choices":[{"index":0,"delta":{"content":"' + "\n\n").encode()

    def response(self, content: str, reasoning_text: str, reason: str, completion: int,
                 reasoning: int) -> dict[str, Any]:
        return {
            "id": self.rid, "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": content or None,
                "reasoning_content": reasoning_text or None, "tool_calls": None},
                "logprobs": None, "finish_reason": reason,
                "matched_stop": EOS_TOKEN_ID if reason == "stop" else None}],
            "usage": json.loads(self.usage(completion, reasoning)),
        }


class CompletionFormat(WireFormat):
    """``/v1/completions`` chunks: ``text`` deltas, no role chunk and no reasoning split; the
    finish reason rides on the last text chunk; the usage chunk drops null fields."""

    def __init__(self, rid: str, model: str, prompt_tokens: int, cache_report: bool) -> None:
        super().__init__(prompt_tokens, cache_report)
        self.rid, self.model = rid, model
        self.head = ('{"id":' + json.dumps(rid) + ',"object":"text_completion","created":'
                     + str(int(time.time())) + ',"model":' + json.dumps(model))
        self._text = "data: " + self.head + ',"choices":[{"index":0,"text":"'

    def token(self, reasoning: bool, start: int, tokens: int, usage: str | None,
              finish: str | None) -> bytes:
        ending = (f'"finish_reason":"{finish}","matched_stop":{_matched(finish)}' if finish
                  else '"finish_reason":null,"matched_stop":null')
        return (self._text + output_text(start, tokens, json_escaped=True)
                + '","logprobs":null,' + ending + '}],"usage":' + (usage or "null")
                + "}\n\n").encode()

    def usage_chunk(self, completion: int, reasoning: int) -> bytes:
        usage = self.usage(completion, reasoning, omit_null=True)
        return ("data: " + self.head + ',"choices":[],"usage":' + usage + "}\n\n").encode()

    def malformed(self) -> bytes:
        return (self._text + "\n\n").encode()

    def response(self, content: str, reasoning_text: str, reason: str, completion: int,
                 reasoning: int) -> dict[str, Any]:
        return {
            "id": self.rid, "object": "text_completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "text": reasoning_text + content, "logprobs": None,
                         "finish_reason": reason,
                         "matched_stop": EOS_TOKEN_ID if reason == "stop" else None}],
            "usage": json.loads(self.usage(completion, reasoning)), "metadata": None,
        }


class GenerateFormat(WireFormat):
    """Native ``/generate`` chunks: by default (SGLang's non-incremental streaming) each
    chunk carries the whole text and output ids so far plus ``meta_info``; with
    ``--incremental-streaming-output`` only this chunk's text and ids.

    ``e2e_latency`` in the last chunk is in model seconds, like every simulator figure.
    """

    def __init__(self, rid: str, prompt_tokens: int, cache_report: bool,
                 started_ns: int, time_scale: float, incremental: bool = False) -> None:
        super().__init__(prompt_tokens, cache_report)
        self.rid = rid
        self.started_ns, self.time_scale = started_ns, time_scale
        self.incremental = incremental
        self._text: list[str] = []
        self._ids: list[str] = []
        self._completion = 0

    def _meta(self, completion: int, finish: str) -> str:
        tail = ""
        if finish != "null":
            latency = (time.perf_counter_ns() - self.started_ns) / 1e9 * self.time_scale
            tail = f',"e2e_latency":{latency:.6f}'
        return (f'{{"id":{json.dumps(self.rid)},"finish_reason":{finish},'
                f'"prompt_tokens":{self.prompt_tokens},"weight_version":"default",'
                f'"num_retractions":0,"reasoning_tokens":0,"completion_tokens":{completion},'
                f'"cached_tokens":{self.cached_tokens}{tail}}}')

    def _chunk(self, finish: str) -> bytes:
        return ('data: {"text":"' + "".join(self._text) + '","output_ids":['
                + ",".join(self._ids) + '],"meta_info":' + self._meta(self._completion, finish)
                + "}\n\n").encode()

    def token(self, reasoning: bool, start: int, tokens: int, usage: str | None,
              finish: str | None) -> bytes:
        if self.incremental:
            self._text.clear()
            self._ids.clear()
        self._text.append(output_text(start, tokens, json_escaped=True))
        self._ids.append(",".join(map(str, output_ids(start, tokens))))
        self._completion = start + tokens
        return self._chunk(_finish_json(finish, start + tokens))

    def error(self, code: int, message: str) -> bytes:
        """SGLang yields the aborted output itself, finish_reason carrying the status."""
        if self.incremental:   # nothing new since the last chunk
            self._text.clear()
            self._ids.clear()
        return self._chunk('{"type":"abort","message":' + json.dumps(message)
                           + f',"status_code":{code},"err_type":null}}')

    def malformed(self) -> bytes:
        return b'data: {"text":"\n\n'

    def response(self, content: str, reasoning_text: str, reason: str, completion: int,
                 reasoning: int) -> dict[str, Any]:
        text = reasoning_text + content
        return {"text": text, "output_ids": output_ids(0, completion),
                "meta_info": json.loads(self._meta(completion, _finish_json(reason, completion)))}


def _finish_json(reason: str | None, completion: int) -> str:
    """SGLang's meta_info finish_reason (FINISH_LENGTH / FINISH_MATCHED_TOKEN .to_json())."""
    if reason is None:
        return "null"
    if reason == "length":
        return f'{{"type":"length","length":{completion}}}'
    return f'{{"type":"stop","matched":{EOS_TOKEN_ID}}}'


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

