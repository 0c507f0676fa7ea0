"""Charts as SVG text: capacity over concurrency, and the mixed workload's timeline.

Pure functions of report data and records; they return an SVG string and never touch pyplot,
so no GUI backend is ever selected in the test process (figures are rendered by matplotlib's
SVG backend directly). Text stays text (``svg.fonttype = none``): labels are searchable and
the files small. Every plotted series carries an SVG id (``gid``) such as
``capacity-ttft-sim-hicache`` or ``timeline-stalls``, so tests and users can find it.
"""

from __future__ import annotations

import io
import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from .checks import ERROR, FAIL, INCONCLUSIVE, PASS, SKIPPED, WARNING, Check
from .records import RequestRecord

__all__ = ["DEFAULT_GAUGES", "assign_lanes", "capacity_chart", "changes_chart", "scaling_chart", "timeline_chart"]

DEFAULT_GAUGES = ("num_queue_reqs", "num_running_reqs", "gen_throughput")
MAX_TICK_BINS = 1500          # chunk ticks kept per lane: about one per horizontal pixel
MAX_STALL_LABELS = 40
KIND_COLORS = {"decode": "#1f77b4", "agent": "#1f77b4", "revisit": "#9467bd", "spike": "#ff7f0e"}
LANE_ORDER = ("decode", "agent", "revisit", "spike")
STALL_COLOR, OK_SHADE, BAR_COLOR, REFERENCE_COLOR = "#d62728", "#2ca02c", "#555555", "#8c8c8c"
# The unit of each gauge SGLang exports (docs/metrics.md), for the timeline's panels.
GAUGE_UNITS = {"num_queue_reqs": "requests", "num_running_reqs": "requests", "gen_throughput": "tok/s",
               "token_usage": "fraction of KV pool", "hicache_host_used_tokens": "tokens",
               "spec_accept_length": "tokens per step", "kv_available_tokens": "tokens",
               "kv_evictable_tokens": "tokens"}
PANELS = (  # (panel id, report field, title, threshold key, threshold is an upper bound)
    ("tok_s", "tok_s_p50", "per-request tok/s P50", "min_tok_s_p50", False),
    ("ttft", "ttft_p95_s", "TTFT P95 (s)", "max_ttft_p95", True),
    ("gap", "gap_p95_s", "max chunk gap P95 (s)", "max_gap_p95", True),
)


