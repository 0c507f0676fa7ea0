"""Renderers: the run report as Markdown (report.md) and as terminal tables.

Pure functions of a ``RunReport``: they render what the model holds and decide nothing (the
verdict comes decided). Tables are built from each level's report.json entry, so a saved
report re-renders the same.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tabulate import tabulate

from .attribution import worst_stall_lines
from .baseline import slug
from .checks import (
    ERROR,
    FAIL,
    INCONCLUSIVE,
    PASS,
    SKIPPED,
    WARNING,
    Check,
    fmt_conf,
    fmt_num,
    fmt_signed,
)
from .ci_summary import MARKS
from .report import RunReport, TargetReport
from .scaling import scaling_rows

if TYPE_CHECKING:
    from .results import LevelResult
from .scrape import merge_pacing

Sink = Callable[[str], None]

LEVEL_COLUMNS = [
    ("concurrency", "c", "{:d}"),
    ("status", "verdict", "{}"),
    ("settled", "settled", "{}"),
    ("requests", "requests", "{:d}"),
    ("failure_rate", "failed", "{:.1%}"),
    ("tok_s_p50", "tok/s P50", "{:.2f}"),
    ("ttft_p50_s", "TTFT P50 s", "{:.2f}"),
    ("ttft_p95_s", "TTFT P95 s", "{:.2f}"),
    ("gap_p50_s", "gap P50 s", "{:.2f}"),
    ("gap_p95_s", "gap P95 s", "{:.2f}"),
    ("aggregate_tok_s", "agg tok/s", "{:.2f}"),
    ("requests_per_s", "req/s", "{:.3f}"),
]
MIXED_ROWS = [
    ("client_tok_s", "client out tok/s", "{:.2f}"),
    ("server_gen_throughput_mean", "server gen_throughput mean", "{:.2f}"),
    ("queue_mean", "queue mean", "{:.2f}"),
    ("queue_p95", "queue P95", "{:.2f}"),
    ("ttft_p50_s", "TTFT P50 s", "{:.2f}"),
    ("ttft_p95_s", "TTFT P95 s", "{:.2f}"),
    # The server's own queue_time_seconds (TTFT less prefill and transport); "–" if not exported.
    ("server_queue_p50_s", "server queue time P50 s", "{:.2f}"),
    ("server_queue_p95_s", "server queue time P95 s", "{:.2f}"),
    ("gap_p50_s", "max chunk gap P50 s", "{:.2f}"),
    ("gap_p95_s", "max chunk gap P95 s", "{:.2f}"),
]
CACHE_ROWS = [
    ("cached_device_tokens", "cached on device"),
    ("cached_host_tokens", "cached on host"),
    ("evicted_tokens", "evicted"),
    ("load_back_tokens", "loaded back"),
    ("host_used_after_tokens", "host used after"),
]
# Shown only when a server reports them (an L3 storage tier is attached).
STORAGE_ROWS = [
    ("cached_storage_tokens", "cached from L3 storage"),
    ("prefetched_tokens", "prefetched L3 -> host"),
    ("storage_backup_tokens", "backed up host -> L3"),
]


def cache_rows(caches: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The cache table's rows: the field report's, plus L3 rows any of ``caches`` has."""
    return CACHE_ROWS + [(key, title) for key, title in STORAGE_ROWS
                         if any(cache.get(key) is not None for cache in caches)]


