"""Users' own scenarios: an agent coroutine run in closed loops at a concurrency level.

``glmperf_scenario(fn, concurrency=4, duration_s=60)`` runs ``fn(agent)`` again and again in
each of ``concurrency`` loops until the window ends; every request an agent sends joins the
scenario's statistics and records.jsonl, and the scenario is judged, observed and reported
like a capacity level (``GlmperfServer.scenario``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .progress import Progress
from .records import RequestRecord
from .workloads import Load


class Agent:
    """What a user's scenario coroutine gets: its index, turn, state, and a way to send."""

    def __init__(self, index: int, load: Load, deadline: float) -> None:
        self.index, self.turn = index, 0
        self.state: dict[str, Any] = {}
        self.contexts = load.factory
        self._load, self._deadline = load, deadline

    @property
    def time_left_s(self) -> float:
        return self._deadline - self._load.clock.now()

    async def send(self, messages: list[dict[str, str]], *, max_tokens: int, kind: str = "agent") -> RequestRecord:
        """Stream one request; its record joins the scenario's statistics and records.jsonl."""
        return await self._load.send_messages(kind, messages, max_tokens)


async def agent_loops(load: Load, agent: Callable[[Agent], Awaitable[None]], make: type[Agent], concurrency: int,
                      duration_s: float, failure_pause_s: float, progress: Progress | None = None) -> None:
    """``concurrency`` loops of ``agent`` until ``duration_s`` model seconds have passed; an
    agent whose request failed pauses before its next turn, as in the built-in workloads."""
    deadline = load.begin() + duration_s

    async def loop(index: int) -> None:
        handle = make(index, load, deadline)
        while load.clock.now() < deadline:
            sent = len(load.run.records)
            await agent(handle)
            handle.turn += 1
            if any(not r.ok for r in load.run.records[sent:]):
                await load.clock.sleep(failure_pause_s)

    loops = asyncio.gather(*(loop(i) for i in range(concurrency)))
    try:
        while not loops.done():
            await asyncio.wait({loops}, timeout=1.0)
            if progress:
                progress(load.summary(duration_s))
        loops.result()
    finally:
        if not loops.done():
            loops.cancel()
            await asyncio.gather(loops, return_exceptions=True)
    load.run.end_ns = time.perf_counter_ns()
