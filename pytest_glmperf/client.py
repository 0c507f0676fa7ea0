"""The streaming client: sends chat completions and fills one RequestRecord per request.

Timing is the whole point, so the network layer is instrumented rather than trusted:

* ``send_ns`` is stamped inside the socket write of the request's first bytes (a stamping
  httpcore network stream reads the request's probe from a context variable), so neither
  httpx's own set-up, a pool wait nor a connection (re)open counts in TTFT.
* every socket read stamps ``perf_counter_ns()`` the moment it returns; each SSE event is
  given the stamp of the read that completed it, before any parsing. Events that arrived in
  one read share its stamp, so parsing cost never leaks into the measured arrival times.
* bodies are serialised by :meth:`StreamingClient.prepare`, ahead of the send.

Per-request failures are recorded on the record, never raised (see ``ERROR_KINDS``).
Cancellation leaves the record filled as far as it got (``cancelled``) and re-raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import select
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from .records import FAILED, OK, RequestRecord

try:  # optional speed-up, identical results; the stdlib parser is the fallback
    from orjson import loads as _loads
except ImportError:  # pragma: no cover - depends on the environment
    from json import loads as _loads

__all__ = ["ERROR_KINDS", "PreparedRequest", "StreamingClient"]

#: ``record.extra["error_kind"]`` values, one per way a request can fail.
ERROR_KINDS = (
    "http_status",    # the server answered >= 400 before streaming (its message is kept)
    "connect",        # the connection could not be opened
    "timeout",        # connect/read timeout, or the whole-request deadline passed
    "dropped",        # the connection broke mid-stream
    "stream_error",   # an {"error": ...} payload inside the stream (even under HTTP 200)
    "malformed",      # an SSE event that is not `data: <json object>`
    "no_done",        # the stream ended without `data: [DONE]`
    "aborted",        # the server finished the request with finish_reason "abort"
    "cancelled",      # the caller cancelled the request (Ctrl-C, level end)
    "client_error",   # a bug or misuse on our side; the message says what
)

CHAT_PATH = "/v1/chat/completions"
_SPARE_CONNECTIONS = 4          # metadata calls (metrics, flush) never wait behind streams
_KEEPALIVE_S = 600.0            # idle pooled connections survive long prefills of others
_MAX_EVENT_BYTES = 16 << 20     # an unterminated SSE event larger than this is malformed
_ERROR_BODY_CHARS = 500


# -- the stamping network layer -----------------------------------------------------------

class _Probe:
    """Per-request send stamps, written by the socket layer of the request's own task."""

    __slots__ = ("send_ns", "sent_ns")

    def __init__(self) -> None:
        self.send_ns = 0
        self.sent_ns = 0


_PROBE: contextvars.ContextVar[_Probe | None] = contextvars.ContextVar("glmperf_probe",
                                                                        default=None)


class _StampedStream(httpcore.AsyncNetworkStream):
    """A socket stream that remembers when its last read returned and stamps sends."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self.read_ns = 0
        self._socket: Any = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._inner.read(max_bytes, timeout)
        self.read_ns = time.perf_counter_ns()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        probe = _PROBE.get()
        if probe is not None and not probe.send_ns:
            probe.send_ns = time.perf_counter_ns()
        await self._inner.write(buffer, timeout)
        if probe is not None:
            probe.sent_ns = time.perf_counter_ns()

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                        timeout: float | None = None) -> httpcore.AsyncNetworkStream:
        return _StampedStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        # httpcore's pool asks every idle connection "is_readable" (did the server hang up?)
        # on every request, and anyio rebuilds a dict of socket attributes per call: ~30 us
        # each, over 6 ms of client CPU for a burst of 12 sends. The socket never changes,
        # so keep it and poll it directly.
        if info == "is_readable":
            if self._socket is None:
                self._socket = self._inner.get_extra_info("socket")
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


def _readable(sock: Any) -> bool:
    """True when *sock* has data or EOF waiting (an idle keep-alive socket: the server left)."""
    if sock is None or sock.fileno() == -1:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class _StampingBackend(httpcore.AsyncNetworkBackend):
    """AnyIO sockets wrapped in :class:`_StampedStream`."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(host, port, timeout=timeout,
                                               local_address=local_address,
                                               socket_options=socket_options)
        return _StampedStream(stream)

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Any = None) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(path, timeout=timeout,
                                                       socket_options=socket_options)
        return _StampedStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


