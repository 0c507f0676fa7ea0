"""Statistics over request records: per capacity level, and for the mixed workload.

Percentiles use linear interpolation between closest ranks (numpy's default "linear"
method, Hyndman & Fan type 7). An empty sample gives ``None``. How much evidence a verdict
rests on is the threshold checks' business (``thresholds.py``): each statistic keeps the
per-request values it was computed from in ``samples``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .records import RequestRecord


def percentile(values: Iterable[float | None], pct: float) -> float | None:
    """Type-7 percentile of the non-None values, or None when there are none."""
    data = sorted(v for v in values if v is not None and not math.isnan(v))
    if not data:
        return None
    rank = (len(data) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def bucket_quantile(cumulative: Sequence[tuple[float, float]], q: float) -> float | None:
    """Quantile ``q`` (0-1) of a Prometheus histogram from its cumulative (le, count) pairs,
    as PromQL's ``histogram_quantile`` estimates it: linear within the bucket it falls in,
    from 0 below the first bound, and the highest finite bound when it falls in +Inf.
    None without observations."""
    pairs = sorted(cumulative)
    if not pairs or pairs[-1][1] <= 0:
        return None
    rank = q * pairs[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in pairs:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def mean(values: Iterable[float | None]) -> float | None:
    data = [v for v in values if v is not None]
    return sum(data) / len(data) if data else None


def span_s(records: Sequence[RequestRecord], start_ns: int) -> float | None:
    """Model seconds from start_ns to the last record's close."""
    ends = [r.done_ns for r in records if r.done_ns is not None]
    if not ends:
        return None
    scale = records[0].time_scale
    return (max(ends) - start_ns) / 1e9 * scale


@dataclass
class StreamStats:
    """Latency figures over a set of requests (only successful ones carry timings)."""

    requests: int = 0
    failures: int = 0
    failure_rate: float | None = None
    tok_s_p50: float | None = None
    decode_tok_s_p50: float | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    gap_p50_s: float | None = None
    gap_p95_s: float | None = None
    gap_max_s: float | None = None
    completion_tokens: int = 0
    retries: int = 0   # requests resent once after a stale keep-alive connection (never failures)
    # The per-request values behind each judged statistic (thresholds.Limit.stat), so a
    # verdict can say how much evidence it rests on; kept out of reports (the records are there).
    samples: dict[str, tuple[float, ...]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, records: Sequence[RequestRecord]) -> StreamStats:
        records = [r for r in records if r.counted]
        ok = [r for r in records if r.ok]
        failures = len(records) - len(ok)
        gaps = [r.max_gap_s for r in ok]
        ttfts = [r.ttft_s for r in ok]
        stats = cls(
            requests=len(records),
            failures=failures,
            failure_rate=failures / len(records) if records else None,
            tok_s_p50=percentile((r.output_tok_s for r in ok), 50),
            decode_tok_s_p50=percentile((r.decode_tok_s for r in ok), 50),
            ttft_p50_s=percentile(ttfts, 50),
            ttft_p95_s=percentile(ttfts, 95),
            gap_p50_s=percentile(gaps, 50),
            gap_p95_s=percentile(gaps, 95),
            gap_max_s=max((g for g in gaps if g is not None), default=None),
            completion_tokens=sum(r.output_tokens for r in ok),
            retries=sum(int(r.extra.get("retries", 0)) for r in records),
        )
        stats.samples = {
            "failure_rate": tuple(0.0 if r.ok else 1.0 for r in records),
            "tok_s_p50": _present(r.output_tok_s for r in ok),
            "ttft_p95_s": _present(ttfts),
            "gap_p95_s": _present(gaps),
        }
        return stats

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamStats:
        """The statistics of a saved report (fields it lacks keep their defaults)."""
        names = {f.name for f in fields(cls)} - {"samples"}
        return cls(**{key: value for key, value in data.items() if key in names})


def _present(values: Iterable[float | None]) -> tuple[float, ...]:
    return tuple(v for v in values if v is not None and not math.isnan(v))


# The per-request figures reported as distributions beside the judged statistics (docs/metrics.md).
DISTRIBUTED = ("ttft_s", "e2e_s", "max_gap_s", "itl_s", "tpot_s", "output_tok_s")


def distributions(records: Sequence[RequestRecord], pcts: Sequence[float]) -> dict[str, dict[str, float | None]]:
    """Mean and the given percentiles of each DISTRIBUTED figure over the successful requests.

    ``itl_s`` pools every gap between token-bearing chunks of every request (one sample per
    chunk gap, as vLLM's and SGLang's bench clients count ITL); the others have one sample per
    request. Keys: ``mean``, ``p50``, ``p99.9``…, ``n``.
    """
    ok = [r for r in records if r.counted and r.ok]
    samples = {name: [getattr(r, name) for r in ok] for name in DISTRIBUTED if name != "itl_s"}
    samples["itl_s"] = [gap for r in ok for gap in r.gaps_s]
    out = {}
    for name in DISTRIBUTED:
        values = [v for v in samples[name] if v is not None and not math.isnan(v)]
        out[name] = {"n": len(values), "mean": mean(values),
                     **{f"p{pct:g}": percentile(values, pct) for pct in pcts}}
    return out


