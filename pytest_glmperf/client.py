"""The streaming client: sends chat completions and fills one RequestRecord per request.

Timing is the whole point, so the network layer is instrumented rather than trusted:

* ``send_ns`` is stamped inside the socket write of the request's first bytes (a stamping
  httpcore network stream reads the request's probe from a context variable), so neither
  httpx's own set-up, a pool wait nor a connection (re)open counts in TTFT.
* every socket read stamps ``perf_counter_ns()`` the moment it returns; each SSE event is
  given the stamp of the read that completed it, before any parsing. Events that arrived in
  one read share its stamp, so parsing cost never leaks into the measured arrival times.
* bodies are serialised by :meth:`StreamingClient.prepare`, ahead of the send.

The socket layer lives in :mod:`.transport`, the SSE parsing in :mod:`.sse`.

Per-request failures are recorded on the record, never raised (see ``ERROR_KINDS``).
Cancellation leaves the record filled as far as it got (``cancelled``) and re-raises.
A request lost to a stale keep-alive connection (reused, and not one response byte back) is
sent once more on another connection and noted in ``record.extra["retries"]``, not failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .records import OK, RequestRecord
from .scrape import merge_expositions
from .sse import ERROR_KINDS, _fail, _StreamParser
from .sse import _http_error_text as _http_error_text  # re-exported for the parser tests
from .transport import _PROBE, _Probe, _StampedStream, _Transport

__all__ = ["ERROR_KINDS", "PreparedRequest", "StreamingClient"]

CHAT_PATH = "/v1/chat/completions"
_SPARE_CONNECTIONS = 4          # metadata calls (metrics, flush) never wait behind streams
# What a server closing an idle keep-alive connection under a request looks like: EOF before
# the status line (RemoteProtocolError), or a reset on the read or write. Retried only when
# the probe says the connection was reused and nothing came back (_Probe.stale_connection).
_STALE_ERRORS = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


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
    times ``time_scale``); it is also the longest silence tolerated unless a tighter limit
    is set, since a 100k-token prefill is silent for minutes. ``first_token_timeout_s``
    (send to the first token-bearing chunk) and ``stall_timeout_s`` (longest silence between
    token-bearing chunks once the first came) are optional model-second limits drawn from
    the usability bar, so a server that stops answering fails fast instead of holding the
    request for the whole deadline. ``connect_timeout_s`` is wall seconds.
    """

    def __init__(self, base_url: str, *, concurrency: int, time_scale: float = 1.0,
                 api_key: str | None = None, model: str | None = None,
                 request_timeout_s: float = 1800.0, connect_timeout_s: float = 10.0,
                 first_token_timeout_s: float | None = None,
                 stall_timeout_s: float | None = None,
                 metrics_sources: Mapping[str, str] | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        for name, value in (("time_scale", time_scale), ("request_timeout_s", request_timeout_s),
                            ("connect_timeout_s", connect_timeout_s),
                            ("first_token_timeout_s", first_token_timeout_s),
                            ("stall_timeout_s", stall_timeout_s)):
            if value is None and name in ("first_token_timeout_s", "stall_timeout_s"):
                continue
            if not _positive_finite(value):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.time_scale = time_scale
        self.model = model
        self.request_timeout_s = request_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.first_token_timeout_s = first_token_timeout_s
        self.stall_timeout_s = stall_timeout_s
        self._api_key = api_key
        self._http: httpx.AsyncClient | None = None
        # A fleet: each worker's (and the router's) /metrics URL by name, scraped as one.
        self.metrics_sources = dict(metrics_sources or {})

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

    async def warm_up(self, path: str = "/v1/models", *, timeout_s: float = 30.0) -> int:
        """Open ``concurrency`` connections at once, so no request pays a connection set-up.

        Each GET holds its connection until all are open. With ``model`` unset, the first
        model id ``/v1/models`` lists becomes the model. Returns the connections opened;
        raises the transport error when not one could be opened. A server that accepts
        connections but never answers fails each GET after ``timeout_s`` wall seconds
        without a byte (not the streams' long read timeout).
        """
        n = self.concurrency
        arrived, all_open = [0], asyncio.Event()
        timeout = httpx.Timeout(timeout_s, connect=self.connect_timeout_s)

        async def hold() -> bytes:
            async with self.http.stream("GET", path, timeout=timeout) as response:
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
        return await self._answers_200("GET", "/health_generate", timeout_s)

    async def metrics_text(self, *, timeout_s: float = 10.0) -> str | None:
        """The Prometheus text of /metrics, or None when the server has none or is down; for a
        fleet, every source's, merged with each sample labelled by its source (scrape.py)."""
        if self.metrics_sources:
            texts = await asyncio.gather(*(self._scrape(url, timeout_s) for url in self.metrics_sources.values()))
            return merge_expositions(dict(zip(self.metrics_sources, texts, strict=True)))
        return await self._scrape("/metrics", timeout_s)

    async def _scrape(self, url: str, timeout_s: float) -> str | None:
        try:
            response = await self.http.get(url, timeout=timeout_s)
        except httpx.HTTPError:
            return None
        return response.text if response.status_code == 200 else None

    async def flush_cache(self, *, timeout_s: float = 30.0) -> bool:
        """POST /flush_cache; False when the server refuses (SGLang: 400 unless idle)."""
        return await self._answers_200("POST", "/flush_cache", timeout_s)

    async def clear_storage(self, *, timeout_s: float = 30.0) -> bool:
        """POST /hicache/storage-backend/clear (HiCache's L3 tier); False when refused."""
        return await self._answers_200("POST", "/hicache/storage-backend/clear", timeout_s)

    async def _answers_200(self, method: str, path: str, timeout_s: float) -> bool:
        """An admin call that either works (200) or not: refusals and network errors alike."""
        try:
            response = await self.http.request(method, path, timeout=timeout_s)
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
        """The request itself, in its own task (the probe context variable is per task).

        A request lost to a stale keep-alive connection is sent once more, with fresh send
        stamps: httpcore closed the dead connection, so the retry goes out on another one.
        """
        probe = _Probe()
        token = _PROBE.set(probe)
        parser = _StreamParser(record)
        call_ns = time.perf_counter_ns()
        record.send_ns = call_ns  # until the socket layer stamps the real send
        watchdog = self._watchdog(record, probe)
        try:
            try:
                await self._send_and_read(prepared, record, parser)
            except _STALE_ERRORS as exc:
                if not probe.stale_connection:
                    raise
                record.extra["retries"] = 1
                record.extra["retry_reason"] = _dropped_text(exc)
                probe = _Probe()
                _PROBE.set(probe)  # the reset below restores what was there before the first set
                if watchdog is not None:
                    watchdog.probe = probe
                call_ns = time.perf_counter_ns()  # pre_send_us is the retry's own
                await self._send_and_read(prepared, record, parser)
        except asyncio.CancelledError:
            if watchdog is None or not watchdog.expired():
                _fail(record, "cancelled", "cancelled")
                raise
            _fail(record, "timeout", watchdog.expired_text)
        except httpx.TimeoutException as exc:
            _fail(record, "timeout", f"timeout ({type(exc).__name__}): {exc}")
        except httpx.ConnectError as exc:
            _fail(record, "connect", f"connection failed: {exc}")
        except httpx.TransportError as exc:
            _fail(record, "dropped", _dropped_text(exc))
        except Exception as exc:
            _fail(record, "client_error", f"client error ({type(exc).__name__}): {exc}")
        finally:
            if watchdog is not None:
                watchdog.stop()
            _PROBE.reset(token)
            if probe.send_ns:
                record.send_ns = probe.send_ns
                record.extra["pre_send_us"] = (probe.send_ns - call_ns) // 1000
                record.extra["upload_us"] = (probe.sent_ns - probe.send_ns) // 1000
            if record.done_ns is None:
                record.done_ns = time.perf_counter_ns()
            parser.apply_usage()

    def _watchdog(self, record: RequestRecord, probe: _Probe) -> _Watchdog | None:
        """The first-token and stall limits of one request, or None when neither is set."""
        if self.first_token_timeout_s is None and self.stall_timeout_s is None:
            return None
        return _Watchdog(record, probe, self.first_token_timeout_s, self.stall_timeout_s,
                         self.time_scale)

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


class _Watchdog:
    """Fails a request whose first token, or next token after the first, is overdue.

    One timer per request, and nothing in the hot loop: the timer fires at the earliest
    instant the request could be overdue, reads the stamps the parser already keeps (the
    probe's send, ``first_token_ns``, ``chunk_ns[-1]``) and either cancels the request's task
    or re-arms itself for the next such instant (last token + stall limit). A steady stream
    costs one wake-up per stall period. Re-arming per chunk would cost a timer-heap push per
    chunk, and an httpx read timeout is not exact: headers, the role chunk, usage chunks and
    SSE comments are reads that carry no token, and would hold it off.
    """

    __slots__ = ("_first_ns", "_first_s", "_handle", "_loop", "_record", "_stall_ns", "_stall_s",
                 "_task", "expired_text", "probe")

    def __init__(self, record: RequestRecord, probe: _Probe, first_s: float | None,
                 stall_s: float | None, time_scale: float) -> None:
        """Limits in model seconds; the stamps compared with them are wall nanoseconds."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._record, self.probe = record, probe
        self._first_s, self._stall_s = first_s, stall_s
        self._first_ns = None if first_s is None else int(first_s / time_scale * 1e9)
        self._stall_ns = None if stall_s is None else int(stall_s / time_scale * 1e9)
        self.expired_text = ""
        self._handle: asyncio.TimerHandle | None = None
        self._arm(self._soonest())

    def _soonest(self) -> int:
        """Before the first token the next look is due at the earlier limit: the first token may
        arrive any moment, and its silence limit then counts from it."""
        return min(ns for ns in (self._first_ns, self._stall_ns, 1 << 62) if ns is not None)

    def _arm(self, delay_ns: int) -> None:
        self._handle = self._loop.call_later(delay_ns / 1e9, self._check)

    def _check(self) -> None:
        record = self._record
        if record.first_token_ns is None:
            send_ns = self.probe.send_ns
            if self._first_ns is None or not send_ns:
                # nothing to judge yet (not sent, or no first-token limit): look again later
                self._arm(self._soonest())
                return
            due_ns = send_ns + self._first_ns
            text = f"timeout: no first token within {self._first_s:g} s (model time)"
        elif self._stall_ns is None:
            return
        else:
            due_ns = record.chunk_ns[-1] + self._stall_ns
            text = f"timeout: stream silent for {self._stall_s:g} s after its first token (model time)"
        now_ns = time.perf_counter_ns()
        if now_ns < due_ns:
            self._arm(min(due_ns - now_ns, self._soonest()))
        elif self._task is not None:
            self.expired_text = text
            self._task.cancel()

    def expired(self) -> bool:
        """Whether a CancelledError was this watchdog's alone (an outer cancel still wins)."""
        if not self.expired_text:
            return False
        uncancel = getattr(self._task, "uncancel", None)  # 3.11+: take back our cancel()
        return uncancel is None or uncancel() == 0

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()


def _positive_finite(value: Any) -> bool:
    try:
        return value > 0 and math.isfinite(value)
    except TypeError:
        return False


def _dropped_text(exc: Exception) -> str:
    return f"connection dropped ({type(exc).__name__}): {exc}"


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
