"""SIGTERM during a workload: the event loop unwinds in order, then the usual handler runs."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_glmperf.teardown import cancelled_by_sigterm, run_async


class Interrupted(KeyboardInterrupt):
    """What the test's SIGTERM handler raises (teardown's own raises KeyboardInterrupt)."""


@pytest.fixture
def sigterm_raises() -> Iterator[Any]:
    def handler(signum: int, frame: Any) -> None:
        raise Interrupted(f"signal {signum}")

    before = signal.signal(signal.SIGTERM, handler)
    yield handler
    signal.signal(signal.SIGTERM, before)


def test_sigterm_cancels_the_main_task_so_cleanup_that_awaits_other_tasks_completes(sigterm_raises: Any):
    # The shape of a capacity level: a helper task (gauge sampler, agents) that the main task's
    # `finally` awaits before judging the partial level. A handler raising inside the loop could
    # kill the helper instead, and the cleanup that awaits it would then never finish.
    cleaned_up: list[str] = []

    async def level() -> None:
        async def helper() -> str:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.01)
            return "sampled"

        task = asyncio.create_task(helper())
        try:
            await asyncio.sleep(30)
        finally:
            cleaned_up.append(await task)
            await asyncio.sleep(0)
            cleaned_up.append("judged")

    with pytest.raises(Interrupted):
        run_async(level())
    assert cleaned_up == ["sampled", "judged"]
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_in_a_loop_someone_else_runs_the_awaited_gather_is_cancelled_first(sigterm_raises: Any):
    # A scenario's agent loops under pytest-asyncio: SIGTERM cancels them (their `finally`
    # runs), and only then does the handler raise; a nested deferral passes straight through.
    unwound: list[int] = []

    async def agent(index: int) -> None:
        try:
            if index == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(30)
        finally:
            unwound.append(index)

    async def test_body() -> None:
        await cancelled_by_sigterm(cancelled_by_sigterm(asyncio.gather(agent(0), agent(1))))

    with pytest.raises(Interrupted):
        asyncio.run(test_body())
    assert sorted(unwound) == [0, 1]
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_without_a_signal_the_result_comes_back_and_the_handler_stays(sigterm_raises: Any):
    async def work() -> int:
        await asyncio.sleep(0)
        return 7

    assert run_async(work()) == 7
    assert signal.getsignal(signal.SIGTERM) is sigterm_raises


def test_default_sigterm_is_left_alone() -> None:
    before = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        async def work() -> bool:
            return signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

        assert run_async(work()) is True
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, before)