@dataclass
class LevelStats(StreamStats):
    """One capacity level: the agents' streams judged, with the whole level's load beside them.

    Failure rate counts every request of the level (agents and prefill spikes); the latency
    percentiles are over the agents' requests, the streams a user sits behind.
    """

    concurrency: int = 0
    duration_s: float | None = None
    aggregate_tok_s: float | None = None
    requests_per_s: float | None = None   # requests that ended (ok or failed) per model second
    spike_requests: int = 0
    spike_ttft_p50_s: float | None = None

    @classmethod
    def of_level(
        cls, concurrency: int, records: Sequence[RequestRecord], start_ns: int
    ) -> LevelStats:
        return cls.of_runs(concurrency, [(records, start_ns)])

    @classmethod
    def of_runs(cls, concurrency: int, runs: Sequence[tuple[Sequence[RequestRecord], int]]) -> LevelStats:
        """Pool one or more runs of the level (``--repeats``): percentiles over all requests,
        aggregate tok/s over the summed durations."""
        records = [r for rs, _ in runs for r in rs if r.counted]
        agents = [r for r in records if r.kind != "spike"]
        spikes = [r for r in records if r.kind == "spike"]
        base = StreamStats.of(agents)
        failures = sum(not r.ok for r in records)
        spans = [span_s([r for r in rs if r.counted], start) for rs, start in runs]
        duration = sum(s for s in spans if s) or None
        tokens = sum(r.output_tokens for r in records if r.ok)
        stats = cls(**base.as_dict())
        stats.samples = {**base.samples, "failure_rate": tuple(0.0 if r.ok else 1.0 for r in records)}
        stats.requests = len(records)
        stats.failures = failures
        stats.failure_rate = failures / len(records) if records else None
        stats.completion_tokens = tokens
        stats.retries = sum(int(r.extra.get("retries", 0)) for r in records)
        stats.concurrency = concurrency
        stats.duration_s = duration
        stats.aggregate_tok_s = tokens / duration if duration else None
        stats.requests_per_s = len(records) / duration if duration else None
        stats.spike_requests = len(spikes)
        stats.spike_ttft_p50_s = percentile((r.ttft_s for r in spikes if r.ok), 50)
        return stats


@dataclass
class GaugeSeries:
    """Server gauge samples taken during a run: (model seconds since start, value)."""

    name: str
    samples: list[tuple[float, float]] = field(default_factory=list)

    def summary(self) -> dict[str, float | None]:
        values = [v for _, v in self.samples]
        return {
            "mean": mean(values),
            "p95": percentile(values, 95),
            "min": min(values, default=None),
            "max": max(values, default=None),
            "samples": len(values),
        }


@dataclass
class MixedStats:
    """The mixed coding-agent workload, with the field report's table as fields."""

    client_tok_s: float | None = None
    server_gen_throughput_mean: float | None = None
    queue_mean: float | None = None
    queue_p95: float | None = None
    running_mean: float | None = None
    token_usage_mean: float | None = None
    kv_available_mean: float | None = None      # free device slots (tokens), gauge mean
    kv_evictable_mean: float | None = None      # cached, unlocked device slots, gauge mean
    server_queue_mean_s: float | None = None    # queue_time_seconds over the window
    server_queue_p50_s: float | None = None
    server_queue_p95_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    gap_p50_s: float | None = None
    gap_p95_s: float | None = None
    duration_s: float | None = None
    requests: int = 0
    requests_per_s: float | None = None
    failures: int = 0
    completion_tokens: int = 0
    cache: dict[str, float | None] = field(default_factory=dict)
    by_kind: dict[str, dict[str, Any]] = field(default_factory=dict)
    decode_streams: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        records: Sequence[RequestRecord],
        start_ns: int,
        gauges: dict[str, GaugeSeries],
        cache_deltas: dict[str, float | None],
        server_queue: dict[str, float | None] | None = None,
    ) -> MixedStats:
        records = [r for r in records if r.counted]
        everything = StreamStats.of(records)
        duration = span_s(records, start_ns)
        kinds = sorted({r.kind for r in records})
        decode = [r for r in records if r.kind in DECODE_KINDS]
        gauge = {name: series.summary() for name, series in gauges.items()}
        return cls(
            client_tok_s=everything.completion_tokens / duration if duration else None,
            server_gen_throughput_mean=gauge.get("gen_throughput", {}).get("mean"),
            queue_mean=gauge.get("num_queue_reqs", {}).get("mean"),
            queue_p95=gauge.get("num_queue_reqs", {}).get("p95"),
            running_mean=gauge.get("num_running_reqs", {}).get("mean"),
            token_usage_mean=gauge.get("token_usage", {}).get("mean"),
            kv_available_mean=gauge.get("kv_available_tokens", {}).get("mean"),
            kv_evictable_mean=gauge.get("kv_evictable_tokens", {}).get("mean"),
            server_queue_mean_s=(server_queue or {}).get("mean_s"),
            server_queue_p50_s=(server_queue or {}).get("p50_s"),
            server_queue_p95_s=(server_queue or {}).get("p95_s"),
            ttft_p50_s=everything.ttft_p50_s,
            ttft_p95_s=everything.ttft_p95_s,
            gap_p50_s=everything.gap_p50_s,
            gap_p95_s=everything.gap_p95_s,
            duration_s=duration,
            requests=everything.requests,
            requests_per_s=everything.requests / duration if duration else None,
            failures=everything.failures,
            completion_tokens=everything.completion_tokens,
            cache=dict(cache_deltas),
            by_kind={k: StreamStats.of([r for r in records if r.kind == k]).as_dict() for k in kinds},
            decode_streams=StreamStats.of(decode).as_dict(),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# The mixed workload's "decode streams": the agents' long generations (not the prefill spikes).
DECODE_KINDS = frozenset({"decode", "revisit"})
