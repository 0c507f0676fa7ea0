"""Prometheus ``/metrics`` of the simulator, with SGLang's metric names and labels.

Why a custom collector instead of prometheus_client's Counter/Gauge objects: the engine
already keeps cumulative counters and gauges (``EngineCounters``, ``EngineGauges``), so the
collector reads them at scrape time; nothing is double-booked. The output mimics SGLang's
prometheus_client multiprocess mode, as SGLang mounts /metrics (``add_prometheus_middleware``
in ``python/sglang/srt/utils/common.py``): no ``_created`` samples, float values,
counters named ``*_total``, label sets per collector:

* scheduler gauges: ``engine_type, model_name, moe_ep_rank, pp_rank, tp_rank``;
* tokenizer counters and latency histograms: ``engine_type, model_name``;
* radix cache counters: ``cache_type`` only.

All latencies are in *model* seconds (the simulated GPU server's clock), like every figure
the plugin reports. The simulator's own health is exported as ``glmperf_sim_*`` series.
"""

from __future__ import annotations

import bisect
import os
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .storage import MODELLED_BACKENDS
from .types import EngineCounters, EngineGauges

# SGLang's default buckets (observability/metrics_collector.py, TokenizerMetricsCollector).
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400)
ITL_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060,
    0.080, 0.100, 0.200, 0.400, 0.600, 0.800, 1.000, 2.000, 4.000, 6.000, 8.000,
)
# SchedulerMetricsCollector.queue_time (scheduler side: first forward minus queue entry).
QUEUE_TIME_BUCKETS = (
    0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 50, 60,
    70, 80, 90, 100, 200, 300, 400, 500, 600, 700, 800, 900, 1000, 1200, 1400, 1600, 1800,
    2000, 2500, 3000,
)
# TokenizerMetricsCollector's default_bucket_prompt_tokens (prompt, uncached prompt and
# generation lengths alike).
TOKEN_BUCKETS = (
    100, 300, 500, 700, 1000, 1500, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 9000, 10000,
    12500, 15000, 17500, 20000, 22500, 25000, 27500, 30000, 35000, 40000, 60000, 80000,
    100000, 200000, 300000, 400000, 600000, 800000, 1000000, 1100000,
)
# PD disaggregation histograms (observability/metrics_collector.py, SchedulerMetricsCollector).
KV_TRANSFER_SPEED_BUCKETS = (0.1, 0.5, 1, 5, 10, 25, 50, 100, 200, 400)
KV_TRANSFER_LATENCY_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
KV_TRANSFER_BOOTSTRAP_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
KV_TRANSFER_TOTAL_MB_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)
E2E_BUCKETS = (
    0.1, 0.2, 0.4, 0.6, 0.8, 1, 2, 4, 6, 8, 10, 20, 40, 60, 80, 100, 200, 400, 600, 1200,
    1800, 2400,
)


