"""The SSE parser of the streaming client, fed bytes directly (no network).

These pin the metric rules of docs/metrics.md "Client timing" on exact inputs: which chunk
starts TTFT, how tokens per chunk come from cumulative usage, and what counts as a failure.
Timing against a live server is in test_client.py.
"""

from __future__ import annotations

import json
import math

import pytest

from pytest_glmperf.client import StreamingClient, _http_error_text, _StreamParser
from pytest_glmperf.records import FAILED, OK, RequestRecord


def event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chunk(content: str | None = None, reasoning: str | None = None, role: bool = False,
          completion: int | None = None, finish: str | None = None) -> bytes:
    """An SGLang-shaped chat chunk (msgspec layout: reasoning_content always present)."""
    delta: dict[str, object] = {"reasoning_content": reasoning}
    if role:
        delta["role"] = "assistant"
        delta["content"] = ""
    elif content is not None:
        delta["content"] = content
    obj: dict[str, object] = {
        "id": "rid-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                     "matched_stop": None}]}
    if completion is not None:
        obj["usage"] = {"prompt_tokens": 10, "completion_tokens": completion,
                        "total_tokens": 10 + completion}
    return event(obj)


USAGE = event({"id": "rid-1", "choices": [], "usage": {
    "prompt_tokens": 100, "completion_tokens": 6, "total_tokens": 106,
    "prompt_tokens_details": {"cached_tokens": 64}, "reasoning_tokens": 2}})
DONE = b"data: [DONE]\n\n"


def run(pieces: list[tuple[bytes, int]]) -> RequestRecord:
    record = RequestRecord(request_id="r")
    parser = _StreamParser(record)
    for piece, t in pieces:
        parser.feed(piece, t)
    parser.finish()
    parser.apply_usage()
    return record


def test_role_chunk_and_empty_deltas_do_not_start_ttft() -> None:
    record = run([(chunk(role=True, completion=0), 100), (chunk(content="", completion=0), 150),
                  (chunk(reasoning="think", completion=2), 200), (chunk(content="x", completion=3), 300),
                  (chunk(finish="length", completion=3), 310), (USAGE + DONE, 320)])
    assert record.ok, record.error
    assert record.first_byte_ns == 100
    assert record.first_token_ns == 200
    assert record.first_content_ns == 300
    assert record.chunk_ns == [200, 300]
    assert record.chunk_tokens == [2, 1]
    assert record.done_ns == 320
    assert (record.prompt_tokens, record.completion_tokens) == (100, 6)
    assert (record.reasoning_tokens, record.cached_tokens) == (2, 64)
    assert record.extra["response_id"] == "rid-1"
    assert record.extra["finish_reason"] == "length"


def test_events_in_one_read_share_its_stamp_and_split_events_take_the_later() -> None:
    stream = chunk(content="a", completion=1) + chunk(content="b", completion=3)
    third = chunk(content="c", completion=4)
    record = run([(stream + third[:20], 10), (third[20:], 20), (DONE, 30)])
    assert record.chunk_ns == [10, 10, 20]
    assert record.chunk_tokens == [1, 2, 1]


def test_tokens_default_to_one_per_chunk_without_usage() -> None:
    record = run([(chunk(content="a") + chunk(content="b"), 5), (DONE, 6)])
    assert record.chunk_tokens == [1, 1]
    assert record.completion_tokens is None
    assert record.output_tokens == 2


def test_crlf_framing_comments_and_multiline_data_are_accepted() -> None:
    body = (b": keep-alive\r\n\r\nevent: message\r\n" + chunk(content="a", completion=1)
            .replace(b"\n\n", b"\r\n\r\n") + b"data: [DONE]\r\n\r\n")
    record = run([(body, 7)])
    assert record.ok, record.error
    assert record.chunk_ns == [7]


@pytest.mark.parametrize(("body", "kind", "text"), [
    (chunk(content="a", completion=1), "no_done", "without data: [DONE]"),
    (chunk(content="a", completion=1) + b'data: {"choi', "no_done", "mid-event"),
    (b'data: {"choices": [oops]}\n\n' + DONE, "malformed", "malformed JSON"),
    (b"hello world\n\n" + DONE, "malformed", "malformed SSE"),
    (b"data: [1, 2]\n\n" + DONE, "malformed", "not a JSON object"),
    (event({"error": {"object": "error", "message": "queue full", "type": "SERVICE_UNAVAILABLE",
                      "param": None, "code": 503}}) + USAGE + DONE,
     "stream_error", "queue full (code 503)"),
    (chunk(content="a", completion=1) + chunk(finish="abort", completion=1) + DONE,
     "aborted", "abort"),
])
def test_failures_are_recorded_with_their_kind(body: bytes, kind: str, text: str) -> None:
    record = run([(body, 1)])
    assert record.outcome == FAILED
    assert record.extra["error_kind"] == kind
    assert text in (record.error or "")


def test_error_payload_keeps_usage_and_first_error_wins() -> None:
    err = event({"error": {"message": "first", "code": 500}})
    record = run([(chunk(content="a", completion=1) + err
                   + event({"error": {"message": "second"}}) + USAGE + DONE, 1)])
    assert record.error == "error in stream: first (code 500)"
    assert record.completion_tokens == 6
    assert record.chunk_ns == [1]


def test_data_after_done_is_ignored() -> None:
    record = run([(DONE + b"garbage\n\n", 1)])
    assert record.outcome == OK


def test_http_error_text_keeps_the_server_message() -> None:
    body = json.dumps({"object": "error", "message": "prompt too long", "type": "BadRequestError",
                       "param": None, "code": 400}).encode()
    assert _http_error_text(400, body) == "HTTP 400: prompt too long (code 400)"
    nested = json.dumps({"error": {"message": "bad key", "type": "auth"}}).encode()
    assert _http_error_text(401, nested) == "HTTP 401: bad key (code auth)"
    assert _http_error_text(502, b"<html>Bad Gateway</html>") == "HTTP 502: <html>Bad Gateway</html>"


def test_prepare_serialises_the_sglang_fields() -> None:
    client = StreamingClient("http://127.0.0.1:1/", concurrency=2, model="glm")
    prepared = client.prepare([{"role": "user", "content": "hi"}], max_tokens=7, temperature=0.3,
                              extra_body={"top_p": 1.0, "glmperf_script": {"ttft_s": 0.1}})
    body = json.loads(prepared.body)
    assert body == {
        "messages": [{"role": "user", "content": "hi"}], "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "max_tokens": 7, "ignore_eos": True, "temperature": 0.3, "model": "glm",
        "top_p": 1.0, "glmperf_script": {"ttft_s": 0.1}}
    assert prepared.max_tokens == 7


def test_repr_redacts_the_api_key() -> None:
    client = StreamingClient("http://h:1", concurrency=1, api_key="sk-secret-123")
    assert "sk-secret" not in repr(client)
    assert "***" in repr(client)


@pytest.mark.parametrize("kwargs", [
    {"concurrency": 0}, {"concurrency": 1, "time_scale": 0}, {"concurrency": 1, "request_timeout_s": -1},
    *({"concurrency": 1, name: value}
      for name in ("time_scale", "request_timeout_s", "connect_timeout_s", "first_token_timeout_s",
                   "stall_timeout_s")
      for value in (0, -1.0, math.nan, math.inf)),
    {"concurrency": 1, "stall_timeout_s": "80"}])
def test_bad_settings_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        StreamingClient("http://h:1", **kwargs)  # type: ignore[arg-type]


def test_the_first_token_and_stall_limits_are_off_unless_set() -> None:
    assert StreamingClient("http://h:1", concurrency=1).first_token_timeout_s is None
    client = StreamingClient("http://h:1", concurrency=1, time_scale=10, first_token_timeout_s=360,
                             stall_timeout_s=80.5)
    assert (client.first_token_timeout_s, client.stall_timeout_s) == (360, 80.5)