def _fmt(value: Any, pattern: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        return pattern.format(value)
    except (ValueError, TypeError):
        return str(value)


def pacing_note(pacing: dict[str, Any] | None) -> str | None:
    """A simulator that fell behind wall time stretched the timings it served: say so beside them."""
    if not pacing or not pacing.get("late_steps"):
        return None
    return (f"the simulator delivered {pacing['late_steps']:.0f} steps late (worst since start "
            f"{pacing['lag_max_since_start_s']:.2f} model s): gaps and latencies stretched by up to "
            "that; a lower --time-scale avoids it")


def pacing_windows(target: dict[str, Any]) -> list[dict[str, Any] | None]:
    """The ``simulator`` block of every window of a target: its levels, then its mixed run."""
    windows = [lv.get("simulator") for lv in target["capacity"]["levels"]]
    windows.append((target.get("mixed") or {}).get("simulator"))
    return windows


def pacing_summary(target: dict[str, Any]) -> str | None:
    """One line per target over all its windows, for the terminal."""
    late = [w for w in pacing_windows(target) if w and w.get("late_steps")]
    merged = merge_pacing(late)
    if not merged:
        return None
    return (f"simulator behind wall time in {len(late)} window(s): {merged['late_steps']:.0f} steps "
            f"late, worst {merged['lag_max_since_start_s']:.2f} model s (timings stretched by up to "
            "that; a lower --time-scale avoids it)")


def level_table(levels: list[dict[str, Any]], fmt: str = "github") -> str:
    rows = [[_fmt(lv.get(key), pattern) for key, _, pattern in LEVEL_COLUMNS] for lv in levels]
    return tabulate(rows, headers=[title for _, title, _ in LEVEL_COLUMNS], tablefmt=fmt, disable_numparse=True)


def side_by_side(targets: dict[str, dict[str, Any]], fmt: str = "github") -> list[str]:
    """The field report's comparison tables: mixed metrics, cache deltas, capacity per level."""
    names = list(targets)
    tables = []
    mixed = {n: targets[n].get("mixed") or {} for n in names}
    if any(mixed.values()):
        rows = [[title, *(_fmt(mixed[n].get(key), p) for n in names)] for key, title, p in MIXED_ROWS]
        tables.append(tabulate(rows, headers=["mixed workload", *names], tablefmt=fmt, disable_numparse=True))
        caches = {n: mixed[n].get("cache") or {} for n in names}
        rows = [[title, *(_fmt(caches[n].get(key), "{:,.0f}") for n in names)]
                for key, title in cache_rows(list(caches.values()))]
        tables.append(tabulate(rows, headers=["cache counter delta", *names], tablefmt=fmt, disable_numparse=True))
    levels = sorted({lv["concurrency"] for n in names for lv in targets[n]["capacity"]["levels"]})
    if levels:
        def cell(name: str, c: int) -> str:
            level = next((lv for lv in targets[name]["capacity"]["levels"] if lv["concurrency"] == c), None)
            if not level:
                return "–"
            mark = "usable" if level.get("usable") else "NOT usable"
            return f"{mark}, {_fmt(level.get('aggregate_tok_s'), '{:.1f}')} tok/s"
        rows = [[c, *(cell(n, c) for n in names)] for c in levels]
        rows.append(["max usable", *(_fmt(targets[n]["capacity"].get("max_usable"), "{}") for n in names)])
        tables.append(tabulate(rows, headers=["concurrency", *names], tablefmt=fmt, disable_numparse=True))
        tables.append(delta_table(targets, levels, fmt))
    return tables


DELTA_METRICS = [("tok_s_p50", "{:.2f}"), ("ttft_p95_s", "{:.2f}"), ("gap_p95_s", "{:.2f}"),
                 ("aggregate_tok_s", "{:.1f}")]


def delta_table(targets: dict[str, dict[str, Any]], levels: list[int], fmt: str = "github") -> str:
    """Per level and metric: the first target's value, then each other's with its change."""
    names = list(targets)
    base = names[0]

    def value(name: str, level: int, key: str) -> Any:
        found = [lv for lv in targets[name]["capacity"]["levels"] if lv["concurrency"] == level]
        return found[0].get(key) if found else None

    rows = []
    for level in levels:
        for key, pattern in DELTA_METRICS:
            old = value(base, level, key)
            cells = [_fmt(old, pattern)]
            for name in names[1:]:
                new = value(name, level, key)
                change = f" ({(new - old) / old:+.0%})" if new is not None and old else ""
                cells.append(_fmt(new, pattern) + change)
            rows.append([f"c{level}", key, *cells])
    return tabulate(rows, headers=["level", "metric", *names], tablefmt=fmt, disable_numparse=True)


def provenance_line(provenance: dict[str, Any]) -> str:
    """'server: compose · version 0.5.16 · image lmsysorg/sglang:v0.5.16 (sha256:1234abcd…, commit abc)'."""
    line = f"server: {provenance.get('kind', '?')} · version {provenance.get('version') or '?'}"
    image = provenance.get("image")
    if isinstance(image, dict):
        ident = (image.get("id") or "")[:19]
        commit = f", commit {image['build_commit']}" if image.get("build_commit") else ""
        digest = f", {image['repo_digests'][0]}" if image.get("repo_digests") else ""
        line += f" · image {image.get('reference')} ({ident}{digest}{commit})"
    if provenance.get("accepted_not_modelled"):
        line += f" · flags accepted but not modelled: {' '.join(provenance['accepted_not_modelled'])}"
    return line


def conditions_line(settings: dict[str, Any]) -> str:
    """'workload: levels 1,2,4 x 240 s, a spike every 25 s in an agent's slot · cache flushed before each window'.

    The conditions that decide how comparable two reports are, in one line."""
    capacity = settings.get("capacity") or {}
    levels = ",".join(str(c) for c in settings.get("levels", []))
    interval, mode = capacity.get("spike_interval_s"), capacity.get("spike_mode", "slot")
    spikes = (f"a spike every {interval:g} s " + ("in an agent's slot" if mode == "slot" else "beside the agents")
              if interval else "no spikes")
    window = f"levels {levels} x {capacity.get('level_duration_s', 0):g} s"
    longest, needed = capacity.get("max_level_duration_s"), capacity.get("min_agent_requests")
    if needed and longest and longest > capacity.get("level_duration_s", 0):
        window += f" (up to {longest:g} s until {needed} agent requests)"
    cache_start = str(settings.get("cache_start", "flushed"))
    if cache_start.startswith("field"):  # --field-mode: 'field (levels 1,2,4 seen, no flush)'
        return (f"workload: {window}, {spikes}"
                f" · the field's mode: {cache_start[len('field ('):-1]} (--field-mode)")
    start = {"warm": "primed with its contexts and spikes", "flushed": "flushed",
             "cold": "flushed (L3 storage cleared too)", "as-is": "left as it was",
             }.get(cache_start, "?")
    return f"workload: {window}, {spikes} · cache {start} before each window"


def render_markdown(report: RunReport, charts: Collection[str] = ()) -> str:
    """report.md; ``charts`` names the chart files written beside it, linked where they belong."""
    data = report.as_dict()
    out = ["# pytest-glmperf report", "",
           f"status: **{report.status}** · started {report.started_at} · host {report.host}", ""]
    if report.command:
        out += [f"command: `{' '.join(report.command)}`", ""]
    if report.verdict:
        out += [f"**{report.verdict.line()}**", ""]
        out += [f"- ❌ {reason}" for reason in report.verdict.failures]
        out += [f"- ❔ {reason}" for reason in report.verdict.inconclusive]
        out += [""] if report.verdict.failures or report.verdict.inconclusive else []
    out += [f"_{note}_" for note in report.notes] + ([""] if report.notes else [])
    for target in report.targets:
        entry = data["targets"][target.key]
        out += [f"## {target.key}", ""]
        if target.provenance:
            out += [provenance_line(target.provenance), ""]
        if target.settings:
            out += [conditions_line(target.settings), "", bar_line(target.settings, target.levels), ""]
        if target.start_error:
            out += [f"**server did not start**: {target.start_error}", ""]
        out += _capacity_section(entry["capacity"], target.key, charts)
        out += _mixed_section(entry.get("mixed"))
        out += _scenario_section(entry.get("scenarios") or [])
        out += comparison_section(target, charts)
        out += _distribution_section(entry)
    if len(report.targets) > 1:
        out += ["## Side by side", ""]
        for table in side_by_side(data["targets"]):
            out += [table, ""]
    if table := scaling_table(report):
        out += ["## Scaling with workers", "", table, "",
                "efficiency = max usable at N / (N x max usable at 1); locality: the mixed run's follow-ups "
                "that found their repository cached where the router sent them.", ""]
        out += [f"![scaling]({SCALING_CHART})", ""] if SCALING_CHART in charts else []
    return "\n".join(out)


SCALING_CHART = "scaling.svg"


def scaling_table(report: RunReport, fmt: str = "github") -> str | None:
    """Max usable, its aggregate tok/s, efficiency and locality per fleet and worker count."""
    rows = [[row.fleet, row.workers, _fmt(row.max_usable, "{}"), _fmt(row.aggregate_tok_s, "{:.1f}"),
             row.efficiency_text, _fmt(row.locality, "{:.0%}")] for row in scaling_rows(report.targets)]
    if not rows:
        return None
    return tabulate(rows, headers=["fleet", "workers", "max usable", "agg tok/s", "efficiency", "locality"],
                    tablefmt=fmt, disable_numparse=True)


def bar_line(settings: dict[str, Any], levels: Sequence[LevelResult]) -> str:
    """'bar: failed <= 5 %, tok/s P50 >= 4, TTFT P95 <= 180 s, gap P95 <= 8 s, each on >= 20 requests; …'."""
    bar = settings.get("thresholds") or {}
    parts = [f"failed <= {_fmt(bar.get('max_failure_rate'), '{:.0%}')}",
             f"tok/s P50 >= {_fmt(bar.get('min_tok_s_p50'), '{:g}')}",
             f"TTFT P95 <= {_fmt(bar.get('max_ttft_p95'), '{:g}')} s",
             f"gap P95 <= {_fmt(bar.get('max_gap_p95'), '{:g}')} s"]
    text = "bar: " + ", ".join(parts)
    if levels:
        text += f", each on >= {levels[0].min_requests} requests"
    return text + f"; required concurrency {_fmt(settings.get('require_concurrency'), '{}')}"


def _distribution_section(target: dict[str, Any]) -> list[str]:
    """Mean and percentiles of every per-request figure, per window (levels, mixed, scenarios)."""
    windows = [(f"c={lv['concurrency']}", lv) for lv in target["capacity"]["levels"]]
    windows += [("mixed", target["mixed"])] if target.get("mixed") else []
    windows += [(f"{s['workload']} c={s['concurrency']}", s) for s in target.get("scenarios") or []]
    rows, stats = [], None
    for name, window in windows:
        for figure, values in (window.get("distributions") or {}).items():
            stats = stats or [key for key in values if key != "n"]
            rows.append([name, figure, values.get("n"), *(_fmt(values.get(key), "{:.3g}") for key in stats)])
    if not rows or stats is None:
        return []
    table = tabulate(rows, headers=["window", "figure", "n", *stats], tablefmt="github", disable_numparse=True)
    return ["### Distributions (successful requests; model seconds, tok/s)", "", table, ""]


def _capacity_section(capacity: dict[str, Any], key: str, charts: Collection[str]) -> list[str]:
    if not capacity["levels"]:
        return []
    out = ["### Capacity", "", level_table(capacity["levels"]), "",
           f"max usable concurrency: **{_fmt(capacity.get('max_usable'), '{}')}**"
           f" ({_fmt(capacity.get('max_usable_aggregate_tok_s'), '{:.2f}')} tok/s aggregate)", ""]
    out += _server_table(capacity["levels"])
    out += _workers_table([(f"c={lv['concurrency']}", lv) for lv in capacity["levels"]])
    for lv in capacity["levels"]:
        if lv.get("explain") and not lv.get("usable"):
            timeline = level_timeline_name(key, lv["concurrency"])
            link = f" ([timeline]({timeline}))" if timeline in charts else ""
            out.append(f"- c={lv['concurrency']}: {lv['explain']}{link}")
            out += [f"  - stall {line}" for line in worst_stall_lines(lv.get("stalls"))]
        if note := pacing_note(lv.get("simulator")):
            out.append(f"- c={lv['concurrency']}: {note}")
    return [*out, ""]


SERVER_GAUGE_COLUMNS = [("num_queue_reqs", "mean", "queue mean"), ("num_queue_reqs", "p95", "queue P95"),
                        ("num_running_reqs", "mean", "running mean"), ("token_usage", "mean", "KV usage mean")]
SERVER_COUNTER_COLUMNS = [("cached_device_tokens", "cached device"), ("cached_host_tokens", "cached host"),
                          ("evicted_tokens", "evicted"), ("load_back_tokens", "loaded back"),
                          ("retracted_requests", "retracted"), ("prompt_tokens", "prompt tokens"),
                          ("generation_tokens", "gen tokens")]


def _server_table(levels: list[dict[str, Any]]) -> list[str]:
    """What the server did during each level: gauge summaries and counter deltas (from /metrics)."""
    if not any(lv.get("cache") or lv.get("gauges") for lv in levels):
        return []
    rows = []
    for lv in levels:
        gauges, cache = lv.get("gauges") or {}, lv.get("cache") or {}
        rows.append([lv["concurrency"],
                     *(_fmt((gauges.get(name) or {}).get(stat), "{:.2f}") for name, stat, _ in SERVER_GAUGE_COLUMNS),
                     *(_fmt(cache.get(key), "{:,.0f}") for key, _ in SERVER_COUNTER_COLUMNS)])
    headers = ["c", *(title for *_, title in SERVER_GAUGE_COLUMNS), *(title for _, title in SERVER_COUNTER_COLUMNS)]
    return ["Server during each level (gauges sampled, counter deltas):", "",
            tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]



def level_timeline_name(key: str, concurrency: int) -> str:
    """The file of a capacity level's timeline chart (drawn for levels that were not usable)."""
    return f"timeline-{slug(key)}-c{concurrency}.svg"


def changes_chart_name(key: str) -> str:
    """The file of a target's chart of changes against its reference."""
    return f"changes-{slug(key)}.svg"


def comparison_section(target: TargetReport, charts: Collection[str] = ()) -> list[str]:
    """Every check against the reference: values, change, interval, tolerance, outcome and why."""
    checks = [c for c in target.checks if c.outcome != WARNING]
    warnings = [c for c in target.checks if c.outcome == WARNING]
    if not checks and not warnings:
        return []
    out = [f"### Compared with {target.baseline or 'the reference'}", ""]
    if target.reference:
        out += [reference_line(target.reference), ""]
    counts = ", ".join(f"{n} {outcome}" for outcome in (FAIL, ERROR, INCONCLUSIVE, PASS, SKIPPED)
                       if (n := sum(c.outcome == outcome for c in checks)))
    if checks:
        out += [f"{len(checks)} checks: {counts}", ""]
        rows = [[c.window, c.metric.removeprefix("mixed_"), _value(c.baseline, c.unit), _value(c.current, c.unit),
                 _change(c), _interval(c), c.allowed_text(), f"{MARKS.get(c.outcome, '')} {c.outcome}",
                 c.why()] for c in sorted(checks, key=_check_order)]
        headers = ["window", "metric", "reference", "this run", "change",
                   f"{fmt_conf(checks[0].confidence)} CI of change", "tolerance", "outcome", "why"]
        out += [tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), ""]
    out += [f"- {MARKS[WARNING]} {c.message()}" for c in warnings] + ([""] if warnings else [])
    if changes_chart_name(target.key) in charts:
        out += [f"![changes against the reference]({changes_chart_name(target.key)})", ""]
    return out


