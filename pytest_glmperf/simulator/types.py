"""Data passed between the simulator's engine model and its HTTP layer.

The engine (``engine.py``) is pure: it knows only model time (seconds of the simulated
GPU server) and never sleeps. The HTTP layer (``app.py``) paces engine steps against the
wall clock (model time runs ``time_scale`` times faster) and turns emissions into SSE chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SimRequest:
    """A generation request as the engine sees it."""

    rid: str
    prompt_tokens: int
    max_new_tokens: int
    # Chained hash of each *full* page of prompt token ids (page_size tokens per page), in
    # order: page_keys[i] identifies the whole prefix up to and including page i, so a prefix
    # match is "how many leading keys are cached". Partial last pages are never cached.
    page_keys: list[int] = field(default_factory=list)
    arrival_s: float = 0.0


@dataclass
class TokenEmission:
    """Tokens one request produced in one engine step (one SSE chunk on a real server)."""

    rid: str
    tokens: int            # >= 1; several when a speculative verify step accepts drafts
    first: bool = False    # the request's first output tokens (ends its prefill)
    finished: bool = False
    cached_tokens: int = 0  # with first=True: prompt tokens served from cache (device + host)


@dataclass
class StepResult:
    """One scheduler iteration: what ran, how long it took in model time, what it emitted."""

    start_s: float
    duration_s: float
    kind: str                          # "prefill" | "decode" | "mixed"
    prefill_tokens: int = 0            # new (uncached) prompt tokens computed this step
    decode_requests: int = 0
    emissions: list[TokenEmission] = field(default_factory=list)
    # Requests in their first forward this step: model seconds each waited in the queue
    # (SGLang's queue_time_seconds, observed once per request, not again after a retraction).
    queue_times_s: list[float] = field(default_factory=list)
    # (rid, prompt tokens with KV) of each request prefilled this step: a PD prefill worker
    # sends the KV of each chunk as it completes (disaggregation.py).
    prefill_progress: list[tuple[str, int]] = field(default_factory=list)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass
class EngineCounters:
    """Cumulative counters in *logical* tokens (one copy, not multiplied by TP ranks)."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests: int = 0
    aborted_requests: int = 0
    cached_tokens_device: int = 0
    cached_tokens_host: int = 0
    cached_tokens_storage: int = 0      # L3 hits (prefetched, then loaded back)
    storage_prefetched_tokens: int = 0  # L3 -> host, per rank (every rank reads the files)
    storage_backup_tokens: int = 0      # host -> L3 (TP rank 0 writes for an MLA model)
    evicted_tokens: int = 0
    load_back_tokens: int = 0
    backup_tokens: int = 0
    spec_verify_calls: int = 0
    retracted_requests: int = 0
    retracted_input_tokens: int = 0     # prompt tokens of retracted requests
    retracted_output_tokens: int = 0    # output tokens they had generated (recomputed later)
    prefill_compute_tokens: int = 0
    prefill_cache_tokens: int = 0
    decode_steps: int = 0


@dataclass
class EngineGauges:
    """Gauges refreshed like SGLang: on each prefill batch and every decode_log_interval
    decode steps (gen_throughput is tokens over model time across that window)."""

    num_running_reqs: int = 0
    num_queue_reqs: int = 0
    gen_throughput: float = 0.0
    token_usage: float = 0.0
    num_used_tokens: int = 0
    # Device pool split as SGLang's PoolStats reports it: free, radix-cached but unlocked
    # (evictable), and locked by requests (kv_used_tokens == num_used_tokens).
    kv_available_tokens: int = 0
    kv_evictable_tokens: int = 0
    decode_sum_seq_lens: int = 0        # sum of the decode batch's sequence lengths (decode log)
    cache_hit_rate: float = 0.0
    spec_accept_length: float = 0.0
    spec_accept_rate: float = 0.0       # accepted drafts / proposed drafts over the log window
    hicache_host_used_tokens: int = 0
    hicache_host_total_tokens: int = 0
    max_total_num_tokens: int = 0
    new_token_ratio: float = 0.0
    num_retracted_reqs: int = 0         # retracted since the last refresh, as SGLang logs it
    # PD disaggregation queues (a prefill or decode worker only; disaggregation.py)
    num_prefill_bootstrap_queue_reqs: int = 0
    num_prefill_inflight_queue_reqs: int = 0
    num_decode_prealloc_queue_reqs: int = 0
    num_decode_transfer_queue_reqs: int = 0
