"""The pacing loop: runs the pure engine model against the wall clock.

Model time (the simulated GPU server's seconds) runs ``time_scale`` times faster than wall
time. Both clocks are mapped through one anchor taken at start-up, using
``time.perf_counter_ns`` (CLOCK_MONOTONIC on Linux, the same clock the client in another
process stamps chunks with):

    wall_ns(model_s) = anchor_wall_ns + (model_s - anchor_model_s) / time_scale * 1e9

The loop, like SGLang's scheduler: while the engine has work, compute one step, sleep until
the wall instant of the step's *end*, then hand the step's emissions to the per-request
streams. Requests that arrive while a step "runs" are added to the engine at once and join
the next step, because the engine's clock already stands at the current step's end. When
idle, the loop waits for an arrival, and the engine's clock is advanced to the arrival's
model time.

Deadlines are absolute, so timer jitter never accumulates. If the loop falls behind (the
host is too slow for the chosen time scale) steps are delivered late and then catch up, up to
``MAX_CATCH_UP_STEPS`` due steps back to back before other work runs again. The lateness
is measured per step, exported (``glmperf_sim_lag_seconds``, ``sim_lag_max_s`` in
``/server_info``) and logged as a warning, never hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .metrics import RequestHistograms, SimHealth
from .types import SimRequest, StepResult, TokenEmission

log = logging.getLogger("glmperf.sim")

SPIN_NS = 1_000_000            # busy-wait the last millisecond: epoll wakes in whole ms
LAG_WARN_S = 0.1               # model seconds late before a step counts as "late"
LAG_LOG_INTERVAL_NS = 10_000_000_000
# A step already due is delivered at once, without a trip through the event loop's ready
# queue: each trip waits behind every other ready callback (slices of long prompts being
# tokenized, stream writes), so the lag grew by a round of them per step (a fresh 100k
# prompt made the suite's hicache run ~180 steps late, up to 0.6 model s). After this many
# such steps the loop gets its turn anyway, so a driver far behind never starves it.
MAX_CATCH_UP_STEPS = 8


class Pacer:
    """Wakes awaiting coroutines at precise ``perf_counter_ns`` deadlines.

    Why not ``asyncio.sleep``: the selector rounds its timeout up to whole milliseconds, so
    a plain sleep overshoots by up to 1 ms, which at time scale 10 is 10 model ms of jitter
    on every chunk. We sleep to ``spin_ns`` before the deadline and busy-wait the rest.
    """

    def __init__(self, spin_ns: int = SPIN_NS) -> None:
        self.spin_ns = spin_ns

    def until(self, deadline_ns: int) -> asyncio.Future[None]:
        """A future that completes at *deadline_ns* (always after yielding to the loop once).

        Whoever holds it may complete it early with ``set_result(None)`` to cut a wait short.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        remaining = deadline_ns - time.perf_counter_ns()
        if remaining <= 0:
            loop.call_soon(_resolve, fut)
        elif remaining <= self.spin_ns:
            loop.call_soon(self._fire, fut, deadline_ns)
        else:
            loop.call_later((remaining - self.spin_ns) / 1e9, self._fire, fut, deadline_ns)
        return fut

    def _fire(self, fut: asyncio.Future[None], deadline_ns: int) -> None:
        if fut.done():  # completed early by its owner
            return
        remaining = deadline_ns - time.perf_counter_ns()
        if remaining > self.spin_ns:  # woke early (never expected): sleep again
            asyncio.get_running_loop().call_later(
                (remaining - self.spin_ns) / 1e9, self._fire, fut, deadline_ns
            )
            return
        while time.perf_counter_ns() < deadline_ns:
            pass
        _resolve(fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class RequestStream:
    """The emissions of one engine request, waiting to be written by its HTTP handler."""

    __slots__ = (
        "_waiter", "aborted", "arrival_s", "cached_tokens", "failure", "finished", "items",
        "last_s", "prompt_tokens", "rid", "tokens",
    )

    def __init__(self, rid: str, arrival_s: float, prompt_tokens: int = 0) -> None:
        self.rid = rid
        self.arrival_s = arrival_s
        self.prompt_tokens = prompt_tokens
        self.cached_tokens = 0
        self.items: deque[TokenEmission] = deque()
        self.tokens = 0
        self.last_s: float | None = None
        self.finished = False
        self.aborted = False
        # (HTTP status, message) when the server aborted it (a PD transfer failed): the
        # handler answers that instead of just ending the stream.
        self.failure: tuple[int, str] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def push(self, emission: TokenEmission) -> None:
        """Queue one emission and wake the handler."""
        self.items.append(emission)
        self._wake()

    def close(self) -> None:
        """Wake the handler for good (abort or shutdown)."""
        self.aborted = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def take(self) -> list[TokenEmission]:
        """Everything queued so far, waiting for at least one item (empty list: aborted).

        Several queued emissions come back together, so a handler that fell behind writes
        them as one chunk: SGLang's TokenizerManager coalesces a backlog the same way.
        """
        while not self.items and not self.aborted:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        out = list(self.items)
        self.items.clear()
        return out


class Driver:
    """Paces an engine's steps against wall time and feeds the request streams."""

    def __init__(
        self,
        engine: Any,
        time_scale: float,
        latency: RequestHistograms,
        health: SimHealth,
        pacer: Pacer | None = None,
        lag_warn_s: float = LAG_WARN_S,
    ) -> None:
        if time_scale <= 0:
            raise ValueError("time scale must be > 0")
        self.engine = engine
        self.scale = float(time_scale)
        self.latency = latency
        self.health = health
        self.pacer = pacer or Pacer()
        self.lag_warn_s = lag_warn_s
        self.anchor_wall_ns = time.perf_counter_ns()
        self.anchor_model_s = float(engine.now)
        self.streams: dict[str, RequestStream] = {}
        self.on_step: Callable[[StepResult], None] | None = None
        self._idle: asyncio.Future[None] | None = None
        self._parked = False    # the loop waits for news: the engine clock may lag wall time
        self._task: asyncio.Task[None] | None = None
        self._last_lag_log_ns = 0

    # -- clocks -----------------------------------------------------------------------------
    def model_now(self) -> float:
        """Model seconds corresponding to this wall instant."""
        return self.model_at(time.perf_counter_ns())

    def model_at(self, wall_ns: int) -> float:
        """Model seconds corresponding to a perf_counter_ns stamp."""
        return self.anchor_model_s + (wall_ns - self.anchor_wall_ns) / 1e9 * self.scale

    def wall_ns(self, model_s: float) -> int:
        """perf_counter_ns instant corresponding to model time *model_s*."""
        return self.anchor_wall_ns + round((model_s - self.anchor_model_s) / self.scale * 1e9)

    # -- requests ---------------------------------------------------------------------------
    def submit(self, request: SimRequest, at_s: float | None = None,
               arrived_s: float | None = None) -> RequestStream:
        """Hand a request to the engine now; it joins the engine's next step.

        ``at_s``: the model instant the request became schedulable when that is already past
        (a PD prefill worker admits a request when the decode worker's handshake was sent, not
        when the HTTP message carrying it was read). ``arrived_s``: when it reached the server,
        if earlier, for its TTFT and latency.

        Raises ValueError from the engine (e.g. prompt + max tokens beyond the context), which
        the HTTP layer turns into a 400 before the stream starts, as SGLang does.
        """
        now = self.model_now()
        if at_s is not None:
            now = min(now, at_s)
        if (self._parked or not self.engine.has_work()) and now > self.engine.now:
            self.engine.advance_to(now)
        request.arrival_s = min(now, self.engine.now)
        self.engine.add_request(request)
        arrival = request.arrival_s if arrived_s is None else min(arrived_s, request.arrival_s)
        stream = RequestStream(request.rid, arrival, request.prompt_tokens)
        self.streams[request.rid] = stream
        self._wake()
        return stream

    def catch_up_idle(self) -> None:
        """Bring an idle engine's clock to now, so its idle metrics log (every 30 s of
        model time) shows on a scrape that no request preceded."""
        if self._parked or not self.engine.has_work():
            self.engine.advance_to(self.model_now())

    def abort(self, rid: str) -> None:
        """Drop a request (client gone, injected fault): frees its KV in the engine."""
        stream = self.streams.pop(rid, None)
        if stream is None:
            return
        stream.close()
        self.engine.abort(rid)
        self._wake()

    def fail(self, rid: str, code: int, message: str) -> None:
        """The server aborts a request (a PD handshake or transfer failed): its handler
        answers ``code`` and ``message``; the engine frees its KV."""
        stream = self.streams.get(rid)
        if stream is not None:
            stream.failure = (code, message)
        self.abort(rid)

    def notify(self) -> None:
        """Something outside the engine changed what it can do (a PD transfer's arrival time
        became known): a parked loop asks the engine again (``wake_at``)."""
        self._wake()

    def _wake(self) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def busy(self) -> bool:
        """True while any request is queued, running, or waiting to be written out."""
        return bool(self.streams) or bool(self.engine.has_work())

    # -- loop -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the pacing task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="glmperf-sim-driver")

    async def stop(self) -> None:
        """Stop the loop and release every waiting handler."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for stream in list(self.streams.values()):
            stream.close()
        self.streams.clear()

    async def _run(self) -> None:
        caught_up = 0  # due steps delivered since the loop last ran other work
        while True:
            if not self.engine.has_work():
                await self._park(None)
                continue
            step = self.engine.step()
            if step.duration_s <= 0 and not step.emissions:  # nothing can run: wait for news
                await self._park(self.engine.wake_at())
                continue
            target = self.wall_ns(step.end_s)
            if target > time.perf_counter_ns() or caught_up >= MAX_CATCH_UP_STEPS:
                await self.pacer.until(target)
                caught_up = 0
            else:  # already due: deliver now rather than queue behind the loop's other work
                caught_up += 1
            self._note_lag(time.perf_counter_ns() - target)
            self._deliver(step)
            if self.on_step is not None:
                self.on_step(step)

    async def _park(self, wake_s: float | None) -> None:
        """Wait for an arrival (``_wake``), or until model time ``wake_s`` if given (an L3
        prefetch may end then); the engine clock follows to the earlier of the two."""
        loop = asyncio.get_running_loop()
        self._idle = loop.create_future() if wake_s is None else self.pacer.until(self.wall_ns(wake_s))
        self._parked = True
        try:
            await self._idle
        finally:
            self._parked = False
            self._idle = None
        if wake_s is not None:
            self.engine.advance_to(min(wake_s, self.model_now()))

    def _note_lag(self, late_ns: int) -> None:
        """Record how late this step was delivered, in model seconds; warn when it matters."""
        health = self.health
        lag = max(0.0, late_ns / 1e9 * self.scale)
        health.lag_s = lag
        if lag > health.lag_max_s:
            health.lag_max_s = lag
        if lag <= self.lag_warn_s:
            return
        health.late_steps += 1
        now = time.perf_counter_ns()
        if now - self._last_lag_log_ns >= LAG_LOG_INTERVAL_NS:
            self._last_lag_log_ns = now
            log.warning(
                "simulator is behind wall time: step delivered %.3f model s late (max %.3f s, "
                "%d late steps) at time scale %g; timings are stretched, lower --time-scale",
                lag, health.lag_max_s, health.late_steps, self.scale,
            )

    def _deliver(self, step: StepResult) -> None:
        """Give each emission to its stream and feed SGLang's latency histograms (the queue
        time too: SGLang observes it as the batch forms, this a step later, at its end)."""
        end = step.end_s
        latency = self.latency
        for waited in step.queue_times_s:
            latency.observe_queue(waited)
        for em in step.emissions:
            stream = self.streams.get(em.rid)
            if stream is None:
                continue
            if stream.last_s is None:
                latency.observe_ttft(end - stream.arrival_s)
                stream.cached_tokens = em.cached_tokens
            else:
                latency.observe_itl(end - stream.last_s, em.tokens)
            stream.last_s = end
            stream.tokens += em.tokens
            if em.finished:
                stream.finished = True
                latency.observe_e2e(end - stream.arrival_s)
                latency.observe_finished(stream.prompt_tokens, stream.cached_tokens, stream.tokens)
                del self.streams[em.rid]
            stream.push(em)


# -- what the HTTP layer reads from a request stream -------------------------------------

Parts = list[tuple[bool, int]]        # (is_reasoning, tokens) per chunk


class ReasoningSplit:
    """Sends the first ``budget`` output tokens as reasoning, the rest as content."""

    def __init__(self, budget: int, stream_reasoning: bool) -> None:
        self.left = budget
        self.stream_reasoning = stream_reasoning
        self.held = 0

    def split(self, tokens: int, finished: bool) -> Parts:
        r = min(tokens, self.left)
        self.left -= r
        c = tokens - r
        if not self.stream_reasoning:  # buffered until reasoning ends, then one chunk
            self.held += r
            r = 0
            if c or finished or not self.left:
                r, self.held = self.held, 0
        parts: Parts = []
        if r:
            parts.append((True, r))
        if c:
            parts.append((False, c))
        return parts


class EngineSource:
    """Token batches of one engine request, as the pacing driver delivers them.

    ``next()`` returns ``(parts, finished)`` where parts are ``(is_reasoning, tokens)`` per
    chunk to write, or None once the request was aborted.
    """

    def __init__(self, stream: RequestStream, split: ReasoningSplit,
                 on_first: Callable[[TokenEmission], None], abort: Callable[[], None],
                 stream_interval: int = 1) -> None:
        self.stream = stream
        self.split = split
        self.on_first = on_first
        self.abort = abort
        self.interval = stream_interval
        self._first = True
        self._generated = 0
        self._held = 0

    @property
    def failure(self) -> tuple[int, str] | None:
        """(HTTP status, message) when the server aborted the request, else None."""
        return self.stream.failure

    async def next(self) -> tuple[Parts, bool] | None:
        while True:
            items = await self.stream.take()
            if not items:
                return None
            if self._first:
                self._first = False
                self.on_first(items[0])
            tokens = self._release(items)
            finished = items[-1].finished
            if tokens or finished:
                return self.split.split(tokens, finished), finished

    def _release(self, items: list[TokenEmission]) -> int:
        """Tokens the scheduler sends out now, by SGLang's ``--stream-interval N`` rule
        (scheduler_output_processor_mixin): after a step that leaves the output length at 1
        mod N (every step when N is 1), or when the request finishes; tokens held back ride
        on the next output. With EAGLE the length jumps, so some outputs wait longer."""
        out = 0
        for emission in items:
            self._generated += emission.tokens
            self._held += emission.tokens
            if emission.finished or self.interval == 1 or self._generated % self.interval == 1:
                out, self._held = out + self._held, 0
        return out

    def shift(self, ns: int) -> None:
        """A stall does not move the engine: its backlog is coalesced after the stall."""