def reference_line(reference: Mapping[str, Any]) -> str:
    """'reference: prod@img · server version 0.5.6 · image ref (sha256:…) · measured 2026-12-01T10:00'."""
    parts = [f"reference: {reference.get('target') or '?'}",
             f"server version {reference.get('server_version') or '?'}"]
    if reference.get("image"):
        ident = reference.get("image_digest") or (reference.get("image_id") or "")[:19]
        parts.append(f"image {reference['image']}" + (f" ({ident})" if ident else ""))
    parts.append(f"measured {reference.get('measured_at') or '?'}")
    return " · ".join(parts)


def _check_order(check: Check) -> tuple[int, int, str]:
    rank = {FAIL: 0, ERROR: 0, INCONCLUSIVE: 1}.get(check.outcome, 2)
    return (10**6 if check.level is None else check.level, rank, check.metric)


def _value(value: float | None, unit: str) -> str:
    return "–" if value is None else f"{fmt_num(value)}{unit}"


def _change(check: Check) -> str:
    if check.delta_pct is not None:
        return f"{check.delta_pct:+.1f} %"
    return "–" if check.delta is None else fmt_signed(check.delta) + check.unit


def _interval(check: Check) -> str:
    if check.ci_low is None or check.ci_high is None:
        return "–"
    return f"{fmt_signed(check.ci_low)}..{fmt_signed(check.ci_high)}{check.unit}"


