"""Prefill/decode (PD) disaggregation: SGLang's prefill-only and decode-only engines.

SGLang (``python/sglang/srt/disaggregation/``, ``--disaggregation-mode prefill|decode``)
splits one request over two servers that the router calls at once with the same
``bootstrap_room`` (sgl-router ``src/routers/http/pd_router.rs``):

* the prefill worker (prefill.py) holds the request in its *bootstrap queue* until the
  decode worker for that room has pre-allocated the KV and said so (KVPoll.WaitingForInput),
  then prefills it like any request, with ``max_new_tokens`` forced to 1 (chunked, with its
  prefix cache). After every chunk it queues that chunk's KV on the transfer engine
  (``send_kv_chunk``: the cached prefix and the pages computed so far), after the last one
  the request waits in the *inflight queue* until the transfer succeeded, then finishes
  (``FINISH_LENGTH(0)``) with the one token it sampled;
* the decode worker (decode.py) puts it in the *prealloc queue* (look the prefill worker up,
  reserve the whole prompt + ``--num-reserved-decode-tokens`` of KV, handshake), then the
  *transfer queue* (polled every ``--disaggregation-decode-polling-interval`` scheduler
  iterations), then runs a *prebuilt* batch with no forward pass: it streams the token the
  prefill worker sampled (``process_batch_result_prebuilt``) and joins the running batch.
  A decode worker never prefills, so no long prompt ever stalls its decoding streams.

This module: the transfer-time model and the two engines (pure, in model time, like
engine.py). The HTTP side (the bootstrap server, the handshake and the wait for the KV)
is disaggregation_http.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from .config import EngineConfig
from .costs import DECODE_BATCH_OVERHEAD_S
from .engine import Engine, _Req
from .types import StepResult

__all__ = ["DecodeEngine", "KVLink", "KVReady", "PrefillEngine", "kv_transfer_seconds",
           "make_engine"]


def kv_transfer_seconds(tokens: int, bytes_per_token: int, link_bytes_per_s: float,
                        setup_s: float = 0.0) -> float:
    """Seconds to move ``tokens`` of KV to the decode worker in one piece.

    Per TP rank: every prefill rank writes the KV it holds to the decode rank of the same
    index over its own NIC, all ranks at once (for an MLA model a decode rank takes the
    replicated latent from one prefill rank: common/conn.py, ``is_mla_backend``), so the
    time is one rank's bytes (``kv_bytes_per_token`` of hardware.py: latent + DSA indexer K,
    + the MTP draft layer with EAGLE) over one rank's link, plus the fixed ``setup_s``.
    """
    return tokens * bytes_per_token / link_bytes_per_s + setup_s


class KVLink:
    """A prefill worker's transfer path: the chunks of all rooms leave in the order their
    forward passes end (Mooncake's transfer queue), one at a time at ``bytes_per_s``."""

    def __init__(self, bytes_per_s: float) -> None:
        self.rate = bytes_per_s
        self.free_at = 0.0

    def send(self, nbytes: float, at_s: float) -> float:
        """Queue ``nbytes`` ready at ``at_s``; when their last byte has landed."""
        start = max(at_s, self.free_at)
        self.free_at = start + nbytes / self.rate
        return self.free_at


@dataclass(frozen=True)
class KVReady:
    """A room's KV is all computed; it is in the decode worker's memory at ``ready_s``."""

    rid: str
    ready_s: float          # model time: last chunk landed + the fixed setup latency
    last_chunk_s: float     # model time the last chunk's forward ended (transfer queue entry)
    tokens: int             # prompt tokens whose KV went over (cached prefix included)
    cached_tokens: int      # of those, prefix-cache hits on the prefill worker
    bytes_per_rank: int


class PrefillEngine(Engine):
    """The prefill worker's scheduler: the engine model plus the KV transfer of each chunk.

    Requests come in with ``max_new_tokens`` 1 once their room's handshake is done (the HTTP
    side keeps the bootstrap queue and sets ``bootstrapping``). Each step's prefill progress
    is queued on the ``KVLink``; when a request's prefill completes, ``on_kv_ready`` learns
    when its KV will be in: at once, before the step's end is even paced, so the decode
    worker can schedule the arrival in its own model time instead of when HTTP brings it.
    """

    def __init__(self, config: EngineConfig, *, seed: int = 0) -> None:
        super().__init__(config, seed=seed)
        self.link = KVLink(config.kv_link_bandwidth)
        self.bytes_per_token = config.cell_bytes_per_token
        self.setup_s = config.kv_setup_ms / 1e3
        self.bootstrapping = 0                       # requests waiting for their handshake
        self.inflight: dict[str, float] = {}         # rid -> when its transfer is done
        self.on_kv_ready: Callable[[KVReady], None] | None = None
        self.on_abort: Callable[[str], None] | None = None
        self._sent: dict[str, tuple[int, float]] = {}  # rid -> (tokens queued, last lands)

    def step(self) -> StepResult:
        result = super().step()
        if result.prefill_progress:
            self._send_chunks(result)
        return result

    def _send_chunks(self, result: StepResult) -> None:
        """send_kv_chunk after each chunk; the last one moves the request to the inflight
        queue and tells when the decode worker has all of its KV."""
        completed = {e.rid: e.cached_tokens for e in result.emissions if e.first}
        for rid, tokens in result.prefill_progress:
            sent, lands = self._sent.get(rid, (0, result.end_s))
            if tokens > sent:
                lands = self.link.send((tokens - sent) * self.bytes_per_token, result.end_s)
            if rid not in completed:
                self._sent[rid] = (tokens, lands)
                continue
            self._sent.pop(rid, None)
            ready = lands + self.setup_s
            self.inflight[rid] = ready
            if self.on_kv_ready is not None:
                self.on_kv_ready(KVReady(rid, ready, result.end_s, tokens, completed[rid],
                                         tokens * self.bytes_per_token))

    def abort(self, rid: str) -> None:
        self._sent.pop(rid, None)
        self.inflight.pop(rid, None)
        super().abort(rid)
        if self.on_abort is not None:
            self.on_abort(rid)

    def _refresh_common(self, running: int | None = None) -> None:
        super()._refresh_common(running)
        self.inflight = {rid: t for rid, t in self.inflight.items() if t > self.now}
        self.gauges.num_prefill_bootstrap_queue_reqs = self.bootstrapping
        self.gauges.num_prefill_inflight_queue_reqs = len(self.inflight)


class DecodeEngine(Engine):
    """The decode worker's scheduler: prealloc queue, transfer queue, prebuilt batch, then
    the engine model's decode steps. It never runs a prefill for a new request.

    ``on_preallocated(rid)`` fires when a request's KV is reserved (the HTTP side then sends
    the handshake); ``kv_arrives(rid, at_s)`` says when its KV is in. With the ``fake``
    transfer backend the KV counts as in at once (SGLang's decode-only benchmarking mode).
    """

    def __init__(self, config: EngineConfig, *, seed: int = 0) -> None:
        super().__init__(config, seed=seed)
        self.prealloc: deque[_Req] = deque()
        self.transfer: dict[str, _Req] = {}
        self.prebuilt: deque[_Req] = deque()
        self.kv_at: dict[str, float] = {}            # rid -> when its KV is in, once known
        self.remote_cached: dict[str, int] = {}      # rid -> prefill-side cache hits
        self.on_preallocated: Callable[[str], None] | None = None
        self.on_abort: Callable[[str], None] | None = None
        self.fake_transfer = config.disaggregation_transfer_backend == "fake"
        self._iterations = 0

    # ---- what the HTTP side calls -------------------------------------------------------

    def kv_arrives(self, rid: str, at_s: float, cached_tokens: int = 0) -> None:
        """The prefill worker's transfer for ``rid`` completes at model time ``at_s``."""
        if rid in self.transfer:
            self.kv_at[rid] = at_s
            self.remote_cached[rid] = cached_tokens

    def has_work(self) -> bool:
        return super().has_work() or bool(self.prealloc or self.transfer or self.prebuilt)

    def wake_at(self) -> float | None:
        """The earliest known KV arrival (the driver parks until then), or the engine's."""
        times = list(self.kv_at.values())
        base = super().wake_at()
        if base is not None:
            times.append(base)
        return min(times) if times else None

    def abort(self, rid: str) -> None:
        req = self._by_rid.get(rid)
        if req is None or not self._drop_pending(req):
            super().abort(rid)
        else:
            del self._by_rid[rid]
            self._release(req)
            self.counters.aborted_requests += 1
        if self.on_abort is not None:
            self.on_abort(rid)

    # ---- the scheduler loop -------------------------------------------------------------

    def _enqueue(self, state: _Req) -> None:
        """A new request goes to the prealloc queue, not the waiting queue."""
        self.prealloc.append(state)
        self._by_rid[state.rid] = state
        self._preallocate()

    def step(self) -> StepResult:
        self._iterations += 1
        if self._iterations % self.config.disaggregation_decode_polling_interval == 0:
            self._poll_transfers()
        self._preallocate()
        if self.prebuilt and len(self.running) < self._max_running:
            return self._run_prebuilt()
        return super().step()

    def _preallocate(self) -> None:
        """DecodePreallocQueue.pop_preallocated, FIFO: a request takes a req slot and its
        prompt's KV while what is free, less ``num_reserved_decode_tokens`` for every request
        already holding KV, still leaves it room for that many decode tokens."""
        reserve = self.config.num_reserved_decode_tokens
        while self.prealloc:
            req = self.prealloc[0]
            holders = len(self.running) + len(self.transfer) + len(self.prebuilt)
            room = self.cache.free_tokens + self.cache.evictable_tokens - reserve * holders
            if holders >= self._max_running or req.target + reserve > room:
                return
            self.prealloc.popleft()
            self.cache.alloc(req.target)
            req.private += req.target
            req.done = req.target
            self.transfer[req.rid] = req
            if self.fake_transfer:
                self.kv_at[req.rid] = self.now
            elif self.on_preallocated is not None:
                self.on_preallocated(req.rid)

    def _poll_transfers(self) -> None:
        """DecodeTransferQueue.pop_transferred: requests whose KV is in join the waiting
        queue of prebuilt requests (``arrival`` becomes that wait-queue entry time)."""
        for at, rid in sorted((at, rid) for rid, at in self.kv_at.items() if at <= self.now):
            del self.kv_at[rid]
            req = self.transfer.pop(rid)
            req.arrival = at
            self.prebuilt.append(req)

    def _run_prebuilt(self) -> StepResult:
        """get_new_prebuilt_batch + process_batch_result_prebuilt: no forward pass (only the
        batch's metadata); each request streams the token the prefill worker sampled."""
        start = self.now
        batch: list[_Req] = []
        while self.prebuilt and len(self.running) + len(batch) < self._max_running:
            batch.append(self.prebuilt.popleft())
        self.now = start + DECODE_BATCH_OVERHEAD_S
        self._launched_at = start
        emissions = []
        queue_times = []
        for req in batch:
            queue_times.append(max(0.0, start - req.arrival))
            req.in_forward = True
            emission = self._emit(req, 1)
            emission.cached_tokens = self.remote_cached.pop(req.rid, 0)
            emissions.append(emission)
            if req.remaining_new > 0:
                self.running.append(req)
            else:
                self._complete(req)
        return StepResult(start_s=start, duration_s=self.now - start, kind="prebuilt",
                          emissions=emissions, queue_times_s=queue_times)

    def _drop_pending(self, req: _Req) -> bool:
        """Take ``req`` out of the PD queues; False if it is in none of them."""
        rid = req.rid
        self.kv_at.pop(rid, None)
        self.remote_cached.pop(rid, None)
        if self.transfer.pop(rid, None) is not None:
            return True
        for queue in (self.prealloc, self.prebuilt):
            for i, queued in enumerate(queue):
                if queued is req:
                    del queue[i]
                    return True
        return False

    def _refresh_common(self, running: int | None = None) -> None:
        super()._refresh_common(running)
        g = self.gauges
        g.num_queue_reqs = len(self.waiting) + len(self.prebuilt)
        g.num_decode_prealloc_queue_reqs = len(self.prealloc)
        g.num_decode_transfer_queue_reqs = len(self.transfer)


def make_engine(config: EngineConfig, *, seed: int = 0) -> Engine:
    """The engine of ``--disaggregation-mode``: unified (null), prefill or decode."""
    if config.disaggregation_mode == "prefill":
        return PrefillEngine(config, seed=seed)
    if config.disaggregation_mode == "decode":
        return DecodeEngine(config, seed=seed)
    return Engine(config, seed=seed)
