"""CI-native output: the verdict table (levels x targets) and the GitHub job summary.

Pure text from a ``RunReport``: the verdict line is the report's own (decided once by the
session), never recomputed here. In a GitHub Actions job, ``$GITHUB_STEP_SUMMARY`` names a
file whose Markdown is shown on the run's page; appending there puts the answer where
reviewers look.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .checks import ERROR, FAIL, INCONCLUSIVE, PASS, WARNING, Check
from .report import RunReport, TargetReport, levels_of

__all__ = ["MARKS", "append_github_summary", "github_summary", "verdict_line", "verdict_table"]

MARKS = {
    PASS: "✅", FAIL: "❌", INCONCLUSIVE: "❔", WARNING: "⚠️", ERROR: "❌", "xfail": "⚠️", "interrupted": "⏸️",
    "invalid": "🚫", "error": "❌", "skipped": "⏭️", "usable": "✅", "not usable": "❌",
}
SHORT = {"tok_s_p50": "tok/s P50", "aggregate_tok_s": "agg tok/s", "ttft_p95_s": "TTFT P95", "gap_p95_s": "gap P95",
         "max_usable": "max usable"}
LEGEND = ("✅ pass · ❌ fail or error · ❔ inconclusive (noise or too few requests) · ⚠️ xfail (beyond the "
          "required concurrency) · ⏸️ interrupted · 🚫 invalid measurement")


def verdict_line(report: RunReport) -> str:
    """The session's one-line verdict, as decided (a report still running says so)."""
    return report.verdict.line() if report.verdict else f"glmperf {report.status.upper()}: no verdict yet"


def verdict_table(report: RunReport) -> str:
    """Markdown: a row per level, a column per target; each cell the level's verdict and, with
    checks, every metric's change against the reference with its own outcome mark."""
    targets = report.targets
    if not targets:
        return "_no targets measured_"
    levels = sorted(set(levels_of(targets)) | {c.level for t in targets for c in t.checks if c.level is not None})
    rows = [[f"c={level}", *(_cell(t, level) for t in targets)] for level in levels]
    rows.append(["max usable", *(_max_usable_cell(t) for t in targets)])
    if any(t.mixed for t in targets):
        rows.append(["mixed", *(_mixed_cell(t) for t in targets)])
    if any(t.scenarios for t in targets):
        rows.append(["scenarios", *("<br>".join(f"{MARKS.get(s.status, '')} {s.workload} c={s.concurrency}"
                                                for s in t.scenarios) or "–" for t in targets)])
    return _markdown_table(["level", *(t.key for t in targets)], rows)


def github_summary(report: RunReport) -> str:
    """The whole job-summary block: verdict line, table, legend, then every failure and warning."""
    against = next((f" · compared with `{t.baseline}`" for t in report.targets if t.baseline), "")
    lines = ["### pytest-glmperf", "", f"**{verdict_line(report)}**", "", verdict_table(report), "",
             LEGEND + against, ""]
    if report.verdict:
        lines += [f"- ❌ {reason}" for reason in report.verdict.failures]
        lines += [f"- ❔ {reason}" for reason in report.verdict.inconclusive]
    checks = [c for t in report.targets for c in t.checks]
    lines += [f"- {MARKS[c.outcome]} {c.message()}" for c in checks if c.outcome == WARNING]
    return "\n".join(lines).rstrip() + "\n"


def append_github_summary(text: str, env: Mapping[str, str] = os.environ) -> bool:
    """Append ``text`` to the file named by ``$GITHUB_STEP_SUMMARY``.

    Returns False when the variable is unset or empty (not in GitHub Actions) or the file cannot
    be written: a job summary is a convenience and must never turn a measured run into an error.
    """
    target = env.get("GITHUB_STEP_SUMMARY")
    if not target:
        return False
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")
    except OSError:
        return False
    return True


# -- helpers ---------------------------------------------------------------------------------

def _cell(target: TargetReport, level: int) -> str:
    found = target.level(level)
    status = found.status if found else "not run"
    head = f"{MARKS.get(status, '')} {status}".strip()
    mine = [c for c in target.checks if c.level == level]
    return "<br>".join([head, *(_delta(c) for c in mine)])


def _delta(check: Check) -> str:
    name = SHORT.get(check.metric, check.metric)
    if check.delta_pct is not None:
        change = f"{check.delta_pct:+.1f} %"
    elif check.delta is not None:
        change = f"{check.delta:+g}"
    else:
        change = check.outcome if check.outcome == ERROR else "–"
    return f"{MARKS.get(check.outcome, '')} {name} {change}".strip()


def _max_usable_cell(target: TargetReport) -> str:
    value = target.max_usable
    text = "–" if value is None else f"**{value}**"
    check = next((c for c in target.checks if c.metric == "max_usable"), None)
    if check and check.baseline is not None:
        text += f" (baseline {check.baseline:g}) {MARKS.get(check.outcome, '')}"
    return text.strip()


def _mixed_cell(target: TargetReport) -> str:
    mixed = target.mixed
    if not mixed:
        return "–"
    return f"{MARKS.get(mixed.status, '')} {mixed.status}"


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|", *(line(r) for r in rows)])