WORKER_COLUMNS = [("requests", "requests"), ("prompt_tokens", "prompt tokens"),
                  ("cached_device_tokens", "cached device"), ("cached_host_tokens", "cached host"),
                  ("evicted_tokens", "evicted"), ("load_back_tokens", "loaded back"),
                  ("generation_tokens", "gen tokens")]


def _workers_table(windows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """A fleet behind a router: each worker's share of every window, and how local the routing was."""
    rows, notes = [], []
    for name, window in windows:
        for worker, figures in (window.get("workers") or {}).items():
            counters, gauges = figures.get("counters") or {}, figures.get("gauges") or {}
            rows.append([name, worker, *(_fmt(counters.get(key), "{:,.0f}") for key, _ in WORKER_COLUMNS),
                         _fmt((gauges.get("num_running_reqs") or {}).get("mean"), "{:.2f}"),
                         _fmt((gauges.get("num_queue_reqs") or {}).get("mean"), "{:.2f}")])
        if window.get("workers") and (line := routing_line(window.get("routing"))):
            notes.append(f"- {name}: {line}")
    if not rows:
        return []
    headers = ["window", "worker", *(title for _, title in WORKER_COLUMNS), "running mean", "queue mean"]
    return ["Workers behind the router (counter deltas, gauge means):", "",
            tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True), "", *notes,
            *([""] if notes else [])]


