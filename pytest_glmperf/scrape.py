"""Reading SGLang's Prometheus ``/metrics``: point samples of gauges, deltas of counters.

Parsing is prometheus_client's. Series are matched by metric name and summed over every
label not asked for (new SGLang images add labels such as ``is_streaming``, ``pool`` or
``tp_rank``; docs/metrics.md). Counters are read before and after a window and subtracted; a
counter that went down means the server restarted, and the delta is reported as ``None``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from .clock import ModelClock
from .stats import GaugeSeries, bucket_quantile

GAUGES = ("gen_throughput", "num_queue_reqs", "num_running_reqs", "token_usage",
          "hicache_host_used_tokens", "spec_accept_length",
          # the device pool's split: free and cached-but-evictable slots (0.5.11 and later)
          "kv_available_tokens", "kv_evictable_tokens")
# Scheduler-side histogram: queue entry to first forward batch, per request (0.5.11 and later).
QUEUE_TIME = "queue_time_seconds"

# report key -> (metric name without the "sglang:" prefix, label filter)
CACHE_COUNTERS: dict[str, tuple[str, dict[str, str]]] = {
    "cached_device_tokens": ("cached_tokens_total", {"cache_source": "device"}),
    "cached_host_tokens": ("cached_tokens_total", {"cache_source": "host"}),
    "cached_total_tokens": ("cached_tokens_total", {}),
    "evicted_tokens": ("evicted_tokens_total", {}),
    "load_back_tokens": ("load_back_tokens_total", {}),
    # HiCache L3 (--hicache-storage-backend): hits by backend class, per-rank series summed.
    "cached_storage_tokens": ("cached_tokens_total", {"cache_source": "storage_*"}),
    "prefetched_tokens": ("prefetched_tokens_total", {}),
    "storage_backup_tokens": ("backuped_tokens_total", {}),
    "prompt_tokens": ("prompt_tokens_total", {}),
    "generation_tokens": ("generation_tokens_total", {}),
    "requests": ("num_requests_total", {}),
    "aborted_requests": ("num_aborted_requests_total", {}),
    "retracted_requests": ("num_retracted_requests_total", {}),
}

Fetch = Callable[[], Awaitable[str | None]]
FRACTION_GAUGES = ("token_usage",)
# A fleet's expositions are merged into one, each sample labelled with the worker it came from.
WORKER_LABEL = "glmperf_worker"
ROUTER_SOURCE = "router"  # the router's own exposition (smg_* metrics), not a worker
_SAMPLE_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?([ \t].*)$", re.MULTILINE)


def merge_expositions(texts: Mapping[str, str | None]) -> str | None:
    """Several servers' /metrics as one text, every sample labelled ``glmperf_worker="<name>"``.

    Sums over the fleet stay what ``MetricsSnapshot.value(name)`` gives; one worker's figures
    are ``value(name, glmperf_worker=name)``. None when no server answered."""
    parts = []
    for worker, text in texts.items():
        if not text:
            continue
        label = f'{WORKER_LABEL}="{worker}"'
        parts.append(_SAMPLE_LINE.sub(
            lambda m, label=label: f"{m.group(1)}{{{m.group(2) + ',' if m.group(2) else ''}{label}}}{m.group(3)}",
            text if text.endswith("\n") else text + "\n"))
    return "".join(parts) or None


@dataclass
class MetricsSnapshot:
    """Every sample of one scrape: {metric name: [(labels, value), ...]}."""

    series: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, only: tuple[str, ...] | None = None) -> MetricsSnapshot:
        """Parse a scrape; with ``only``, just the samples of those metric names.

        Why ``only``: the parser is pure Python (~7 ms for the simulator's 15 KB, several
        times that for a real server's), and the gauge sampler runs on the client's event
        loop every 1.5 model s, holding back the stamps of every stream meanwhile. Dropping
        the other lines first (one regex pass) leaves it ~0.5 ms of work.
        """
        if only is not None:
            text = "".join(m.group(0) for m in _sample_lines(only).finditer(text))
        series: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name.removeprefix("sglang:")
                series.setdefault(name, []).append((dict(sample.labels), float(sample.value)))
        return cls(series)

    @classmethod
    async def take(cls, fetch: Fetch) -> MetricsSnapshot | None:
        """One scrape now; None when the server has no metrics endpoint."""
        text = await fetch()
        return cls.parse(text) if text else None

    def value(self, name: str, **labels: str) -> float | None:
        """Sum of the samples of ``name`` whose labels include ``labels`` (``"prefix*"``
        matches by prefix); None if absent."""
        matches = [v for lab, v in self.series.get(name, ()) if _contains(lab, labels)]
        return sum(matches) if matches else None

    def workers(self) -> list[str]:
        """The fleet's workers this scrape has samples of (merge_expositions), in order seen."""
        return list(dict.fromkeys(labels[WORKER_LABEL] for samples in self.series.values() for labels, _ in samples
                                  if labels.get(WORKER_LABEL, ROUTER_SOURCE) != ROUTER_SOURCE))

    def buckets(self, name: str) -> dict[float, float]:
        """Histogram ``name``'s cumulative counts by upper bound, summed over label sets."""
        counts: dict[float, float] = {}
        for labels, value in self.series.get(f"{name}_bucket", ()):
            bound = float(labels.get("le", "nan"))
            if not math.isnan(bound):
                counts[bound] = counts.get(bound, 0.0) + value
        return counts


def counter_deltas(before: MetricsSnapshot | None, after: MetricsSnapshot | None,
                   keys: Iterable[str] = CACHE_COUNTERS, worker: str | None = None) -> dict[str, float | None]:
    """Counter increases over a window, keyed like report.json's cache block (one fleet
    worker's with ``worker``)."""
    deltas: dict[str, float | None] = {}
    for key in keys:
        name, labels = CACHE_COUNTERS[key]
        labels = {**labels, WORKER_LABEL: worker} if worker is not None else labels
        old = before.value(name, **labels) if before else None
        new = after.value(name, **labels) if after else None
        if new is None:
            deltas[key] = None
        elif old is None:
            deltas[key] = new
        else:
            deltas[key] = new - old if new >= old else None
    return deltas


@dataclass
class HistogramDelta:
    """A histogram's observations over a window: bucket, count and sum increases."""

    buckets: dict[float, float]
    count: float
    total: float

    @classmethod
    def between(cls, before: MetricsSnapshot | None, after: MetricsSnapshot | None,
                name: str = QUEUE_TIME) -> HistogramDelta | None:
        """None when the server does not export ``name``, or restarted in between."""
        new = after.buckets(name) if after else {}
        if after is None or not new:
            return None
        old = before.buckets(name) if before else {}
        buckets = {bound: count - old.get(bound, 0.0) for bound, count in new.items()}
        if any(count < 0 for count in buckets.values()):
            return None

        def grown(suffix: str) -> float:
            start = (before.value(f"{name}{suffix}") if before else None) or 0.0
            return (after.value(f"{name}{suffix}") or 0.0) - start

        return cls(buckets, grown("_count"), grown("_sum"))

    @classmethod
    def merged(cls, deltas: Iterable[HistogramDelta | None]) -> HistogramDelta | None:
        """Several windows (a level's repeats) as one; None if none was measured."""
        seen = [d for d in deltas if d is not None]
        if not seen:
            return None
        buckets: dict[float, float] = {}
        for delta in seen:
            for bound, count in delta.buckets.items():
                buckets[bound] = buckets.get(bound, 0.0) + count
        return cls(buckets, sum(d.count for d in seen), sum(d.total for d in seen))

    def summary(self) -> dict[str, float | None]:
        """Mean, P50 and P95 in the histogram's unit; quantiles as PromQL's
        histogram_quantile estimates them, so only as fine as the buckets."""
        pairs = list(self.buckets.items())
        return {"count": self.count, "mean_s": self.total / self.count if self.count > 0 else None,
                "p50_s": bucket_quantile(pairs, 0.50), "p95_s": bucket_quantile(pairs, 0.95)}


def host_used_after(snapshot: MetricsSnapshot | None) -> float | None:
    return snapshot.value("hicache_host_used_tokens") if snapshot else None


def sim_pacing(before: MetricsSnapshot | None, after: MetricsSnapshot | None) -> dict[str, float] | None:
    """How far the simulator fell behind wall time over a window (None for a real server).

    A step delivered late stretches the gaps and latencies of the streams in it, so the
    evidence belongs beside the figures: steps later than the simulator's warning threshold
    during the window, and its worst lateness since start, in model seconds.
    """
    late_after = after.value("glmperf_sim_late_steps_total") if after else None
    if late_after is None:
        return None
    late_before = (before.value("glmperf_sim_late_steps_total") if before else None) or 0.0
    return {"late_steps": max(0.0, late_after - late_before),
            "lag_max_since_start_s": after.value("glmperf_sim_lag_seconds", stat="max") or 0.0}


def merge_pacing(windows: Iterable[dict[str, float] | None]) -> dict[str, float] | None:
    """Pacing over several windows: late steps add up, the worst lateness is the largest seen."""
    seen = [w for w in windows if w]
    if not seen:
        return None
    return {"late_steps": sum(w["late_steps"] for w in seen),
            "lag_max_since_start_s": max(w["lag_max_since_start_s"] for w in seen)}


class GaugeSampler:
    """Samples gauges every ``interval_s`` model seconds while a workload runs."""

    def __init__(self, fetch: Fetch, clock: ModelClock, interval_s: float = 1.5,
                 names: Iterable[str] = GAUGES, min_wall_interval_s: float = 0.1) -> None:
        self.fetch, self.clock = fetch, clock
        self.interval_s = interval_s
        self.min_wall_interval_s = min_wall_interval_s
        self.names = tuple(names)
        self.series = {name: GaugeSeries(name) for name in self.names}
        self.errors = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._loop())

    async def stop(self) -> dict[str, GaugeSeries]:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        return self.series

    async def _loop(self) -> None:
        wall_interval = max(self.clock.to_wall(self.interval_s), self.min_wall_interval_s)
        while True:
            await self.sample_once()
            await asyncio.sleep(wall_interval)

    async def sample_once(self) -> None:
        at = self.clock.now()
        text = await self.fetch()
        if text is None:
            self.errors += 1
            return
        snapshot = MetricsSnapshot.parse(text, only=self.names)
        workers = snapshot.workers()
        for name in self.names:
            mine = [snapshot.value(name, **{WORKER_LABEL: worker}) for worker in workers]
            for worker, value in zip(workers, mine, strict=True):  # a fleet: each worker's own series too
                self._add(f"{name}@{worker}", at, value)
            shown = [v for v in mine if v is not None]
            # A fleet's fractions (KV usage) are averaged over its workers; counts and rates add up.
            self._add(name, at, sum(shown) / len(shown) if name in FRACTION_GAUGES and shown
                      else snapshot.value(name))

    def _add(self, name: str, at: float, value: float | None) -> None:
        if value is not None and not math.isnan(value):
            self.series.setdefault(name, GaugeSeries(name)).samples.append((at, value))


@functools.lru_cache(maxsize=8)
def _sample_lines(names: tuple[str, ...]) -> re.Pattern[str]:
    """Sample lines (with their newline) of exactly these names, ``sglang:`` prefix or not."""
    alternatives = "|".join(re.escape(name) for name in names)
    return re.compile(rf"^(?:sglang:)?(?:{alternatives})[{{ \t].*\n?", re.MULTILINE)


def _contains(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    """Every wanted label matches; a value ending in ``*`` matches by prefix."""
    return all(labels.get(k, "").startswith(v[:-1]) if v.endswith("*") else labels.get(k) == v
               for k, v in wanted.items())