class Histogram:
    """A cumulative-on-render histogram that also takes weighted observations.

    Why not prometheus_client.Histogram: SGLang's inter-token latency adds
    ``interval / n`` to one bucket with weight ``n`` and ``interval`` to the sum, so that
    ``_sum / _count`` is the mean per-token ITL even for multi-token (speculative) chunks.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0.0] * (len(self.bounds) + 1)  # last slot: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float, weight: float = 1.0, sum_add: float | None = None) -> None:
        """Add *weight* observations of *value*; the sum grows by *sum_add* (default value*weight)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.total += value * weight if sum_add is None else sum_add

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs ending with +Inf, as prometheus_client wants them."""
        out: list[tuple[str, float]] = []
        running = 0.0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((floatToGoString(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class RequestHistograms:
    """SGLang's per-request histograms, fed by the pacing driver: the tokenizer's TTFT / ITL /
    e2e (model seconds) and prompt / uncached prompt / generation lengths (tokens, at the
    finish), and the scheduler's queue time."""

    def __init__(self) -> None:
        self.ttft = Histogram(TTFT_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.queue = Histogram(QUEUE_TIME_BUCKETS)
        self.prompt = Histogram(TOKEN_BUCKETS)
        self.uncached_prompt = Histogram(TOKEN_BUCKETS)
        self.generation = Histogram(TOKEN_BUCKETS)

    def observe_finished(self, prompt_tokens: int, cached_tokens: int, generation_tokens: int) -> None:
        """A finished request's lengths (TokenizerMetricsCollector.observe_one_finished_request)."""
        self.prompt.observe(prompt_tokens)
        self.uncached_prompt.observe(prompt_tokens - cached_tokens)
        self.generation.observe(generation_tokens)

    def observe_queue(self, seconds: float) -> None:
        """Queue entry to the first forward batch of a request (once per request)."""
        self.queue.observe(seconds)

    def observe_ttft(self, seconds: float) -> None:
        """Arrival at the server to the first output of a request."""
        self.ttft.observe(seconds)

    def observe_itl(self, interval: float, num_tokens: int) -> None:
        """One output step of *num_tokens* tokens, *interval* after the previous one."""
        n = max(1, num_tokens)
        self.itl.observe(interval / n, weight=n, sum_add=interval)

    def observe_e2e(self, seconds: float) -> None:
        """Arrival to the last output of a finished request."""
        self.e2e.observe(seconds)


class PDStats:
    """A PD worker's transfer metrics (SGLang observes them per request on the scheduler):
    the prefill worker's KV transfer latency, speed and size when a room's transfer is done
    (req_time_stats.compute_and_observe_kv_transfer_metrics), both workers' bootstrap time
    (arrival to handshake), and the failed handshakes and transfers."""

    def __init__(self) -> None:
        self.transfer_latency_ms = Histogram(KV_TRANSFER_LATENCY_BUCKETS)
        self.transfer_speed_gb_s = Histogram(KV_TRANSFER_SPEED_BUCKETS)
        self.transfer_total_mb = Histogram(KV_TRANSFER_TOTAL_MB_BUCKETS)
        self.bootstrap_ms = Histogram(KV_TRANSFER_BOOTSTRAP_BUCKETS)
        self.bootstrap_failed = 0
        self.transfer_failed = 0

    def observe_transfer(self, latency_s: float, total_bytes: int) -> None:
        """SGLang's figures: latency from the last chunk's send to success (it notes that this
        "only capture[s] the last chunk time"), size in MiB, speed = size / latency, so a
        chunked prompt's speed reads far above the link's rate, as it does in SGLang."""
        total_mb = total_bytes / (1 << 20)
        self.transfer_total_mb.observe(total_mb)
        if latency_s > 0:
            self.transfer_latency_ms.observe(latency_s * 1e3)
            self.transfer_speed_gb_s.observe(total_mb / 1024 / latency_s)


@dataclass
class SimHealth:
    """The simulator's own timing health, exported so a lagging loop is never silent."""

    time_scale: float = 1.0
    lag_s: float = 0.0       # model seconds the last step was delivered late
    lag_max_s: float = 0.0   # worst lag since start
    late_steps: int = 0      # steps delivered later than the lag warning threshold


@dataclass
class MetricSources:
    """What the collector reads at scrape time."""

    model_name: str
    tp_size: int
    hierarchical: bool
    page_size: int
    context_len: int
    counters: Callable[[], EngineCounters]
    gauges: Callable[[], EngineGauges]
    latency: RequestHistograms
    health: SimHealth
    storage_backend: str | None = None     # --hicache-storage-backend (L3), e.g. "file"
    engine_type: str = "unified"           # "prefill" / "decode" on a PD worker
    pd: PDStats | None = None              # a PD worker's transfer metrics


_SCHED = ("engine_type", "model_name", "moe_ep_rank", "pp_rank", "tp_rank")
_TOK = ("engine_type", "model_name")
# HiRadixCache's StorageMetricsCollector labels (one collector per TP rank).
_STORAGE = ("storage_backend", "tp_rank", "dp_rank", "pp_rank", "pp_size", "attn_cp_rank",
            "attn_cp_size")


class SGLangCollector:
    """Renders engine state as SGLang's metric families (a prometheus_client collector)."""

    def __init__(self, src: MetricSources) -> None:
        self.src = src
        # engine_type: the disaggregation mode on a PD worker (scheduler gauges since
        # sglang#18552, tokenizer metrics since #23978), "unified" otherwise.
        self._sched = [src.engine_type, src.model_name, "0", "0", "0"]
        self._tok = [src.engine_type, src.model_name]
        self._cache_type = "UnifiedRadixCache" if src.hierarchical else "RadixCache"

    def collect(self) -> Iterator[Metric]:
        """Called by prometheus_client on every scrape."""
        yield from self._scheduler_gauges(self.src.gauges())
        yield from self._counters(self.src.counters())
        yield from self._histograms()
        if self.src.pd is not None:
            yield from self._pd_metrics(self.src.pd)
        yield from self._sim_health()

    def _gauge(self, name: str, doc: str, value: float, labels: tuple[str, ...] = _SCHED,
               values: list[str] | None = None) -> GaugeMetricFamily:
        fam = GaugeMetricFamily(name, doc, labels=list(labels))
        fam.add_metric(self._sched if values is None else values, float(value))
        return fam

    def _counter(self, name: str, doc: str, value: float, labels: tuple[str, ...] = _TOK,
                 values: list[str] | None = None) -> CounterMetricFamily:
        fam = CounterMetricFamily(name, doc, labels=list(labels))
        fam.add_metric(self._tok if values is None else values, float(value))
        return fam

    def _scheduler_gauges(self, g: EngineGauges) -> Iterator[Metric]:
        src = self.src
        gauges: list[tuple[str, str, float]] = [
            ("num_running_reqs", "The number of running requests.", g.num_running_reqs),
            ("num_queue_reqs", "The number of requests in the waiting queue.", g.num_queue_reqs),
            ("num_grammar_queue_reqs", "The number of requests in the grammar waiting queue.", 0),
            ("gen_throughput", "The generation throughput (token/s).", g.gen_throughput),
            ("cache_hit_rate", "The prefix cache hit rate.", g.cache_hit_rate),
            ("token_usage", "The token usage.", g.token_usage),
            ("full_token_usage", "The token usage of the full KV pool.", g.token_usage),
            ("num_used_tokens", "The number of used tokens.", g.num_used_tokens),
            ("kv_available_tokens", "Number of free token slots in the KV cache pool.",
             g.kv_available_tokens),
            ("kv_evictable_tokens",
             "Number of evictable (radix-cached) token slots in the KV cache pool.",
             g.kv_evictable_tokens),
            ("kv_used_tokens", "Number of actively used token slots in the KV cache pool.",
             g.num_used_tokens),
            ("decode_sum_seq_lens", "The sum of all sequence lengths in decode.",
             g.decode_sum_seq_lens),
            ("max_total_num_tokens", "Maximum total number of tokens.", g.max_total_num_tokens),
            ("page_size", "The page size.", src.page_size),
            ("num_pages", "The number of pages.", g.max_total_num_tokens // max(1, src.page_size)),
            ("context_len", "The context length.", src.context_len),
            ("spec_accept_length", "The average acceptance length.", g.spec_accept_length),
            ("spec_accept_rate",
             "Speculative acceptance rate (accepted drafts / proposed drafts).",
             g.spec_accept_rate),
            ("new_token_ratio", "The new token ratio.", g.new_token_ratio),
        ]
        if src.hierarchical:
            gauges += [
                ("hicache_host_used_tokens", "The number of used tokens in the HiCache host pool.",
                 g.hicache_host_used_tokens),
                ("hicache_host_total_tokens",
                 "The total number of tokens in the HiCache host pool.",
                 g.hicache_host_total_tokens),
            ]
        if src.pd is not None:
            gauges += [
                ("num_prefill_bootstrap_queue_reqs",
                 "The number of requests in the prefill bootstrap queue.",
                 g.num_prefill_bootstrap_queue_reqs),
                ("num_prefill_inflight_queue_reqs",
                 "The number of requests in the prefill inflight queue.",
                 g.num_prefill_inflight_queue_reqs),
                ("num_decode_prealloc_queue_reqs",
                 "The number of requests in the decode prealloc queue.",
                 g.num_decode_prealloc_queue_reqs),
                ("num_decode_transfer_queue_reqs",
                 "The number of requests in the decode transfer queue.",
                 g.num_decode_transfer_queue_reqs),
            ]
        for name, doc, value in gauges:
            yield self._gauge(f"sglang:{name}", doc, value)
        # No multiprocess_mode in SGLang for this one, so it carries a pid label.
        yield self._gauge("sglang:num_retracted_reqs", "The number of retracted requests.",
                          g.num_retracted_reqs,
                          labels=(*_SCHED, "pid"), values=[*self._sched, str(os.getpid())])

    def _counters(self, c: EngineCounters) -> Iterator[Metric]:
        yield self._counter("sglang:prompt_tokens", "Number of prefill tokens processed.",
                            c.prompt_tokens)
        yield self._counter("sglang:generation_tokens", "Number of generation tokens processed.",
                            c.generation_tokens)
        cached = CounterMetricFamily("sglang:cached_tokens", "Number of cached prompt tokens.",
                                     labels=["cache_source", *_TOK])
        cached.add_metric(["device", *self._tok], float(c.cached_tokens_device))
        cached.add_metric(["host", *self._tok], float(c.cached_tokens_host))
        if self.src.storage_backend is not None:
            source = f"storage_{MODELLED_BACKENDS[self.src.storage_backend]}"
            cached.add_metric([source, *self._tok], float(c.cached_tokens_storage))
        yield cached
        yield self._counter("sglang:num_requests", "Number of requests processed.", c.requests)
        yield self._counter("sglang:num_aborted_requests", "Number of requests aborted.",
                            c.aborted_requests)
        yield self._counter("sglang:spec_verify_calls", "Number of speculative verify calls.",
                            c.spec_verify_calls)
        for name, doc, value in (
            ("requests", "Total number of retracted requests.", c.retracted_requests),
            ("input_tokens", "Total number of retracted input tokens.", c.retracted_input_tokens),
            ("output_tokens", "Total number of retracted output tokens.",
             c.retracted_output_tokens),
        ):
            yield self._counter(f"sglang:num_retracted_{name}", doc, value, labels=_SCHED,
                                values=self._sched)
        realtime = CounterMetricFamily("sglang:realtime_tokens",
                                       "Total number of tokens processed (by mode).",
                                       labels=[*_SCHED, "mode"])
        realtime.add_metric([*self._sched, "prefill_compute"], float(c.prefill_compute_tokens))
        realtime.add_metric([*self._sched, "prefill_cache"], float(c.prefill_cache_tokens))
        realtime.add_metric([*self._sched, "decode"], float(c.generation_tokens))
        yield realtime
        yield from self._radix_counters(c)
        if self.src.storage_backend is not None:
            yield from self._storage_counters(c)

    def _radix_counters(self, c: EngineCounters) -> Iterator[Metric]:
        # Every TP rank's scheduler process owns a replica of the radix tree and increments
        # these two counters itself; SGLang's prometheus multiprocess mode then *sums* the
        # per-process files. So the exported value is tp_size x the logical token count
        # (the field report's "loaded back" is exactly 8 x its host hits at tp 8).
        ranks = max(1, self.src.tp_size)
        cache_type = [self._cache_type]
        yield self._counter("sglang:evicted_tokens", "Number of evicted tokens.",
                            c.evicted_tokens * ranks, labels=("cache_type",), values=cache_type)
        if self.src.hierarchical:
            yield self._counter("sglang:load_back_tokens",
                                "Number of tokens loaded back from host to device.",
                                c.load_back_tokens * ranks, labels=("cache_type",),
                                values=cache_type)

    def _storage_counters(self, c: EngineCounters) -> Iterator[Metric]:
        # One series per TP rank: every rank reads the prefetched pages into its own host
        # pool, but for an MLA model only rank 0 writes backups (cache_controller.backup_skip;
        # the other ranks log 0, which the collector skips).
        def rank_labels(rank: int) -> list[str]:
            return [self.src.storage_backend or "", str(rank), "0", "0", "1", "0", "1"]

        prefetched = CounterMetricFamily("sglang:prefetched_tokens",
                                         "Number of prefetched tokens.", labels=list(_STORAGE))
        for rank in range(max(1, self.src.tp_size)):
            prefetched.add_metric(rank_labels(rank), float(c.storage_prefetched_tokens))
        yield prefetched
        backuped = CounterMetricFamily("sglang:backuped_tokens", "Number of backuped tokens.",
                                       labels=list(_STORAGE))
        backuped.add_metric(rank_labels(0), float(c.storage_backup_tokens))
        yield backuped

    def _histograms(self) -> Iterator[Metric]:
        lat = self.src.latency
        for name, doc, hist in (
            ("sglang:time_to_first_token_seconds",
             "Histogram of time to first token in seconds.", lat.ttft),
            ("sglang:inter_token_latency_seconds",
             "Histogram of inter-token latency in seconds.", lat.itl),
            ("sglang:e2e_request_latency_seconds",
             "Histogram of End-to-end request latency in seconds", lat.e2e),
            ("sglang:prompt_tokens_histogram", "Histogram of prompt token length.", lat.prompt),
            ("sglang:uncached_prompt_tokens_histogram",
             "Histogram of uncached (compute) prompt token length.", lat.uncached_prompt),
            ("sglang:generation_tokens_histogram", "Histogram of generation token length.",
             lat.generation),
        ):
            fam = HistogramMetricFamily(name, doc, labels=list(_TOK))
            fam.add_metric(self._tok, hist.buckets(), hist.total)
            yield fam
        queue = HistogramMetricFamily("sglang:queue_time_seconds",
                                      "Histogram of queueing time in seconds.", labels=list(_SCHED))
        queue.add_metric(self._sched, lat.queue.buckets(), lat.queue.total)
        yield queue

    def _pd_metrics(self, pd: PDStats) -> Iterator[Metric]:
        for name, doc, hist in (
            ("sglang:kv_transfer_speed_gb_s", "Histogram of KV cache transfer speed in GB/s.",
             pd.transfer_speed_gb_s),
            ("sglang:kv_transfer_latency_ms", "Histogram of KV cache transfer latency in ms.",
             pd.transfer_latency_ms),
            ("sglang:kv_transfer_total_mb", "Histogram of KV cache transfer size in MB.",
             pd.transfer_total_mb),
            ("sglang:kv_transfer_bootstrap_ms", "Histogram of KV transfer bootstrap time in ms.",
             pd.bootstrap_ms),
        ):
            fam = HistogramMetricFamily(name, doc, labels=list(_SCHED))
            fam.add_metric(self._sched, hist.buckets(), hist.total)
            yield fam
        yield self._counter("sglang:num_bootstrap_failed_reqs",
                            "The number of bootstrap failed requests.", pd.bootstrap_failed,
                            labels=_SCHED, values=self._sched)
        yield self._counter("sglang:num_transfer_failed_reqs",
                            "The number of transfer failed requests.", pd.transfer_failed,
                            labels=_SCHED, values=self._sched)

    def _sim_health(self) -> Iterator[Metric]:
        h = self.src.health
        lag = GaugeMetricFamily(
            "glmperf_sim_lag_seconds",
            "Model seconds the simulator's pacing loop delivered a step late "
            "(stat=current: last step, stat=max: worst since start).",
            labels=["stat"],
        )
        lag.add_metric(["current"], h.lag_s)
        lag.add_metric(["max"], h.lag_max_s)
        yield lag
        late = CounterMetricFamily("glmperf_sim_late_steps",
                                   "Steps delivered later than the lag warning threshold.")
        late.add_metric([], float(h.late_steps))
        yield late
        scale = GaugeMetricFamily("glmperf_sim_time_scale",
                                  "Model seconds per wall second of the simulator.")
        scale.add_metric([], h.time_scale)
        yield scale


SEND_KINDS = ("role", "reasoning", "content", "finish", "usage", "error", "malformed", "done")
_KIND_CODE = {kind: i for i, kind in enumerate(SEND_KINDS)}


class SendRecord:
    """Send instants (perf_counter_ns right after the write) of one response's SSE events.

    Why: tests and the client-overhead bench compare the client's arrival stamps with the
    server's true send instants (same CLOCK_MONOTONIC on one host). Events written together
    share one stamp. About 13 bytes per event, so a 2048-token stream costs ~27 KB.
    """

    __slots__ = ("kinds", "stamps", "tokens")

    def __init__(self) -> None:
        self.stamps = array("q")
        self.kinds = bytearray()
        self.tokens = array("i")

    def add(self, stamp: int, events: list[tuple[str, bytes, int]]) -> None:
        """Record one write holding *events* (kind, bytes, tokens)."""
        for kind, _, tokens in events:
            self.stamps.append(stamp)
            self.kinds.append(_KIND_CODE[kind])
            self.tokens.append(tokens)

    def as_json(self, rid: str) -> dict[str, Any]:
        """``GET /glmperf/sends/{rid}``: parallel lists, one entry per SSE event."""
        return {"rid": rid, "send_ns": self.stamps.tolist(),
                "kinds": [SEND_KINDS[k] for k in self.kinds], "tokens": self.tokens.tolist()}


class SendLog:
    """The last *keep* requests' send records, by request id (older ones are dropped)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self._records: OrderedDict[str, SendRecord] = OrderedDict()

    def open(self, rid: str) -> SendRecord:
        record = SendRecord()
        if self.keep:
            self._records[rid] = record
            while len(self._records) > self.keep:
                self._records.popitem(last=False)
        return record

    def get(self, rid: str) -> SendRecord | None:
        return self._records.get(rid)


def build_registry(src: MetricSources) -> CollectorRegistry:
    """A registry holding only the SGLang-shaped collector (no process/platform metrics)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SGLangCollector(src))  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition (0.0.4) of *registry*."""
    return generate_latest(registry)
