"""A live server under test and what runs against it: capacity levels, the mixed workload,
the capacity search and users' scenarios.

``GlmperfServer`` (the ``glmperf_server`` fixture's value) measures and judges; every result
it produces goes to ``on_result``, the session's, and nowhere else: it never writes a report.
A measurement that breaks (the server gone, a load task that raised) is a result too, with
status ``error`` and the exception, never a missing level.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from .client import StreamingClient
from .clock import ModelClock
from .contexts import ContextFactory, calibrate
from .errors import MeasurementError
from .profiles import ServerProfile
from .progress import Progress, heartbeat
from .provenance import fetch_server_info, redact, redact_url
from .records import RequestRecord
from .results import CAPACITY, MIXED, LevelResult
from .scrape import MetricsSnapshot, merge_pacing
from .search import bisect_levels, stop_check
from .server import ServerHandle
from .settings import RunSettings
from .stats import DECODE_KINDS, LevelStats, MixedStats, StreamStats, distributions
from .teardown import cancelled_by_sigterm, run_async
from .thresholds import Thresholds
from .windows import (
    Window,
    router_counters,
    routing_locality,
    server_counters,
    server_gauges,
    server_queue,
    stalls,
    worker_breakdown,
)
from .workloads import FAILURE_PAUSE_S, Load, capacity_prompts, mixed_prompts, prime, run_capacity_level, run_mixed

FLUSH_RETRY_S = 60.0  # wall seconds a refused /flush_cache (SGLang: busy) is retried before a window
NO_ENDPOINT = (404, 405, 501)


@dataclass(frozen=True)
class Target:
    """One server configuration to test: a profile, optionally on a given image, or a server
    someone else runs (an external profile and its URL)."""

    profile: ServerProfile
    image: str | None = None
    base_url: str | None = None

    @property
    def key(self) -> str:
        return self.profile.name if not self.image else f"{self.profile.name}@{self.image}"


@dataclass(frozen=True)
class Judging:
    """How results are judged beyond the bar itself (session-wide options)."""

    min_requests: int = 0
    inconclusive_fails: bool = False


class GlmperfServer:
    """A live server under test and the workloads that run against it (public fixture value)."""

    def __init__(self, target: Target, handle: ServerHandle, settings: RunSettings, *,
                 on_result: Callable[[LevelResult], None], on_record: Callable[[RequestRecord], None],
                 progress: Progress, judging: Judging = Judging(), api_key: str | None = None,
                 eta_s: Callable[[], float | None] = lambda: None) -> None:
        self.target, self.handle, self.settings = target, handle, settings
        self.base_url = handle.base_url
        self._on_result, self._on_record, self._progress_sink = on_result, on_record, progress
        self._eta_s = eta_s
        self.judging, self._api_key = judging, api_key
        # A fleet's router answers about itself: the time scale and flags are its workers'.
        _, info = fetch_server_info(getattr(handle, "info_url", self.base_url), headers=self._headers())
        self.server_info = info or {}
        # A simulator says how fast its model time runs; a real server runs at 1.
        self.time_scale = float(self.server_info.get("sim_time_scale") or 1.0)
        self._contexts: ContextFactory | None = None
        self._flush_missing = False
        self._field_primed = False
        self._provenance: dict[str, Any] | None = None

    @property
    def profile(self) -> ServerProfile:
        return self.target.profile

    @property
    def thresholds(self) -> Thresholds:
        """The bar from the options and the profile (the glmperf_thresholds fixture's default)."""
        return self.settings.thresholds

    @property
    def chars_per_token(self) -> float | None:
        return self._contexts.chars_per_token if self._contexts else None

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def provenance(self) -> dict[str, Any]:
        """What served this target (asked once: for a container it means Docker API calls)."""
        if self._provenance is None:
            self._provenance = self._collect_provenance()
        return self._provenance

    def _collect_provenance(self) -> dict[str, Any]:
        info = redact({k: v for k, v in self.server_info.items() if k != "internal_states"})
        record = {**self.handle.provenance(), "base_url": redact_url(self.base_url), "version": info.get("version"),
                  "time_scale": self.time_scale, "server_args": info}
        unmodelled = info.get("sim_unmodelled_args")
        if unmodelled:
            record["accepted_not_modelled"] = unmodelled
        return record

    @asynccontextmanager
    async def client(self, concurrency: int) -> AsyncIterator[StreamingClient]:
        """A streaming client bound to this server, its connections opened ahead."""
        settings = self.settings
        async with StreamingClient(self.base_url, concurrency=concurrency, time_scale=self.time_scale,
                                   api_key=self._api_key, request_timeout_s=settings.request_timeout_s,
                                   first_token_timeout_s=settings.first_token_timeout_s,
                                   stall_timeout_s=settings.stall_timeout_s,
                                   metrics_sources=getattr(self.handle, "metrics_sources", None)) as client:
            async with heartbeat(self._progress("connections"), "opening connections"):
                await client.warm_up()
            yield client

    def metrics(self) -> MetricsSnapshot | None:
        """One scrape of /metrics (None when the server has no metrics endpoint)."""
        with httpx.Client(timeout=10.0, headers=self._headers()) as http:
            response = http.get(f"{self.base_url}/metrics")
        return MetricsSnapshot.parse(response.text) if response.status_code == 200 else None

    # -- workloads -----------------------------------------------------------------------
    def run_capacity(self, concurrency: int, thresholds: Thresholds | None = None,
                     early_stop: bool = False) -> LevelResult:
        return run_async(self.capacity(concurrency, early_stop=early_stop, thresholds=thresholds))

    def run_mixed(self, thresholds: Thresholds | None = None) -> LevelResult:
        return run_async(self.mixed(thresholds))

    def capacity_search(self, thresholds: Thresholds | None = None, expect: int | None = None) -> dict[str, Any]:
        """--capacity-search: bisect the levels, each stopped once its failure is settled;
        ``expect`` (a reference's max usable, 0 for none) is probed first, with the level above it.

        Each probed level is a result like any other (``on_result``); returns what the search did.
        """
        probed: list[int] = []

        def usable(level: int) -> bool:
            probed.append(level)
            return self.run_capacity(level, thresholds, early_stop=True).usable

        levels = self.settings.levels
        best = bisect_levels(levels, usable, start=self.settings.require_concurrency, expect=expect)
        return {"max_usable": best, "probed": probed, "skipped": [c for c in levels if c not in probed]}

    async def capacity(self, concurrency: int, early_stop: bool = False,
                       thresholds: Thresholds | None = None) -> LevelResult:
        """One capacity level (``repeats`` times): the workload, its statistics and the verdict."""
        spec, bar = self.settings.capacity, thresholds or self.settings.thresholds
        windows: list[Window] = []
        cache: list[str] = []
        label = f"c={concurrency}"

        async def measure() -> None:
            async with self.client(concurrency + 4) as client:
                contexts = await self.contexts(client)
                for repeat in range(self.settings.repeats):
                    cache.append(await self.prepare_cache(client, contexts, capacity_prompts(spec, concurrency),
                                                          spec.context_tokens, label, level=concurrency))
                    load = self._load(client, contexts, CAPACITY, level=concurrency, repeat=repeat)
                    settled = stop_check(concurrency, bar, spec.longest_s, self.time_scale,
                                         lambda load=load: list(load.active.values()),
                                         lambda load=load: load.run.records,
                                         lambda load=load: load.run.start_ns)
                    window = Window(load, spec.in_flight_kinds, concurrency, spec.level_duration_s)
                    windows.append(window)
                    where = self._whereabouts(f"level {self.settings.levels.index(concurrency) + 1} of "
                                              f"{len(self.settings.levels)}" if concurrency in self.settings.levels
                                              else "")
                    async with window.observe(client, spec_interval_s=self.settings.mixed.gauge_interval_s):
                        await run_capacity_level(load, spec, concurrency, self._progress(label, where),
                                                 settled if early_stop else None, settled=settled,
                                                 spikes_seen=self._spikes_seen(concurrency))
                    if load.cut_reason:
                        break

        def judge(error: str | None, interrupted: bool) -> LevelResult:
            stats = LevelStats.of_runs(concurrency, [(w.load.run.records, w.load.run.start_ns) for w in windows])
            agents = [r for w in windows for r in w.load.run.records if r.kind != "spike"]
            details = {**self._evidence(windows, bar, agents), "cache_start": _one(cache),
                       "cache": server_counters(windows), "gauges": server_gauges(windows),
                       # the first window's, for its timeline chart (outputs.write_charts)
                       "gauge_series": windows[0].gauge_samples() if windows else {},
                       "run_start_ns": windows[0].load.run.start_ns if windows else None}
            return self._result(CAPACITY, concurrency, stats, bar, windows, error, interrupted, details,
                                require=self.settings.require_concurrency,
                                cut_reason=next((w.load.cut_reason for w in windows if w.load.cut_reason), None))

        return await self._measured(measure, judge)

    async def mixed(self, thresholds: Thresholds | None = None) -> LevelResult:
        """The mixed coding-agent workload; the verdict is on its decode streams."""
        spec, bar = self.settings.mixed, thresholds or self.settings.thresholds
        windows: list[Window] = []
        cache: list[str] = []

        async def measure() -> None:
            async with self.client(spec.decode_workers + 8) as client:
                contexts = await self.contexts(client)
                cache.append(await self.prepare_cache(client, contexts, mixed_prompts(spec), spec.context_tokens,
                                                      MIXED))
                load = self._load(client, contexts, MIXED)
                window = Window(load, ("decode",), spec.decode_workers, spec.duration_s)
                windows.append(window)
                async with window.observe(client, spec_interval_s=spec.gauge_interval_s):
                    await run_mixed(load, spec, self._progress(MIXED, self._whereabouts("mixed workload")))

        def judge(error: str | None, interrupted: bool) -> LevelResult:
            window = windows[0] if windows else None
            records = window.load.run.records if window else []
            streams = [r for r in records if r.kind in DECODE_KINDS]
            evidence = self._evidence(windows, bar, streams)
            table = MixedStats.of(records, window.load.run.start_ns if window else 0,
                                  window.gauges if window else {}, window.cache_deltas() if window else {},
                                  evidence["server_queue"])
            decode = StreamStats.of(streams)
            details = {**table.as_dict(), **evidence,
                       "gauge_series": window.gauge_samples() if window else {},
                       "run_start_ns": window.load.run.start_ns if window else None, "cache_start": _one(cache)}
            return self._result(MIXED, spec.decode_workers, decode, bar, windows, error, interrupted, details)

        return await self._measured(measure, judge)

    async def scenario(self, agent: Callable[[Any], Awaitable[None]], *, concurrency: int, duration_s: float,
                       name: str = "scenario", thresholds: Thresholds | None = None) -> LevelResult:
        """Run a user's agent coroutine in ``concurrency`` closed loops for ``duration_s``
        (model seconds), observed like a capacity level."""
        from .scenarios import Agent, agent_loops

        bar = thresholds or self.settings.thresholds
        windows: list[Window] = []

        async def measure() -> None:
            async with self.client(concurrency + 2) as client:
                contexts = await self.contexts(client)
                load = self._load(client, contexts, name, level=concurrency)
                window = Window(load, ("agent",), concurrency, duration_s)
                windows.append(window)
                async with window.observe(client, spec_interval_s=self.settings.mixed.gauge_interval_s):
                    await agent_loops(load, agent, Agent, concurrency, duration_s, FAILURE_PAUSE_S,
                                      self._progress(name))

        def judge(error: str | None, interrupted: bool) -> LevelResult:
            records = windows[0].load.run.records if windows else []
            return self._result(name, concurrency, StreamStats.of(records), bar, windows, error, interrupted,
                                self._evidence(windows, bar, records))

        return await cancelled_by_sigterm(self._measured(measure, judge))

    # -- the pieces ----------------------------------------------------------------------
    async def _measured(self, measure: Callable[[], Awaitable[None]],
                        judge: Callable[[str | None, bool], LevelResult]) -> LevelResult:
        """Run ``measure``, then judge what it got, whatever happened; the result goes to the
        session even when the measurement broke or was interrupted (then re-raised)."""
        error, interrupted = None, False
        try:
            await measure()
        except (asyncio.CancelledError, KeyboardInterrupt):
            interrupted = True
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            self._say("error", error)
        finally:
            result = judge(error, interrupted)
            self._on_result(result)
        return result

    def _evidence(self, windows: Sequence[Window], bar: Thresholds, judged: Sequence[RequestRecord]
                  ) -> dict[str, Any]:
        """What every window's report entry carries beside its statistics: the stalls and what
        the server was doing, the simulator's pacing, the server's queue time, and the
        distributions of the judged requests."""
        evidence = {"stalls": stalls(windows, bar.max_gap_p95), "simulator": merge_pacing(w.pacing for w in windows),
                    "server_queue": server_queue(windows),
                    "distributions": distributions(judged, self.settings.percentiles),
                    "routing": routing_locality(r for w in windows for r in w.load.run.records)}
        if workers := worker_breakdown(windows):  # a fleet behind a router
            evidence.update(workers=workers, router=router_counters(windows))
        return evidence

    def _result(self, workload: str, concurrency: int, stats: StreamStats, bar: Thresholds,
                windows: Sequence[Window], error: str | None, interrupted: bool, details: dict[str, Any],
                require: int | None = None, cut_reason: str | None = None) -> LevelResult:
        return LevelResult.judge(
            self.target.key, workload, concurrency, stats, bar,
            required=require is None or concurrency <= require, require_concurrency=require,
            min_requests=self.judging.min_requests, inconclusive_fails=self.judging.inconclusive_fails,
            interrupted=interrupted or (not error and any(w.interrupted for w in windows)),
            client=windows[-1].health if windows else None, cut_reason=cut_reason,
            server_note=self.server_down_note(), error=error,
            started_at=_window_start(windows), details=details,
            records=tuple(r for w in windows for r in w.load.run.records))

    async def contexts(self, client: StreamingClient) -> ContextFactory:
        """Calibrate characters per token once per server, then reuse; a failed probe is an error."""
        if self._contexts is None:
            async def probe(messages: list[dict[str, str]]) -> int | None:
                record = RequestRecord(request_id="calibration", scenario="calibration")
                await client.stream(client.prepare(messages, max_tokens=1), record)
                if not record.ok:
                    raise MeasurementError(f"calibration request failed: {record.error}")
                return record.prompt_tokens

            async with heartbeat(self._progress("calibration"), "calibrating characters per token (2 requests)"):
                self._contexts = ContextFactory(chars_per_token=await calibrate(probe))
        return self._contexts

    async def prepare_cache(self, client: StreamingClient, contexts: ContextFactory, keys: list[str],
                            context_tokens: int, label: str, level: int | None = None) -> str:
        """Before a window: prime it (--warm-cache), else flush unless told not to; says which.
        In --field-mode the first window is preceded by the seen levels' texts, and none is flushed."""
        seen = self.settings.field_seen_levels
        if seen is not None:
            if level is None:  # the mixed run: its own texts, as the field's ran on seen ones
                await self._prime(client, contexts, keys, context_tokens, label, level,
                                  f"showing the server {len(keys)} texts of the mixed workload (--field-mode)")
            elif not self._field_primed:  # the capacity levels: what the server saw before, once
                for texts, tokens, what in self._field_seen(seen):
                    await self._prime(client, contexts, list(texts), tokens, label, level,
                                      f"showing the server {len(texts)} texts of {what} (--field-mode)")
                self._field_primed = True
            return self.settings.cache_start
        if self.settings.warm_cache:
            await self._prime(client, contexts, keys, context_tokens, label, level,
                              f"priming {len(keys)} contexts (--warm-cache)")
            return "primed"
        if not self.settings.flush_cache:
            return "as-is"
        if self.settings.clear_storage and await _post(client, "/hicache/storage-backend/clear") != 200:
            self._say("cache", "/hicache/storage-backend/clear refused (no HiCache on this server); flushing only")
        return await self.flush_cache(client)

    def _spikes_seen(self, concurrency: int) -> bool:
        """Whether the server saw this level's spike texts before its window (so an extension
        may send them again without making the window's condition easier or harder)."""
        if self.settings.warm_cache:
            return True
        seen = self.settings.field_seen_levels
        if seen is None:
            return False
        first = f"spike-c{concurrency}-1"
        return any(first in texts for texts, *_ in self._field_seen(seen))

    def _field_seen(self, seen: tuple[int, ...]) -> list[tuple[tuple[str, ...], int, str]]:
        """(context keys, tokens, what they are) the server saw before the first level: an earlier
        run's texts (--field-seen-run), else those of the seen levels at this run's sizes."""
        if self.settings.field_seen_run is not None:
            return [(texts, tokens, f"run {self.settings.field_seen_run}") for texts, tokens in
                    self.settings.field_texts]
        texts = tuple(dict.fromkeys(k for c in seen for k in capacity_prompts(self.settings.capacity, c)))
        return [(texts, self.settings.capacity.context_tokens, f"levels {','.join(map(str, seen))}")]

    async def _prime(self, client: StreamingClient, contexts: ContextFactory, texts: list[str], context_tokens: int,
                     label: str, level: int | None, saying: str) -> None:
        """Send each text once before a window, so the server has seen it."""
        self._say(label, saying)
        async with heartbeat(self._progress(label), "priming"):
            await prime(self._load(client, contexts, "prime", level=level), texts, context_tokens)

    async def flush_cache(self, client: StreamingClient) -> str:
        """POST /flush_cache, retried while SGLang refuses it (it answers 400 until idle, HiCache
        L3 backups included); a server without the endpoint is said once and not asked again."""
        if self._flush_missing:
            return "as-is (no /flush_cache)"
        deadline = time.monotonic() + FLUSH_RETRY_S
        async with heartbeat(self._progress("cache"), "waiting for /flush_cache (refused while the server is busy)"):
            while True:
                status = await _post(client, "/flush_cache")
                if status == 200:
                    return "flushed"
                if status in NO_ENDPOINT:
                    self._flush_missing = True
                    self._say("cache", f"this server has no /flush_cache (HTTP {status}): "
                                       "windows start on its cache as is")
                    return "as-is (no /flush_cache)"
                if time.monotonic() >= deadline:
                    self._say("cache", f"/flush_cache refused for {FLUSH_RETRY_S:.0f} s; "
                                       "this window starts on a warm cache")
                    return "not flushed (refused)"
                await asyncio.sleep(0.1)

    def server_down_note(self) -> str | None:
        """Why the server is gone, if it died (a container or process we can ask); else None."""
        alive = getattr(self.handle, "alive", None)
        if alive is None or alive():
            return None
        reason = getattr(self.handle, "exit_reason", lambda: None)()
        return reason or "the server process is no longer running"

    def _load(self, client: StreamingClient, contexts: ContextFactory, scenario: str,
              level: int | None = None, repeat: int | None = None) -> Load:
        return Load(client, contexts, ModelClock(self.time_scale), profile=self.target.key, scenario=scenario,
                    on_record=self._on_record, temperature=self.settings.temperature, level=level,
                    tags={"repeat": repeat} if repeat is not None else None)

    def _say(self, label: str, text: str) -> None:
        """An event (not a window's periodic line): its own label, so it is never throttled away."""
        self._progress(label)(text)

    def _progress(self, label: str, where: Callable[[], str] | None = None) -> Progress:
        """Lines labelled ``glmperf <target> <label>:``; ``where`` adds where the session stands."""
        def say(text: str) -> None:
            extra = where() if where else ""
            self._progress_sink(f"glmperf {self.target.key} {label}: {text}" + (f"  ({extra})" if extra else ""))
        return say

    def _whereabouts(self, what: str) -> Callable[[], str]:
        """'level 2 of 5, session about 6 min more' (the estimate counts planned load time only)."""
        def text() -> str:
            eta = self._eta_s()
            left = f"session about {_duration(eta)} more" if eta else ""
            return ", ".join(part for part in (what, left) if part)
        return text


async def _post(client: StreamingClient, path: str, timeout_s: float = 30.0) -> int | None:
    """The status of an admin POST; None when the request itself failed."""
    try:
        response = await client.http.post(path, timeout=timeout_s)
    except httpx.HTTPError:
        return None
    return response.status_code


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _one(values: list[str]) -> str | None:
    """One label for a level's windows (repeats): the label, or each in turn."""
    unique = list(dict.fromkeys(values))
    return unique[0] if len(unique) == 1 else ", ".join(values) or None


def _window_start(windows: Sequence[Window]) -> str | None:
    """ISO wall-clock time the first window's load began."""
    if not windows:
        return None
    ago_s = (time.perf_counter_ns() - windows[0].load.run.start_ns) / 1e9
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - ago_s))

