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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from .records import OK, RequestRecord
from .sse import ERROR_KINDS, _fail, _StreamParser
from .sse import _http_error_text as _http_error_text  # re-exported for the parser tests
from .transport import _PROBE, _Probe, _StampedStream, _Transport

__all__ = ["ERROR_KINDS", "PreparedRequest", "StreamingClient"]

CHAT_PATH = "/v1/chat/completions"
_SPARE_CONNECTIONS = 4          # metadata calls (metrics, flush) never wait behind streams


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
        return await self._answers_200("GET", "/health_generate", timeout_s)

    async def metrics_text(self, *, timeout_s: float = 10.0) -> str | None:
        """The Prometheus text of /metrics, or None when the server has none or is down."""
        try:
            response = await self.http.get("/metrics", timeout=timeout_s)
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
