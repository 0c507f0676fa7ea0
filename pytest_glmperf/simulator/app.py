"""The simulator's HTTP layer: a raw ASGI app that speaks SGLang's API
(``python/sglang/srt/entrypoints/http_server.py``).

Why raw ASGI rather than a framework: the streaming path must write many thousands of SSE
chunks per second on one core, so each chunk is a pre-built byte string sent with one ASGI
message; the small JSON endpoints do not need more either.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` and ``POST|PUT /generate``
(streaming and not), ``GET /v1/loads``, ``GET /v1/models[/{id}]``,
``GET /health``, ``GET /health_generate`` (503 while starting), ``GET /ping``,
``GET /server_info`` and ``/get_server_info``, ``GET /model_info`` and ``/get_model_info``,
``GET|POST /flush_cache`` (400 unless idle), ``POST /hicache/storage-backend/clear`` and the
deprecated ``GET|POST /clear_hicache_storage_backend`` (400 without HiCache),
``GET /metrics`` (404 without ``--enable-metrics``). Simulator extensions:
``GET|POST|DELETE /glmperf/faults`` (server-wide fault injection, see faults.py) and
``GET /glmperf/sends/{rid}`` (the true send instant of every chunk of a request,
``perf_counter_ns`` taken right after the write).

With ``--disaggregation-mode prefill`` the same app also answers on the PD bootstrap socket
(routed by local port: ``disaggregation_http.py``).

A request body may carry ``glmperf_script`` (an SGLang-style extension field) to bypass the
engine and emit exactly the scripted stream; times are model seconds.

Here: the app's routing, lifecycle and small endpoints. The chat endpoint is in chat.py,
the text-completion ones in completions.py (request fields in params.py, chunk bytes in
sse.py), the command line in options.py,
the ASGI helpers in asgi.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .asgi import HTTPError, Receive, Scope, Send, error_body, read_body, respond, respond_json
from .completions import TextCompletions
from .config import EngineConfig, server_args_dict
from .disaggregation import make_engine
from .driver import Driver, Pacer, RequestStream
from .faults import FaultBoard, FaultSpecError, ScriptSource, parse_faults
from .metrics import MetricSources, RequestHistograms, SendLog, SimHealth, build_registry, render
from .options import SimOptions, parse_args
from .params import RequestParams
from .types import SimRequest

if TYPE_CHECKING:
    from .disaggregation_http import DecodeWorker, PrefillWorker

log = logging.getLogger("glmperf.sim")

try:  # the package version (the parent package is imported anyway)
    from .. import __version__ as _PKG_VERSION
except ImportError:  # pragma: no cover
    _PKG_VERSION = "0.0.0"
VERSION = f"{_PKG_VERSION}+glmperf.sim"
CRASH_EXIT_CODE = 1


class SimulatorApp(TextCompletions):
    """The ASGI application: one engine, one pacing driver, SGLang's endpoints."""

    def __init__(self, options: SimOptions, config: EngineConfig, engine: Any = None) -> None:
        self.options = options
        self.config = config
        if engine is None:
            engine = make_engine(config, seed=options.seed)
        self.engine = engine
        # --disaggregation-mode prefill|decode: the bootstrap side (disaggregation_http.py)
        self.pd: PrefillWorker | DecodeWorker | None = _pd_worker(self)
        self.latency = RequestHistograms()
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
            storage_backend=config.hicache_storage_backend,
            engine_type=config.disaggregation_mode if self.pd is not None else "unified",
            pd=self.pd.stats if self.pd is not None else None,
        ))
        self.ready_at_s = 0.0
        self.stopping = False
        self._scripts: set[ScriptSource] = set()
        self.crash_at_s: float | None = None
        self._crash_timer: asyncio.TimerHandle | None = None
        self._routes: dict[tuple[str, str], Callable[..., Awaitable[None]]] = {
            ("POST", "/v1/chat/completions"): self.chat_completions,
            ("POST", "/v1/completions"): self.completions,
            ("POST", "/generate"): self.generate,
            ("PUT", "/generate"): self.generate,
            ("GET", "/v1/loads"): self.loads,
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
            ("POST", "/hicache/storage-backend/clear"): self.clear_storage,
            ("GET", "/clear_hicache_storage_backend"): self.clear_storage_deprecated,
            ("POST", "/clear_hicache_storage_backend"): self.clear_storage_deprecated,
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
            if self.pd is not None and self.pd.serves(scope):   # the PD bootstrap socket
                await self.pd.bootstrap(scope, receive, send)
            elif handler is not None:
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
        if self.pd is not None:
            await self.pd.close()
        if self.driver is not None:
            await self.driver.stop()

    async def _admit(self, params: RequestParams, request: SimRequest) -> RequestStream:
        """A PD worker's side of the KV handshake comes first (disaggregation_http.py)."""
        if self.pd is None:
            return await super()._admit(params, request)
        return await self.pd.admit(params, request)

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
        if self.driver is not None:
            self.driver.catch_up_idle()   # L3 backups finish in model time
        if (self.driver is not None and self.driver.busy()) or not self.engine.flush_cache():
            await respond(send, 400, b"Cache not flushed because there are pending requests. "
                                     b"(When there are running or waiting requests, the operation "
                                     b"will not be performed.)\n", text)
            return
        await respond(send, 200, b"Cache flushed.\nPlease check backend logs for more details. "
                                 b"(When there are running or waiting requests, the operation "
                                 b"will not be performed.)\n", text)

    async def clear_storage(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Empty the L3 tier (SGLang: 400 without HiCache, 200 with it, L3 or not)."""
        ok = self.engine.clear_storage()
        await respond(send, 200 if ok else 400, b"Hierarchical cache storage backend cleared.\n",
                      b"text/plain; charset=utf-8")

    async def clear_storage_deprecated(self, scope: Scope, receive: Receive, send: Send) -> None:
        ok = self.engine.clear_storage()
        await respond(send, 200 if ok else 400,
                      b"Deprecated endpoint. Use POST /hicache/storage-backend/clear.\n"
                      b"Hierarchical cache storage backend cleared.\n",
                      b"text/plain; charset=utf-8")

    async def loads(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``/v1/loads``: one DP rank's core load section and the aggregate, as in SGLang."""
        load = {"dp_rank": 0, **self.engine.load()}
        load["num_total_reqs"] = load["num_running_reqs"] + load["num_waiting_reqs"]
        await respond_json(send, {
            "timestamp": datetime.now(timezone.utc).isoformat(), "version": VERSION,
            "dp_rank_count": 1, "loads": [load],
            "aggregate": {
                "total_running_reqs": load["num_running_reqs"],
                "total_waiting_reqs": load["num_waiting_reqs"],
                "total_reqs": load["num_total_reqs"],
                "total_used_tokens": load["num_used_tokens"],
                "total_tokens": load["num_total_tokens"],
                "avg_token_usage": load["token_usage"], "avg_throughput": load["gen_throughput"],
                "avg_utilization": load["utilization"]}})

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.config.enable_metrics:
            await respond_json(send, {"detail": "Not Found"}, 404)
            return
        if self.driver is not None:
            self.driver.catch_up_idle()
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


def _pd_worker(app: SimulatorApp) -> PrefillWorker | DecodeWorker | None:
    """A PD worker's HTTP side; imported only then (its HTTP client costs ~0.1 s to load)."""
    if not app.config.disaggregated:
        return None
    from .disaggregation_http import make_pd_worker

    return make_pd_worker(app)


def create_app(argv: list[str] | None = None) -> SimulatorApp:
    """Build the ASGI app from a command line (SGLang flags plus the simulator's own)."""
    options, config = parse_args(list(argv or []))
    return SimulatorApp(options, config)
