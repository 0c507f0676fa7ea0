"""The field report's two coding-agent workloads, driven in model time.

* capacity: per concurrency level N, N closed-loop agents (agent i works on context i mod
  ``contexts``) plus one fresh long-prefill request every ``spike_interval_s``. With
  ``spike_mode`` "slot" (default) N bounds every request in flight, as a --max-concurrency
  semaphore does: the first agent free after a spike falls due sends it in place of its next
  request. With "extra" each spike goes out on time beside the N agents.
* mixed: ``decode_workers`` agents streaming long answers over a few repository contexts,
  a fresh ~100k-token prefill spike every ``spike_interval_s`` and, every
  ``revisit_interval_s``, a revisit: a request over the least recently used context that has
  already been worked on (an agent switching back to an old repository, never a first visit).

Both stop sending at the end of their window and let in-flight requests finish (drain).
Each record is handed to ``on_record`` the moment it completes. An agent whose request
failed pauses ``FAILURE_PAUSE_S`` before its next one, as a real agent would, instead of
hammering a broken server in a tight loop.

``prime`` is the warm start (``--warm-cache``): every context and spike text a window will
send, sent once beforehand, so the window measures a server that has seen its repositories
(the field report's hicache runs evidently had; docs/simulator.md).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from typing import Any, Protocol

from .clock import ModelClock
from .contexts import ContextFactory
from .errors import ConfigError
from .records import CUT, RequestRecord
from .stats import percentile


class StreamClient(Protocol):
    """What a workload needs from a client (pytest_glmperf.client.StreamingClient is one)."""

    def prepare(self, messages: list[dict[str, str]], *, max_tokens: int, temperature: float = 0.0,
                extra_body: dict[str, Any] | None = None) -> Any: ...

    async def stream(self, prepared: Any, record: RequestRecord) -> RequestRecord: ...


@dataclass(frozen=True)
class CapacitySpec:
    """Workload 2 of the field report (defaults are the field report's: README)."""

    contexts: int = 8
    context_tokens: int = 100_000
    max_output_tokens: int = 1024
    level_duration_s: float = 240.0
    spike_interval_s: float = 25.0
    spike_output_tokens: int = 64
    spike_mode: str = "slot"
    # A level whose agents finished fewer than ``min_agent_requests`` requests by
    # ``level_duration_s`` goes on (spikes too) until they have, up to ``max_level_duration_s``:
    # a 240 s level at c=1 holds ~5 agent requests, too few for any P95 (docs/metrics.md).
    min_agent_requests: int = 0
    max_level_duration_s: float | None = None

    def __post_init__(self) -> None:
        _positive(self, "contexts", "context_tokens", "max_output_tokens", "level_duration_s",
                  "spike_output_tokens")
        _non_negative(self, "spike_interval_s", "min_agent_requests")
        if self.spike_mode not in SPIKE_MODES:
            raise ConfigError(f"spike_mode must be one of {', '.join(SPIKE_MODES)}, got {self.spike_mode!r}")
        if self.max_level_duration_s is not None and self.max_level_duration_s < self.level_duration_s:
            raise ConfigError(f"max_level_duration ({self.max_level_duration_s:g} s) must be at least "
                              f"level_duration ({self.level_duration_s:g} s)")

    @property
    def longest_s(self) -> float:
        """The longest a level's load can run: its duration, or its extension's end."""
        return max(self.level_duration_s, self.max_level_duration_s or 0.0) if self.min_agent_requests \
            else self.level_duration_s

    @property
    def in_flight_kinds(self) -> tuple[str, ...]:
        """The request kinds that make up a level's N in flight: a spike is one of them in "slot" mode."""
        return ("agent", "spike") if self.spike_mode == "slot" else ("agent",)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MixedSpec:
    """Workload 1 of the field report (defaults are the field report's: README)."""

    contexts: int = 4
    context_tokens: int = 100_000
    decode_workers: int = 3
    max_output_tokens: int = 2048
    duration_s: float = 600.0
    spike_interval_s: float = 30.0
    spike_output_tokens: int = 64
    revisit_interval_s: float = 45.0
    gauge_interval_s: float = 1.5

    def __post_init__(self) -> None:
        _positive(self, "contexts", "context_tokens", "decode_workers", "max_output_tokens",
                  "duration_s", "spike_output_tokens", "gauge_interval_s")
        _non_negative(self, "spike_interval_s", "revisit_interval_s")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class WorkloadRun:
    """What one workload window produced: its records and when it started (wall ns)."""

    start_ns: int
    records: list[RequestRecord] = field(default_factory=list)
    end_ns: int | None = None
    load_s: float | None = None  # model seconds the window sent load, when it was extended


Progress = Callable[[str], None]
FAILURE_PAUSE_S = 1.0
SPIKE_MODES = ("slot", "extra")


class Load:
    """Shared machinery: build prompts, send one request, hand its record on."""

    def __init__(self, client: StreamClient, factory: ContextFactory, clock: ModelClock, *,
                 profile: str, scenario: str, on_record: Callable[[RequestRecord], None],
                 temperature: float = 0.0, extra_body: dict[str, Any] | None = None,
                 level: int | None = None, tags: dict[str, Any] | None = None) -> None:
        self.client, self.factory, self.clock = client, factory, clock
        self.profile, self.scenario, self.level = profile, scenario, level
        self.on_record, self.temperature, self.extra_body = on_record, temperature, extra_body
        self.tags = tags or {}  # copied into every record's ``extra`` (e.g. the repeat number)
        self.run = WorkloadRun(start_ns=time.perf_counter_ns())
        self._ids = itertools.count()
        self._context_text = lru_cache(maxsize=64)(factory.text)
        self.in_flight: set[asyncio.Task[RequestRecord]] = set()
        self.active: dict[int, RequestRecord] = {}  # requests on the wire, by id()
        self.cut_reason: str | None = None
        self.error: BaseException | None = None  # the first exception a load task raised

    async def send(self, kind: str, context_key: str, context_tokens: int, max_tokens: int,
                   context_id: int | None = None) -> RequestRecord:
        """Send one request over a context, with a task suffix unique to this request."""
        text = self._context_text(context_key, context_tokens)
        task = f"{kind} request {len(self.run.records) + len(self.in_flight)}: continue the work."
        return await self.send_messages(kind, self.factory.messages(text, task), max_tokens, context_id)

    async def send_messages(self, kind: str, messages: list[dict[str, str]], max_tokens: int,
                            context_id: int | None = None) -> RequestRecord:
        """Stream one request; its record is kept and handed on even if the stream is cancelled."""
        prepared = self.client.prepare(messages, max_tokens=max_tokens,
                                       temperature=self.temperature, extra_body=self.extra_body)
        record = RequestRecord(
            request_id=f"{self.profile}-{self.scenario}-{self.level or 0}-{kind}-{next(self._ids)}",
            scenario=self.scenario, kind=kind, profile=self.profile, level=self.level,
            context_id=context_id, time_scale=self.clock.time_scale, max_tokens=max_tokens,
            extra=dict(self.tags),
        )
        self.active[id(record)] = record
        try:
            await self.client.stream(prepared, record)
        finally:
            del self.active[id(record)]
            if self.cut_reason is not None and record.extra.get("error_kind") == "cancelled":
                record.outcome, record.error = CUT, f"level stopped early: {self.cut_reason}"
            self.run.records.append(record)
            self.on_record(record)
        return record

    def begin(self) -> float:
        """Mark the start of the load window (wall stamp for statistics); returns model now."""
        self.run.start_ns = time.perf_counter_ns()
        return self.clock.now()

    def spawn(self, coro: Awaitable[RequestRecord]) -> None:
        """Fire a request that must not block its scheduler (spikes, revisits)."""
        task = asyncio.ensure_future(coro)
        self.in_flight.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Future[Any]) -> None:
        """A task that raised stops the whole window: its numbers would not mean what they say."""
        self.in_flight.discard(task)  # type: ignore[arg-type]
        if task.cancelled() or task.exception() is None or self.error is not None:
            return
        self.error = task.exception()
        for other in list(self.in_flight):
            other.cancel()

    async def drain(self) -> None:
        """Let every request already sent finish; nothing in flight is abandoned. A load task
        that raised is re-raised here, after the others have been stopped and recorded."""
        while self.in_flight:
            await asyncio.gather(*list(self.in_flight), return_exceptions=True)
        self.run.end_ns = time.perf_counter_ns()
        if self.error is not None:
            raise self.error

    def cut(self, reason: str) -> None:
        """Stop the window now: cancel agents and requests (their records are kept as cut)."""
        self.cut_reason = reason
        for task in list(self.in_flight):
            task.cancel()

    def summary(self, window_s: float) -> str:
        """One progress line: time, requests done / failed / in flight, live TTFT and tok/s P50."""
        records = self.run.records
        failed = sum(not r.ok for r in records)
        now = self.clock.now()
        parts = [f"{min(now, window_s):6.0f}/{window_s:.0f} s", f"requests done {len(records)}", f"failed {failed}",
                 f"in flight {len(self.active)}"]
        ok = [r for r in records if r.ok]
        ttft, tok_s = percentile((r.ttft_s for r in ok), 50), percentile((r.output_tok_s for r in ok), 50)
        parts += [f"TTFT P50 {ttft:.2f} s"] if ttft is not None else []
        parts += [f"tok/s P50 {tok_s:.1f}"] if tok_s is not None else []
        parts += ["draining"] if now >= window_s and self.active else []
        return "  ".join(parts)