@contextlib.contextmanager
def _httpx_errors() -> Iterator[None]:
    """Re-raise httpcore's exceptions as httpx's same-named ones (httpx does this privately)."""
    try:
        yield
    except Exception as exc:
        if not type(exc).__module__.startswith("httpcore"):
            raise
        mapped = getattr(httpx, type(exc).__name__, None)
        if not (isinstance(mapped, type) and issubclass(mapped, httpx.TransportError)):
            mapped = httpx.TransportError
        raise mapped(str(exc) or type(exc).__name__) from exc


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def __aiter__(self) -> Any:
        with _httpx_errors():
            async for part in self._inner:
                yield part

    async def aclose(self) -> None:
        with _httpx_errors():
            await self._inner.aclose()


class _Transport(httpx.AsyncBaseTransport):
    """httpx transport over an httpcore pool whose sockets are :class:`_StampedStream`.

    HTTP/1.1 only, as SGLang serves, and no proxies: a benchmark talks to the server itself.
    """

    def __init__(self, connections: int) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=connections, max_keepalive_connections=connections,
            keepalive_expiry=_KEEPALIVE_S, network_backend=_StampingBackend())

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=url.raw_scheme, host=url.raw_host, port=url.port,
                             target=url.raw_path),
            headers=request.headers.raw, content=request.stream, extensions=request.extensions)
        with _httpx_errors():
            response = await self._pool.handle_async_request(core_request)
        return httpx.Response(status_code=response.status, headers=response.headers,
                              stream=_ResponseStream(response.stream),
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self._pool.aclose()


# -- SSE parsing ------------------------------------------------------------------------------

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


# -- the client -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedRequest:
    """A chat request serialised ahead of its send (bodies of ~400 KB cost ~1 ms to encode)."""

    body: bytes
    max_tokens: int
    path: str = CHAT_PATH
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return f"PreparedRequest(path={self.path!r}, max_tokens={self.max_tokens}, " \
               f"body={len(self.body)} bytes)"


class StreamingClient:
    """One pooled HTTP/1.1 client per server, sized for ``concurrency`` streams.

    Use as ``async with StreamingClient(url, concurrency=8) as client:``; call
    :meth:`warm_up` to open the connections ahead, :meth:`prepare` to serialise bodies ahead,
    and :meth:`stream` to run a request into a :class:`RequestRecord`.
    ``request_timeout_s`` is the whole-request deadline in *model* seconds (wall seconds
    times ``time_scale``); it is also the longest silence tolerated, since a 100k-token
    prefill is silent for minutes. ``connect_timeout_s`` is wall seconds.
    """

    def __init__(self, base_url: str, *, concurrency: int, time_scale: float = 1.0,
                 api_key: str | None = None, model: str | None = None,
                 request_timeout_s: float = 1800.0, connect_timeout_s: float = 10.0) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        for name, value in (("time_scale", time_scale), ("request_timeout_s", request_timeout_s),
                            ("connect_timeout_s", connect_timeout_s)):
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.time_scale = time_scale
        self.model = model
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._api_key = api_key
        self._http: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        key = "'***'" if self._api_key else "None"
        return (f"StreamingClient(base_url={self.base_url!r}, concurrency={self.concurrency}, "
                f"time_scale={self.time_scale}, model={self.model!r}, api_key={key})")

    @property
    def request_timeout_wall_s(self) -> float:
        return self.request_timeout_s / self.time_scale

    # -- lifecycle ------------------------------------------------------------------------
    async def __aenter__(self) -> StreamingClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the pooled httpx client (idempotent)."""
        if self._http is not None:
            return
        wall = self.request_timeout_wall_s
        headers = {"accept": "text/event-stream, application/json"}
        if self._api_key:
            headers["authorization"] = f"Bearer {self._api_key}"
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, trust_env=False,
            transport=_Transport(self.concurrency + _SPARE_CONNECTIONS),
            timeout=httpx.Timeout(connect=self.connect_timeout_s, read=wall, write=wall,
                                  pool=None))

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """The underlying pooled httpx client (open the StreamingClient first)."""
        if self._http is None:
            raise RuntimeError("StreamingClient is not open: use `async with` or await open()")
        return self._http

    async def warm_up(self, path: str = "/v1/models") -> int:
        """Open ``concurrency`` connections at once, so no request pays a connection set-up.

        Each GET holds its connection until all are open. With ``model`` unset, the first
        model id ``/v1/models`` lists becomes the model. Returns the connections opened;
        raises the transport error when not one could be opened.
        """
        n = self.concurrency
        arrived, all_open = [0], asyncio.Event()

        async def hold() -> bytes:
            async with self.http.stream("GET", path) as response:
                arrived[0] += 1
                if arrived[0] >= n:
                    all_open.set()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(all_open.wait(), self.connect_timeout_s)
                body = await response.aread()
                return body if response.status_code == 200 else b""

        results = await asyncio.gather(*(hold() for _ in range(n)), return_exceptions=True)
        bodies = [r for r in results if isinstance(r, bytes)]
        if not bodies:
            raise next(r for r in results if isinstance(r, BaseException))
        if self.model is None and path == "/v1/models":
            self.model = _first_model(bodies)
        return len(bodies)

    # -- metadata -------------------------------------------------------------------------
    async def get_json(self, path: str, *, timeout_s: float = 30.0) -> Any:
        """GET a JSON document (/server_info, /v1/models); raises httpx errors on failure."""
        response = await self.http.get(path, timeout=timeout_s)
        response.raise_for_status()
        return response.json()

    async def is_ready(self, *, timeout_s: float = 30.0) -> bool:
        """GET /health_generate == 200 (SGLang answers 503 until its warm-up is done)."""
        try:
            response = await self.http.get("/health_generate", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def metrics_text(self, *, timeout_s: float = 10.0) -> str | None:
        """The Prometheus text of /metrics, or None when the server has none or is down."""
        try:
            response = await self.http.get("/metrics", timeout=timeout_s)
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    async def flush_cache(self, *, timeout_s: float = 30.0) -> bool:
        """POST /flush_cache; False when the server refuses (SGLang: 400 unless idle)."""
        try:
            response = await self.http.post("/flush_cache", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    # -- streaming ------------------------------------------------------------------------
    def prepare(self, messages: Sequence[dict[str, Any]], *, max_tokens: int,
                temperature: float = 0.0, extra_body: dict[str, Any] | None = None,
                model: str | None = None,
                headers: dict[str, str] | None = None) -> PreparedRequest:
        """Serialise a streamed chat request now, so the send costs no encoding time.

        Sends ``ignore_eos`` and an explicit ``temperature`` (SGLang otherwise samples with
        the model's defaults and may stop early), and asks for usage on every chunk so
        multi-token chunks are counted right. ``extra_body`` keys are merged last;
        ``headers`` go with this request only (e.g. routing or fault-injection headers).
        """
        payload: dict[str, Any] = {
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True},
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "temperature": temperature,
        }
        chosen = model or self.model
        if chosen is not None:
            payload["model"] = chosen
        if extra_body:
            payload.update(extra_body)
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        extra_headers = tuple((headers or {}).items())
        return PreparedRequest(body=body, max_tokens=max_tokens,
                               headers=(("content-type", "application/json"), *extra_headers))

    async def send(self, messages: Sequence[dict[str, Any]], *, max_tokens: int, temperature: float = 0.0,
                   extra_body: dict[str, Any] | None = None, request_id: str = "request") -> RequestRecord:
        """Prepare and stream one chat request in one call (for users' own tests)."""
        prepared = self.prepare(messages, max_tokens=max_tokens, temperature=temperature, extra_body=extra_body)
        return await self.stream(prepared, RequestRecord(request_id=request_id))

    async def stream(self, prepared: PreparedRequest, record: RequestRecord) -> RequestRecord:
        """Send one prepared request and fill ``record``; failures are recorded, not raised.

        Raises only ``asyncio.CancelledError`` (after marking the record ``cancelled``).
        """
        record.max_tokens = prepared.max_tokens
        record.time_scale = self.time_scale
        try:
            await asyncio.wait_for(self._exchange(prepared, record), self.request_timeout_wall_s)
        except asyncio.TimeoutError:
            if record.extra.get("error_kind") == "cancelled":  # the deadline's own cancel
                record.outcome, record.error = OK, None
                del record.extra["error_kind"]
            _fail(record, "timeout",
                  f"timeout: no complete response within {self.request_timeout_s:g} s "
                  f"(model time)")
        return record

    async def _exchange(self, prepared: PreparedRequest, record: RequestRecord) -> None:
        """The request itself, in its own task (the probe context variable is per task)."""
        probe = _Probe()
        token = _PROBE.set(probe)
        parser = _StreamParser(record)
        call_ns = time.perf_counter_ns()
        record.send_ns = call_ns  # until the socket layer stamps the real send
        try:
            await self._send_and_read(prepared, record, parser)
        except asyncio.CancelledError:
            _fail(record, "cancelled", "cancelled")
            raise
        except httpx.TimeoutException as exc:
            _fail(record, "timeout", f"timeout ({type(exc).__name__}): {exc}")
        except httpx.ConnectError as exc:
            _fail(record, "connect", f"connection failed: {exc}")
        except httpx.TransportError as exc:
            _fail(record, "dropped", f"connection dropped ({type(exc).__name__}): {exc}")
        except Exception as exc:
            _fail(record, "client_error", f"client error ({type(exc).__name__}): {exc}")
        finally:
            _PROBE.reset(token)
            if probe.send_ns:
                record.send_ns = probe.send_ns
                record.extra["pre_send_us"] = (probe.send_ns - call_ns) // 1000
                record.extra["upload_us"] = (probe.sent_ns - probe.send_ns) // 1000
            if record.done_ns is None:
                record.done_ns = time.perf_counter_ns()
            parser.apply_usage()

    async def _send_and_read(self, prepared: PreparedRequest, record: RequestRecord,
                             parser: _StreamParser) -> None:
        http = self.http
        request = http.build_request("POST", prepared.path, content=prepared.body,
                                     headers=prepared.headers)
        response = await http.send(request, stream=True)
        try:
            record.status_code = response.status_code
            if response.status_code >= 400:
                body = await response.aread()
                record.done_ns = time.perf_counter_ns()
                _fail(record, "http_status", _http_error_text(response.status_code, body))
                return
            await self._read_body(response, parser)
        finally:
            await response.aclose()

    @staticmethod
    async def _read_body(response: httpx.Response, parser: _StreamParser) -> None:
        """The hot loop: stamp each piece with its socket read, then hand it to the parser."""
        network = response.extensions.get("network_stream")
        feed = parser.feed
        if isinstance(network, _StampedStream):
            async for piece in response.aiter_raw():
                feed(piece, network.read_ns)
        else:  # pragma: no cover - only with a foreign transport
            async for piece in response.aiter_raw():
                feed(piece, time.perf_counter_ns())
        parser.finish()


def _first_model(bodies: list[bytes]) -> str | None:
    """The first model id in a /v1/models answer, or None."""
    for body in bodies:
        try:
            data = json.loads(body).get("data") or []
        except (ValueError, AttributeError):
            continue
        if data and isinstance(data[0], dict) and data[0].get("id"):
            return str(data[0]["id"])
    return None
