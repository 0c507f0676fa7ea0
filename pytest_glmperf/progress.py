"""Progress a person can follow: nothing the session waits on stays silent for long.

A load window prints its own line every few seconds; everything else it waits on (the
calibration probes, a refused cache flush, priming, opening connections) runs under
``heartbeat``, which says what it is waiting for at least every ``HEARTBEAT_S`` wall seconds.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

Progress = Callable[[str], None]
# Wall seconds between "still waiting" lines; GLMPERF_HEARTBEAT_S shortens it for tests.
HEARTBEAT_S = float(os.environ.get("GLMPERF_HEARTBEAT_S", "30"))


@asynccontextmanager
async def heartbeat(say: Progress, what: str, every_s: float | None = None) -> AsyncIterator[None]:
    """Say ``what: still waiting (N s)`` every ``every_s`` wall seconds until the body ends."""
    interval = every_s or HEARTBEAT_S
    began = time.monotonic()

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            say(f"{what}: still waiting ({time.monotonic() - began:.0f} s)")

    task = asyncio.ensure_future(beat())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
