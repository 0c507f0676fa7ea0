"""The HTTP side of PD disaggregation: the prefill worker's bootstrap server and rooms, the
decode worker's handshake and wait for its KV.

In SGLang the prefill worker runs a bootstrap HTTP server on ``--disaggregation-bootstrap-port``
(python/sglang/srt/disaggregation/common/conn.py, ``CommonKVBootstrapServer``: ``GET
/health``, ``GET|PUT /route``). A decode worker's KV receiver asks it where the prefill ranks are (``GET /route``),
then talks to those ranks over ZMQ (the handshake carrying its pre-allocated KV indices, then
status messages) while the transfer engine moves the KV over RDMA. The simulator serves the
same ``/health`` and ``/route`` on a second socket of the prefill process, and stands in for
ZMQ and RDMA with three room endpoints on that socket (``/route`` names it as every rank's
address):

    POST   /glmperf/rooms/{room}          the handshake: the decode worker reserved the KV
                                          (body: ``sent_ns``, when it sent it)
    GET    /glmperf/rooms/{room}?wait=S   long-poll (S wall seconds): the room's KVPoll state
                                          and, once known, ``kv_done_ns``: when its KV is in
    DELETE /glmperf/rooms/{room}          the decode worker aborted the request

Instants cross between the processes as ``perf_counter_ns`` values, which CLOCK_MONOTONIC
shares between the processes of one host: the two workers must run on one host (the decode
worker refuses a ``bootstrap_host`` that is not loopback) and should use one ``--time-scale``.
Both sides place an event at the model instant it happened, not when HTTP delivered it (the
prefill worker publishes the KV's arrival as soon as it has computed the step that ends the
prefill), so loopback latency times the time scale stays out of model time, except for a
prefill shorter than one HTTP hop.

What a prefill worker answers the router is what SGLang's does: the one token it sampled,
finished with reason ``length`` (the router drains and drops it: sgl-router
src/routers/http/pd_router.rs); it is sent when the prefill ends rather than when the
transfer is acknowledged, a few ms later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import httpx

from .asgi import Receive, Scope, Send, read_body, respond, respond_json
from .disaggregation import DecodeEngine, KVReady, PrefillEngine
from .driver import Driver, RequestStream
from .engine import RequestAborted
from .metrics import PDStats
from .params import RequestParams
from .types import SimRequest

if TYPE_CHECKING:
    from .app import SimulatorApp

__all__ = ["DecodeWorker", "PrefillWorker", "make_pd_worker"]

log = logging.getLogger("glmperf.sim")

FAKE_BOOTSTRAP_HOST = "2.2.2.2"     # disaggregation/utils.py: warm-up requests, no transfer
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LONG_POLL_S = 2.0                   # wall seconds one room query waits for news
MAX_ROOMS = 65_536                  # rooms kept before the oldest are forgotten
ROOMS_PATH = "/glmperf/rooms/"


def _env_seconds(name: str, default: float) -> float:
    """SGLang's PD timeouts (mooncake/conn.py, read from the environment), in model seconds."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


def bootstrap_timeout_s() -> float:
    """How long a prefill request waits for its decode worker's handshake."""
    return _env_seconds("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", 300)


def waiting_timeout_s() -> float:
    """How long a decode request waits for its KV after the handshake."""
    return _env_seconds("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", 300)


def no_room_message(rid: str) -> str:
    """scheduler.py, handle_generate_request: a PD worker aborts it with 400."""
    return (f"Invalid request: Disaggregated request received without bootstrap room id. "
            f"req.rid={rid!r}")


@dataclass
class Room:
    """One ``bootstrap_room`` on the prefill worker: KVPoll state and the KV's arrival."""

    room: int
    rid: str | None = None           # the prefill request bound to it
    handshake_ns: int | None = None  # when the decode worker sent its handshake
    kv: KVReady | None = None
    done_ns: int | None = None       # perf_counter_ns when the KV is in the decode worker
    failure: str | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def touch(self) -> None:
        """Wake everyone waiting for news of this room."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait(self, timeout_s: float) -> None:
        """Until the room changes or ``timeout_s`` wall seconds pass."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), max(0.0, timeout_s))

    def state(self, now_ns: int) -> str:
        """KVPoll's names (disaggregation/base/conn.py)."""
        if self.failure is not None:
            return "failed"
        if self.done_ns is not None:
            return "success" if now_ns >= self.done_ns else "transferring"
        return "bootstrapping" if self.handshake_ns is None else "waiting_for_input"

    def as_json(self) -> dict[str, Any]:
        now = time.perf_counter_ns()
        out: dict[str, Any] = {"room": self.room, "state": self.state(now), "now_ns": now}
        if self.failure is not None:
            out["failure"] = self.failure
        if self.kv is not None and self.done_ns is not None:
            out.update(kv_done_ns=self.done_ns, tokens=self.kv.tokens,
                       cached_tokens=self.kv.cached_tokens, bytes_per_rank=self.kv.bytes_per_rank)
        return out