def capacity_prompts(spec: CapacitySpec, concurrency: int) -> list[str]:
    """The context keys one capacity level sends, in priming order: spikes, then repositories."""
    spikes = [f"spike-c{concurrency}-{n}" for n in _firings(spec.spike_interval_s, spec.level_duration_s)]
    return spikes + [f"repo-{c}" for c in range(min(concurrency, spec.contexts))]


def mixed_prompts(spec: MixedSpec) -> list[str]:
    """The context keys the mixed workload sends, in priming order: spikes, then repositories."""
    spikes = [f"mixed-spike-{n}" for n in _firings(spec.spike_interval_s, spec.duration_s)]
    return spikes + [f"mixed-repo-{c}" for c in range(spec.contexts)]


def texts_of_run(settings: Mapping[str, Any], levels: Iterable[int], mixed: bool
                 ) -> tuple[tuple[tuple[str, ...], int], ...]:
    """What an earlier run sent, from its report's settings: (context keys, tokens) of its levels
    and of its mixed run, in the order they went out (spikes within a level as its nominal
    window fired them)."""
    def spec(kind: type[Any], values: Mapping[str, Any]) -> Any:
        return kind(**{k: v for k, v in values.items() if k in {f.name for f in fields(kind)}})

    capacity = spec(CapacitySpec, settings.get("capacity") or {})
    groups = [(tuple(dict.fromkeys(k for c in levels for k in capacity_prompts(capacity, c))),
               capacity.context_tokens)]
    if mixed:
        spec_mixed = spec(MixedSpec, settings.get("mixed") or {})
        groups.append((tuple(mixed_prompts(spec_mixed)), spec_mixed.context_tokens))
    return tuple((keys, tokens) for keys, tokens in groups if keys)


