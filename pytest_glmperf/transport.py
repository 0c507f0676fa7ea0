"""The stamping network layer under httpx: when each request's bytes went out and came in.

An httpcore connection pool whose sockets are :class:`_StampedStream`: every socket read
stamps ``perf_counter_ns()`` the moment it returns, and the first socket write of a request
stamps its :class:`_Probe` (found through the ``_PROBE`` context variable of the request's
own task), so neither httpx's set-up, a pool wait nor a connection (re)open counts in TTFT.
The probe also remembers its socket, which tells a stale keep-alive connection apart from a
server failure (:attr:`_Probe.stale_connection`).
"""

from __future__ import annotations

import contextlib
import contextvars
import select
import time
from collections.abc import Iterator
from typing import Any

import httpcore
import httpx

_KEEPALIVE_S = 600.0            # idle pooled connections survive long prefills of others


class _Probe:
    """Per-request send stamps, written by the socket layer of the request's own task.

    With the first write it also notes the socket and that socket's last read stamp: a
    socket that had read bytes before served an earlier request (a reused keep-alive
    connection), and a stamp that has not moved since means not one response byte came.
    """

    __slots__ = ("read_mark", "send_ns", "sent_ns", "stream")

    def __init__(self) -> None:
        self.send_ns = 0
        self.sent_ns = 0
        self.stream: _StampedStream | None = None
        self.read_mark = 0

    @property
    def stale_connection(self) -> bool:
        """Sent on a reused connection that then failed before a single response byte came.

        That is the race of a server closing an idle keep-alive connection as the request
        went out: nothing was measured and nothing was answered, so it is no server failure
        and the request may be sent again (urllib3 and Go's net/http do the same).
        """
        stream = self.stream
        return stream is not None and self.read_mark != 0 and stream.read_ns == self.read_mark


_PROBE: contextvars.ContextVar[_Probe | None] = contextvars.ContextVar("glmperf_probe",
                                                                        default=None)


class _StampedStream(httpcore.AsyncNetworkStream):
    """A socket stream that remembers when its last read returned bytes and stamps sends."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self.read_ns = 0            # the last read that returned bytes; 0 on a fresh socket
        self._socket: Any = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        data = await self._inner.read(max_bytes, timeout)
        if data:  # EOF stamps nothing: read_ns moves only when bytes came (see _Probe)
            self.read_ns = time.perf_counter_ns()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        probe = _PROBE.get()
        if probe is not None and not probe.send_ns:
            probe.send_ns = time.perf_counter_ns()
            probe.stream, probe.read_mark = self, self.read_ns
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

