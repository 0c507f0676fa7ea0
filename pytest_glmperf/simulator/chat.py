"""``POST /v1/chat/completions``: validate, then stream (or collect) from the engine or a script.

:class:`ChatCompletions` is mixed into :class:`~.app.SimulatorApp`; the attributes it
declares are the app state it uses. SGLang's chunk sequence is role, reasoning...,
content..., finish, usage, ``[DONE]``; faults due at a chunk are applied before it.
The response writers here take the chunk bytes from a wire format (sse.py), so the
text-completion endpoints (completions.py) reuse them unchanged.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .asgi import HTTPError, Receive, Scope, Send, header, read_body, respond_json
from .config import EngineConfig
from .driver import Driver, EngineSource, Pacer, ReasoningSplit, RequestStream
from .engine import QueueFullError, RequestAborted
from .faults import (
    Fault,
    FaultBoard,
    FaultSpecError,
    ScriptError,
    ScriptSource,
    StreamFaults,
    error_type,
    script_faults,
    validate_script,
)
from .metrics import SendLog
from .options import SimOptions
from .params import RequestParams, parse_chat
from .sse import DONE, ChunkFormat, SSEWriter, WireFormat
from .tokenizer import (
    Tokenized,
    apply_chat_template,
    count_tokens,
    output_text,
    tokenize_async,
    tokenize_ids,
)
from .types import SimRequest, TokenEmission

__all__ = ["ChatCompletions", "FormatFactory", "StreamCtx"]

Source = EngineSource | ScriptSource
# Builds a request's wire format once its prompt length is known.
FormatFactory = Callable[[RequestParams, int], WireFormat]


@dataclass
class StreamCtx:
    """Everything one response writer needs."""

    params: RequestParams
    fmt: WireFormat
    source: Source
    faults: StreamFaults
    max_new_tokens: int | None
    finish_reason: str | None = None
    completion: int = 0
    reasoning: int = 0
    chunks: int = 0
    reasoning_text: list[str] = field(default_factory=list)
    content_text: list[str] = field(default_factory=list)

    def final_reason(self) -> str:
        if self.finish_reason:
            return self.finish_reason
        limit = self.max_new_tokens
        return "length" if limit is not None and self.completion >= limit else "stop"


class ChatCompletions:
    """The chat endpoint and its response writers (SSE and non-streaming)."""

    # app state this endpoint uses (set by SimulatorApp.__init__ and startup)
    options: SimOptions
    config: EngineConfig
    board: FaultBoard
    pacer: Pacer
    sends: SendLog
    driver: Driver | None
    stopping: bool
    _scripts: set[ScriptSource]
    _served_name: Callable[[], str]
    crash: Callable[[str], None]

    # -- chat completions ---------------------------------------------------------------------
    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Validate, then stream (or collect) from the engine or from a script."""
        body = await self._json_body(scope, receive)
        params = parse_chat(body, self._served_name(), bool(self.config.reasoning_parser),
                            self.config.stream_response_default_include_usage)
        await self._serve(scope, receive, send, params, self._chat_format)

    def _chat_format(self, params: RequestParams, prompt_tokens: int) -> WireFormat:
        return ChunkFormat(params.rid, params.model, prompt_tokens, self._cache_report())

    # -- shared by every generation endpoint ----------------------------------------------------
    @staticmethod
    async def _json_body(scope: Scope, receive: Receive) -> Any:
        """The request's JSON body; a non-JSON content type or body is a 400, as in SGLang."""
        ctype = header(scope, b"content-type") or ""
        raw = await read_body(receive)
        if "json" not in ctype.lower():
            raise HTTPError(400, f"Content-Type must be application/json, got {ctype!r}",
                            "Bad Request")
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"invalid JSON body: {exc}", "Bad Request") from None

    async def _serve(self, scope: Scope, receive: Receive, send: Send, params: RequestParams,
                     make_fmt: FormatFactory) -> None:
        """Apply the request's faults, then answer from a script or from the engine."""
        try:
            faults = self.board.for_request(header(scope, b"x-glmperf-fault"))
        except FaultSpecError as exc:
            raise HTTPError(400, f"x-glmperf-fault: {exc}", "Bad Request") from None
        if faults.queue_full is not None:
            fault = faults.queue_full
            raise HTTPError(fault.code, fault.error_message(), error_type(fault.code))
        if params.script is not None:
            await self._scripted(params, faults, receive, send, make_fmt)
        else:
            await self._from_engine(params, faults, receive, send, make_fmt)

    def _cache_report(self) -> bool:
        return self.config.enable_cache_report

    @staticmethod
    def _prompt_text(params: RequestParams) -> str | list[int]:
        """What the engine tokenizes: the chat template's output, or the raw prompt."""
        if params.prompt is not None:
            return params.prompt
        return apply_chat_template(params.messages, params.tools, params.thinking)

    async def _tokenize(self, params: RequestParams) -> Tokenized:
        prompt = self._prompt_text(params)
        page_size = self.config.page_size
        if isinstance(prompt, list):
            return tokenize_ids(prompt, page_size)
        return await tokenize_async(prompt, page_size)

    async def _scripted(self, params: RequestParams, faults: StreamFaults, receive: Receive,
                        send: Send, make_fmt: FormatFactory) -> None:
        try:
            script = validate_script(params.script or {})
        except ScriptError as exc:
            raise HTTPError(400, str(exc), "Bad Request") from None
        t0 = time.perf_counter_ns()
        prompt = script.get("prompt_tokens")
        if prompt is None:
            text = self._prompt_text(params)
            prompt = len(text) if isinstance(text, list) else count_tokens(text)
        fmt = make_fmt(params, int(prompt))
        fmt.cached_tokens = int(script.get("cached_tokens") or 0)
        for fault in script_faults(script):
            faults.pending.append(fault)
        faults.pending.sort(key=lambda f: f.after)
        source = ScriptSource(script, t0, self.options.time_scale, self.pacer)
        ctx = StreamCtx(params, fmt, source, faults, params.max_new_tokens,
                        finish_reason=script.get("finish_reason"))
        self._scripts.add(source)
        try:
            await self._respond_stream(ctx, receive, send, abort=source.abort)
        finally:
            self._scripts.discard(source)

    async def _from_engine(self, params: RequestParams, faults: StreamFaults, receive: Receive,
                           send: Send, make_fmt: FormatFactory) -> None:
        driver = self.driver
        assert driver is not None
        tok = await self._tokenize(params)
        fmt = make_fmt(params, tok.num_tokens)
        if params.rid in driver.streams:
            raise HTTPError(400, f"request id {params.rid!r} is already running")
        max_new = params.max_new_tokens
        if max_new is None:  # SGLang: unbounded, i.e. up to the context length
            max_new = max(1, self.config.resolved_context_length - tok.num_tokens)
        request = SimRequest(rid=params.rid, prompt_tokens=tok.num_tokens,
                             max_new_tokens=max_new, page_keys=tok.page_keys)
        try:
            stream = await self._admit(params, request)
        except QueueFullError as exc:  # SGLang aborts it with 503, in-band under HTTP 200
            await self._rejected_in_band(params, fmt, faults, receive, send, str(exc))
            return
        except RequestAborted as exc:   # in-band on a stream, an HTTP error otherwise
            if not params.stream:
                raise HTTPError(exc.code, str(exc), "BadRequestError" if exc.code == 400
                                else "InternalServerError") from None
            await self._rejected_in_band(params, fmt, faults, receive, send, str(exc), exc.code)
            return
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        max_new = request.max_new_tokens    # a PD prefill worker generates one token
        budget = int(max_new * self.options.reasoning_share) if (
            params.thinking and params.separate_reasoning) else 0
        split = ReasoningSplit(min(budget, max(0, max_new - 1)), params.stream_reasoning)

        def abort() -> None:
            driver.abort(params.rid)

        def on_first(emission: TokenEmission) -> None:
            fmt.cached_tokens = emission.cached_tokens

        source = EngineSource(stream, split, on_first, abort, self.config.stream_interval)
        ctx = StreamCtx(params, fmt, source, faults, max_new)
        try:
            await self._respond_stream(ctx, receive, send, abort=abort)
        finally:
            abort()

    async def _admit(self, params: RequestParams, request: SimRequest) -> RequestStream:
        """Hand the request to the pacing driver (a PD worker first does its part of the KV
        handshake: ``disaggregation_http.py``)."""
        assert self.driver is not None
        return self.driver.submit(request)

    async def _rejected_in_band(self, params: RequestParams, fmt: WireFormat,
                                faults: StreamFaults, receive: Receive, send: Send,
                                message: str, code: int = 503) -> None:
        """A request the scheduler refuses at once: error payload as its first output."""
        faults.pending.insert(0, Fault("mid_stream_error", after=0, code=code, message=message))
        source = ScriptSource({}, time.perf_counter_ns(), 1.0, self.pacer)
        ctx = StreamCtx(params, fmt, source, faults, params.max_new_tokens)
        await self._respond_stream(ctx, receive, send, abort=source.abort)

    async def _respond_stream(self, ctx: StreamCtx, receive: Receive, send: Send,
                              abort: Callable[[], None]) -> None:
        """Run the writer while watching for the client going away (then abort)."""
        watcher = asyncio.get_running_loop().create_task(self._watch_disconnect(receive, abort))
        try:
            if ctx.params.stream:
                await self._write_sse(ctx, SSEWriter(send, self.sends.open(ctx.params.rid)))
            else:
                await self._write_json(ctx, send)
        finally:
            watcher.cancel()

    @staticmethod
    async def _watch_disconnect(receive: Receive, abort: Callable[[], None]) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                abort()
                return

    # -- SSE writer ----------------------------------------------------------------------------
    async def _write_sse(self, ctx: StreamCtx, w: SSEWriter) -> None:
        """SGLang's chunk sequence: role, reasoning..., content..., finish, usage, [DONE]."""
        fmt, faults, events = ctx.fmt, ctx.faults, []
        first = True
        while True:
            batch = await ctx.source.next()
            if batch is None or self.stopping:  # aborted: client gone, or shutting down
                failure = None if self.stopping else _failure(ctx.source)
                if failure is not None:   # the server aborted it: SGLang's in-band error
                    await self._fire(ctx, w, events, [failure])
                    return
                await w.flush(events, more=False)
                return
            parts, finished = batch
            if first:
                opening = fmt.opening()
                if opening is not None:
                    events.append(("role", opening, 0))
                first = False
            for i, (reasoning, tokens) in enumerate(parts):
                if await self._fire(ctx, w, events, faults.due(ctx.chunks)):
                    return
                last = finished and i == len(parts) - 1
                events.append(self._token_event(ctx, reasoning, tokens, last))
            if finished:
                if await self._fire(ctx, w, events, faults.due(ctx.chunks)):
                    return
                closing = fmt.closing(ctx.final_reason())
                if closing is not None:
                    events.append(("finish", closing, 0))
                self._end_events(ctx, events)
                await w.flush(events, more=False)
                return
            await w.flush(events)

    def _token_event(self, ctx: StreamCtx, reasoning: bool, tokens: int,
                     last: bool) -> tuple[str, bytes, int]:
        start = ctx.completion
        ctx.completion += tokens
        ctx.chunks += 1
        if reasoning:
            ctx.reasoning += tokens
        usage = ctx.fmt.usage(ctx.completion, ctx.reasoning) if ctx.params.continuous_usage else None
        finish = ctx.final_reason() if last else None
        return ("reasoning" if reasoning else "content",
                ctx.fmt.token(reasoning, start, tokens, usage, finish), tokens)

    @staticmethod
    def _end_events(ctx: StreamCtx, events: list[tuple[str, bytes, int]]) -> None:
        if ctx.params.include_usage:
            events.append(("usage", ctx.fmt.usage_chunk(ctx.completion, ctx.reasoning), 0))
        events.append(("done", DONE, 0))

    async def _fire(self, ctx: StreamCtx, w: SSEWriter, events: list[tuple[str, bytes, int]],
                    fired: list[Fault]) -> bool:
        """Apply due faults to a stream; True when the stream is over."""
        for fault in fired:
            if fault.kind == "malformed":
                events.append(("malformed", ctx.fmt.malformed(), 0))
            elif fault.kind == "stall":
                await w.flush(events)
                stall_ns = round(fault.seconds / self.options.time_scale * 1e9)
                await self.pacer.until(time.perf_counter_ns() + stall_ns)
                ctx.source.shift(stall_ns)
            elif fault.kind == "mid_stream_error":
                ctx.source.abort()
                events.append(("error", ctx.fmt.error(fault.code, fault.error_message()), 0))
                self._end_events(ctx, events)
                await w.flush(events, more=False)
                return True
            elif fault.kind == "truncate":
                ctx.source.abort()
                await w.flush(events, more=False)
                return True
            elif fault.kind == "crash":
                await w.flush(events)
                self.crash(f"request {ctx.params.rid}")
        return False

    # -- non-streaming --------------------------------------------------------------------------
    async def _write_json(self, ctx: StreamCtx, send: Send) -> None:
        """Collect the whole answer, then the format's response object (or an error status)."""
        while True:
            batch = await ctx.source.next()
            if batch is None:
                failure = _failure(ctx.source)
                if failure is not None:
                    raise HTTPError(failure.code, failure.error_message(), str(failure.code))
                return
            parts, finished = batch
            for reasoning, tokens in parts:
                for fault in ctx.faults.due(ctx.chunks):
                    if fault.kind == "stall":
                        await self.pacer.until(time.perf_counter_ns() + round(
                            fault.seconds / self.options.time_scale * 1e9))
                    elif fault.kind == "crash":
                        self.crash(f"request {ctx.params.rid}")
                    elif fault.kind == "mid_stream_error":
                        ctx.source.abort()
                        raise HTTPError(fault.code, fault.error_message(), str(fault.code))
                text = output_text(ctx.completion, tokens)
                (ctx.reasoning_text if reasoning else ctx.content_text).append(text)
                ctx.completion += tokens
                ctx.chunks += 1
                ctx.reasoning += tokens if reasoning else 0
            if finished:
                await respond_json(send, ctx.fmt.response(
                    "".join(ctx.content_text), "".join(ctx.reasoning_text), ctx.final_reason(),
                    ctx.completion, ctx.reasoning))
                return


def _failure(source: Source) -> Fault | None:
    """The error a server-side abort of the request answers (a failed PD transfer)."""
    failure = source.failure if isinstance(source, EngineSource) else None
    if failure is None:
        return None
    code, message = failure
    return Fault("mid_stream_error", after=0, code=code, message=message)