def _ident(text: str) -> str:
    """A string safe inside an SVG id."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def _render(fig: Figure, salt: str) -> str:
    """The figure as SVG text; ``salt`` keeps generated ids distinct between charts of one page."""
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return buffer.getvalue()


# -- capacity ----------------------------------------------------------------------------------

def _capacity_series(reports: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, Mapping[str, Any]]]:
    """(legend label, target entry) for every target of every report given.

    ``reports`` maps a label (e.g. "baseline", "current") to a whole report.json, or directly
    to one target entry (a dict with "capacity").
    """
    series = []
    for label, report in reports.items():
        if "targets" not in report:
            series.append((label, report))
            continue
        for key, entry in report["targets"].items():
            name = key if len(reports) == 1 or label == key else f"{label} · {key}"
            series.append((name, entry))
    return [(name, entry) for name, entry in series if (entry.get("capacity") or {}).get("levels")]


def capacity_chart(reports: Mapping[str, Mapping[str, Any]], thresholds: Mapping[str, float],
                   references: Mapping[str, Mapping[str, Any]] | None = None) -> str:
    """Three panels over concurrency (tok/s P50 with aggregate, TTFT P95, gap P95), targets overlaid.

    Threshold lines are drawn and the side of each that is usable is shaded; hollow markers are
    levels that were not usable, and a dotted vertical line marks each target's max usable level.
    ``references`` (legend label -> an entry with "capacity") are what the targets were compared
    with, drawn grey and dashed underneath. A panel whose data lie far below its limit gets a
    log axis, so a 2 s TTFT does not lie flat on zero under a 180 s bar.
    """
    series = _capacity_series(reports)
    shadows = [(name, entry) for name, entry in (references or {}).items()
               if (entry.get("capacity") or {}).get("levels")]
    fig = Figure(figsize=(8.5, 9.5), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    if not series:
        axes[0].text(0.5, 0.5, "no capacity levels measured", ha="center", transform=axes[0].transAxes)
        return _render(fig, "capacity")
    colors = [f"C{i % 10}" for i in range(len(series))]
    aggregate_axis = axes[0].twinx()
    for name, entry in shadows:
        _plot_target(axes, aggregate_axis, name, entry, REFERENCE_COLOR, reference=True)
    for (name, entry), color in zip(series, colors, strict=True):
        _plot_target(axes, aggregate_axis, name, entry, color)
    everything = [*series, *shadows]
    for ax, (panel, field, title, key, upper) in zip(axes, PANELS, strict=True):
        values = [lv.get(field) for _, entry in everything for lv in entry["capacity"]["levels"]]
        _scale_to_data(ax, panel, title, [float(v) for v in values if v is not None], thresholds.get(key), upper)
    aggregate_axis.set_ylabel("aggregate tok/s (dashed)")
    aggregate_axis.set_ylim(bottom=0)
    _concurrency_axis(axes[-1], [lv["concurrency"] for _, e in everything for lv in e["capacity"]["levels"]])
    _capacity_legend(axes[0], series, colors, [name for name, _ in shadows])
    fig.suptitle("Capacity by concurrency")
    return _render(fig, "capacity")


def _plot_target(axes: Sequence[Axes], aggregate_axis: Axes, name: str, entry: Mapping[str, Any],
                 color: str, reference: bool = False) -> None:
    levels = sorted(entry["capacity"]["levels"], key=lambda lv: lv["concurrency"])
    xs = [lv["concurrency"] for lv in levels]
    usable = [bool(lv.get("usable")) for lv in levels]
    kind = "reference" if reference else "capacity"
    style = {"linestyle": "--", "marker": "s", "alpha": 0.7, "zorder": 1} if reference else {"marker": "o"}
    for ax, (panel, field, _, _, _) in zip(axes, PANELS, strict=True):
        ys = [_nan(lv.get(field)) for lv in levels]
        (line,) = ax.plot(xs, ys, color=color, label=name, **style)
        line.set_gid(f"{kind}-{panel}-{_ident(name)}")
        bad = [(x, y) for x, y, ok in zip(xs, ys, usable, strict=True) if not ok]
        if bad and not reference:
            ax.plot(*zip(*bad, strict=True), linestyle="none", marker="o", markersize=9, markerfacecolor="white",
                    markeredgecolor=color, gid=f"capacity-{panel}-unusable-{_ident(name)}")
        best = entry["capacity"].get("max_usable")
        if best and not reference:
            ax.axvline(best, color=color, linestyle=":", linewidth=1, gid=f"capacity-{panel}-max-{_ident(name)}")
    if reference:
        return
    (agg,) = aggregate_axis.plot(xs, [_nan(lv.get("aggregate_tok_s")) for lv in levels], color=color,
                                 linestyle="--", marker=".", label=f"{name} aggregate")
    agg.set_gid(f"capacity-aggregate-{_ident(name)}")


LOG_AXIS_RATIO = 5.0  # a limit this many times above the data's top gets a log axis


def _scale_to_data(ax: Axes, panel: str, title: str, values: Sequence[float], limit: float | None,
                   upper: bool) -> None:
    """Axis limits that show the data and the bar; log scale where the bar is far above the data."""
    finite = [v for v in values if math.isfinite(v)]
    top_data = max(finite, default=0.0)
    log = bool(limit and upper and finite and min(finite) > 0 and limit > LOG_AXIS_RATIO * top_data)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(min(finite) / 2, limit * 2)
        title += " · log scale"
    else:
        ax.set_ylim(0, max(top_data, limit or 0.0) * 1.15 or 1.0)
    ax.set_ylabel(title)
    if limit is None:
        return
    low, high = ax.get_ylim()
    ax.axhline(limit, color=STALL_COLOR, linestyle="--", linewidth=1.2, gid=f"capacity-{panel}-threshold")
    ax.axhspan(*((low, limit) if upper else (limit, high)), color=OK_SHADE, alpha=0.08,
               gid=f"capacity-{panel}-usable-region")
    ax.text(1.0, limit, f" bar {limit:g}", transform=ax.get_yaxis_transform(), va="center", ha="left",
            color=STALL_COLOR, fontsize=8)


def _concurrency_axis(ax: Axes, levels: Iterable[int]) -> None:
    ticks = sorted(set(levels))
    if ticks and ticks[0] > 0 and ticks[-1] / ticks[0] >= 8:
        ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("concurrency (agents)")


def _capacity_legend(ax: Axes, series: Sequence[tuple[str, Any]], colors: Sequence[str],
                     references: Sequence[str] = ()) -> None:
    handles: list[Any] = [Line2D([], [], color=c, marker="o", label=name) for (name, _), c in zip(
        series, colors, strict=True)]
    handles += [Line2D([], [], color=REFERENCE_COLOR, marker="s", linestyle="--", label=name) for name in references]
    handles += [Line2D([], [], color="grey", linestyle="--", label="aggregate tok/s (right axis)"),
                Line2D([], [], color="grey", marker="o", markerfacecolor="white", linestyle="none",
                       label="level not usable"),
                Line2D([], [], color="grey", linestyle=":", label="max usable"),
                Line2D([], [], color=STALL_COLOR, linestyle="--", label="threshold"),
                Patch(color=OK_SHADE, alpha=0.2, label="usable side")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.12, 1.0))


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)


# -- scaling with workers ----------------------------------------------------------------------

def scaling_chart(rows: Sequence[Any]) -> str:
    """Max usable concurrency against worker count per fleet (``scaling.ScalingRow``), with the
    perfect-scaling line (N x max usable at 1 worker) dotted beside each."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    fleets = list(dict.fromkeys(row.fleet for row in rows))
    for n, fleet in enumerate(fleets):
        mine = [row for row in rows if row.fleet == fleet]
        xs = [row.workers for row in mine]
        (line,) = ax.plot(xs, [_nan(row.max_usable) for row in mine], marker="o", color=f"C{n % 10}", label=fleet)
        line.set_gid(f"scaling-{_ident(fleet)}")
        one = next((row.max_usable for row in mine if row.workers == 1), None)
        if one:
            ax.plot(xs, [one * x for x in xs], linestyle=":", color=f"C{n % 10}", label=f"{fleet}: perfect scaling",
                    gid=f"scaling-ideal-{_ident(fleet)}")
    ax.set_xlabel("workers behind the router")
    ax.set_ylabel("max usable concurrency (agents)")
    ax.xaxis.set_major_locator(FixedLocator(sorted({row.workers for row in rows})))
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    ax.set_title("Scaling with workers", fontsize=10)
    return _render(fig, "scaling")


