"""The one writer of a report folder: report.json and report.md after every result; at the end
also the charts, report.html and the GitHub job summary.

Each output renders the same ``RunReport``; none decides anything. Charts are optional: a
missing chart library is a note in the report, never an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .baseline import slug
from .ci_summary import append_github_summary, github_summary
from .records import RequestRecord, read_records
from .render import render_markdown
from .report import RunReport, atomic_write, write_json

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
    markdown = render_markdown(report) + ("\n" + chart_links(svgs) + "\n" if svgs else "")
    atomic_write(report_dir / REPORT_MD, markdown)
    if final:
        from .htmlreport import write_html

        write_html(report_dir, markdown, svgs)
        append_github_summary(github_summary(report))
    return report


def write_charts(report_dir: Path, report: RunReport,
                 records: Sequence[RequestRecord] | None = None) -> tuple[dict[str, str], list[str]]:
    """capacity.svg (all targets overlaid) and timeline-<target>.svg per mixed run: the SVGs
    written, and notes for the report (charts skipped, and why)."""
    try:
        from .charts import capacity_chart, timeline_chart
    except ImportError as exc:  # matplotlib missing: the rest of the report stands
        return {}, [f"charts skipped: {exc}"]
    svgs: dict[str, str] = {}
    thresholds = next((t.settings.get("thresholds") for t in report.targets if t.settings), None) or {}
    if any(t.levels for t in report.targets):
        svgs["capacity.svg"] = capacity_chart({t.key: t.as_dict() for t in report.targets}, thresholds)
    if records is None:
        path = report_dir / "records.jsonl"
        records = read_records(path) if path.exists() else []
    for target in report.targets:
        mixed = target.mixed
        start = mixed.details.get("run_start_ns") if mixed else None
        if not mixed or not start:
            continue
        mine = [r for r in records if r.profile == target.key and r.scenario == "mixed"]
        svgs[f"timeline-{slug(target.key)}.svg"] = timeline_chart(
            mine, mixed.details.get("gauge_series") or {}, thresholds.get("max_gap_p95", 8.0), run_start_ns=start)
    for name, svg in svgs.items():
        (report_dir / name).write_text(svg, encoding="utf-8")
    return svgs, []


def chart_links(svgs: dict[str, str]) -> str:
    """Markdown image lines for report.md / report.html."""
    return "\n".join(f"![{Path(name).stem}]({name})" for name in svgs)
