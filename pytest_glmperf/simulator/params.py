"""What a generation request asks for, validated as SGLang does (400, not 422).

Three bodies lead to the same engine request: ``/v1/chat/completions`` (messages through the
chat template, reasoning split), ``/v1/completions`` (a raw prompt: text or token ids, no
reasoning, ``max_tokens`` 16 by default) and SGLang's native ``/generate`` (``text`` or
``input_ids`` with ``sampling_params.max_new_tokens``, 128 by default).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .asgi import HTTPError

__all__ = ["RequestParams", "parse_chat", "parse_completion", "parse_generate"]


@dataclass
class RequestParams:
    """What the simulator needs from a request body, validated."""

    rid: str
    model: str
    messages: list[dict[str, Any]]
    tools: list[Any] | None
    stream: bool
    include_usage: bool
    continuous_usage: bool
    max_new_tokens: int | None
    thinking: bool
    separate_reasoning: bool
    stream_reasoning: bool
    script: dict[str, Any] | None
    prompt: str | list[int] | None = None   # raw prompt (completions, /generate)
    # PD disaggregation: what SGLang's router adds (disaggregation_http.py)
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None
    bootstrap_room: int | None = None


def _opt_int(body: dict[str, Any], key: str, minimum: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HTTPError(400, f"{key}: input should be a valid integer", "Bad Request")
    if value < minimum:
        raise HTTPError(400, f"{key} must be at least {minimum}, got {value}", "Bad Request")
    return value


def _thinking(body: dict[str, Any]) -> bool:
    """GLM thinks unless chat_template_kwargs.enable_thinking is false or effort is "none"."""
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise HTTPError(400, "chat_template_kwargs must be an object", "Bad Request")
    if "enable_thinking" in kwargs:
        return bool(kwargs["enable_thinking"])
    if "thinking" in kwargs:
        return bool(kwargs["thinking"])
    return body.get("reasoning_effort") != "none"


def parse_chat(body: Any, served_model: str, has_reasoning_parser: bool,
               default_include_usage: bool = False) -> RequestParams:
    """Validate a chat request the way SGLang's protocol model does (400, not 422).

    ``default_include_usage``: ``--stream-response-default-include-usage`` (a usage chunk
    even when the request does not ask for one)."""
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object", "Bad Request")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or \
            not all(isinstance(m, dict) for m in messages):
        raise HTTPError(400, "messages: field required (a non-empty list of objects)",
                        "Bad Request")
    if body.get("n") not in (None, 1):
        raise HTTPError(400, "the simulator supports n=1 only", "Bad Request")
    stream_options = _stream_options(body)
    max_new = _opt_int(body, "max_completion_tokens", 1)
    if max_new is None:
        max_new = _opt_int(body, "max_tokens", 1)
    return _with_bootstrap(body, RequestParams(
        rid=_rid(body),
        model=str(body.get("model") or served_model),
        messages=messages,
        tools=body.get("tools") or None,
        stream=bool(body.get("stream", False)),
        include_usage=bool(stream_options.get("include_usage", False)) or default_include_usage,
        continuous_usage=bool(stream_options.get("continuous_usage_stats", False)),
        max_new_tokens=max_new,
        thinking=_thinking(body),
        separate_reasoning=has_reasoning_parser and bool(body.get("separate_reasoning", True)),
        stream_reasoning=bool(body.get("stream_reasoning", True)),
        script=_script(body),
    ))


def _single_prompt(value: Any, key: str) -> str | list[int]:
    """One prompt: text or token ids, or a batch of exactly one of them."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value):
        return list(value)
    if isinstance(value, list) and len(value) > 1 and all(isinstance(v, str | list) for v in value):
        raise HTTPError(400, f"{key}: the simulator serves one prompt per request, got a batch "
                             f"of {len(value)}", "Bad Request")
    raise HTTPError(400, f"{key}: field required (a string or a non-empty list of token ids)",
                    "Bad Request")


def _rid(body: dict[str, Any]) -> str:
    rid = body.get("rid")
    return str(rid) if rid else uuid.uuid4().hex


