"""What a ``/v1/chat/completions`` body asks for, validated as SGLang does (400, not 422)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from .asgi import HTTPError

__all__ = ["ChatParams", "parse_chat"]


@dataclass
class ChatParams:
    """What the simulator needs from a /v1/chat/completions body, validated."""

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


def parse_chat(body: Any, served_model: str, has_reasoning_parser: bool) -> ChatParams:
    """Validate a chat request the way SGLang's protocol model does (400, not 422)."""
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object", "Bad Request")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or \
            not all(isinstance(m, dict) for m in messages):
        raise HTTPError(400, "messages: field required (a non-empty list of objects)",
                        "Bad Request")
    if body.get("n") not in (None, 1):
        raise HTTPError(400, "the simulator supports n=1 only", "Bad Request")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise HTTPError(400, "stream_options must be an object", "Bad Request")
    max_new = _opt_int(body, "max_completion_tokens", 1)
    if max_new is None:
        max_new = _opt_int(body, "max_tokens", 1)
    script = body.get("glmperf_script")
    if script is not None and not isinstance(script, dict):
        raise HTTPError(400, "glmperf_script must be an object", "Bad Request")
    rid = body.get("rid")
    return ChatParams(
        rid=str(rid) if rid else uuid.uuid4().hex,
        model=str(body.get("model") or served_model),
        messages=messages,
        tools=body.get("tools") or None,
        stream=bool(body.get("stream", False)),
        include_usage=bool(stream_options.get("include_usage", False)),
        continuous_usage=bool(stream_options.get("continuous_usage_stats", False)),
        max_new_tokens=max_new,
        thinking=_thinking(body),
        separate_reasoning=has_reasoning_parser and bool(body.get("separate_reasoning", True)),
        stream_reasoning=bool(body.get("stream_reasoning", True)),
        script=script,
    )