def revisit_target(last_used: dict[int, float]) -> int:
    """The context a revisit goes to: the least recently sent one (lowest id on a tie).

    Only contexts already worked on count: a context nobody has opened yet would be a first
    visit, a fresh prefill, not the switch back to an old repository the field report means.
    """
    if not last_used:
        return 0
    return min(last_used, key=lambda context: (last_used[context], context))


def _firings(interval_s: float, window_s: float) -> range:
    """Periodic event n (spike, revisit) fires at n * interval_s, for each moment inside the window."""
    if not interval_s:
        return range(0)
    return range(1, math.ceil(window_s / interval_s))


async def prime(load: Load, keys: list[str], context_tokens: int) -> WorkloadRun:
    """Send each context once with one output token, in order, so the window starts on a
    server that has seen them all: the last ones (repositories) on device, older ones
    wherever the server's cache keeps them (HiCache: on host). One request at a time."""
    for key in keys:
        await load.send("prime", key, context_tokens, 1)
    load.run.end_ns = time.perf_counter_ns()
    return load.run


async def run_capacity_level(load: Load, spec: CapacitySpec, concurrency: int,
                             progress: Progress | None = None,
                             stop_check: Callable[[], str | None] | None = None,
                             settled: Callable[[], str | None] | None = None,
                             spikes_seen: bool = False) -> WorkloadRun:
    """N closed-loop agents for one level window, plus periodic long-prefill spikes.

    The window lasts ``level_duration_s``, or longer while its agents are short of
    ``min_agent_requests`` finished requests (up to ``max_level_duration_s``) and ``settled``
    (the settled-failure reason, search.stop_check) gives none; once it ends it stays ended, so
    agents and spikes stop on the same decision. ``stop_check`` cuts the window at once.

    An extension's spikes are new texts, fresh prefills like the window's own; where the server
    has seen the window's spike texts before it (``spikes_seen``: --field-mode's seen levels,
    --warm-cache), they go round those texts again, so the extension keeps the window's condition.
    """
    start = load.begin()
    window = LevelWindow(load, spec, start, settled)
    due: collections.deque[int] = collections.deque()  # spikes an agent sends next ("slot")
    nominal = len(_firings(spec.spike_interval_s, spec.level_duration_s))

    def spike(n: int) -> Awaitable[RequestRecord]:
        text = (n - 1) % nominal + 1 if spikes_seen and nominal and n > nominal else n
        return load.send("spike", f"spike-c{concurrency}-{text}", spec.context_tokens, spec.spike_output_tokens)

    async def agent(i: int) -> None:
        context = i % spec.contexts
        while window.open():
            if due:
                record = await spike(due.popleft())
            else:
                record = await load.send("agent", f"repo-{context}", spec.context_tokens,
                                         spec.max_output_tokens, context_id=context)
            if not record.ok:
                await load.clock.sleep(FAILURE_PAUSE_S)

    async def spikes() -> None:
        for n in _firings(spec.spike_interval_s, spec.longest_s):
            await load.clock.sleep_until(start + n * spec.spike_interval_s)
            if not window.open():
                return
            if spec.spike_mode == "slot":
                due.append(n)
            else:
                load.spawn(spike(n))

    for i in range(concurrency):
        load.spawn(agent(i))  # type: ignore[arg-type]
    load.spawn(spikes())  # type: ignore[arg-type]
    await _report_until_drained(load, window, progress, stop_check)
    load.run.load_s = window.load_s()
    return load.run