# -- changes against the reference -------------------------------------------------------------

OUTCOME_COLORS = {PASS: "#2ca02c", FAIL: "#d62728", INCONCLUSIVE: "#ff7f0e", ERROR: "#7f7f7f", SKIPPED: "#c7c7c7"}


def changes_chart(checks: Sequence[Check], title: str = "Changes against the reference") -> str:
    """One row per (window, metric): the interval of the change in % of the reference as a bar, the
    measured change as a dot, coloured by outcome, over the band the tolerance allows (green).

    A check without an interval (too few requests, an error) keeps its row, marked and labelled,
    so the picture never hides what could not be compared.
    """
    rows = [c for c in checks if c.outcome != WARNING]
    fig = Figure(figsize=(9, 0.34 * max(len(rows), 1) + 1.6), layout="constrained")
    ax = fig.subplots()
    if not rows:
        ax.text(0.5, 0.5, "no comparisons", ha="center", transform=ax.transAxes)
        return _render(fig, "changes")
    spans = [_pct_interval(c) for c in rows]
    # Scaled to the data, and at least to the tightest tolerance: a floor far wider than the
    # data (1 s on a 0.1 s TTFT is +900 %) just shades the whole allowed side.
    data = [abs(v) for span in spans if span for v in span] + [abs(c.delta_pct) for c in rows
                                                               if c.delta_pct is not None]
    tightest = min((limit for c in rows if (limit := c.limit_pct()) is not None), default=10.0)
    reach = max(max((v for v in data if math.isfinite(v)), default=0.0), tightest) * 1.25 or 10.0
    for y, (check, span) in enumerate(zip(rows, spans, strict=True)):
        ident = _ident(f"{check.level}-{check.metric}")
        if (limit := check.limit_pct()) is not None:
            left, right = (-limit, reach) if check.higher_is_better else (-reach, limit)
            ax.barh(y, right - left, left=left, height=0.8, color=OK_SHADE, alpha=0.15, gid=f"changes-allowed-{ident}")
        color = OUTCOME_COLORS.get(check.outcome, BAR_COLOR)
        if span:
            ax.hlines(y, *span, color=color, linewidth=6, gid=f"changes-interval-{ident}-{check.outcome}")
        if check.delta_pct is not None:
            ax.plot(check.delta_pct, y, marker="o", color="black", markersize=4, gid=f"changes-point-{ident}")
        if not span:
            why = "reference 0, no % change" if check.baseline == 0 and check.ci_low is not None else "no interval"
            ax.text(0, y, f"  {check.outcome}: {why}", va="center", fontsize=7, color=color)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlim(-reach, reach)
    ax.set_yticks(range(len(rows)), [_row_label(c) for c in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("change against the reference (% of its value)")
    ax.set_title(title, fontsize=10)
    shown = dict.fromkeys(c.outcome for c in rows)
    handles: list[Any] = [Patch(color=OUTCOME_COLORS.get(o, BAR_COLOR), label=o) for o in shown]
    handles += [Patch(color=OK_SHADE, alpha=0.3, label="allowed by the tolerance"),
                Line2D([], [], color="black", marker="o", linestyle="none", markersize=4, label="measured change")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _render(fig, "changes")


def _pct_interval(check: Check) -> tuple[float, float] | None:
    if check.ci_low is None or check.ci_high is None or not check.baseline:
        return None
    return check.ci_low / abs(check.baseline) * 100, check.ci_high / abs(check.baseline) * 100


def _row_label(check: Check) -> str:
    return f"{check.window} {check.metric.removeprefix('mixed_')}"


# -- timeline ----------------------------------------------------------------------------------

def _end_ns(record: RequestRecord) -> int:
    stamps = [s for s in (record.done_ns, *record.chunk_ns[-1:], record.first_token_ns) if s is not None]
    return max(stamps, default=record.send_ns)


def assign_lanes(records: Iterable[RequestRecord]) -> list[tuple[str, list[RequestRecord]]]:
    """Requests grouped into lanes: one per decode worker (closed loops never overlap), then revisits, spikes.

    Records carry no worker index unless ``extra["worker"]`` is set, so workers are recovered by
    packing: a request joins the first lane of its kind that was idle when it was sent.
    """
    by_kind: dict[str, list[RequestRecord]] = {}
    for record in sorted(records, key=lambda r: r.send_ns):
        by_kind.setdefault(record.kind, []).append(record)
    kinds = [k for k in LANE_ORDER if k in by_kind] + sorted(k for k in by_kind if k not in LANE_ORDER)
    lanes: list[tuple[str, list[RequestRecord]]] = []
    for kind in kinds:
        lanes += _pack(kind, by_kind[kind])
    return lanes


def _pack(kind: str, records: list[RequestRecord]) -> list[tuple[str, list[RequestRecord]]]:
    if all("worker" in r.extra for r in records):
        workers = sorted({str(r.extra["worker"]) for r in records})
        return [(f"{kind} {w}", [r for r in records if str(r.extra["worker"]) == w]) for w in workers]
    lanes: list[list[RequestRecord]] = []
    for record in records:
        lane = next((lane for lane in lanes if _end_ns(lane[-1]) <= record.send_ns), None)
        if lane is None:
            lanes.append([record])
        else:
            lane.append(record)
    return [(f"{kind} {i + 1}", lane) for i, lane in enumerate(lanes)]


def timeline_chart(records: Sequence[RequestRecord], gauges: Mapping[str, Sequence[tuple[float, float]]],
                   gap_bar_s: float, *, run_start_ns: int | None = None,
                   gauge_names: Sequence[str] = DEFAULT_GAUGES) -> str:
    """Every request on a lane (waiting, streaming, chunk ticks, stalls above the bar), gauges below.

    Times are model seconds since ``run_start_ns`` (default: the first request's send), the
    same origin as the gauge samples when the run's start is passed. Spikes and revisits are
    also marked by vertical lines across all lanes, so a decode stall lines up with its cause.
    """
    start = run_start_ns if run_start_ns is not None else min((r.send_ns for r in records), default=0)
    lanes = assign_lanes(records)
    panels = [name for name in gauge_names if gauges.get(name)]
    ratios = [max(len(lanes), 1) * 0.32 + 0.6] + [1.3] * len(panels)
    fig = Figure(figsize=(13, sum(ratios) + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(ratios), 1, sharex=True, height_ratios=ratios))
    span = _span(records, start)
    stalls = _draw_lanes(axes[0], lanes, start, gap_bar_s, span)
    _mark_sends(axes[0], records, start)
    _lane_axis(axes[0], lanes, stalls, gap_bar_s)
    for ax, name in zip(axes[1:], panels, strict=True):
        times, values = zip(*gauges[name], strict=True)
        (line,) = ax.step(times, values, where="post", color=BAR_COLOR, linewidth=1)
        line.set_gid(f"timeline-gauge-{_ident(name)}")
        ax.set_ylabel(f"{name}\n({GAUGE_UNITS.get(name, 'value')})", fontsize=8)
        ax.set_ylim(bottom=0)
    axes[-1].set_xlabel("model seconds since the run started")
    axes[0].set_xlim(0, max(span, 1e-9))
    return _render(fig, "timeline")


def _span(records: Sequence[RequestRecord], start: int) -> float:
    return max(((_end_ns(r) - start) / 1e9 * r.time_scale for r in records), default=1.0)


def _seconds(ns: int, start: int, record: RequestRecord) -> float:
    return (ns - start) / 1e9 * record.time_scale


def _draw_lanes(ax: Axes, lanes: Sequence[tuple[str, list[RequestRecord]]], start: int, bar: float,
                span: float) -> int:
    """Bars, decimated ticks and stall spans for every lane; returns how many stalls were drawn."""
    stall_boxes: list[tuple[float, float, float]] = []
    labels: list[tuple[float, float, float]] = []
    for y, (name, lane) in enumerate(lanes):
        color = KIND_COLORS.get(lane[0].kind, "#7f7f7f")
        waits, streams, ticks = _lane_segments(lane, start)
        ax.hlines([y] * len(waits), [a for a, _ in waits], [b for _, b in waits], color="#cccccc", linewidth=5,
                  gid=f"timeline-wait-{_ident(name)}")
        ax.hlines([y] * len(streams), [a for a, _ in streams], [b for _, b in streams], color=color, alpha=0.3,
                  linewidth=7, gid=f"timeline-stream-{_ident(name)}")
        kept = _decimate(ticks, span / MAX_TICK_BINS)
        ax.add_collection(LineCollection([[(t, y - 0.3), (t, y + 0.3)] for t in kept], colors=color,
                                         linewidths=0.5, gid=f"timeline-ticks-{_ident(name)}"))
        for record in lane:
            for a, b in _stalls(record, start, bar):
                stall_boxes.append((a, b, y))
                labels.append((b, y, b - a))
        failed = [(_seconds(_end_ns(r), start, r), y) for r in lane if not r.ok]
        if failed:
            ax.plot(*zip(*failed, strict=True), linestyle="none", marker="x", color=STALL_COLOR,
                    gid=f"timeline-failed-{_ident(name)}")
    if stall_boxes:
        ax.add_collection(LineCollection([[(a, y), (b, y)] for a, b, y in stall_boxes], colors=STALL_COLOR,
                                         linewidths=7, gid="timeline-stalls"))
        for x, y, length in sorted(labels, key=lambda item: -item[2])[:MAX_STALL_LABELS]:
            ax.text(x, y + 0.32, f"{length:.0f} s", fontsize=6, color=STALL_COLOR, ha="right", va="bottom")
    return len(stall_boxes)


def _lane_segments(lane: Sequence[RequestRecord], start: int) -> tuple[list[tuple[float, float]],
                                                                        list[tuple[float, float]], list[float]]:
    waits, streams, ticks = [], [], []
    for r in lane:
        sent, end = _seconds(r.send_ns, start, r), _seconds(_end_ns(r), start, r)
        first = _seconds(r.first_token_ns, start, r) if r.first_token_ns is not None else end
        waits.append((sent, first))
        if first < end:
            streams.append((first, end))
        ticks += [_seconds(ns, start, r) for ns in r.chunk_ns]
    return waits, streams, ticks


def _decimate(times: Sequence[float], resolution: float) -> list[float]:
    """At most one tick per ``resolution`` seconds: more would overlap on screen anyway."""
    if not times or resolution <= 0:
        return list(times)
    values = np.asarray(times, dtype=float)
    _, first = np.unique(np.floor(values / resolution), return_index=True)
    return values[first].tolist()


def _stalls(record: RequestRecord, start: int, bar: float) -> list[tuple[float, float]]:
    """(start, end) of every chunk gap longer than the bar."""
    stamps = record.chunk_ns
    limit = bar * 1e9 / record.time_scale
    return [(_seconds(a, start, record), _seconds(b, start, record))
            for a, b in itertools.pairwise(stamps) if b - a > limit]


def _mark_sends(ax: Axes, records: Sequence[RequestRecord], start: int) -> None:
    """Vertical lines at every spike and revisit send, across all lanes."""
    for kind in ("spike", "revisit"):
        xs = [_seconds(r.send_ns, start, r) for r in records if r.kind == kind]
        if xs:
            ax.vlines(xs, 0, 1, transform=ax.get_xaxis_transform(), colors=KIND_COLORS[kind], linestyles="--",
                      linewidth=0.8, alpha=0.6, gid=f"timeline-marks-{kind}")


def _lane_axis(ax: Axes, lanes: Sequence[tuple[str, list[RequestRecord]]], stalls: int, bar: float) -> None:
    ax.set_yticks(range(len(lanes)), [name for name, _ in lanes], fontsize=8)
    ax.set_ylim(len(lanes) - 0.4, -0.6)
    ax.set_title(f"Requests by lane: {stalls} chunk gap(s) above the {bar:g} s bar", fontsize=10)
    handles = [Patch(color="#cccccc", label="waiting (queue + prefill)"),
               Patch(color=KIND_COLORS["decode"], alpha=0.3, label="streaming"),
               Line2D([], [], color=KIND_COLORS["decode"], linewidth=0.5, label="chunk"),
               Line2D([], [], color=STALL_COLOR, linewidth=5, label=f"gap > {bar:g} s"),
               Line2D([], [], color=KIND_COLORS["spike"], linestyle="--", label="spike sent"),
               Line2D([], [], color=KIND_COLORS["revisit"], linestyle="--", label="revisit sent"),
               Line2D([], [], color=STALL_COLOR, marker="x", linestyle="none", label="failed")]
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
