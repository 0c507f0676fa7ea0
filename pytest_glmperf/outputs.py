"""The one writer of a report folder: report.json and report.md after every result; at the end
also the charts, report.html, levels.csv and requests.csv, and the GitHub job summary.

Each output renders the same ``RunReport``; none decides anything. Charts are optional: a
missing chart library is a note in the report, never an error.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .baseline import slug
from .checks import WARNING
from .ci_summary import append_github_summary, github_summary
from .records import RequestRecord, read_records
from .render import SCALING_CHART, changes_chart_name, level_timeline_name, render_markdown
from .report import RunReport, TargetReport, atomic_write, write_json
from .results import CAPACITY, LevelResult
from .scaling import scaling_rows

REPORT_JSON, REPORT_MD = "report.json", "report.md"


def publish(report_dir: Path, report: RunReport, *, final: bool = False,
            records: Sequence[RequestRecord] | None = None) -> RunReport:
    """Write the report folder; returns the report as written (with any notes the writing added).

    ``records`` feed the timeline charts (default: the folder's records.jsonl).
    """
    svgs: dict[str, str] = {}
    if final:
        svgs, notes = write_charts(report_dir, report, records)
        report = report.but(notes=(*report.notes, *notes))
    write_json(report_dir / REPORT_JSON, report)
    markdown = render_markdown(report, charts=svgs)
    markdown += "\n" + chart_links(svgs, markdown) + "\n" if svgs else ""
    atomic_write(report_dir / REPORT_MD, markdown)
    if final:
        from .htmlreport import write_html

        write_html(report_dir, markdown, svgs)
        write_csv(report_dir, report, records)
        append_github_summary(github_summary(report))
    return report


LEVEL_FIELDS = ("target", "workload", "concurrency", "status", "settled", "required", "started_at", "requests",
                "failures", "failure_rate", "retries", "requests_per_s", "aggregate_tok_s", "tok_s_p50",
                "ttft_p50_s", "ttft_p95_s", "gap_p50_s", "gap_p95_s", "duration_s")
REQUEST_FIELDS = ("profile", "scenario", "kind", "level", "request_id", "outcome", "error_kind", "send_s",
                  "ttft_s", "ttfc_s", "e2e_s", "max_gap_s", "output_tok_s", "decode_tok_s", "tpot_s",
                  "prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "retries")


def write_csv(report_dir: Path, report: RunReport, records: Sequence[RequestRecord] | None = None) -> None:
    """levels.csv (a row per level, mixed run and scenario, with every distribution) and
    requests.csv (a row per request; ``send_s`` in model seconds since the session's first send)."""
    rows = [_level_row(target.key, result.as_dict()) for target in report.targets
            for result in (*target.levels, *((target.mixed,) if target.mixed else ()), *target.scenarios)]
    columns = list(LEVEL_FIELDS) + sorted({key for row in rows for key in row} - set(LEVEL_FIELDS))
    _write_rows(report_dir / "levels.csv", columns, rows)
    if records is None:
        path = report_dir / "records.jsonl"
        records = read_records(path) if path.exists() else []
    start = min((r.send_ns for r in records), default=0)
    _write_rows(report_dir / "requests.csv", list(REQUEST_FIELDS), [_request_row(r, start) for r in records])


def _level_row(target: str, entry: dict[str, Any]) -> dict[str, Any]:
    row = {"target": target, **{key: entry.get(key) for key in LEVEL_FIELDS if key != "target"}}
    if entry.get("workload") == "mixed":  # the judged streams' figures, as for a level
        row.update({key: entry["decode_streams"].get(key) for key in LEVEL_FIELDS if key in entry["decode_streams"]})
    for figure, values in (entry.get("distributions") or {}).items():
        row.update({f"{figure}_{stat}": value for stat, value in values.items()})
    row.update({f"server_{key}": value for key, value in (entry.get("cache") or {}).items()})
    for gauge, summary in (entry.get("gauges") or {}).items():
        row.update({f"server_{gauge}_{stat}": value for stat, value in (summary or {}).items()})
    return row


def _request_row(record: RequestRecord, start_ns: int) -> dict[str, Any]:
    figures = record.summary()
    return {"profile": record.profile, "scenario": record.scenario, "kind": record.kind, "level": record.level,
            "request_id": record.request_id, "outcome": record.outcome,
            "error_kind": record.extra.get("error_kind"),
            "send_s": (record.send_ns - start_ns) / 1e9 * record.time_scale, **figures, "tpot_s": record.tpot_s,
            "prompt_tokens": record.prompt_tokens, "cached_tokens": record.cached_tokens,
            "completion_tokens": record.completion_tokens, "reasoning_tokens": record.reasoning_tokens,
            "retries": record.extra.get("retries", 0)}


def _write_rows(path: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)
    atomic_write(path, buffer.getvalue())


def write_charts(report_dir: Path, report: RunReport,
                 records: Sequence[RequestRecord] | None = None) -> tuple[dict[str, str], list[str]]:
    """The report's charts, as SVG files beside it: capacity.svg (all targets overlaid, with what
    they were compared with), changes-<target>.svg per compared target, and a timeline per mixed
    run and per capacity level that was not usable. Returns the SVGs written and notes for the
    report (charts skipped, and why)."""
    try:
        from .charts import capacity_chart, changes_chart, scaling_chart, timeline_chart
    except ImportError as exc:  # matplotlib missing: the rest of the report stands
        return {}, [f"charts skipped: {exc}"]
    svgs: dict[str, str] = {}
    thresholds = next((t.settings.get("thresholds") for t in report.targets if t.settings), None) or {}
    gap_bar = thresholds.get("max_gap_p95", 8.0)
    if any(t.levels for t in report.targets):
        svgs["capacity.svg"] = capacity_chart({t.key: t.as_dict() for t in report.targets}, thresholds,
                                              references=_references(report))
    if rows := scaling_rows(report.targets):
        svgs[SCALING_CHART] = scaling_chart(rows)
    for target in report.targets:
        if [c for c in target.checks if c.outcome != WARNING]:
            svgs[changes_chart_name(target.key)] = changes_chart(
                target.checks, f"{target.key} against {target.baseline or 'the reference'}")
    if records is None:
        path = report_dir / "records.jsonl"
        records = read_records(path) if path.exists() else []
    for target in report.targets:
        mine = [r for r in records if r.profile == target.key]
        for window, name in _timeline_windows(target):
            start = window.details.get("run_start_ns")
            shown = [r for r in mine if r.scenario == window.workload and r.level == window_level(window)
                     and not r.extra.get("repeat")]
            svgs[name] = timeline_chart(shown, window.details.get("gauge_series") or {}, gap_bar, run_start_ns=start)
    for name, svg in svgs.items():
        (report_dir / name).write_text(svg, encoding="utf-8")
    return svgs, []


def _timeline_windows(target: TargetReport) -> list[tuple[LevelResult, str]]:
    """The windows that get a timeline: the mixed run, and each capacity level not usable."""
    found = [(target.mixed, f"timeline-{slug(target.key)}.svg")] if target.mixed else []
    found += [(lv, level_timeline_name(target.key, lv.concurrency)) for lv in target.levels if not lv.usable]
    return [(window, name) for window, name in found if window.details.get("run_start_ns")]


def window_level(window: LevelResult) -> int | None:
    """The ``level`` its records carry: a capacity level's concurrency, None for the mixed run."""
    return window.concurrency if window.workload == CAPACITY else None


def _references(report: RunReport) -> dict[str, dict[str, Any]]:
    """What each target was compared with, unless that is another target of this report (already drawn)."""
    keys = {t.key for t in report.targets}
    found = {}
    for target in report.targets:
        reference = target.reference or {}
        drawn = reference.get("target") in keys - {target.key}
        if reference.get("capacity") and not drawn:
            found[f"reference of {target.key}: {reference.get('target')}"] = {"capacity": reference["capacity"]}
    return found


def chart_links(svgs: dict[str, str], markdown: str = "") -> str:
    """Markdown image lines for report.md / report.html: the charts not already placed in ``markdown``."""
    return "\n".join(f"![{Path(name).stem}]({name})" for name in svgs if f"]({name})" not in markdown)