class LevelWindow:
    """When a capacity level's load stops: at its duration, or once an extension has its requests."""

    def __init__(self, load: Load, spec: CapacitySpec, start: float,
                 settled: Callable[[], str | None] | None = None) -> None:
        self.load, self.spec, self.settled = load, spec, settled
        self.deadline, self.longest = start + spec.level_duration_s, start + spec.longest_s
        self.start = start
        self.closed = False
        self.closed_at: float | None = None

    def agent_requests(self) -> int:
        return sum(r.kind == "agent" and r.counted for r in self.load.run.records)

    def open(self) -> bool:
        """Whether agents may still send; False for good once it has been False."""
        if not self.closed:
            now = self.load.clock.now()
            short = now >= self.deadline and self.agent_requests() < self.spec.min_agent_requests
            needed = short and not (self.settled and self.settled())  # a settled failure needs no more
            self.closed = now >= self.longest or (now >= self.deadline and not needed)
            if self.closed:
                self.closed_at = max(self.deadline, min(now, self.longest))
        return not self.closed

    def load_s(self) -> float:
        """How long the window sent load (model seconds): at least its duration."""
        return max(self.spec.level_duration_s, min(self.load.clock.now(), self.longest) - self.start) \
            if self.closed_at is None else self.closed_at - self.start

    @property
    def extended(self) -> bool:
        return self.load.clock.now() >= self.deadline and not self.closed

    def progress(self) -> str:
        extended = self.extended
        line = self.load.summary(self.longest - self.start if extended else self.spec.level_duration_s)
        if extended:
            line += (f"  extended: {self.agent_requests()}/{self.spec.min_agent_requests} agent requests, "
                     f"until {self.longest - self.start:.0f} s at most")
        return line