def _script(body: dict[str, Any]) -> dict[str, Any] | None:
    script = body.get("glmperf_script")
    if script is not None and not isinstance(script, dict):
        raise HTTPError(400, "glmperf_script must be an object", "Bad Request")
    return script


def _stream_options(body: dict[str, Any]) -> dict[str, Any]:
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise HTTPError(400, "stream_options must be an object", "Bad Request")
    return options


def parse_completion(body: Any, served_model: str,
                     default_include_usage: bool = False) -> RequestParams:
    """``/v1/completions``: a raw prompt, no chat template and no reasoning split."""
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object", "Bad Request")
    if body.get("n") not in (None, 1):
        raise HTTPError(400, "the simulator supports n=1 only", "Bad Request")
    prompt = _single_prompt(body.get("prompt"), "prompt")
    max_new = _opt_int(body, "max_tokens", 1)
    options = _stream_options(body)
    return _with_bootstrap(body, RequestParams(
        rid=_rid(body), model=str(body.get("model") or served_model),
        messages=[], tools=None, stream=bool(body.get("stream", False)),
        include_usage=bool(options.get("include_usage", False)) or default_include_usage,
        continuous_usage=bool(options.get("continuous_usage_stats", False)),
        max_new_tokens=16 if max_new is None else max_new,   # CompletionRequest.max_tokens
        thinking=False, separate_reasoning=False, stream_reasoning=True,
        script=_script(body), prompt=prompt))


def parse_generate(body: Any, served_model: str) -> RequestParams:
    """SGLang's native ``/generate``: ``text`` or ``input_ids`` plus ``sampling_params``."""
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object", "Bad Request")
    if (body.get("text") is None) == (body.get("input_ids") is None):
        raise HTTPError(400, "Either text or input_ids should be provided (exactly one).",
                        "Bad Request")
    key = "text" if body.get("text") is not None else "input_ids"
    prompt = _single_prompt(body[key], key)
    if (key == "text") != isinstance(prompt, str):
        raise HTTPError(400, "text must be a string and input_ids a list of token ids",
                        "Bad Request")
    sampling = body.get("sampling_params") or {}
    if not isinstance(sampling, dict):
        raise HTTPError(400, "sampling_params must be an object (one request per call)",
                        "Bad Request")
    max_new = _opt_int(sampling, "max_new_tokens", 1)
    return _with_bootstrap(body, RequestParams(
        rid=_rid(body), model=served_model, messages=[], tools=None,
        stream=bool(body.get("stream", False)), include_usage=False, continuous_usage=False,
        max_new_tokens=128 if max_new is None else max_new,   # SamplingParams.max_new_tokens
        thinking=False, separate_reasoning=False, stream_reasoning=True,
        script=_script(body), prompt=prompt))


def _with_bootstrap(body: dict[str, Any], params: RequestParams) -> RequestParams:
    """The PD fields SGLang's router adds to every body (``bootstrap_host``, ``bootstrap_port``,
    ``bootstrap_room``; io_struct.GenerateReqInput, protocol.py), each a value or a batch of
    one. ``bootstrap_port`` may be null: the server's own --disaggregation-bootstrap-port."""
    host = _one(body, "bootstrap_host")
    port = _one(body, "bootstrap_port")
    room = _one(body, "bootstrap_room")
    if host is not None and not isinstance(host, str):
        raise HTTPError(400, "bootstrap_host: input should be a valid string", "Bad Request")
    for key, value in (("bootstrap_port", port), ("bootstrap_room", room)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise HTTPError(400, f"{key}: input should be a non-negative integer", "Bad Request")
    params.bootstrap_host, params.bootstrap_port, params.bootstrap_room = host, port, room
    return params


def _one(body: dict[str, Any], key: str) -> Any:
    value = body.get(key)
    if isinstance(value, list):
        if len(value) != 1:
            raise HTTPError(400, f"{key}: the simulator serves one prompt per request, got a batch "
                                 f"of {len(value)}", "Bad Request")
        return value[0]
    return value
