"""An observation window: one load window with the server and the client watched around it.

Before the load the server's counters are scraped, during it its gauges are sampled and the
client checks itself (event-loop lag, CPU, achieved concurrency), after it the counters are
scraped again. What the window saw becomes evidence beside the level's statistics: stalls
explained by what the server was doing, its queue time, the simulator's pacing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from .attribution import attribute_stalls
from .client import StreamingClient
from .records import RequestRecord
from .scrape import (
    ROUTER_SOURCE,
    WORKER_LABEL,
    GaugeSampler,
    HistogramDelta,
    MetricsSnapshot,
    counter_deltas,
    host_used_after,
    sim_pacing,
)
from .selfcheck import ClientHealth, ClientMonitor
from .stats import GaugeSeries
from .workloads import Load

STALLS_KEPT = 10


class Window:
    """One load window under observation: server gauges sampled, the client checking itself."""

    def __init__(self, load: Load, kinds: tuple[str, ...], target_concurrency: int, window_s: float) -> None:
        self.load, self.kinds = load, kinds
        self.target_concurrency, self.window_s = target_concurrency, window_s
        self.gauges: dict[str, GaugeSeries] = {}
        self.health: ClientHealth | None = None
        self.before: MetricsSnapshot | None = None
        self.after: MetricsSnapshot | None = None
        self.interrupted = True

    @property
    def pacing(self) -> dict[str, float] | None:
        return sim_pacing(self.before, self.after)

    @asynccontextmanager
    async def observe(self, client: StreamingClient, spec_interval_s: float) -> AsyncIterator[Window]:
        """Sample gauges and watch the client while the body runs; judge the client after."""
        sampler = GaugeSampler(client.metrics_text, self.load.clock, spec_interval_s)
        monitor = ClientMonitor()
        self.before = await MetricsSnapshot.take(client.metrics_text)
        sampler.start()
        try:
            async with monitor:
                yield self
            self.interrupted = False
        finally:
            self.gauges = await sampler.stop()
            self.after = await MetricsSnapshot.take(client.metrics_text)
            run = self.load.run
            span = (run.start_ns, run.start_ns + int(self.load.clock.to_wall(run.load_s or self.window_s) * 1e9))
            self.health = monitor.health([r for r in run.records if r.kind in self.kinds], span,
                                         self.target_concurrency)

    def gauge_samples(self) -> dict[str, list[tuple[float, float]]]:
        """Gauge samples in model seconds since the load window started (the records' origin)."""
        offset = (self.load.run.start_ns - self.load.clock.start_ns) / 1e9 * self.load.clock.time_scale
        return {name: [(t - offset, v) for t, v in series.samples] for name, series in self.gauges.items()}

    def cache_deltas(self) -> dict[str, float | None]:
        """The server's counter deltas over the window, and its host tier's use after it."""
        deltas = counter_deltas(self.before, self.after)
        deltas["host_used_after_tokens"] = host_used_after(self.after)
        return deltas


def server_counters(windows: Sequence[Window]) -> dict[str, float | None]:
    """The server's counter deltas summed over a level's windows (its repeats), and its host
    tier's use after the last: cache hits by tier, evictions, load-backs, retractions, tokens."""
    return _summed([w.cache_deltas() for w in windows])


def worker_breakdown(windows: Sequence[Window]) -> dict[str, dict[str, Any]] | None:
    """A fleet's figures per worker over a level's windows: counter deltas (requests, tokens,
    cache hits by tier, evictions) and gauge summaries (running, queue, KV use). None for one server."""
    names = dict.fromkeys(name for w in windows for snapshot in (w.before, w.after) if snapshot
                          for name in snapshot.workers())
    if not names:
        return None
    gauges = server_gauges(windows)
    return {name: {"counters": _summed([counter_deltas(w.before, w.after, worker=name) for w in windows]),
                   "gauges": {gauge.removesuffix(f"@{name}"): summary for gauge, summary in gauges.items()
                              if gauge.endswith(f"@{name}")}}
            for name in names}


def routing_locality(records: Iterable[RequestRecord]) -> dict[str, float | int | None]:
    """How often a return to a repository found it cached where it landed.

    A follow-up is a successful request on a context already sent in this window (an agent's
    next turn, a revisit); it counts as local when at least half its prompt was served from
    cache (``usage`` cached tokens), which behind a router means it reached the worker holding
    that repository. ``cached_share``: cached prompt tokens over all follow-ups' prompt tokens.
    """
    seen: set[int] = set()
    follow_ups = local = cached = prompt = 0
    for record in sorted(records, key=lambda r: r.send_ns):
        if record.context_id is None or not record.ok:
            continue
        if record.context_id in seen and record.prompt_tokens:
            follow_ups += 1
            hit = record.cached_tokens or 0
            local += hit >= LOCAL_CACHED_SHARE * record.prompt_tokens
            cached, prompt = cached + hit, prompt + record.prompt_tokens
        seen.add(record.context_id)
    return {"follow_ups": follow_ups, "local": local, "locality": local / follow_ups if follow_ups else None,
            "cached_share": cached / prompt if prompt else None}


LOCAL_CACHED_SHARE = 0.5


def router_counters(windows: Sequence[Window]) -> dict[str, Any] | None:
    """What the router itself counted over a level's windows (sglang-router's smg_* metrics):
    requests it routed, and each worker's outcomes by URL (its circuit breaker's success /
    failure counts). None when no router exposition was scraped."""
    def delta(window: Window, name: str, **labels: str) -> float | None:
        labels = {**labels, WORKER_LABEL: ROUTER_SOURCE}
        new = window.after.value(name, **labels) if window.after else None
        old = (window.before.value(name, **labels) if window.before else None) or 0.0
        return None if new is None else new - old

    routed = [d for w in windows if (d := delta(w, "smg_router_requests_total")) is not None]
    if not routed:
        return None
    urls = dict.fromkeys(labels["worker"] for w in windows if w.after
                         for labels, _ in w.after.series.get("smg_worker_cb_outcomes_total", ()) if "worker" in labels)
    outcomes = {url: {outcome: sum(delta(w, "smg_worker_cb_outcomes_total", worker=url, outcome=outcome) or 0.0
                                   for w in windows) for outcome in ("success", "failure")} for url in urls}
    return {"requests": sum(routed), "worker_outcomes": outcomes}


def _summed(per_window: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Counter deltas of several windows added up; the host tier's use is the last window's."""
    keys = dict.fromkeys(k for deltas in per_window for k in deltas)
    summed: dict[str, float | None] = {}
    for key in keys:
        values = [d.get(key) for d in per_window if d.get(key) is not None]
        summed[key] = (values[-1] if key == "host_used_after_tokens" else sum(values)) if values else None
    return summed


def server_gauges(windows: Sequence[Window]) -> dict[str, dict[str, float | None]]:
    """Each sampled gauge (running, queue, KV usage, …) summarised over all of a level's windows."""
    names = dict.fromkeys(name for w in windows for name in w.gauges)
    return {name: GaugeSeries(name, [s for w in windows for s in w.gauges.get(name, GaugeSeries(name)).samples])
            .summary() for name in names}


def stalls(windows: Iterable[Window], bar_gap_s: float) -> dict[str, Any]:
    """Why the worst gaps happened (at most STALLS_KEPT of them, longest first)."""
    found = [stall for w in windows for stall in attribute_stalls(
        w.load.run.records, w.gauge_samples(), bar_gap_s, w.load.run.start_ns)]
    found.sort(key=lambda stall: -stall["gap_s"])
    return {"count": len(found), "worst": found[:STALLS_KEPT]}


def server_queue(windows: Iterable[Window]) -> dict[str, float | None] | None:
    """The server's queue_time_seconds over these windows (a level's repeats) as one
    summary; None when the server does not export it."""
    queue = HistogramDelta.merged(HistogramDelta.between(w.before, w.after) for w in windows)
    return queue.summary() if queue else None