def routing_line(routing: Mapping[str, Any] | None) -> str | None:
    """'34 of 40 follow-ups (85 %) found their repository cached where they landed; cached-token share 83 %'."""
    if not routing or not routing.get("follow_ups"):
        return None
    return (f"{routing['local']} of {routing['follow_ups']} follow-ups ({routing['locality']:.0%}) found their "
            f"repository cached where they landed; cached-token share {_fmt(routing.get('cached_share'), '{:.0%}')}")


def _mixed_section(mixed: dict[str, Any] | None) -> list[str]:
    if not mixed:
        return []
    rows = [[title, _fmt(mixed.get(key), p)] for key, title, p in MIXED_ROWS]
    cache = mixed.get("cache") or {}
    rows += [[title, _fmt(cache.get(key), "{:,.0f}")] for key, title in cache_rows([cache])]
    out = ["### Mixed coding-agent workload", "",
           tabulate(rows, headers=["metric", "value"], tablefmt="github", disable_numparse=True), "",
           f"decode streams: {mixed.get('status', '–')}: {mixed.get('explain', '–')}", ""]
    stalls = worst_stall_lines(mixed.get("stalls")) if not mixed.get("usable") else []
    out += [*(f"- stall {line}" for line in stalls), ""] if stalls else []
    out += _workers_table([("mixed", mixed)])
    if note := pacing_note(mixed.get("simulator")):
        out += [f"Mixed run: {note}.", ""]
    return out


