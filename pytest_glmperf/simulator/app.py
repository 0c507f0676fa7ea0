"""The simulator's HTTP layer: a raw ASGI app that speaks SGLang's API (sglang-facts.md 2, 3).

Why raw ASGI rather than a framework: the streaming path must write many thousands of SSE
chunks per second on one core, so each chunk is a pre-built byte string sent with one ASGI
message; the small JSON endpoints do not need more either.

Endpoints: ``POST /v1/chat/completions`` (streaming and not), ``GET /v1/models[/{id}]``,
``GET /health``, ``GET /health_generate`` (503 while starting), ``GET /ping``,
``GET /server_info`` and ``/get_server_info``, ``GET /model_info`` and ``/get_model_info``,
``GET|POST /flush_cache`` (400 unless idle), ``GET /metrics`` (404 without
``--enable-metrics``). Simulator extensions: ``GET|POST|DELETE /glmperf/faults`` (server-wide
fault injection, see faults.py) and ``GET /glmperf/sends/{rid}`` (the true send instant of
every chunk of a request, ``perf_counter_ns`` taken right after the write).

A request body may carry ``glmperf_script`` (an SGLang-style extension field) to bypass the
engine and emit exactly the scripted stream; times are model seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .config import EngineConfig, parse_server_args, server_args_dict
from .driver import Driver, EngineSource, Pacer, ReasoningSplit
from .engine import Engine, QueueFullError
from .faults import (
    Fault,
    FaultBoard,
    FaultSpecError,
    ScriptError,
    ScriptSource,
    StreamFaults,
    error_type,
    parse_faults,
    script_faults,
    validate_script,
)
from .metrics import (
    LatencyHistograms,
    MetricSources,
    SendLog,
    SendRecord,
    SimHealth,
    build_registry,
    render,
)
from .tokenizer import apply_chat_template, count_tokens, output_text, tokenize_async
from .types import SimRequest, TokenEmission

log = logging.getLogger("glmperf.sim")

try:  # the package version (the parent package is imported anyway)
    from .. import __version__ as _PKG_VERSION
except ImportError:  # pragma: no cover
    _PKG_VERSION = "0.0.0"
VERSION = f"{_PKG_VERSION}+glmperf.sim"
EOS_TOKEN_ID = 154820          # matched_stop when a stream ends early ("stop"); placeholder id
CRASH_EXIT_CODE = 1

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


# -- options ---------------------------------------------------------------------------------

@dataclass
class SimOptions:
    """Settings of the HTTP layer (the engine's come from SGLang flags via EngineConfig)."""

    host: str = "127.0.0.1"
    port: int = 30000
    time_scale: float = 10.0
    faults: list[Fault] = field(default_factory=list)
    crash_after_s: float | None = None
    slow_start_s: float = 0.0
    reasoning_share: float = 0.25
    spin_ns: int = 1_000_000
    lag_warn_s: float = 0.1
    keep_sends: int = 1024
    seed: int = 0


class _Parser(argparse.ArgumentParser):
    """argparse that raises ValueError instead of exiting, so create_app() can be called from
    Python; the command line turns it into exit status 2 all the same."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)


def _http_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m pytest_glmperf.simulator", allow_abbrev=False,
        description="SGLang-compatible simulator. Other flags are SGLang launch_server flags.",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address. Default: %(default)s")
    p.add_argument("--port", type=int, default=30000, help="0 picks a free port. Default: 30000")
    p.add_argument("--time-scale", type=float, default=10.0,
                   help="model seconds per wall second. Default: %(default)s")
    p.add_argument("--sim-fault", action="append", default=[], metavar="SPEC",
                   help="server-wide fault, e.g. 'mid_stream_error:after=20,p=0.1' (repeatable)")
    p.add_argument("--sim-crash-after", type=float, default=None, metavar="S",
                   help="exit the process S model seconds after start")
    p.add_argument("--sim-slow-start", type=float, default=0.0, metavar="S",
                   help="/health_generate answers 503 for the first S model seconds")
    p.add_argument("--sim-reasoning-share", type=float, default=0.25, metavar="F",
                   help="share of output tokens sent as reasoning_content when thinking")
    p.add_argument("--sim-timer-spin-ms", type=float, default=1.0, metavar="MS",
                   help="busy-wait this long before each send deadline for precision")
    p.add_argument("--sim-lag-warn", type=float, default=0.1, metavar="S",
                   help="warn when a step is delivered more than S model seconds late")
    p.add_argument("--sim-keep-sends", type=int, default=1024, metavar="N",
                   help="requests whose chunk send stamps are kept for /glmperf/sends")
    return p


def parse_args(argv: list[str]) -> tuple[SimOptions, EngineConfig]:
    """Split the command line into HTTP-layer options and the engine's SGLang flags.

    Raises ValueError naming the bad flag or value.
    """
    ns, rest = _http_parser().parse_known_args(argv)
    if ns.time_scale <= 0:
        raise ValueError(f"--time-scale must be > 0, got {ns.time_scale}")
    if not 0.0 <= ns.sim_reasoning_share <= 1.0:
        raise ValueError(f"--sim-reasoning-share must be within [0, 1], got {ns.sim_reasoning_share}")
    try:
        faults = parse_faults(ns.sim_fault)
    except FaultSpecError as exc:
        raise ValueError(f"--sim-fault: {exc}") from None
    config = parse_server_args([*rest, "--host", ns.host])
    opts = SimOptions(
        host=ns.host, port=ns.port, time_scale=ns.time_scale, faults=faults,
        crash_after_s=ns.sim_crash_after, slow_start_s=max(0.0, ns.sim_slow_start),
        reasoning_share=ns.sim_reasoning_share, spin_ns=int(ns.sim_timer_spin_ms * 1e6),
        lag_warn_s=ns.sim_lag_warn, keep_sends=max(0, ns.sim_keep_sends),
        seed=config.seed,
    )
    return opts, config


# -- small ASGI helpers ------------------------------------------------------------------------

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


# -- the request ------------------------------------------------------------------------------

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


# -- chunk bytes ------------------------------------------------------------------------------

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


# -- one streamed response --------------------------------------------------------------------

Source = EngineSource | ScriptSource


@dataclass
class StreamCtx:
    """Everything one response writer needs."""

    params: ChatParams
    fmt: ChunkFormat
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


class SimulatorApp:
    """The ASGI application: one engine, one pacing driver, SGLang's endpoints."""

    def __init__(self, options: SimOptions, config: EngineConfig, engine: Any = None) -> None:
        self.options = options
        self.config = config
        if engine is None:
            engine = Engine(config, seed=options.seed)
        self.engine = engine
        self.latency = LatencyHistograms()
        self.health = SimHealth(time_scale=options.time_scale)
        self.pacer = Pacer(options.spin_ns)
        self.board = FaultBoard(options.faults, seed=options.seed)
        self.sends = SendLog(options.keep_sends)
        self.driver: Driver | None = None
        self.registry = build_registry(MetricSources(
            model_name=self._served_name(), tp_size=config.tp_size,
            hierarchical=config.enable_hierarchical_cache,
            page_size=config.page_size,
            context_len=config.resolved_context_length,
            counters=lambda: self.engine.counters, gauges=lambda: self.engine.gauges,
            latency=self.latency, health=self.health,
        ))
        self.ready_at_s = 0.0
        self.stopping = False
        self._scripts: set[ScriptSource] = set()
        self.crash_at_s: float | None = None
        self._crash_timer: asyncio.TimerHandle | None = None
        self._routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("GET", "/v1/models"): self.models,
            ("GET", "/health"): self.health_check,
            ("GET", "/health_generate"): self.health_check,
            ("GET", "/ping"): self.ping,
            ("GET", "/server_info"): self.server_info,
            ("GET", "/get_server_info"): self.server_info,
            ("GET", "/model_info"): self.model_info,
            ("GET", "/get_model_info"): self.model_info,
            ("GET", "/flush_cache"): self.flush_cache,
            ("POST", "/flush_cache"): self.flush_cache,
            ("GET", "/metrics"): self.metrics,
            ("GET", "/glmperf/faults"): self.faults_get,
            ("POST", "/glmperf/faults"): self.faults_set,
            ("DELETE", "/glmperf/faults"): self.faults_clear,
        }

    def _served_name(self) -> str:
        return self.config.served_model_name or self.config.model_path

    # -- ASGI entry ---------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self.startup()
        path = scope["path"]
        handler = self._routes.get((scope["method"], path))
        try:
            if handler is not None:
                await handler(scope, receive, send)
            elif scope["method"] == "GET" and path.startswith("/glmperf/sends/"):
                await self.sends_get(send, path[len("/glmperf/sends/"):])
            elif scope["method"] == "GET" and path.startswith("/v1/models/"):
                await self.model_card(send, path[len("/v1/models/"):])
            else:
                await respond_json(send, {"detail": "Not Found"}, 404)
        except HTTPError as exc:
            await respond(send, exc.code, error_body(exc.message, exc.type, exc.code))
        except ConnectionResetError:
            return
        except Exception as exc:
            # Like SGLang: a 500 JSON error before the stream; once streaming has begun the
            # start message below is refused and the connection just drops (no [DONE]).
            log.exception("unhandled error in %s %s", scope["method"], path)
            with contextlib.suppress(RuntimeError):
                await respond(send, 500, error_body(f"{type(exc).__name__}: {exc}",
                                                    "InternalServerError", 500))

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def startup(self) -> None:
        """Start the pacing driver and the fault timers (idempotent)."""
        if self.driver is not None:
            return
        opts = self.options
        self.driver = Driver(self.engine, opts.time_scale, self.latency, self.health,
                             self.pacer, opts.lag_warn_s)
        self.driver.start()
        self.ready_at_s = self.driver.anchor_model_s + opts.slow_start_s
        if opts.crash_after_s is not None:
            self.schedule_crash(opts.crash_after_s)
        log.info("simulator up: model %s, time scale %g", self._served_name(), opts.time_scale)

    async def shutdown(self) -> None:
        """Stop the driver; open streams end."""
        self.stop_streams()
        if self.driver is not None:
            await self.driver.stop()

    def stop_streams(self) -> None:
        """Server going down: every open stream ends now, without [DONE]."""
        self.stopping = True
        if self.driver is not None:
            for rid in list(self.driver.streams):
                self.driver.abort(rid)
        for source in list(self._scripts):
            source.abort()

    def schedule_crash(self, after_s: float) -> None:
        """Exit the process *after_s* model seconds from now (server crash fault)."""
        assert self.driver is not None
        if self._crash_timer is not None:
            self._crash_timer.cancel()
        self.crash_at_s = self.driver.model_now() + after_s
        delay = max(0.0, after_s / self.options.time_scale)
        self._crash_timer = asyncio.get_running_loop().call_later(delay, self.crash, "timer")

    def crash(self, why: str) -> None:
        """The crash fault: die at once, as a killed server would (no graceful close)."""
        now = self.driver.model_now() if self.driver else 0.0
        print(f"glmperf-sim: simulated crash ({why}) at model time {now:.3f} s",
              file=sys.stderr, flush=True)
        os._exit(CRASH_EXIT_CODE)

    # -- small endpoints ----------------------------------------------------------------------
    async def health_check(self, scope: Scope, receive: Receive, send: Send) -> None:
        ready = self.driver is not None and self.driver.model_now() >= self.ready_at_s
        await respond(send, 200 if ready else 503, b"", b"text/plain; charset=utf-8")

    async def ping(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond(send, 200, b"", b"text/plain; charset=utf-8")

    def _card(self) -> dict[str, Any]:
        name = self._served_name()
        return {"id": name, "object": "model", "created": int(time.time()), "owned_by": "sglang",
                "root": name, "parent": None,
                "max_model_len": self.config.resolved_context_length}

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond_json(send, {"object": "list", "data": [self._card()]})

    async def model_card(self, send: Send, model_id: str) -> None:
        if model_id != self._served_name():
            raise HTTPError(404, f"The model `{model_id}` does not exist.", "NotFoundError")
        await respond_json(send, self._card())

    async def model_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = self.config.model_path
        await respond_json(send, {
            "model_path": path, "tokenizer_path": path, "is_generation": True,
            "preferred_sampling_params": None, "weight_version": "default",
            "has_image_understanding": False, "has_audio_understanding": False,
            "model_type": "glm_moe_dsa", "architectures": ["GlmMoeDsaForCausalLM"]})

    def server_info_dict(self) -> dict[str, Any]:
        """All server args, per-DP internal states, version, and the simulator's timing health."""
        args = server_args_dict(self.config)
        state = {**args, "last_gen_throughput": self.engine.gauges.gen_throughput,
                 **self.engine.internal_state()}
        driver = self.driver
        return {**args, "internal_states": [state], "version": VERSION,
                "sim_time_scale": self.options.time_scale,
                "sim_lag_s": self.health.lag_s, "sim_lag_max_s": self.health.lag_max_s,
                "sim_late_steps": self.health.late_steps,
                "sim_model_now_s": driver.model_now() if driver else 0.0,
                "sim_faults": self.board.specs(), "sim_crash_at_s": self.crash_at_s,
                "sim_ready_at_s": self.ready_at_s}

    async def server_info(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond_json(send, self.server_info_dict())

    async def flush_cache(self, scope: Scope, receive: Receive, send: Send) -> None:
        """200 only when fully idle, like SGLang; otherwise 400 and nothing is flushed."""
        text = b"text/plain; charset=utf-8"
        if (self.driver is not None and self.driver.busy()) or not self.engine.flush_cache():
            await respond(send, 400, b"Cache not flushed because there are pending requests. "
                                     b"(When there are running or waiting requests, the operation "
                                     b"will not be performed.)\n", text)
            return
        await respond(send, 200, b"Cache flushed.\nPlease check backend logs for more details. "
                                 b"(When there are running or waiting requests, the operation "
                                 b"will not be performed.)\n", text)

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.config.enable_metrics:
            await respond_json(send, {"detail": "Not Found"}, 404)
            return
        await respond(send, 200, render(self.registry), b"text/plain; version=0.0.4; charset=utf-8")

    # -- simulator admin ----------------------------------------------------------------------
    def _faults_state(self) -> dict[str, Any]:
        return {"faults": self.board.specs(), "crash_at_s": self.crash_at_s}

    async def faults_get(self, scope: Scope, receive: Receive, send: Send) -> None:
        await respond_json(send, self._faults_state())

    async def faults_set(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Body: {"faults": SPEC | [SPEC, ...] | null, "crash_after_s": S?}; replaces the list."""
        try:
            body = json.loads(await read_body(receive) or b"{}")
        except json.JSONDecodeError as exc:
            raise HTTPError(400, f"invalid JSON: {exc}", "Bad Request") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "body must be a JSON object", "Bad Request")
        try:
            if "faults" in body:
                self.board.replace(parse_faults(body["faults"]))
        except FaultSpecError as exc:
            raise HTTPError(400, str(exc), "Bad Request") from None
        crash = body.get("crash_after_s")
        if crash is not None:
            if isinstance(crash, bool) or not isinstance(crash, int | float) or crash < 0:
                raise HTTPError(400, "crash_after_s must be a non-negative number", "Bad Request")
            self.schedule_crash(float(crash))
        await respond_json(send, self._faults_state())

    async def faults_clear(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.board.replace([])
        await respond_json(send, self._faults_state())

    async def sends_get(self, send: Send, rid: str) -> None:
        record = self.sends.get(rid)
        if record is None:
            raise HTTPError(404, f"no send record for request {rid!r}", "NotFoundError")
        await respond_json(send, record.as_json(rid))

    # -- chat completions ---------------------------------------------------------------------
    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Validate, then stream (or collect) from the engine or from a script."""
        ctype = header(scope, b"content-type") or ""
        raw = await read_body(receive)
        if "json" not in ctype.lower():
            raise HTTPError(400, f"Content-Type must be application/json, got {ctype!r}",
                            "Bad Request")
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HTTPError(400, f"invalid JSON body: {exc}", "Bad Request") from None
        has_parser = bool(self.config.reasoning_parser)
        params = parse_chat(body, self._served_name(), has_parser)
        try:
            faults = self.board.for_request(header(scope, b"x-glmperf-fault"))
        except FaultSpecError as exc:
            raise HTTPError(400, f"x-glmperf-fault: {exc}", "Bad Request") from None
        if faults.queue_full is not None:
            fault = faults.queue_full
            raise HTTPError(fault.code, fault.error_message(), error_type(fault.code))
        if params.script is not None:
            await self._scripted(params, faults, receive, send)
        else:
            await self._from_engine(params, faults, receive, send)

    def _cache_report(self) -> bool:
        return self.config.enable_cache_report

    async def _scripted(self, params: ChatParams, faults: StreamFaults, receive: Receive,
                        send: Send) -> None:
        try:
            script = validate_script(params.script or {})
        except ScriptError as exc:
            raise HTTPError(400, str(exc), "Bad Request") from None
        t0 = time.perf_counter_ns()
        prompt = script.get("prompt_tokens")
        if prompt is None:
            prompt = count_tokens(apply_chat_template(params.messages, params.tools,
                                                      params.thinking))
        fmt = ChunkFormat(params.rid, params.model, int(prompt), self._cache_report())
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

    async def _from_engine(self, params: ChatParams, faults: StreamFaults, receive: Receive,
                           send: Send) -> None:
        driver = self.driver
        assert driver is not None
        prompt = apply_chat_template(params.messages, params.tools, params.thinking)
        page_size = self.config.page_size
        tok = await tokenize_async(prompt, page_size)
        fmt = ChunkFormat(params.rid, params.model, tok.num_tokens, self._cache_report())
        if params.rid in driver.streams:
            raise HTTPError(400, f"request id {params.rid!r} is already running")
        max_new = params.max_new_tokens
        if max_new is None:  # SGLang: unbounded, i.e. up to the context length
            max_new = max(1, self.config.resolved_context_length - tok.num_tokens)
        request = SimRequest(rid=params.rid, prompt_tokens=tok.num_tokens,
                             max_new_tokens=max_new, page_keys=tok.page_keys)
        try:
            stream = driver.submit(request)
        except QueueFullError as exc:  # SGLang aborts it with 503, in-band under HTTP 200
            await self._rejected_in_band(params, fmt, faults, receive, send, str(exc))
            return
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        budget = int(max_new * self.options.reasoning_share) if (
            params.thinking and params.separate_reasoning) else 0
        split = ReasoningSplit(min(budget, max(0, max_new - 1)), params.stream_reasoning)

        def abort() -> None:
            driver.abort(params.rid)

        def on_first(emission: TokenEmission) -> None:
            fmt.cached_tokens = emission.cached_tokens

        source = EngineSource(stream, split, on_first, abort)
        ctx = StreamCtx(params, fmt, source, faults, max_new)
        try:
            await self._respond_stream(ctx, receive, send, abort=abort)
        finally:
            abort()

    async def _rejected_in_band(self, params: ChatParams, fmt: ChunkFormat,
                                faults: StreamFaults, receive: Receive, send: Send,
                                message: str) -> None:
        """A request the scheduler refuses at once: error payload as its first output."""
        faults.pending.insert(0, Fault("mid_stream_error", after=0, code=503, message=message))
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
                await w.flush(events, more=False)
                return
            parts, finished = batch
            if first:
                events.append(("role", fmt.role(), 0))
                first = False
            for reasoning, tokens in parts:
                if await self._fire(ctx, w, events, faults.due(ctx.chunks)):
                    return
                events.append(self._token_event(ctx, reasoning, tokens))
            if finished:
                if await self._fire(ctx, w, events, faults.due(ctx.chunks)):
                    return
                events.append(("finish", fmt.finish(ctx.final_reason()), 0))
                self._end_events(ctx, events)
                await w.flush(events, more=False)
                return
            await w.flush(events)

    def _token_event(self, ctx: StreamCtx, reasoning: bool, tokens: int) -> tuple[str, bytes, int]:
        text = output_text(ctx.completion, tokens, json_escaped=True)
        ctx.completion += tokens
        ctx.chunks += 1
        if reasoning:
            ctx.reasoning += tokens
        usage = ctx.fmt.usage(ctx.completion, ctx.reasoning) if ctx.params.continuous_usage else None
        return ("reasoning" if reasoning else "content",
                ctx.fmt.token(reasoning, text, usage), tokens)

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
                events.append(("error", stream_error(fault.code, fault.error_message()), 0))
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
        """Collect the whole answer, then one chat.completion object (or an error status)."""
        while True:
            batch = await ctx.source.next()
            if batch is None:
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
                await respond_json(send, self._completion_object(ctx))
                return

    def _completion_object(self, ctx: StreamCtx) -> dict[str, Any]:
        fmt = ctx.fmt
        reason = ctx.final_reason()
        return {
            "id": ctx.params.rid, "object": "chat.completion", "created": int(time.time()),
            "model": ctx.params.model,
            "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "".join(ctx.content_text) or None,
                "reasoning_content": "".join(ctx.reasoning_text) or None, "tool_calls": None},
                "logprobs": None, "finish_reason": reason,
                "matched_stop": EOS_TOKEN_ID if reason == "stop" else None}],
            "usage": json.loads(fmt.usage(ctx.completion, ctx.reasoning)),
        }


def create_app(argv: list[str] | None = None) -> SimulatorApp:
    """Build the ASGI app from a command line (SGLang flags plus the simulator's own)."""
    options, config = parse_args(list(argv or []))
    return SimulatorApp(options, config)
