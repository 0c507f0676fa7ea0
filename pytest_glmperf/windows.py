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
from .scrape import GaugeSampler, HistogramDelta, MetricsSnapshot, counter_deltas, host_used_after, sim_pacing
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
    per_window = [w.cache_deltas() for w in windows]
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
