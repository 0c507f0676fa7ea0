"""The engine model: SGLang's scheduler loop over a cost model, in model time.

One ``step()`` is one scheduler iteration (``Scheduler.get_next_batch_to_run`` + the
forward + result processing):

1. build a prefill batch like ``PrefillAdder``: continue the one in-progress chunked
   request, then admit waiting requests in FCFS order while the chunk budget
   (``--chunked-prefill-size``), the request limit and the KV budget allow. Admission
   needs the whole uncached prompt plus min(max_new_tokens, 4096) plus a page to fit in
   free + evictable slots minus what running requests are expected to still claim:
   ``new_token_ratio`` x their remaining output (SGLang's own optimism; its ignore_eos
   path reserves everything only when the radix cache is off). The first request that
   does not fit blocks the queue (head-of-line, as SGLang's scan ``break``s) and sets
   SGLang's ``batch_is_full`` latch: no admission at all until a running request
   finishes, is retracted or aborted (or a chunked prefill continues), even if the
   decaying ``new_token_ratio`` would let the head in sooner;
2. choose what runs (``interleave``): *prefill-first* is SGLang's default rule ("run
   prefill first if possible"): decode waits for every chunk of a long prompt;
   *mixed* (``--enable-mixed-chunk``) adds one decode token per running request to each
   prefill chunk's forward (off under speculative decoding; ``EngineConfig.interleave``);
3. time it with ``CostModel`` and emit tokens. A decode step that does not fit retracts
   requests and re-estimates ``new_token_ratio``; otherwise the ratio decays.

With an L3 storage tier (``storage.py``) a request's prefetch starts when it arrives; the
adder skips a request whose prefetch the policy does not yet let it stop. When nothing
else can run, ``step()`` is idle and ``wake_at()`` says when a prefetch may end: the
driver moves the clock there, or to an earlier arrival.

Requests between steps are admitted at the next step, as SGLang polls its input socket
between iterations. Everything is O(running + queue) per step; the prefix cache is
touched only at admission, chunk completion and finish.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass

from .config import CLIP_MAX_NEW_TOKENS, RETRACT_DECODE_STEPS, EngineConfig
from .costs import CostModel, Segment
from .hardware import GIB
from .prefix_cache import Match, PrefixCache
from .schedule_policy import MODELLED_POLICIES, order_waiting
from .speculative import SpecDecoder
from .storage import StorageTier
from .types import EngineCounters, EngineGauges, SimRequest, StepResult, TokenEmission


class QueueFullError(RuntimeError):
    """``--max-queued-requests`` exceeded: SGLang aborts the request with 503."""


class RequestAborted(RuntimeError):
    """The scheduler aborts a request before its first output (``prepare_abort``): the
    HTTP layer answers it with ``code`` in-band on a stream, as an HTTP error otherwise."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Req:
    """Engine-side state of one request."""

    sim: SimRequest
    target: int                 # tokens to prefill (prompt; + output after a retraction)
    arrival: float
    pages: int = 0              # leading page_keys this request holds in the tree (locked)
    done: int = 0               # tokens of ``target`` with KV (cached + computed)
    private: int = 0            # pool slots held outside the tree
    generated: int = 0
    first_sent: bool = False
    cached_device: int = 0
    cached_host: int = 0
    cached_storage: int = 0     # of the host hit, tokens an L3 prefetch brought in
    storage_hit: int = 0        # tokens its L3 prefetch added to the tree
    verify_calls: int = 0
    in_forward: bool = False    # has been in a forward batch (its queue time is observed)
    accept_prob: float | None = None        # per-draft acceptance, when not the default
    memo: tuple[int, Match] | None = None   # (cache version, match) of the last attempt

    @property
    def rid(self) -> str:
        return self.sim.rid

    @property
    def cached(self) -> int:
        """Prompt tokens served from cache: device, host and L3 hits."""
        return self.cached_device + self.cached_host + self.cached_storage

    @property
    def remaining_new(self) -> int:
        return self.sim.max_new_tokens - self.generated

    @property
    def context(self) -> int:
        return self.done + (self.generated if self.done >= self.target else 0)