class PrefillWorker:
    """``--disaggregation-mode prefill``: the bootstrap queue and server, and the rooms."""

    def __init__(self, app: SimulatorApp, engine: PrefillEngine) -> None:
        self.app = app
        self.engine = engine
        self.stats = PDStats()
        self.rooms: OrderedDict[int, Room] = OrderedDict()
        self._by_rid: dict[str, Room] = {}
        engine.on_kv_ready = self._kv_ready

    @property
    def driver(self) -> Driver:
        assert self.app.driver is not None
        return self.app.driver

    @property
    def bootstrap_port(self) -> int:
        return self.app.config.disaggregation_bootstrap_port

    def serves(self, scope: Scope) -> bool:
        """Whether a connection came in on the bootstrap socket."""
        server = scope.get("server")
        return bool(server) and server[1] == self.bootstrap_port != self.app.config.port

    # ---- the request from the router ----------------------------------------------------

    async def admit(self, params: RequestParams, request: SimRequest) -> RequestStream:
        """PrefillBootstrapQueue: one output token (``_process_req``); wait for the decode
        worker's handshake, then schedule the prefill from the instant it was sent."""
        request.max_new_tokens = 1
        if params.bootstrap_room is None:
            raise RequestAborted(no_room_message(request.rid), 400)
        if params.bootstrap_host == FAKE_BOOTSTRAP_HOST:   # nothing to send
            return self.driver.submit(request)
        room = self._room(params.bootstrap_room)
        if room.rid is not None:
            raise RequestAborted(f"bootstrap_room {room.room} is already in use by request "
                                 f"{room.rid!r}", 400)
        room.rid = request.rid
        arrived = self.driver.model_now()
        handshake_s = await self._handshake(room, request.rid)
        self.stats.bootstrap_ms.observe(max(0.0, handshake_s - arrived) * 1e3)
        try:
            stream = self.driver.submit(request, at_s=max(handshake_s, arrived), arrived_s=arrived)
        except Exception as exc:
            self._fail(room, str(exc))
            raise
        self._by_rid[request.rid] = room
        room.touch()
        return stream

    async def _handshake(self, room: Room, rid: str) -> float:
        """Model time of the handshake; RequestAborted (500) after the bootstrap timeout."""
        driver = self.driver
        timeout = bootstrap_timeout_s()
        deadline_ns = time.perf_counter_ns() + round(timeout / driver.scale * 1e9)
        self.engine.bootstrapping += 1
        try:
            while room.handshake_ns is None and room.failure is None:
                left_ns = deadline_ns - time.perf_counter_ns()
                if left_ns <= 0:
                    self.stats.bootstrap_failed += 1
                    self._fail(room, f"Request {room.room} timed out after {timeout:.1f}s in "
                                     "KVPoll.Bootstrapping")
                    break
                await room.wait(left_ns / 1e9)
        finally:
            self.engine.bootstrapping -= 1
        if room.failure is not None:
            self.rooms.pop(room.room, None)
            raise RequestAborted(f"Prefill bootstrap failed for request rank=0 req.rid={rid!r} "
                                 f"req.bootstrap_room={room.room} with exception {room.failure}",
                                 500)
        assert room.handshake_ns is not None
        return driver.model_at(min(room.handshake_ns, time.perf_counter_ns()))

    def _kv_ready(self, kv: KVReady) -> None:
        """The engine knows when the room's KV is in: publish it, observe the transfer."""
        room = self._by_rid.pop(kv.rid, None)
        if room is None:
            return
        room.kv, room.done_ns = kv, self.driver.wall_ns(kv.ready_s)
        self.stats.observe_transfer(kv.ready_s - kv.last_chunk_s, kv.bytes_per_rank)
        room.touch()

    def request_gone(self, rid: str) -> None:
        """The prefill request was aborted before its KV was computed: the room fails."""
        room = self._by_rid.pop(rid, None)
        if room is not None and room.done_ns is None and room.failure is None:
            self.stats.transfer_failed += 1
            self._fail(room, f"Prefill transfer failed for request rank=0 req.rid={rid!r} "
                             f"req.bootstrap_room={room.room}: the request was aborted")

    def _room(self, room_id: int) -> Room:
        room = self.rooms.get(room_id)
        if room is None:
            room = self.rooms[room_id] = Room(room_id)
            while len(self.rooms) > MAX_ROOMS:
                self.rooms.popitem(last=False)
        return room

    @staticmethod
    def _fail(room: Room, message: str) -> None:
        if room.failure is None and room.done_ns is None:
            room.failure = message
        room.touch()

    async def close(self) -> None:
        """Server going down: requests waiting for a handshake give up."""
        for room in self.rooms.values():
            self._fail(room, "the prefill server is shutting down")

    # ---- the bootstrap server -----------------------------------------------------------

    async def bootstrap(self, scope: Scope, receive: Receive, send: Send) -> None:
        """CommonKVBootstrapServer's routes, and the simulator's room channel."""
        path, method = scope["path"], scope["method"]
        text = b"text/plain; charset=utf-8"
        if path == "/health" and method == "GET":
            await respond(send, 200, b"OK", text)
        elif path == "/route" and method == "GET":
            await self._route(scope, send)
        elif path == "/route" and method == "PUT":
            await read_body(receive)   # every rank of this process is registered already
            await respond(send, 200, b"OK", text)
        elif path == "/route":
            await respond(send, 405, b"Method not allowed")
        elif path.startswith(ROOMS_PATH):
            await self._room_endpoint(scope, receive, send, path[len(ROOMS_PATH):])
        else:
            await respond_json(send, {"detail": "Not Found"}, 404)

    async def _route(self, scope: Scope, send: Send) -> None:
        """``GET /route``: with every rank -1, the prefill server's parallel info; else the
        address of one rank (each simulated rank answers on this socket)."""
        query = parse_qs(scope.get("query_string", b"").decode())
        keys = ("prefill_dp_rank", "prefill_cp_rank", "target_tp_rank", "target_pp_rank")
        try:
            ranks = [int(query[key][0]) for key in keys]
        except (KeyError, ValueError):
            await respond(send, 400, b"Missing inputs for bootstrap server.", b"text/plain")
            return
        config = self.app.config
        if ranks == [-1, -1, -1, -1]:
            await respond_json(send, {
                "attn_tp_size": config.tp_size, "attn_cp_size": 1, "dp_size": 1, "pp_size": 1,
                "page_size": config.page_size, "kv_cache_dtype": config.resolved_kv_dtype,
                "follow_bootstrap_room": True, "enable_dsa_cache_layer_split": False,
                "prefill_http_port": config.port, "sim_time_scale": self.driver.scale})
            return
        dp, cp, tp, pp = ranks
        if dp != 0 or cp != 0 or pp != 0 or not 0 <= tp < config.tp_size:
            await respond(send, 404, (f"Bootstrap info not found for dp_rank={dp} cp_rank={cp} "
                                      f"tp_rank={tp} pp_rank={pp}").encode(), b"text/plain")
            return
        await respond_json(send, {"rank_ip": self.app.options.host,
                                  "rank_port": self.bootstrap_port})

    async def _room_endpoint(self, scope: Scope, receive: Receive, send: Send, tail: str) -> None:
        try:
            room_id = int(tail)
        except ValueError:
            await respond_json(send, {"detail": f"not a bootstrap room: {tail!r}"}, 400)
            return
        method = scope["method"]
        if method == "POST":   # the handshake, stamped when the decode worker sent it
            room = self._room(room_id)
            sent_ns = _sent_ns(await read_body(receive))
            if room.handshake_ns is None:
                room.handshake_ns = min(sent_ns or time.perf_counter_ns(), time.perf_counter_ns())
                room.touch()
            await respond_json(send, room.as_json())
        elif method == "GET":
            await self._long_poll(scope, send, room_id)
        elif method == "DELETE":
            room = self.rooms.pop(room_id, None)
            if room is not None:
                self._fail(room, "the decode worker aborted the request")
                if room.rid is not None and room.done_ns is None:
                    self.driver.abort(room.rid)
            await respond_json(send, {"room": room_id, "state": "failed"})
        else:
            await respond(send, 405, b"Method not allowed")

    async def _long_poll(self, scope: Scope, send: Send, room_id: int) -> None:
        """Answer once the KV's arrival is known or the room failed, or after ``wait``."""
        query = parse_qs(scope.get("query_string", b"").decode())
        try:
            wait_s = min(float(query.get("wait", ["0"])[0]), 30.0)
        except ValueError:
            wait_s = 0.0
        room = self.rooms.get(room_id)
        if room is None:
            await respond_json(send, {"room": room_id, "state": "failed",
                                      "failure": f"unknown bootstrap room {room_id}"}, 404)
            return
        deadline = time.monotonic() + wait_s
        while room.done_ns is None and room.failure is None and time.monotonic() < deadline:
            await room.wait(deadline - time.monotonic())
        if room.done_ns is not None or room.failure is not None:
            self.rooms.pop(room_id, None)   # the decode worker has what it needs
        await respond_json(send, room.as_json())


