"""What a finished session leaves behind beyond report.json/.md: charts, report.html, the
GitHub job summary, a saved baseline. Each is optional and never turns a measured run into
an error: a missing chart library is a note in the report, not a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .baseline import slug
from .ci_summary import append_github_summary, github_summary
from .records import read_records
from .regression import Check


def write_charts(report_dir: Path, report: dict[str, Any]) -> dict[str, str]:
    """capacity.svg (all targets overlaid) and timeline-<target>.svg per mixed run, as files and strings."""
    try:
        from .charts import capacity_chart, timeline_chart
    except ImportError as exc:  # matplotlib missing: the rest of the report stands
        report.setdefault("notes", []).append(f"charts skipped: {exc}")
        return {}
    svgs: dict[str, str] = {}
    targets = report.get("targets", {})
    thresholds = next(iter(report.get("settings", {}).values()), {}).get("thresholds", {})
    if any(t["capacity"]["levels"] for t in targets.values()):
        svgs["capacity.svg"] = capacity_chart(targets, thresholds)
    records_path = report_dir / "records.jsonl"
    records = read_records(records_path) if records_path.exists() else []
    for key, target in targets.items():
        mixed = target.get("mixed")
        if not mixed or not mixed.get("run_start_ns"):
            continue
        mine = [r for r in records if r.profile == key and r.scenario == "mixed"]
        svgs[f"timeline-{slug(key)}.svg"] = timeline_chart(
            mine, mixed.get("gauge_series") or {}, thresholds.get("max_gap_p95", 8.0),
            run_start_ns=mixed["run_start_ns"])
    for name, svg in svgs.items():
        (report_dir / name).write_text(svg, encoding="utf-8")
    return svgs


def chart_links(svgs: dict[str, str]) -> str:
    """Markdown image lines for report.md / report.html."""
    return "\n".join(f"![{Path(name).stem}]({name})" for name in svgs)


def publish_summary(report: dict[str, Any], checks: Sequence[Check], *, inconclusive_fails: bool,
                    baseline_ref: str | None) -> bool:
    """Append the verdict table to $GITHUB_STEP_SUMMARY when running in GitHub Actions."""
    return append_github_summary(github_summary(report, checks, inconclusive_fails=inconclusive_fails,
                                                baseline_ref=baseline_ref))
