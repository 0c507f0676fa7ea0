"""Client self-check: is the measuring client itself the bottleneck?

Runs beside every workload window. It samples the event loop's lag (how late a 10 ms sleep
wakes up: every stamp the client takes is late by as much), the client process's CPU share,
and the achieved concurrency (the time-average of requests in flight, from the records)
against the target; a shortfall only counts when no request failed, since pauses after
server failures are not the client's doing. When the client
is saturated, the level's numbers describe the client, not the server: the level is
*invalid*, never a pass or a fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .records import RequestRecord
from .stats import percentile

PROBE_INTERVAL_S = 0.01


@dataclass(frozen=True)
class HealthLimits:
    """When a measurement is void. Loop lag P99 above 50 ms means stamps are off by that much."""

    max_loop_lag_p99_ms: float = 50.0
    max_cpu_fraction: float = 0.95
    min_concurrency_ratio: float = 0.8


@dataclass
class ClientHealth:
    """What the self-check saw over one window."""

    loop_lag_p50_ms: float | None = None
    loop_lag_p99_ms: float | None = None
    loop_lag_max_ms: float | None = None
    cpu_fraction: float | None = None
    target_concurrency: int | None = None
    achieved_concurrency: float | None = None
    invalid_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class ClientMonitor:
    """Samples event-loop lag and client CPU while a window runs (async context manager)."""

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._cpu0 = self._wall0 = 0.0
        self.cpu_s = self.wall_s = 0.0

    async def __aenter__(self) -> ClientMonitor:
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self._task = asyncio.ensure_future(self._probe())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.cpu_s, self.wall_s = time.process_time() - self._cpu0, time.perf_counter() - self._wall0

    async def _probe(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(PROBE_INTERVAL_S)
            self.lags_ms.append(max(0.0, (time.perf_counter() - before - PROBE_INTERVAL_S) * 1000))

    def health(self, records: Sequence[RequestRecord], window: tuple[int, int], target: int | None,
               limits: HealthLimits | None = None) -> ClientHealth:
        """Judge the window: lag and CPU from the probe, concurrency from the records."""
        result = ClientHealth(
            loop_lag_p50_ms=percentile(self.lags_ms, 50), loop_lag_p99_ms=percentile(self.lags_ms, 99),
            loop_lag_max_ms=max(self.lags_ms, default=None),
            cpu_fraction=self.cpu_s / self.wall_s if self.wall_s > 0 else None,
            target_concurrency=target, achieved_concurrency=achieved_concurrency(records, *window),
        )
        failures = sum(not r.ok for r in records)
        result.invalid_reason = judge_health(result, limits or HealthLimits(), failures)
        return result


def achieved_concurrency(records: Sequence[RequestRecord], start_ns: int, end_ns: int) -> float | None:
    """Time-average number of requests in flight (send..close) within [start, end]."""
    if end_ns <= start_ns:
        return None
    busy = 0
    for record in records:
        if record.done_ns is None:
            continue
        busy += max(0, min(record.done_ns, end_ns) - max(record.send_ns, start_ns))
    return busy / (end_ns - start_ns)


def judge_health(health: ClientHealth, limits: HealthLimits, failures: int = 0) -> str | None:
    """The reason the client distorted the measurement, or None when it did not."""
    reasons = []
    if health.loop_lag_p99_ms is not None and health.loop_lag_p99_ms > limits.max_loop_lag_p99_ms:
        reasons.append(f"client event-loop lag P99 {health.loop_lag_p99_ms:.0f} ms > "
                       f"{limits.max_loop_lag_p99_ms:g} ms")
    if health.cpu_fraction is not None and health.cpu_fraction > limits.max_cpu_fraction:
        reasons.append(f"client CPU {health.cpu_fraction:.0%} of one core > {limits.max_cpu_fraction:.0%}")
    if (not failures and health.target_concurrency and health.achieved_concurrency is not None
            and health.achieved_concurrency < limits.min_concurrency_ratio * health.target_concurrency):
        reasons.append(f"achieved concurrency {health.achieved_concurrency:.2f} < "
                       f"{limits.min_concurrency_ratio:.0%} of target {health.target_concurrency}")
    return "; ".join(reasons) or None