IDLE_LOG_INTERVAL_S = 30.0  # SGLang logs metrics while idle at most every 30 s
INPUT_BUDGET_SPENT = -1.0   # _try_admit: refused for --max-prefill-tokens (never a load time)


class Engine:
    """Continuous batching with chunked prefill, a radix/HiCache KV model and EAGLE."""

    def __init__(self, config: EngineConfig, *, seed: int = 0) -> None:
        self.config = config
        self.now = 0.0
        self.counters = EngineCounters()
        self.gauges = EngineGauges()
        floor = None if config.decode_floor_us is None else config.decode_floor_us * 1e-6
        self.cost = CostModel(config.hardware, config.model, config.tp_size, floor)
        self.cache = PrefixCache(
            page_size=config.page_size,
            device_tokens=config.device_pool_tokens,
            host_tokens=config.host_pool_tokens,
            write_policy=config.hicache_write_policy,
            enabled=not config.disable_radix_cache,
            track_backups=config.storage_enabled,
        )
        self.storage = StorageTier(
            page_size=config.page_size, bytes_per_token=config.cell_bytes_per_token,
            read_bandwidth=config.storage_read_bandwidth,
            write_bandwidth=config.storage_write_bandwidth,
            policy=config.hicache_storage_prefetch_policy, settings=config.storage_settings,
            capacity_limit_tokens=config.prefetch_capacity_limit_tokens,
        ) if config.storage_enabled else None
        self.spec = SpecDecoder(
            num_steps=config.spec_num_steps, draft_tokens=config.spec_draft_tokens,
            accept_prob=config.spec_accept_prob, seed=seed or config.seed,
        ) if config.spec_enabled else None
        self.waiting: deque[_Req] = deque()
        self.running: list[_Req] = []
        self.chunked: _Req | None = None
        self._batch_full = False    # SGLang's running_batch.batch_is_full latch
        self._by_rid: dict[str, _Req] = {}
        self._chunk = config.resolved_chunked_prefill_size
        policy = config.schedule_policy if config.schedule_policy in MODELLED_POLICIES else "fcfs"
        # SGLang runs a cache-aware policy as fcfs when there is no radix cache.
        self._policy = "fcfs" if policy == "lpm" and config.disable_radix_cache else policy
        self._policy_rng = random.Random(seed or config.seed)
        self._max_running = config.effective_max_running_requests
        self.new_token_ratio = config.init_new_token_ratio
        self._retracted_since_log = 0
        self._decode_ct = 0
        self._window_tokens = 0
        self._window_start = 0.0
        self._last_log_s = 0.0      # model time of the last metrics log (prefill or decode)
        # When the last batch was launched: SGLang's overlap loop forms the next batch (and
        # starts its load-backs) while that one runs on the GPU.
        self._launched_at = 0.0
        self.gauges.max_total_num_tokens = config.device_pool_tokens
        self.gauges.kv_available_tokens = config.device_pool_tokens
        self.gauges.hicache_host_total_tokens = config.host_pool_tokens

    # ---- public API ---------------------------------------------------------------------

    def add_request(self, req: SimRequest) -> None:
        """Queue a request at ``self.now``; ValueError when it can never be served."""
        self._check_new(req)
        self._enqueue(_Req(sim=req, target=req.prompt_tokens, arrival=self.now))

    def _enqueue(self, state: _Req) -> None:
        """A checked new request joins the waiting queue (a PD decode engine overrides it)."""
        self.waiting.append(state)
        self._by_rid[state.rid] = state
        self._maybe_prefetch(state)

    def _check_new(self, req: SimRequest) -> None:
        """Refuse a request SGLang would refuse at arrival (ValueError, QueueFullError)."""
        cfg = self.config
        if req.prompt_tokens < 1 or req.max_new_tokens < 1:
            raise ValueError("prompt_tokens and max_new_tokens must be at least 1")
        if req.prompt_tokens + req.max_new_tokens > cfg.resolved_context_length:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of "
                f"{cfg.resolved_context_length} tokens. You requested a total of "
                f"{req.prompt_tokens + req.max_new_tokens} tokens: {req.prompt_tokens} "
                f"tokens from the input messages and {req.max_new_tokens} tokens for the "
                f"completion. Please reduce the number of tokens in the input messages or "
                f"the completion to fit within the limit.")
        if self._admission_need(req.prompt_tokens, req.max_new_tokens) > self.cache.capacity:
            raise ValueError(f"request needs more KV slots than the pool holds "
                             f"({self.cache.capacity} tokens)")
        if req.rid in self._by_rid:
            raise ValueError(f"duplicate request id {req.rid!r}")
        if cfg.max_queued_requests is not None and len(self.waiting) >= cfg.max_queued_requests:
            raise QueueFullError("The request queue is full.")

    def abort(self, rid: str) -> None:
        """The client went away: drop the request wherever it is and free its KV."""
        req = self._by_rid.pop(rid, None)
        if req is None:
            return
        if req in self.waiting:
            self.waiting.remove(req)
            self._drop_prefetch(req)
        elif req is self.chunked:
            self.chunked = None
        elif req in self.running:
            self.running.remove(req)
            self._batch_full = False
        self._release(req)
        self.counters.aborted_requests += 1

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.chunked)

    def wake_at(self) -> float | None:
        """When an idle step has work queued: the model time at which an L3 prefetch a
        queued request waits for may end (None: only a new request can change anything).
        Whoever drives the engine advances the clock to it, or to an earlier arrival."""
        if self.storage is None:   # every prefetch in flight is a queued request's
            return None
        wake = self.storage.next_event_s(self.now)
        return None if wake == math.inf else wake

    def step(self) -> StepResult:
        """Run one scheduler iteration and advance ``now`` by its modelled duration."""
        start = self.now
        decoding = len(self.running)  # SGLang's running_batch when the prefill batch forms
        batch, load_s, admitted = self._form_prefill_batch()
        mixed = bool(batch) and self.config.interleave == "mixed" and bool(self.running)
        if batch:
            # SGLang forms a batch once the last one is launched and its requests are in.
            formed_at = max([self._launched_at] + [r.arrival for r in admitted])
            load_left = max(0.0, formed_at + load_s - start) if load_s else 0.0
            result = self._run_prefill(batch, load_left, mixed, start)
            result.queue_times_s = self._enter_forward(admitted, start)
            self._refresh_on_prefill(admitted, decoding)
        elif self.running:
            result = self._run_decode(start)
        else:
            self.new_token_ratio = self.config.init_new_token_ratio  # self_check_during_idle
            return StepResult(start_s=start, duration_s=0.0, kind="idle")
        self._sync_cache_counters()
        return result

    def advance_to(self, t: float) -> None:
        """Move the clock while idle. SGLang's idle loop logs metrics only once 30 s have
        passed since the last log (``_maybe_log_idle_metrics``): then gen_throughput reads 0
        and the other gauges catch up; shorter pauses leave every gauge as last logged. The
        decode log window is not reset, so the next gen_throughput spans the pause."""
        if t <= self.now:
            return
        self.now = t
        if self.storage is not None:
            self._sync_cache_counters()
        if self.has_work():
            return
        self.new_token_ratio = self.config.init_new_token_ratio
        if t - self._last_log_s >= IDLE_LOG_INTERVAL_S:
            self.gauges.gen_throughput = 0.0
            self._refresh_common()

    def flush_cache(self) -> bool:
        """``/flush_cache``: only when idle (L3 backups included); empties the device tree
        and host tier. L3 storage keeps its pages."""
        if self.has_work() or (self.storage is not None and self.storage.busy(self.now)):
            return False
        self.cache.flush()
        if self.spec is not None:
            self.spec.reset_stats()
        self._refresh_common()
        return True

    def clear_storage(self) -> bool:
        """``/hicache/storage-backend/clear``: empties L3. As 0.5.12's scheduler answers,
        success means HiCache is on, whether or not an L3 tier is attached."""
        if self.storage is not None:
            self.storage.clear()
        return self.config.enable_hierarchical_cache

    def internal_state(self) -> dict[str, object]:
        """``/server_info`` ``internal_states[0]`` (scheduler.get_internal_state)."""
        cfg = self.config
        state: dict[str, object] = {
            "last_gen_throughput": self.gauges.gen_throughput,
            "memory_usage": {
                "weight": round(cfg.weight_bytes / GIB, 2),
                "kvcache": round(cfg.device_pool_tokens * cfg.cell_bytes_per_token / GIB, 2),
                "token_capacity": cfg.device_pool_tokens,
                "graph": round(_graph_bytes(cfg) / GIB, 2),
            },
            "effective_max_running_requests_per_dp": self._max_running,
        }
        if self.spec is not None and self.spec.stats.verify_reqs:
            state["avg_spec_accept_length"] = self.spec.stats.lifetime_accept_length
        return state

    def load(self) -> dict[str, object]:
        """``/v1/loads`` core fields, live as SGLang's ``get_loads`` reads them (running
        batch, waiting queue, pool), beside the last-refreshed throughput and hit rate."""
        cache, g = self.cache, self.gauges
        used = cache.used_tokens
        return {
            "num_running_reqs": len(self.running),
            "num_waiting_reqs": len(self.waiting),
            "num_used_tokens": used,
            "num_total_tokens": used + sum(r.sim.prompt_tokens for r in self.waiting),
            "max_total_num_tokens": cache.capacity,
            "token_usage": round(used / cache.capacity, 4) if cache.capacity else 0.0,
            "gen_throughput": round(g.gen_throughput, 2),
            "cache_hit_rate": round(g.cache_hit_rate, 4),
            "utilization": 0.0,   # SGLang sets it only with max_running_requests_under_SLO
            "max_running_requests": self._max_running,
        }

    # ---- admission (PrefillAdder) -------------------------------------------------------

    def _admission_need(self, uncached: int, max_new: int) -> int:
        return uncached + min(max_new, CLIP_MAX_NEW_TOKENS) + self.config.page_size

    def _reserved(self) -> float:
        """Slots running requests are expected to still claim (new_token_ratio x their
        remaining output), plus all the chunked request still needs."""
        ratio = self.new_token_ratio
        total = sum(min(r.remaining_new, CLIP_MAX_NEW_TOKENS) * ratio for r in self.running)
        if self.chunked is not None:
            c = self.chunked
            total += c.target - c.done + min(c.remaining_new, CLIP_MAX_NEW_TOKENS)
        return total

    def _form_prefill_batch(self) -> tuple[list[tuple[_Req, int]], float, list[_Req]]:
        """[(request, tokens this step)], load-back seconds, newly admitted requests."""
        page = self.config.page_size
        mixed_tokens = len(self.running) if self.config.interleave == "mixed" else 0
        budget = self._chunk - mixed_tokens
        batch: list[tuple[_Req, int]] = []
        admitted: list[_Req] = []
        load_s = 0.0
        if self.chunked is None and self._batch_full and self.running:
            return batch, load_s, admitted  # (only a running request's exit clears it)
        if self._policy != "fcfs" and len(self.waiting) > 1:
            self.waiting = deque(order_waiting(
                self._policy, self.waiting, cached_pages=lambda r: self._match(r).device_pages,
                page_keys=lambda r: r.sim.page_keys, max_new=lambda r: r.sim.max_new_tokens,
                rng=self._policy_rng))
        # SGLang's rem_input_tokens: a batch takes no further request once its new input
        # reaches --max-prefill-tokens (the first one is never refused for its size).
        input_budget = self.config.max_prefill_tokens - mixed_tokens
        if self.chunked is not None:
            # SGLang filters the chunked request out of the last batch, which shrinks it
            # and clears batch_is_full before the adder runs.
            self._batch_full = False
            req = self.chunked
            n = self._chunk_len(req.target - req.done, budget, page)
            batch.append((req, n))
            budget -= n
            input_budget -= n
            if req.done + n < req.target:
                return batch, load_s, admitted
            self.chunked = None
        reserved = self._reserved() + sum(r.target - r.done for r, _ in batch)
        i = 0
        while i < len(self.waiting) and budget >= page:
            if len(self.running) + len(batch) >= self._max_running:
                break
            req = self.waiting[i]
            if not self._prefetch_done(req):   # check_prefetch_progress: skip, look further
                i += 1
                continue
            loaded = self._try_admit(req, reserved, input_budget if batch else None)
            if loaded is None:  # NO_TOKEN: no admission until a running request leaves
                self._batch_full = bool(batch) or bool(self.running)
                break
            if loaded == INPUT_BUDGET_SPENT:   # AddReqResult.OTHER: no latch
                break
            del self.waiting[i]
            admitted.append(req)
            load_s += loaded
            n = self._chunk_len(req.target - req.done, budget, page)
            batch.append((req, n))
            budget -= n
            input_budget -= n
            reserved += req.target - req.done + min(req.remaining_new, CLIP_MAX_NEW_TOKENS)
            if req.done + n < req.target:
                self.chunked = req
                break
        return batch, load_s, admitted

    @staticmethod
    def _enter_forward(admitted: list[_Req], start: float) -> list[float]:
        """Queue times of requests in their first forward (``set_forward_entry_time``: once
        per request, so a retracted request's second wait is not observed)."""
        times = []
        for req in admitted:
            if not req.in_forward:
                req.in_forward = True
                times.append(start - req.arrival)
        return times

    @staticmethod
    def _chunk_len(remaining: int, budget: int, page: int) -> int:
        """Whole remainder if it fits, else the budget truncated to whole pages."""
        if remaining <= budget:
            return remaining
        return max(page, budget // page * page)

    def _match(self, req: _Req) -> Match:
        """``req``'s cached prefix; memoised per cache state (a blocked queue head, or a
        queue sorted by prefix, is matched again every step)."""
        cache = self.cache
        if req.memo is None or req.memo[0] != cache.version:
            match = cache.match(req.sim.page_keys, (req.target - 1) // self.config.page_size)
            req.memo = (cache.version, match)
        return req.memo[1]

    def _try_admit(self, req: _Req, reserved: float,
                   input_budget: int | None = None) -> float | None:
        """Match, lock and budget-check ``req``; load host pages; the load-back seconds.

        None: it does not fit (NO_TOKEN). INPUT_BUDGET_SPENT: its new input (the prompt
        less device and host hits, SGLang's real_input_tokens) reaches ``input_budget``,
        what is left of --max-prefill-tokens in a batch that already holds a request.
        """
        cache, page = self.cache, self.config.page_size
        keys = req.sim.page_keys
        match = self._match(req)
        device_tokens = match.device_pages * page
        need = self._admission_need(req.target - device_tokens, req.remaining_new)
        room = cache.free_tokens + cache.evictable_tokens - reserved
        if need >= room:  # locking the prefix can only shrink the room: fail fast
            return None
        uncached = req.target - (match.device_pages + match.host_pages) * page
        if input_budget is not None and uncached >= input_budget:
            return INPUT_BUDGET_SPENT
        cache.lock(keys, match.device_pages, self.now)
        room = cache.free_tokens + cache.evictable_tokens - reserved
        if need >= room:
            cache.unlock(keys, match.device_pages, self.now)
            return None
        host_tokens = match.host_pages * page
        load_s = 0.0
        if host_tokens:
            start, end = match.device_pages, match.device_pages + match.host_pages
            cache.load_back(keys, start, end, self.now)
            cache.lock(keys[start:end], match.host_pages, self.now)
            load_s = self.cost.load_back_time(host_tokens, self.config.cell_bytes_per_token,
                                              self.config.resolved_hicache_io[0])
        req.pages = match.device_pages + match.host_pages
        req.done = req.pages * page
        req.accept_prob = self._draft_accept_prob(req)
        if not req.first_sent:
            storage = min(host_tokens, req.storage_hit)
            req.cached_device, req.cached_host = device_tokens, host_tokens - storage
            req.cached_storage = storage
        self.counters.prefill_cache_tokens += req.done
        return load_s

    # ---- L3 storage prefetch (HiRadixCache.prefetch_from_storage) -----------------------

    def _maybe_prefetch(self, req: _Req) -> None:
        """At arrival: start fetching the stored pages past the device + host match.

        As SGLang: host room is made for the whole new input first (evicting host LRU
        leaves, shrinking to what is free), then storage is asked how many consecutive
        pages it holds; under the threshold the prefetch is revoked, else it keeps host
        slots for the hits and counts the whole new input against the rate limit.
        """
        storage, cache = self.storage, self.cache
        if storage is None or storage.rate_limited:
            return
        page, keys = self.config.page_size, req.sim.page_keys
        match = self._match(req)
        start = match.device_pages + match.host_pages
        new_pages = min(len(keys), req.target // page) - start
        if new_pages * page < storage.threshold:
            return
        room = min(new_pages, cache.make_host_room(new_pages))
        if room * page < storage.threshold:
            return
        hits = storage.hit_pages(keys, start, start + room, self.now)
        if hits * page < storage.threshold:
            return
        cache.reserve_host(hits)
        storage.start(req.rid, start, hits, new_pages * page, self.now)

    def _prefetch_done(self, req: _Req) -> bool:
        """check_prefetch_progress: False while the policy makes ``req`` wait; once it may
        stop, the pages that arrived join the tree as host pages (its storage hit)."""
        storage = self.storage
        if storage is None or not storage.ongoing(req.rid):
            return True
        if not storage.ready(req.rid, self.now):
            return False
        op = storage.stop(req.rid, self.now)
        self.cache.unreserve_host(op.reserved - op.pages)
        added = self.cache.insert_host(req.sim.page_keys, op.start, op.start + op.pages, self.now)
        req.storage_hit = added * self.config.page_size
        storage.prefetched_tokens += req.storage_hit
        return True

    def _drop_prefetch(self, req: _Req) -> None:
        """An aborted request's prefetch stops; its host slots are released."""
        if self.storage is not None and self.storage.ongoing(req.rid):
            op = self.storage.stop(req.rid, self.now)
            self.cache.unreserve_host(op.reserved)

    def _draft_accept_prob(self, req: _Req) -> float | None:
        """Per-draft acceptance for ``req`` when part of its prefix was loaded back and the
        image does not restore the draft's DSA indexer: the draft then selects its sparse
        keys from stale index K over that part. Interpolated by the stale share of the
        prompt (an assumption; the endpoints are measured, docs/simulator.md)."""
        cfg = self.config
        if not cfg.stale_draft_after_load_back or not req.pages:
            return None
        stale = self.cache.loaded_pages(req.sim.page_keys, req.pages) * cfg.page_size
        if not stale:
            return None
        share = min(1.0, stale / req.target)
        return cfg.spec_accept_prob * (1 - share) + cfg.spec_stale_accept_prob * share

    # ---- running a step -----------------------------------------------------------------

    def _run_prefill(self, batch: list[tuple[_Req, int]], load_left: float, mixed: bool,
                     start: float) -> StepResult:
        segments = []
        for req, n in batch:
            self.cache.alloc(n)
            req.private += n
            segments.append(Segment(req.done, n))
        spec = self.spec is not None
        compute = self.cost.prefill_time(segments, with_draft=spec)
        decoding = list(self.running) if mixed else []
        if decoding:
            self._ensure_decode_room(1)
            decoding = list(self.running)
            compute += self.cost.decode_extra_time(len(decoding), _ctx(decoding))
        duration, launch_wait = self.cost.load_back_step(compute, load_left,
                                                         self.config.resolved_hicache_io[0])
        self._launched_at = start + launch_wait
        self.now = start + duration
        emissions = [e for req, n in batch if (e := self._finish_chunk(req, n))]
        emissions += [self._emit(req, 1) for req in decoding]
        prefill_tokens = sum(n for _, n in batch)
        self.counters.prefill_compute_tokens += prefill_tokens
        self._drop_finished()
        for req, _ in batch:
            if req.done < req.target:
                continue
            if req.remaining_new > 0:
                self.running.append(req)
            else:  # max_new_tokens == 1: done at its prefill
                self._complete(req)
                self._batch_full = False
        return StepResult(start_s=start, duration_s=duration,
                          kind="mixed" if decoding else "prefill",
                          prefill_tokens=prefill_tokens, decode_requests=len(decoding),
                          emissions=emissions,
                          prefill_progress=[(req.rid, min(req.done, req.sim.prompt_tokens))
                                            for req, _ in batch])

    def _finish_chunk(self, req: _Req, n: int) -> TokenEmission | None:
        """Account a computed chunk; a completed prefill samples its next token."""
        req.done += n
        keys, page = req.sim.page_keys, self.config.page_size
        full = min(req.done // page, len(keys), req.sim.prompt_tokens // page)
        if full > req.pages:
            moved = self.cache.insert(keys, req.pages, full, self.now)
            req.private -= moved * page
            req.pages = full if moved else req.pages
        if req.done < req.target:
            return None
        self.cache.hit_path(keys, req.pages)   # the prefill's last, non-chunked insert
        return self._emit(req, 1)

    def _run_decode(self, start: float) -> StepResult:
        per_req = self.config.spec_draft_tokens if self.spec is not None else 1
        if not self._ensure_decode_room(per_req):
            self._decay_new_token_ratio()
        batch = list(self.running)
        ctx = _ctx(batch)
        if self.spec is not None:
            duration = self.cost.verify_step_time(len(batch), ctx, per_req,
                                                  self.spec.draft_passes)
        else:
            duration = self.cost.decode_time(len(batch), ctx)
        self._launched_at = start
        self.now = start + duration
        emissions = []
        generated = 0
        for req in batch:
            tokens = self.spec.accept_length(req.accept_prob) if self.spec is not None else 1
            if self.spec is not None:
                req.verify_calls += 1
            emission = self._emit(req, tokens)
            generated += emission.tokens
            emissions.append(emission)
        seq_lens = _ctx(batch)   # the batch's sequence lengths, finished requests included
        self._drop_finished()
        self.counters.decode_steps += 1
        self._on_decode_tick(generated, seq_lens)
        return StepResult(start_s=start, duration_s=duration, kind="decode",
                          decode_requests=len(batch), emissions=emissions)

    def _emit(self, req: _Req, tokens: int) -> TokenEmission:
        """Give ``req`` up to ``tokens`` new tokens (KV slots included)."""
        tokens = min(tokens, req.remaining_new)
        self.cache.alloc(tokens)
        req.private += tokens
        req.generated += tokens
        first = not req.first_sent
        req.first_sent = True
        finished = req.remaining_new <= 0
        return TokenEmission(rid=req.rid, tokens=tokens, first=first, finished=finished,
                             cached_tokens=req.cached if first else 0)

    def _drop_finished(self) -> None:
        """Finished requests leave the batch, unlock their pages and count (tokenizer side:
        counters move when a request finishes)."""
        still = []
        for req in self.running:
            if req.remaining_new > 0:
                still.append(req)
            else:
                self._complete(req)
        if len(still) < len(self.running):
            self._batch_full = False
        self.running = still

    def _complete(self, req: _Req) -> None:
        self._by_rid.pop(req.rid, None)
        self._cache_answer(req)
        self._release(req)
        c = self.counters
        c.requests += 1
        c.prompt_tokens += req.sim.prompt_tokens
        c.generation_tokens += req.generated
        c.cached_tokens_device += req.cached_device
        c.cached_tokens_host += req.cached_host
        c.cached_tokens_storage += req.cached_storage
        c.spec_verify_calls += req.verify_calls

    def _cache_answer(self, req: _Req) -> None:
        """cache_finished_req: prompt + output up to the last token with KV go into the tree
        in whole pages, so a finished answer keeps its slots as an evictable leaf (backed up
        to host under write-through) instead of freeing them. Its pages are keyed by the
        request: the toy tokenizer cannot re-derive them from a resent answer, so they take
        room and count in eviction and host use but are never hit."""
        page = self.config.page_size
        prompt_pages = len(req.sim.page_keys)
        if req.pages != prompt_pages:
            return
        pages = max(0, (req.sim.prompt_tokens + req.generated - 1) // page - prompt_pages)
        keys = [*req.sim.page_keys, *(hash((req.rid, "answer", i)) for i in range(pages))]
        moved = self.cache.insert(keys, prompt_pages, prompt_pages + pages, self.now)
        req.private -= moved * page
        self.cache.hit_path(keys, prompt_pages + moved)
        self.cache.unlock(keys[prompt_pages:], moved, self.now)

    def _release(self, req: _Req) -> None:
        self.cache.unlock(req.sim.page_keys, req.pages, self.now)
        self.cache.release(req.private)
        req.pages = req.private = 0

    def _ensure_decode_room(self, per_req: int) -> bool:
        """check_decode_mem + retract_decode: until the step's new tokens fit, retract the
        request with the fewest output tokens (then the longest prompt, then the newest:
        SGLang pops the last of a stable reverse sort); with speculative decoding the
        newest one, as SGLang can only filter a spec batch from the back.
        A retraction re-estimates new_token_ratio from the requests kept. True if any."""
        retracted = False
        while self.running and not self.cache.ensure_free(len(self.running) * per_req):
            if len(self.running) == 1:
                break  # SGLang keeps one request (and aborts it if even that cannot fit)
            if self.spec is not None:
                victim = self.running[-1]
            else:
                victim = min(reversed(self.running),
                             key=lambda r: (r.generated, -r.sim.prompt_tokens))
            self.running.remove(victim)
            self.counters.retracted_input_tokens += victim.sim.prompt_tokens
            self.counters.retracted_output_tokens += victim.generated
            self._release(victim)
            victim.target = victim.sim.prompt_tokens + victim.generated
            victim.done = 0
            self.waiting.append(victim)
            self._maybe_prefetch(victim)   # _add_request_to_queue(is_retracted=True)
            self.counters.retracted_requests += 1
            self._retracted_since_log += 1
            retracted = True
        if retracted:
            self._batch_full = False
            decoded = sum(r.generated for r in self.running)
            max_new = sum(r.sim.max_new_tokens for r in self.running)
            self.new_token_ratio = min(
                1.0, (decoded + RETRACT_DECODE_STEPS * len(self.running)) / (max_new + 1))
        return retracted

    def _decay_new_token_ratio(self) -> None:
        cfg = self.config
        self.new_token_ratio = max(self.new_token_ratio - cfg.new_token_ratio_decay,
                                   cfg.min_new_token_ratio)

    # ---- gauges -------------------------------------------------------------------------

    def _on_decode_tick(self, generated: int, seq_lens: int) -> None:
        """Every decode_log_interval decode batches: gen_throughput over the window."""
        self._decode_ct += 1
        self._window_tokens += generated
        if self._decode_ct % self.config.decode_log_interval:
            return
        g = self.gauges
        span = self.now - self._window_start
        g.gen_throughput = self._window_tokens / span if span > 0 else 0.0
        self._window_start, self._window_tokens = self.now, 0
        g.cache_hit_rate = 0.0
        g.decode_sum_seq_lens = seq_lens
        if self.spec is not None:
            g.spec_accept_length, g.spec_accept_rate = self.spec.stats.take_window(
                self.config.spec_draft_tokens)
        self._refresh_common()
        self._last_log_s = self.now

    def _refresh_on_prefill(self, admitted: list[_Req], decoding: int) -> None:
        """The prefill log: running is the decode batch the prefill batch formed beside
        (PrefillStats.from_adder), not the requests being prefilled."""
        total = sum(r.sim.prompt_tokens for r in admitted)
        cached = sum(r.cached for r in admitted)
        if total:
            self.gauges.cache_hit_rate = cached / total
        self._refresh_common(decoding)
        self._last_log_s = self.now

    def _refresh_common(self, running: int | None = None) -> None:
        g, cache = self.gauges, self.cache
        g.num_running_reqs = len(self.running) if running is None else running
        g.num_queue_reqs = len(self.waiting)
        g.num_used_tokens = cache.used_tokens
        g.kv_available_tokens = cache.free_tokens
        g.kv_evictable_tokens = cache.evictable_tokens
        g.token_usage = cache.used_tokens / cache.capacity if cache.capacity else 0.0
        g.hicache_host_used_tokens = cache.host_used_tokens
        g.new_token_ratio = self.new_token_ratio
        g.num_retracted_reqs, self._retracted_since_log = self._retracted_since_log, 0

    def _sync_cache_counters(self) -> None:
        c, cache = self.counters, self.cache
        c.evicted_tokens = cache.evicted_tokens
        c.load_back_tokens = cache.load_back_tokens
        c.backup_tokens = cache.backup_tokens
        if self.storage is not None:
            self.storage.backup(cache.take_backups(), self.now)
            c.storage_prefetched_tokens = self.storage.prefetched_tokens
            c.storage_backup_tokens = self.storage.backed_up_tokens


def _ctx(batch: list[_Req]) -> int:
    return sum(r.context for r in batch)


def _graph_bytes(config: EngineConfig) -> float:
    """CUDA-graph memory estimate: ~2 MiB per captured decode batch size (memory_hook)."""
    return 2 * config.resolved_max_running_requests_hint * (1 << 20)