def _sent_ns(body: bytes) -> int | None:
    """The ``sent_ns`` of a handshake body, if it has a valid one."""
    try:
        sent = json.loads(body or b"{}").get("sent_ns")
    except (ValueError, AttributeError):
        return None
    return sent if isinstance(sent, int) and not isinstance(sent, bool) and sent > 0 else None


class _Failed(Exception):
    """A decode request's handshake (``bootstrap``) or transfer failed."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


class DecodeWorker:
    """``--disaggregation-mode decode``: per request, the KV receiver's side of the room."""

    def __init__(self, app: SimulatorApp, engine: DecodeEngine) -> None:
        self.app = app
        self.engine = engine
        self.stats = PDStats()
        self._reserved: dict[str, asyncio.Event] = {}
        self._fake: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._rooms: dict[str, str] = {}          # rid -> room URL once the handshake is sent
        self._infos: dict[str, dict[str, Any]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Made now: building it (its TLS context) would otherwise delay the first handshake.
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(LONG_POLL_S + 10.0),
                                         trust_env=False, verify=False)
        engine.on_preallocated = self._preallocated

    @property
    def driver(self) -> Driver:
        assert self.app.driver is not None
        return self.app.driver

    def serves(self, scope: Scope) -> bool:
        return False    # a decode worker runs no bootstrap server

    async def bootstrap(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("a decode worker runs no bootstrap server")

    async def admit(self, params: RequestParams, request: SimRequest) -> RequestStream:
        """Queue the request for preallocation and start its KV receiver."""
        rid = request.rid
        if self.engine.fake_transfer:           # the engine takes every KV as in at once
            return self.driver.submit(request)
        if params.bootstrap_room is None:
            raise RequestAborted(no_room_message(rid), 400)
        fake = params.bootstrap_host == FAKE_BOOTSTRAP_HOST
        if fake:
            self._fake.add(rid)
        else:
            self._reserved[rid] = asyncio.Event()
        arrived = self.driver.model_now()
        try:
            stream = self.driver.submit(request)
        except Exception:
            self._forget(rid)
            raise
        if not fake:
            task = asyncio.get_running_loop().create_task(
                self._receive(params, rid, arrived), name=f"glmperf-pd-kv-{rid}")
            self._tasks[rid] = task
        return stream

    def _preallocated(self, rid: str) -> None:
        """The engine reserved the KV: the handshake may go (fake: the KV is in at once)."""
        if rid in self._fake:
            self._fake.discard(rid)
            self.engine.kv_arrives(rid, self.engine.now)
            return
        event = self._reserved.get(rid)
        if event is not None:
            event.set()

    def request_gone(self, rid: str) -> None:
        """The request was aborted (client gone): stop receiving, tell the prefill worker."""
        task = self._tasks.pop(rid, None)
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
        url = self._rooms.pop(rid, None)
        self._forget(rid)
        if url is not None:
            self._abort_room(url)

    def _abort_room(self, url: str) -> None:
        """Tell the prefill worker the room is abandoned (in the background)."""
        async def delete() -> None:
            with contextlib.suppress(httpx.HTTPError):
                await self._http().delete(url)

        task = asyncio.get_running_loop().create_task(delete())
        self._background.add(task)      # the loop keeps only weak references to tasks
        task.add_done_callback(self._background.discard)

    def _forget(self, rid: str) -> None:
        self._reserved.pop(rid, None)
        self._fake.discard(rid)

    async def _receive(self, params: RequestParams, rid: str, arrived_s: float) -> None:
        """The KV receiver: look the prefill worker up, handshake once the KV is reserved,
        wait for the KV, then tell the engine when it is in (in this worker's model time)."""
        room = params.bootstrap_room
        host = params.bootstrap_host or ""
        port = params.bootstrap_port or self.app.config.disaggregation_bootstrap_port
        addr = f"{host}:{port}"
        try:
            await self._prefill_info(host, port, addr)
            await self._reserved[rid].wait()
            url = f"http://{'[' + host + ']' if ':' in host else host}:{port}{ROOMS_PATH}{room}"
            self._rooms[rid] = url
            sent_ns = time.perf_counter_ns()
            try:
                await self._http().post(url, json={"decode_rid": rid, "sent_ns": sent_ns})
            except httpx.HTTPError as exc:
                raise _Failed("bootstrap", f"handshake with {addr} failed: {exc!r}") from None
            self.stats.bootstrap_ms.observe(max(0.0, self.driver.model_at(sent_ns) - arrived_s) * 1e3)
            done = await self._wait_kv(url, room, sent_ns)
            self._rooms.pop(rid, None)
            self.engine.kv_arrives(rid, self.driver.model_at(done["kv_done_ns"]),
                                   int(done.get("cached_tokens", 0)))
            self.driver.notify()
        except _Failed as exc:
            url = self._rooms.pop(rid, None)
            if url is not None:    # the prefill worker need not compute it any more
                self._abort_room(url)
            self._fail(rid, room, exc)
        finally:
            self._tasks.pop(rid, None)
            self._forget(rid)

    async def _prefill_info(self, host: str, port: int, addr: str) -> dict[str, Any]:
        """CommonKVReceiver: the prefill server's parallel info (``GET /route``), cached."""
        if addr in self._infos:
            return self._infos[addr]
        if host not in LOOPBACK:
            raise _Failed("bootstrap", f"Could not fetch prefill parallel info from bootstrap_addr: "
                                       f"{addr} (the simulator's KV transfer is between processes "
                                       f"of one host: bootstrap_host must be loopback)")
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/route"
        query = {"prefill_dp_rank": -1, "prefill_cp_rank": -1, "target_tp_rank": -1,
                 "target_pp_rank": -1}
        try:
            resp = await self._http().get(url, params=query)
            resp.raise_for_status()
            info = dict(resp.json())
        except (httpx.HTTPError, ValueError):
            raise _Failed("bootstrap", "Could not fetch prefill parallel info from bootstrap_addr: "
                                       f"{addr}") from None
        scale = info.get("sim_time_scale")
        if scale is not None and scale != self.driver.scale:
            log.warning("prefill worker %s runs at time scale %g, this decode worker at %g: "
                        "transfer instants are exchanged in wall time, so durations differ",
                        addr, scale, self.driver.scale)
        self._infos[addr] = info
        return info

    async def _wait_kv(self, url: str, room: int | None, sent_ns: int) -> dict[str, Any]:
        """Long-poll the room until its KV's arrival is known; fail after the waiting
        timeout (model seconds from the handshake) or when the prefill side failed."""
        timeout = waiting_timeout_s()
        deadline_ns = sent_ns + round(timeout / self.driver.scale * 1e9)
        while True:
            wait = min(LONG_POLL_S, max(0.0, (deadline_ns - time.perf_counter_ns()) / 1e9))
            try:
                resp = await self._http().get(url, params={"wait": f"{wait:.3f}"})
                body = dict(resp.json())
            except (httpx.HTTPError, ValueError) as exc:
                raise _Failed("transfer", f"lost the prefill worker: {exc!r}") from None
            if "kv_done_ns" in body and body["kv_done_ns"] <= deadline_ns:
                return body
            if body.get("state") == "failed":
                raise _Failed("transfer", str(body.get("failure", "the prefill worker failed")))
            if time.perf_counter_ns() >= deadline_ns or "kv_done_ns" in body:
                raise _Failed("transfer", f"Request {room} timed out after {timeout:.1f}s in "
                                          "KVPoll.WaitingForInput")

    def _fail(self, rid: str, room: int | None, exc: _Failed) -> None:
        """decode.py: a failed handshake or transfer aborts the request with 500."""
        if exc.stage == "bootstrap":
            self.stats.bootstrap_failed += 1
            what = "Decode handshake failed"
        else:
            self.stats.transfer_failed += 1
            what = "Decode transfer failed"
        message = (f"{what} for request rank=0 req.rid={rid!r} req.bootstrap_room={room} "
                   f"with exception {exc}")
        log.error(message)
        self.driver.fail(rid, 500, message)

    def _http(self) -> httpx.AsyncClient:
        return self._client

    async def close(self) -> None:
        """Server going down: stop every receiver and the HTTP client."""
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()
        await self._client.aclose()


def make_pd_worker(app: SimulatorApp) -> PrefillWorker | DecodeWorker | None:
    """The PD side of ``app`` by its engine's mode (None for a unified server)."""
    engine = app.engine
    if isinstance(engine, PrefillEngine):
        worker: PrefillWorker | DecodeWorker = PrefillWorker(app, engine)
        engine.on_abort = worker.request_gone
        return worker
    if isinstance(engine, DecodeEngine):
        worker = DecodeWorker(app, engine)
        engine.on_abort = worker.request_gone
        return worker
    return None