def _scenario_section(scenarios: list[dict[str, Any]]) -> list[str]:
    if not scenarios:
        return []
    rows = [[s.get("workload"), *(_fmt(s.get(key), p) for key, _, p in LEVEL_COLUMNS)] for s in scenarios]
    out = ["### Scenarios", "",
           tabulate(rows, headers=["scenario", *(title for _, title, _ in LEVEL_COLUMNS)], tablefmt="github",
                    disable_numparse=True), ""]
    bullets = [f"- {s.get('workload')} c={s.get('concurrency')}: {s['explain']}" for s in scenarios
               if not s.get("usable") and s.get("explain")]
    return [*out, *bullets, ""] if bullets else out


def render_terminal(report: RunReport, write: Sink) -> None:
    """Per-level table per target, then side-by-side tables when there are several."""
    data = report.as_dict()
    for name, target in data["targets"].items():
        capacity = target["capacity"]
        if capacity["levels"]:
            write(f"glmperf {name}: capacity (max usable: {_fmt(capacity.get('max_usable'), '{}')})")
            write(level_table(capacity["levels"], fmt="simple"))
            for lv in capacity["levels"]:
                for line in worst_stall_lines(lv.get("stalls")) if not lv.get("usable") else ():
                    write(f"  c={lv['concurrency']} stall {line}")
        mixed = target.get("mixed")
        if mixed:
            write(f"glmperf {name}: mixed workload ({mixed.get('status', '–')}: {mixed.get('explain', '–')})")
            rows = [[title, _fmt(mixed.get(key), p)] for key, title, p in MIXED_ROWS]
            write(tabulate(rows, tablefmt="simple", disable_numparse=True))
        for scenario in target.get("scenarios") or []:
            write(f"glmperf {name}: scenario {scenario['workload']} c={scenario['concurrency']}: "
                  f"{scenario['status']} ({scenario['explain']})")
        if summary := pacing_summary(target):
            write(f"glmperf {name}: {summary}")
    if len(report.targets) > 1:
        for table in side_by_side(data["targets"], fmt="simple"):
            write(table)
    if table := scaling_table(report, fmt="simple"):
        write("glmperf scaling with workers (efficiency = max usable at N / (N x max usable at 1)):")
        write(table)
