"""The session: which servers to test, in what order, and where every result goes.

``GlmperfRun`` is built once from ``Settings`` (never from pytest's config). For each target
(a profile, or a profile on one image) it opens a ``GlmperfServer``: the live server plus
what runs against it (capacity levels, the mixed workload, users' scenarios). Each finished
request goes straight to records.jsonl; each finished level rewrites report.json/.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from .attribution import attribute_stalls
from .baseline import load_baseline, save_baseline, slug
from .client import StreamingClient
from .clock import ModelClock
from .contexts import ContextFactory, calibrate
from .errors import ConfigError, GlmperfError
from .htmlreport import write_html
from .outputs import chart_links, publish_summary, write_charts
from .profiles import ProfileRegistry, ServerProfile
from .provenance import fetch_server_info, redact
from .records import RecordLog, RequestRecord, read_records
from .regression import Check, Tolerances, compare_reports
from .report import RunReport, render_markdown
from .results import LevelResult
from .scrape import (
    GaugeSampler,
    HistogramDelta,
    MetricsSnapshot,
    counter_deltas,
    host_used_after,
    merge_pacing,
    sim_pacing,
)
from .search import bisect_levels, stop_check
from .selfcheck import ClientHealth, ClientMonitor
from .server import ExternalServer, ServerHandle, SimulatedServer
from .settings import RunSettings, Settings
from .stats import GaugeSeries, LevelStats, MixedStats, StreamStats
from .teardown import cancelled_by_sigterm, run_async
from .thresholds import Thresholds
from .workloads import FAILURE_PAUSE_S, Load, capacity_prompts, mixed_prompts, prime, run_capacity_level, run_mixed

FLUSH_RETRY_S = 60.0  # wall seconds a refused /flush_cache is retried before a window

Progress = Callable[[str], None]
STALLS_KEPT = 10


@dataclass(frozen=True)
class Target:
    """One server configuration to test: a profile, optionally on a given image."""

    profile: ServerProfile
    image: str | None = None

    @property
    def key(self) -> str:
        return self.profile.name if not self.image else f"{self.profile.name}@{self.image}"


class GlmperfRun:
    """Session-wide state; the pytest plugin only forwards to it."""

    def __init__(self, settings: Settings, registry: ProfileRegistry, rootdir: Path,
                 progress: Progress | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.rootdir = rootdir
        self.progress = progress or (lambda text: None)
        self.report_dir = self._rooted(settings.get("report_dir"))
        self.targets = self._plan_targets()
        self.run_settings = {t.key: settings.for_profile(t.profile) for t in self.targets}
        self.report = RunReport.start({k: v.as_dict() for k, v in self.run_settings.items()})
        self.baseline_store = self._rooted(settings.get("baseline_store"))
        self.compare_ref = settings.get("compare")
        # Loaded now, so an unknown baseline is a usage error before any server starts.
        self.baseline = load_baseline(self.compare_ref, self.baseline_store) if self.compare_ref else None
        self.tolerances = Tolerances.from_mapping(settings.get("tolerances") or {})
        self.inconclusive_fails = settings.get("inconclusive") == "fail"
        self.checks: dict[str, list[Check]] = {}
        self._records: RecordLog | None = None
        self._servers: dict[str, GlmperfServer] = {}

    def _rooted(self, path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else self.rootdir / path

    def _plan_targets(self) -> list[Target]:
        profiles = self.registry.select(self.settings.profile_names)
        images = self.settings.images
        if images and not all(p.kind == "compose" for p in profiles):
            raise ConfigError("--image/--images apply to compose profiles only")
        if self.settings.get("base_url") and len(profiles) > 1:
            raise ConfigError("--base-url tests one server: give a single --profile to label it")
        return [Target(p, image) for p in profiles for image in (images or (None,))]

    @property
    def records(self) -> RecordLog:
        if self._records is None:
            self._records = RecordLog(self.report_dir / "records.jsonl", fresh=True)
        return self._records

    def check_base_url(self) -> None:
        """With --base-url, fail before any test runs if nothing answers."""
        url = self.settings.get("base_url")
        if url:
            ExternalServer(self.targets[0].profile, url, headers=self.auth_headers()).check_reachable()

    def auth_headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def open_server(self, target: Target) -> GlmperfServer:
        """Bring the target's server up (or attach to --base-url) and wrap it.

        A start failure is kept in the report (the target's ``start_error``) before it propagates.
        """
        try:
            handle = self._start_handle(target)
        except GlmperfError as exc:
            self.report.target(target.key)["start_error"] = f"{type(exc).__name__}: {exc}"
            self.write_report()
            raise
        server = GlmperfServer(self, target, handle)
        self._servers[target.key] = server
        entry = self.report.target(target.key)
        entry["provenance"] = server.provenance()
        self.write_report()
        return server

    def _start_handle(self, target: Target) -> ServerHandle:
        url = self.settings.get("base_url")
        run = self.run_settings[target.key]
        if url:
            return ExternalServer(target.profile, url, headers=self.auth_headers())
        log_path = self.report_dir / slug(target.key) / "server.log"
        if target.profile.is_simulated:
            self.progress(f"starting simulator for {target.key} (time scale {run.time_scale:g})")
            return SimulatedServer(target.profile, time_scale=run.time_scale, log_path=log_path).start()
        from .compose import ComposeServer

        # A containerised simulator runs at the requested time scale; real servers ignore it.
        env = {"GLMPERF_TIME_SCALE": str(run.time_scale)}
        return ComposeServer(target.profile, report_dir=self.report_dir, image=target.image,
                             startup_timeout_s=self.settings.get("startup_timeout"),
                             keep_running=self.settings.get("keep_running"),
                             reuse_running=self.settings.get("reuse_running"),
                             env=env, progress=self.progress).start()

    def close_server(self, server: GlmperfServer) -> None:
        self._servers.pop(server.target.key, None)
        server.handle.stop()

    def write_report(self) -> None:
        self.report.write(self.report_dir)

    def finish(self, interrupted: bool) -> None:
        """Final report; servers still up are stopped (pytest's teardown normally did it).

        A session that measured nothing (no glmperf test ran) writes nothing.
        """
        for server in list(self._servers.values()):
            self.close_server(server)
        if not self.report.targets and self._records is None:
            return
        self.report.status = "interrupted" if interrupted else "complete"
        self.report.metadata["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if self._records:
            self._records.close()
        self.write_report()
        self._write_outputs()

    def _write_outputs(self) -> None:
        """Charts, report.html, the GitHub summary and the baseline, from the final report."""
        data = self.report.as_dict()
        svgs = write_charts(self.report_dir, data)
        markdown = render_markdown(data) + "\n" + chart_links(svgs) + "\n"
        (self.report_dir / "report.md").write_text(markdown, encoding="utf-8")
        write_html(self.report_dir, markdown, svgs)
        checks = [c for group in self.checks.values() for c in group]
        publish_summary(data, checks, inconclusive_fails=self.inconclusive_fails, baseline_ref=self.compare_ref)
        name = self.settings.get("save_baseline")
        if name and self.report.status == "complete":
            path = save_baseline(self.report_dir, name, self.baseline_store)
            self.progress(f"glmperf: baseline {name!r} saved in {path}")

    def regression_checks(self, target: Target) -> list[Check]:
        """This target's run against the baseline (computed once, after its levels ran)."""
        if self.baseline is None:
            return []
        if target.key not in self.checks:
            data = self.report.as_dict()
            data["targets"] = {target.key: data["targets"].get(target.key, self.report.target(target.key))}
            records = [r for r in read_records(self.records.path) if r.profile == target.key]
            checks = compare_reports(data, records, self.baseline, self.tolerances)
            self.checks[target.key] = checks
            self.report.target(target.key)["regression"] = {
                "baseline": self.compare_ref, "checks": [c.as_dict() for c in checks]}
            self.write_report()
        return self.checks[target.key]


class GlmperfServer:
    """A live server under test and the workloads that run against it (public fixture value)."""

    def __init__(self, run: GlmperfRun, target: Target, handle: ServerHandle) -> None:
        self.run, self.target, self.handle = run, target, handle
        self.settings: RunSettings = run.run_settings[target.key]
        self.base_url = handle.base_url
        _, info = fetch_server_info(self.base_url, headers=run.auth_headers())
        self.server_info = info or {}
        # A simulator says how fast its model time runs; a real server runs at 1.
        self.time_scale = float(self.server_info.get("sim_time_scale") or 1.0)
        self._contexts: ContextFactory | None = None
        self._search: dict[int, LevelResult] | None = None

    @property
    def profile(self) -> ServerProfile:
        return self.target.profile

    @property
    def thresholds(self) -> Thresholds:
        """The bar from the options and the profile (the glmperf_thresholds fixture's default)."""
        return self.settings.thresholds

    def provenance(self) -> dict[str, Any]:
        info = redact({k: v for k, v in self.server_info.items() if k != "internal_states"})
        return {**self.handle.provenance(), "base_url": self.base_url, "version": info.get("version"),
                "time_scale": self.time_scale, "server_args": info}

    @asynccontextmanager
    async def client(self, concurrency: int) -> AsyncIterator[StreamingClient]:
        """A streaming client bound to this server, its connections opened ahead."""
        async with StreamingClient(self.base_url, concurrency=concurrency, time_scale=self.time_scale,
                                   api_key=self.run.settings.api_key,
                                   request_timeout_s=self.settings.request_timeout_s) as client:
            await client.warm_up()
            yield client

    def metrics(self) -> MetricsSnapshot | None:
        """One scrape of /metrics (None when the server has no metrics endpoint)."""
        with httpx.Client(timeout=10.0, headers=self.run.auth_headers()) as http:
            response = http.get(f"{self.base_url}/metrics")
        return MetricsSnapshot.parse(response.text) if response.status_code == 200 else None

    # -- workloads -----------------------------------------------------------------------
    def run_capacity(self, concurrency: int, thresholds: Thresholds | None = None) -> LevelResult:
        return run_async(self.capacity(concurrency, thresholds=thresholds))

    def run_mixed(self, thresholds: Thresholds | None = None) -> LevelResult:
        return run_async(self.mixed(thresholds))

    async def contexts(self, client: StreamingClient) -> ContextFactory:
        """Calibrate characters per token once per server, then reuse."""
        if self._contexts is None:
            async def probe(messages: list[dict[str, str]]) -> int | None:
                record = RequestRecord(request_id="calibration", scenario="calibration")
                await client.stream(client.prepare(messages, max_tokens=1), record)
                return record.prompt_tokens
            self._contexts = ContextFactory(chars_per_token=await calibrate(probe))
            self.run.report.target(self.target.key)["chars_per_token"] = self._contexts.chars_per_token
        return self._contexts

    async def flush_cache(self, client: StreamingClient) -> bool:
        """POST /flush_cache, retried: SGLang answers 400 until the server is idle, HiCache
        L3 backups included (they drain behind the last prefill). Says so if it never took."""
        deadline = time.monotonic() + FLUSH_RETRY_S
        while True:
            if await client.flush_cache():
                return True
            if time.monotonic() >= deadline:
                self.run.progress(f"glmperf {self.target.key}: /flush_cache refused for "
                                  f"{FLUSH_RETRY_S:.0f} s; this window starts on a warm cache")
                return False
            await asyncio.sleep(0.1)

    async def prepare_cache(self, client: StreamingClient, contexts: ContextFactory, keys: list[str],
                            context_tokens: int, level: int | None = None) -> None:
        """Before a window: prime it (--warm-cache), else flush unless told not to."""
        if self.settings.warm_cache:
            label = f"c={level}" if level is not None else "mixed"
            self.run.progress(f"glmperf {self.target.key} {label}: priming {len(keys)} contexts (--warm-cache)")
            await prime(self._load(client, contexts, "prime", level=level), keys, context_tokens)
        elif self.settings.flush_cache:
            if self.settings.clear_storage and not await client.clear_storage():
                self.run.progress(f"glmperf {self.target.key}: /hicache/storage-backend/clear "
                                  "refused (no HiCache on this server); flushing only")
            await self.flush_cache(client)

    def capacity_search(self, thresholds: Thresholds | None = None) -> dict[int, LevelResult]:
        """--capacity-search: bisect the levels, each stopped once its failure is settled (cached)."""
        if self._search is None:
            results: dict[int, LevelResult] = {}

            def usable(level: int) -> bool:
                results[level] = run_async(self.capacity(level, early_stop=True, thresholds=thresholds))
                return results[level].usable

            best = bisect_levels(self.settings.levels, usable, start=self.settings.require_concurrency)
            skipped = [c for c in self.settings.levels if c not in results]
            self.run.report.target(self.target.key)["capacity"]["search"] = {
                "max_usable": best, "probed": list(results), "skipped": skipped,
                "server_time_s": sum(r.stats.duration_s or 0.0 for r in results.values()
                                     if isinstance(r.stats, LevelStats))}
            self.run.write_report()
            self._search = results
        return self._search

    async def capacity(self, concurrency: int, early_stop: bool = False,
                       thresholds: Thresholds | None = None) -> LevelResult:
        """One capacity level (``repeats`` times): the workload, its statistics and the verdict."""
        spec = self.settings.capacity
        bar = thresholds or self.settings.thresholds
        windows: list[Window] = []
        async with self.client(concurrency + 4) as client:
            contexts = await self.contexts(client)
            try:
                for repeat in range(self.settings.repeats):
                    await self.prepare_cache(client, contexts, capacity_prompts(spec, concurrency),
                                             spec.context_tokens, level=concurrency)
                    load = self._load(client, contexts, "capacity", level=concurrency, repeat=repeat)
                    check = stop_check(concurrency, bar, spec.level_duration_s,
                                       self.time_scale, lambda load=load: list(load.active.values()),
                                       lambda load=load: load.run.records,
                                       lambda load=load: load.run.start_ns) if early_stop else None
                    window = Window(load, spec.in_flight_kinds, concurrency, spec.level_duration_s)
                    windows.append(window)
                    async with window.observe(client, spec_interval_s=self.settings.mixed.gauge_interval_s):
                        await run_capacity_level(load, spec, concurrency, self._progress(f"c={concurrency}"), check)
                    if load.cut_reason:
                        break
            finally:
                result = self._judge_level(concurrency, windows, bar)
        return result

    def _judge_level(self, concurrency: int, windows: list[Window], bar: Thresholds) -> LevelResult:
        records = [r for w in windows for r in w.load.run.records]
        stats = LevelStats.of_runs(concurrency, [(w.load.run.records, w.load.run.start_ns) for w in windows])
        result = LevelResult.judge(self.target.key, concurrency, stats, bar,
                                   self.settings.require_concurrency, records)
        result.interrupted = any(w.interrupted for w in windows)
        result.client = windows[-1].health if windows else None
        result.cut_reason = next((w.load.cut_reason for w in windows if w.load.cut_reason), None)
        result.server_note = self.server_down_note()
        entry = result.as_report()
        entry["stalls"] = self._stalls(windows, bar)
        entry["simulator"] = merge_pacing(w.pacing for w in windows)
        entry["server_queue"] = server_queue(windows)
        self.run.report.record_level(self.target.key, entry)
        self.run.write_report()
        return result

    def _stalls(self, windows: list[Window], bar: Thresholds) -> dict[str, Any]:
        """Why the worst gaps happened (at most STALLS_KEPT of them, longest first)."""
        found = [stall for w in windows for stall in attribute_stalls(
            w.load.run.records, w.gauge_samples(), bar.max_gap_p95, w.load.run.start_ns)]
        found.sort(key=lambda stall: -stall["gap_s"])
        return {"count": len(found), "worst": found[:STALLS_KEPT]}

    async def mixed(self, thresholds: Thresholds | None = None) -> LevelResult:
        """The mixed coding-agent workload; the verdict is on its decode streams."""
        spec = self.settings.mixed
        async with self.client(spec.decode_workers + 8) as client:
            contexts = await self.contexts(client)
            await self.prepare_cache(client, contexts, mixed_prompts(spec), spec.context_tokens)
            load = self._load(client, contexts, "mixed")
            window = Window(load, ("decode",), spec.decode_workers, spec.duration_s)
            try:
                async with window.observe(client, spec_interval_s=spec.gauge_interval_s):
                    await run_mixed(load, spec, self._progress("mixed"))
            finally:
                stats = MixedStats.of(load.run.records, load.run.start_ns, window.gauges,
                                      self._cache(window.before, window.after),
                                      server_queue([window]))
                result = self._judge_mixed(stats, window, thresholds or self.settings.thresholds)
        return result

    def _judge_mixed(self, stats: MixedStats, window: Window, bar: Thresholds) -> LevelResult:
        decode = StreamStats(**stats.decode_streams)
        result = LevelResult.judge(f"{self.target.key} mixed", self.settings.mixed.decode_workers, decode,
                                   bar, None, window.load.run.records)
        result.client, result.interrupted = window.health, window.interrupted
        entry = stats.as_dict()
        entry.update(usable=result.usable, explain=result.explain(), status=result.status,
                     client=window.health.as_dict() if window.health else None,
                     stalls=self._stalls([window], bar), simulator=window.pacing,
                     gauge_series=window.gauge_samples(),
                     run_start_ns=window.load.run.start_ns)
        self.run.report.target(self.target.key)["mixed"] = entry
        self.run.write_report()
        return result

    def server_down_note(self) -> str | None:
        """Why the server is gone, if it died (a container or process we can ask); else None."""
        alive = getattr(self.handle, "alive", None)
        if alive is None or alive():
            return None
        reason = getattr(self.handle, "exit_reason", lambda: None)()
        return reason or "the server process is no longer running"

    @staticmethod
    def _cache(before: MetricsSnapshot | None, after: MetricsSnapshot | None) -> dict[str, float | None]:
        deltas = counter_deltas(before, after)
        deltas["host_used_after_tokens"] = host_used_after(after)
        return deltas

    async def scenario(self, agent: Callable[[Agent], Awaitable[None]], *, concurrency: int,
                       duration_s: float, name: str = "scenario", thresholds: Thresholds | None = None
                       ) -> LevelResult:
        """Run a user's agent coroutine in ``concurrency`` closed loops for ``duration_s``."""
        async with self.client(concurrency + 2) as client:
            contexts = await self.contexts(client)
            load = self._load(client, contexts, name, level=concurrency)
            deadline = load.clock.now() + duration_s

            async def loop(index: int) -> None:
                handle = Agent(index, load, deadline)
                while load.clock.now() < deadline:
                    sent = len(load.run.records)
                    await agent(handle)
                    handle.turn += 1
                    if any(not r.ok for r in load.run.records[sent:]):
                        await load.clock.sleep(FAILURE_PAUSE_S)

            await cancelled_by_sigterm(asyncio.gather(*(loop(i) for i in range(concurrency))))
            stats = StreamStats.of(load.run.records)
            return LevelResult.judge(f"{self.target.key} {name}", concurrency, stats,
                                     thresholds or self.settings.thresholds,
                                     records=load.run.records)

    def _load(self, client: StreamingClient, contexts: ContextFactory, scenario: str,
              level: int | None = None, repeat: int | None = None) -> Load:
        return Load(client, contexts, ModelClock(self.time_scale), profile=self.target.key, scenario=scenario,
                    on_record=self.run.records.append, temperature=self.settings.temperature, level=level,
                    tags={"repeat": repeat} if repeat is not None else None)

    def _progress(self, label: str) -> Progress:
        return lambda text: self.run.progress(f"glmperf {self.target.key} {label}: {text}")


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
            span = (run.start_ns, run.start_ns + int(self.load.clock.to_wall(self.window_s) * 1e9))
            self.health = monitor.health([r for r in run.records if r.kind in self.kinds], span,
                                         self.target_concurrency)

    def gauge_samples(self) -> dict[str, list[tuple[float, float]]]:
        """Gauge samples in model seconds since the load window started (the records' origin)."""
        offset = (self.load.run.start_ns - self.load.clock.start_ns) / 1e9 * self.load.clock.time_scale
        return {name: [(t - offset, v) for t, v in series.samples] for name, series in self.gauges.items()}


def server_queue(windows: list[Window]) -> dict[str, float | None] | None:
    """The server's queue_time_seconds over these windows (a level's repeats) as one
    summary; None when the server does not export it."""
    queue = HistogramDelta.merged(HistogramDelta.between(w.before, w.after) for w in windows)
    return queue.summary() if queue else None


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