def background_events(spec: MixedSpec, spike: Callable[[int], None], revisit: Callable[[int], None],
                      ) -> list[tuple[float, Callable[[int], None], int]]:
    """The mixed window's spikes and revisits on one timeline, (offset, fire, n) in firing order.

    Why one timeline: with 30 s and 45 s intervals both fall due every 90 s. Two timers would
    race by wall-clock jitter, and whichever request reached the server first went first in
    its FCFS queue; that coin flip moved a hicache run's client tok/s by 7 % and its TTFT P95
    by 30 %. At a shared instant the spike goes first, as in bench/engine_replay.py.
    """
    events = [(n * spec.spike_interval_s, 0, n) for n in _firings(spec.spike_interval_s, spec.duration_s)]
    events += [(n * spec.revisit_interval_s, 1, n) for n in _firings(spec.revisit_interval_s, spec.duration_s)]
    return [(at, spike if kind == 0 else revisit, n) for at, kind, n in sorted(events)]


async def run_mixed(load: Load, spec: MixedSpec, progress: Progress | None = None) -> WorkloadRun:
    """Decode workers, prefill spikes and revisits for one window, then drain."""
    start = load.begin()
    deadline = start + spec.duration_s
    last_used: dict[int, float] = {}  # context -> when it was last sent

    async def send_over(kind: str, context: int) -> RequestRecord:
        last_used[context] = load.clock.now()
        return await load.send(kind, f"mixed-repo-{context}", spec.context_tokens,
                               spec.max_output_tokens, context_id=context)

    async def worker(i: int) -> None:
        for turn in itertools.count():
            if load.clock.now() >= deadline:
                return
            record = await send_over("decode", (i + turn) % spec.contexts)
            if not record.ok:
                await load.clock.sleep(FAILURE_PAUSE_S)

    def spike(n: int) -> None:
        load.spawn(load.send("spike", f"mixed-spike-{n}", spec.context_tokens,
                             spec.spike_output_tokens))

    def revisit(n: int) -> None:
        load.spawn(send_over("revisit", revisit_target(last_used)))

    async def background() -> None:
        for at, fire, n in background_events(spec, spike, revisit):
            await load.clock.sleep_until(start + at)
            fire(n)

    for i in range(spec.decode_workers):
        load.spawn(worker(i))  # type: ignore[arg-type]
    load.spawn(background())  # type: ignore[arg-type]
    await _report_until_drained(load, spec.duration_s, progress)
    return load.run


async def _report_until_drained(load: Load, window: float | LevelWindow, progress: Progress | None,
                                stop_check: Callable[[], str | None] | None = None) -> None:
    """Drain the load, printing a progress line and polling ``stop_check`` about once a wall second."""
    drained = asyncio.ensure_future(load.drain())
    try:
        while not drained.done():
            await asyncio.wait({drained}, timeout=1.0)
            if progress:
                progress(window.progress() if isinstance(window, LevelWindow) else load.summary(window))
            reason = stop_check() if stop_check and load.cut_reason is None else None
            if reason:
                load.cut(reason)
        drained.result()  # a load task's exception surfaces here, as the window's error
    finally:
        if not drained.done():
            for task in list(load.in_flight):
                task.cancel()
            drained.cancel()
            await asyncio.gather(drained, *load.in_flight, return_exceptions=True)


def _positive(spec: Any, *names: str) -> None:
    for name in names:
        value = getattr(spec, name)
        if not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _non_negative(spec: Any, *names: str) -> None:
    for name in names:
        value = getattr(spec, name)
        if not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{name} must be zero or a positive number, got {value!r}")
