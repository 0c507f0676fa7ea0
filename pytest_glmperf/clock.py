"""Model time: the seconds of the server being measured.

Against a real server model time is wall time. The simulator can run K times faster than
real time (``--time-scale K``); workloads then schedule in model seconds and every figure
is reported in model seconds, so a run at any scale reads like one on the real server.
"""

from __future__ import annotations

import asyncio
import time


class ModelClock:
    """Monotonic model-time clock starting at construction."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be positive")
        self.time_scale = time_scale
        self.start_ns = time.perf_counter_ns()

    def now(self) -> float:
        """Model seconds since the clock started."""
        return (time.perf_counter_ns() - self.start_ns) / 1e9 * self.time_scale

    def to_wall(self, model_s: float) -> float:
        return model_s / self.time_scale

    async def sleep(self, model_s: float) -> None:
        if model_s > 0:
            await asyncio.sleep(model_s / self.time_scale)

    async def sleep_until(self, model_t: float) -> None:
        await self.sleep(model_t - self.now())
