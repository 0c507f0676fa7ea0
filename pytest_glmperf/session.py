"""The session: which servers to test, in what order, every result it got, and its verdict.

``GlmperfRun`` is built once from ``Settings`` (never from pytest's config) and refuses bad
input before any server starts. For each target it opens a ``GlmperfServer`` and keeps what
that server measured; a result is measured once and handed to whoever asks (a capacity
test, a regression check that needs the level, the capacity search). Each finished request
goes straight to records.jsonl, each result rewrites report.json/.md, and at the end the
verdict is decided once (``verdict.decide``) and published everywhere.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .baseline import Baseline, load_baseline, save_baseline, slug
from .checks import ERROR, INCONCLUSIVE, SKIPPED, Check
from .errors import ConfigError, GlmperfError, RecordWriteError
from .levels import GlmperfServer, Judging, Target
from .outputs import publish
from .profiles import ProfileRegistry, ServerProfile, external_profile
from .progress import Progress
from .provenance import fetch_server_info, redact_url, server_name, url_name
from .records import RecordLog, RequestRecord
from .regression import (
    MIXED_CHECKS,
    Tolerances,
    compare_level,
    compare_max_usable,
    compare_mixed,
    match_target,
)
from .report import RunReport, TargetReport, now_iso, reference_provenance
from .results import CAPACITY, MIXED, LevelResult
from .server import ExternalServer, ServerHandle, SimulatedServer
from .settings import RunSettings, Settings
from .teardown import install_signal_handlers
from .thresholds import Thresholds
from .verdict import Claims, SessionVerdict, decide
from .workloads import texts_of_run

MAX_USABLE = "max_usable"


@dataclass
class _TargetState:
    """What the session holds about one target while it runs (frozen into a TargetReport)."""

    settings: RunSettings
    provenance: dict[str, Any] | None = None
    start_error: str | None = None
    chars_per_token: float | None = None
    levels: dict[int, LevelResult] = field(default_factory=dict)
    search: dict[str, Any] | None = None
    mixed: LevelResult | None = None
    scenarios: list[LevelResult] = field(default_factory=list)
    checks: dict[tuple[int | None, str], Check] = field(default_factory=dict)
    warnings: list[Check] | None = None
    match: TargetReport | None = None


class GlmperfRun:
    """Session-wide state; the pytest plugin only forwards to it."""

    def __init__(self, settings: Settings, registry: ProfileRegistry, rootdir: Path,
                 progress: Progress | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.rootdir = rootdir
        self.progress = progress or (lambda text: None)
        self.report_root = self._rooted(settings.get("report_dir"))
        self._run_dir: Path | None = None
        self.targets = self._plan_targets()
        self.run_settings = {t.key: settings.for_profile(t.profile) for t in self.targets}
        self._check_plan()
        self.judging = Judging(min_requests=settings.get("min_requests"),
                               inconclusive_fails=settings.get("inconclusive") == "fail")
        self.baseline_store = self._rooted(settings.get("baseline_dir"))
        self.compare_ref = settings.get("compare")
        # Loaded now, so an unknown baseline is a usage error before any server starts.
        self.baseline: Baseline | None = load_baseline(self.compare_ref, self.baseline_store) \
            if self.compare_ref else None
        self.tolerances = Tolerances.from_mapping(settings.get("tolerances") or {})
        # Without a saved baseline, later targets of one profile (images) or of --base-url are
        # compared with the first: candidate against prod, in one session.
        self.references = {} if self.baseline else reference_targets(self.targets)
        self._field_seen_texts()
        self.claims = Claims()
        self.problems: list[str] = []
        self.failed_tests: list[str] = []
        self.verdict: SessionVerdict | None = None
        self._states = {t.key: _TargetState(self.run_settings[t.key]) for t in self.targets}
        self._records: RecordLog | None = None
        self._servers: dict[str, GlmperfServer] = {}
        self._started_at = now_iso()
        self._status = "running"
        self._finished_at: str | None = None

    # -- plan --------------------------------------------------------------------------------
    def _rooted(self, path: str) -> Path:
        return Path(path) if Path(path).is_absolute() else self.rootdir / path

    def _plan_targets(self) -> list[Target]:
        profiles = self.registry.select(self.settings.profile_names)
        images = self.settings.images
        if images and not all(p.kind == "compose" for p in profiles):
            raise ConfigError("--image/--images apply to compose profiles only")
        if self.settings.base_urls:
            return self._external_targets(profiles)
        if counts := self.settings.get("workers"):  # a scaling sweep: one target per worker count
            profiles = [self.registry.resized(p, n) for p in profiles for n in counts]
        return [Target(p, image) for p in profiles for image in (images or (None,))]

    def _external_targets(self, profiles: list[ServerProfile]) -> list[Target]:
        """--base-url servers, each named from what it says it is (or its NAME=); a --profile
        given beside them lends its bar and options, never its name."""
        if self.settings.images:
            raise ConfigError("--image/--images start servers; --base-url tests servers already running")
        if "profile" in self.settings.given and len(profiles) > 1:
            raise ConfigError("with --base-url, --profile lends one profile's options: give a single one")
        like = profiles[0] if "profile" in self.settings.given else None
        found = []
        for label, url in self.settings.base_urls:
            server = ExternalServer(url, headers=self.auth_headers())
            server.check_reachable()
            found.append((label, url, server_name(url, fetch_server_info(url, headers=self.auth_headers())[1])))
        counts = Counter(name for _, _, name in found)
        return [Target(external_profile(label or (name if counts[name] == 1 else url_name(url)),
                                        redact_url(url), like), base_url=url)
                for label, url, name in found]

    def _field_seen_texts(self) -> None:
        """--field-seen-run: what that earlier run sent becomes what each target's server has
        seen (its counterpart in that run, else its first target); an unknown run is a usage
        error now, before any server starts."""
        for key, run in self.run_settings.items():
            if run.field_seen_run is None:
                continue
            earlier = load_baseline(run.field_seen_run, self.baseline_store).report
            seen = earlier.target(key) or next(iter(earlier.targets), None)
            if seen is None or not (seen.levels or seen.mixed):
                raise ConfigError(f"--field-seen-run {run.field_seen_run}: that run measured nothing to have seen")
            texts = texts_of_run(seen.settings, [lv.concurrency for lv in seen.levels], seen.mixed is not None)
            self.run_settings[key] = replace(run, field_texts=texts)

    def _check_plan(self) -> None:
        """Refuse a plan that could only pass on less than it claims, before anything starts."""
        for target in self.targets:
            run = self.run_settings[target.key]
            if run.require_concurrency not in run.levels and not run.capacity_search:
                below = [c for c in run.levels if c < run.require_concurrency]
                raise ConfigError(
                    f"{target.key}: required concurrency {run.require_concurrency} is not among the levels "
                    f"{','.join(map(str, run.levels))} (--concurrency-levels): the run could never show it usable; "
                    f"add it to the levels or lower --require-concurrency"
                    + (f" to {below[-1]}" if below else ""))

    @property
    def report_dir(self) -> Path:
        """This session's own run folder under --report-dir, made on first use: ``<report-dir>/
        <started>`` with ``<report-dir>/latest`` pointing at it. No session empties another's."""
        if self._run_dir is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder, n = self.report_root / stamp, 1
            while folder.exists():
                n += 1
                folder = self.report_root / f"{stamp}-{n}"
            folder.mkdir(parents=True)
            pointer = self.report_root / f".latest-{os.getpid()}"
            pointer.unlink(missing_ok=True)
            pointer.symlink_to(folder.name, target_is_directory=True)
            os.replace(pointer, self.report_root / "latest")
            self._run_dir = folder
        return self._run_dir

    def _check_report_dir(self) -> None:
        """The report folder must be a folder we can write, before any server starts."""
        folder = self.report_root
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".glmperf-write-check-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise ConfigError(f"--report-dir {folder} is not a folder this run can write: {exc.strerror or exc}") \
                from None

    def prepare(self, capacity_levels: dict[str, set[int]]) -> None:
        """Once the selection is known, before any server starts: check the simulated profiles'
        flags, the selection and the report folder, and make SIGTERM behave as Ctrl-C whatever
        kind of server runs."""
        for target in self.targets:
            if target.profile.is_simulated:
                _check_simulated_flags(target.profile.name, target.profile.server_args)
            for worker in target.profile.workers:  # a router's simulated workers
                if not worker.startswith(("http://", "https://")):
                    _check_simulated_flags(worker, self.registry.get(worker).server_args)
            if target.profile.is_router and not target.profile.router_url:
                from .fleet import router_executable

                router_executable()
        self.check_selection(capacity_levels)
        self._check_report_dir()
        install_signal_handlers()

    def check_selection(self, capacity_levels: dict[str, set[int]]) -> None:
        """The selected capacity tests must cover every level up to the required concurrency
        (``-k c1`` or ``--lf`` alone would otherwise claim a capacity never measured)."""
        for key, selected in capacity_levels.items():
            run = self.run_settings[key]
            if run.capacity_search:
                continue
            missing = [c for c in run.levels if c <= run.require_concurrency and c not in selected]
            if missing:
                raise ConfigError(
                    f"{key}: this selection leaves out required level(s) {','.join(map(str, missing))} "
                    f"(required concurrency {run.require_concurrency}): select them too, or pass "
                    f"--require-concurrency {max(selected)} to gate on what is selected")

    def compares(self, key: str) -> bool:
        """Whether this target has something to be compared with (regression items run)."""
        return self.baseline is not None or key in self.references

    def claim(self, claims: Claims) -> None:
        self.claims = claims

    @property
    def records(self) -> RecordLog:
        if self._records is None:
            self._records = RecordLog(self.report_dir / "records.jsonl", fresh=True)
        return self._records

    def on_record(self, record: RequestRecord) -> None:
        """Every finished request to disk at once; a failed write fails the session loudly."""
        try:
            self.records.append(record)
        except RecordWriteError as exc:
            if str(exc) not in self.problems:
                self.problems.append(str(exc))
                self.progress(f"glmperf: {exc}: the run cannot pass without its records")
            raise

    def auth_headers(self) -> dict[str, str]:
        key = self.settings.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    # -- servers -------------------------------------------------------------------------------
    def open_server(self, target: Target) -> GlmperfServer:
        """Bring the target's server up (or attach to --base-url) and wrap it.

        A start failure is kept in the report (the target's ``start_error``) before it propagates.
        """
        state = self._states[target.key]
        try:
            handle = self._start_handle(target)
            server = GlmperfServer(target, handle, state.settings, on_result=self.record, on_record=self.on_record,
                                   progress=self.progress, judging=self.judging, api_key=self.settings.api_key,
                                   eta_s=self.eta_s)
        except GlmperfError as exc:
            state.start_error = f"{type(exc).__name__}: {exc}"
            self.write_report()
            raise
        self._servers[target.key] = server
        state.provenance = server.provenance()
        self.write_report()
        return server

    def _start_handle(self, target: Target) -> ServerHandle:
        run = self.run_settings[target.key]
        if target.base_url:
            return ExternalServer(target.base_url, headers=self.auth_headers())
        log_path = self.report_dir / slug(target.key) / "server.log"
        if target.profile.is_router:
            from .fleet import start_fleet

            return start_fleet(target.profile, self.registry.get, time_scale=run.time_scale,
                               log_dir=log_path.parent, startup_timeout_s=self.settings.get("startup_timeout"),
                               progress=self.progress)
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

    # -- results -------------------------------------------------------------------------------
    def record(self, result: LevelResult) -> None:
        """Keep a judged result (replacing an earlier one of the same level) and rewrite the report."""
        state = self._states[result.target]
        if result.workload == CAPACITY:
            state.levels[result.concurrency] = result
        elif result.workload == MIXED:
            state.mixed = result
        else:
            state.scenarios.append(result)
        server = self._servers.get(result.target)
        if server is not None and server.chars_per_token:
            state.chars_per_token = server.chars_per_token
        self.write_report()

    def level(self, server: GlmperfServer, concurrency: int, thresholds: Thresholds | None = None) -> LevelResult:
        """The level's result, measured now unless this session already has it."""
        state = self._states[server.target.key]
        if state.search is None and state.settings.capacity_search:
            self.search(server, thresholds)
        if concurrency not in state.levels:
            if state.settings.capacity_search:
                raise LookupError(concurrency)  # the search did not need it
            server.run_capacity(concurrency, thresholds)
        return state.levels[concurrency]

    def search(self, server: GlmperfServer, thresholds: Thresholds | None = None) -> dict[str, Any]:
        """--capacity-search, once per target: what it probed, skipped and found."""
        state = self._states[server.target.key]
        if state.search is None:
            began = time.monotonic()
            reference = self._states.get(self.references.get(server.target.key, ""))
            expect = reference.search.get("max_usable") or 0 if reference and reference.search else None
            summary = server.capacity_search(thresholds, expect=expect)
            summary["server_time_s"] = sum(lv.stats.as_dict().get("duration_s") or 0.0 for lv in state.levels.values())
            summary["wall_s"] = round(time.monotonic() - began, 1)
            state.search = summary
            self.write_report()
        return state.search

    def mixed(self, server: GlmperfServer, thresholds: Thresholds | None = None) -> LevelResult:
        state = self._states[server.target.key]
        if state.mixed is None:
            server.run_mixed(thresholds)
        assert state.mixed is not None
        return state.mixed

    def regression_check(self, server: GlmperfServer, level: int | None, metric: str) -> Check:
        """One comparison with the baseline, on this session's data, measured now if need be."""
        key = server.target.key
        state = self._states[key]
        if (level, metric) not in state.checks:
            state.checks[(level, metric)] = self._compare(server, state, level, metric)
            self.write_report()
        return state.checks[(level, metric)]

    def _compare(self, server: GlmperfServer, state: _TargetState, level: int | None, metric: str) -> Check:
        key = server.target.key
        if metric in MIXED_CHECKS and self.baseline is not None:
            match = self._reference(key, state)[0]
            if match is not None and match.mixed is None:  # nothing to compare with: measure nothing for it
                return _no_check(key, level, metric, INCONCLUSIVE, "the mixed workload is not in the baseline")
        try:
            if metric == MAX_USABLE:  # needs every level (or the search)
                for c in state.settings.levels:
                    with contextlib.suppress(LookupError):
                        self.level(server, c)
            elif metric in MIXED_CHECKS:
                self.mixed(server)
            else:
                self.level(server, level)
        except LookupError:  # never measured on purpose: said so
            return self._unsearched(key, state, level, metric)
        match, records, why = self._reference(key, state)
        if match is None:
            return _no_check(key, level, metric, ERROR if key in self.references else INCONCLUSIVE, why)
        now = self._target_report(key)
        mine = [r for lv in (*now.levels, *([now.mixed] if now.mixed else ())) for r in lv.records]
        if metric == MAX_USABLE:
            return compare_max_usable(now, mine, match, records, self.tolerances, only_target=True)
        found = compare_mixed(now, mine, match, records, self.tolerances, only_target=True) \
            if metric in MIXED_CHECKS else compare_level(now, mine, match, records, level, self.tolerances,
                                                         only_target=True)
        return next((c for c in found if c.metric == metric), None) or \
            _no_check(key, level, metric, ERROR, f"unknown metric {metric!r}")

    def _unsearched(self, key: str, state: _TargetState, level: int | None, metric: str) -> Check:
        """A level this target's --capacity-search did not need: no claim when the reference has
        none either (skipped), else inconclusive, for --inconclusive to decide."""
        match = self._reference(key, state)[0]
        reason = f"c={level} was not needed by --capacity-search (max usable settled without it)"
        if match is not None and match.level(level) is None:
            return _no_check(key, level, metric, SKIPPED, reason + f"; the reference has no c={level} either")
        return _no_check(key, level, metric, INCONCLUSIVE, reason)

    def _reference(self, key: str, state: _TargetState) -> tuple[TargetReport | None, list[RequestRecord], str]:
        """What ``key`` is compared with: its counterpart in the saved baseline, or this session's
        reference target as measured so far; with the records, or why there is none."""
        if self.baseline is not None:
            if state.warnings is None:
                state.match, state.warnings = match_target(self._target_report(key), self.baseline,
                                                           sole=len(self.targets) == 1)
            why = next((w.reason for w in state.warnings), "no counterpart in the baseline")
            return state.match, self.baseline.records, why
        reference = self.references[key]
        state.warnings = state.warnings or []
        if not self._has_data(reference) or self._states[reference].start_error:
            return None, [], f"the reference {reference} has no measurements in this session (select its tests too)"
        return self._target_report(reference), self._all_records(reference), ""

    def reference_label(self, key: str) -> str | None:
        """How the report names what a target was compared with."""
        if self.baseline is not None:
            return self.baseline.described()
        reference = self.references.get(key)
        return f"{reference} (this session's reference target)" if reference else None

    def _reference_provenance(self, key: str, state: _TargetState) -> dict[str, Any] | None:
        """The reference's build and date, for the report's comparison section."""
        if self.baseline is not None:
            if state.match is None:
                return None
            return reference_provenance(state.match, self.baseline.report.started_at or None)
        reference = self.references.get(key)
        if reference is None or not self._has_data(reference):
            return None
        mine = self._states[reference]
        windows = [*mine.levels.values(), *([mine.mixed] if mine.mixed else [])]
        started = min((w.started_at for w in windows if w.started_at), default=self._started_at)
        return reference_provenance(self._target_report(reference), started)

    def eta_s(self) -> float | None:
        """Wall seconds of planned load still to run (windows not yet measured, at each server's
        time scale); drains, prefills and start-ups come on top. None when nothing is planned."""
        total = 0.0
        for target in self.targets:
            state, run = self._states[target.key], self._states[target.key].settings
            server = self._servers.get(target.key)
            simulated = target.profile.is_simulated or target.profile.is_router
            scale = server.time_scale if server else (run.time_scale if simulated else 1.0)
            if target.key in self.claims.capacity or any(key == target.key for key, *_ in self.claims.regression):
                left = [c for c in run.levels if c not in state.levels]
                total += len(left) * run.capacity.level_duration_s * run.repeats / scale
            if target.key in self.claims.mixed and state.mixed is None:
                total += run.mixed.duration_s / scale
        return total or None

    # -- report and verdict ----------------------------------------------------------------------
    def _target_report(self, key: str) -> TargetReport:
        state = self._states[key]
        checks = [*(state.warnings or []), *state.checks.values()]
        return TargetReport(
            key=key, settings=state.settings.as_dict(), provenance=state.provenance, start_error=state.start_error,
            chars_per_token=state.chars_per_token,
            levels=tuple(state.levels[c] for c in sorted(state.levels)), search=state.search, mixed=state.mixed,
            scenarios=tuple(state.scenarios), checks=tuple(checks),
            baseline=self.reference_label(key) if checks else None,
            reference=self._reference_provenance(key, state) if checks else None)

    def snapshot(self) -> RunReport:
        """The report as it stands: every target that has anything to show."""
        shown = [t.key for t in self.targets if self._has_data(t.key)]
        return RunReport(targets=tuple(self._target_report(k) for k in shown), status=self._status,
                         verdict=self.verdict, started_at=self._started_at, finished_at=self._finished_at,
                         notes=tuple(self._notes()))

    def _has_data(self, key: str) -> bool:
        state = self._states[key]
        return bool(state.provenance or state.start_error or state.levels or state.mixed or state.scenarios)

    def _notes(self) -> list[str]:
        return [f"server under test: {redact_url(t.base_url)} (--base-url, {t.key})"
                for t in self.targets if t.base_url]

    @property
    def measured_anything(self) -> bool:
        return any(self._has_data(t.key) for t in self.targets) or self._records is not None

    def decide(self, interrupted: bool = False) -> SessionVerdict:
        """The session's verdict from what it claimed and measured (decided once, re-decided
        only when an interruption ends the session)."""
        self.verdict = decide(self.snapshot().targets, self.claims, problems=self.problems,
                              failed_tests=self.failed_tests, interrupted=interrupted,
                              inconclusive_fails=self.judging.inconclusive_fails,
                              min_scaling_efficiency=self.settings.get("min_scaling_efficiency"))
        self.write_report()
        return self.verdict

    def write_report(self) -> None:
        publish(self.report_dir, self.snapshot())

    def finish(self, interrupted: bool) -> None:
        """Stop what is still up, decide if not yet decided, publish everything.

        A session that measured nothing (no glmperf test ran) writes nothing.
        """
        for server in list(self._servers.values()):
            self.close_server(server)
        if not self.measured_anything:
            return
        if self.verdict is None or interrupted:
            self.decide(interrupted=interrupted)
        self._status = "interrupted" if interrupted else "complete"
        self._finished_at = now_iso()
        if self._records:
            self._records.close()
        records = [r for key in self._states for r in self._all_records(key)]
        publish(self.report_dir, self.snapshot(), final=True, records=records)
        name = self.settings.get("save_baseline")
        if name and not interrupted and self.verdict is not None:
            path = save_baseline(self.report_dir, name, self.baseline_store)
            self.progress(f"glmperf: baseline {name!r} saved in {path}")

    def _all_records(self, key: str) -> list[RequestRecord]:
        state = self._states[key]
        results = [*state.levels.values(), *([state.mixed] if state.mixed else []), *state.scenarios]
        return [r for result in results for r in result.records]


def reference_targets(targets: list[Target]) -> dict[str, str]:
    """Target key -> the key of the target it is compared with: the first of the same profile
    (``--image prod --image candidate``), or the first ``--base-url`` server."""
    firsts: dict[str, str] = {}
    found = {}
    for target in targets:
        group = "--base-url" if target.base_url else target.profile.name
        if group in firsts:
            found[target.key] = firsts[group]
        else:
            firsts[group] = target.key
    return found


def _no_check(key: str, level: int | None, metric: str, outcome: str, reason: str) -> Check:
    return Check(key, level, metric, None, None, None, None, None, None, outcome, reason)


def _check_simulated_flags(profile: str, args: tuple[str, ...]) -> None:
    """A simulated profile's SGLang flags, parsed as the simulator will: a typo is an error now,
    not a server that silently runs without the feature (docs/simulator.md, "Flags")."""
    from .simulator.config import check_server_args

    try:
        check_server_args(args)
    except ValueError as exc:
        raise ConfigError(f"profile {profile!r}: {exc}") from None
