"""CI-native output: the verdict table (levels x targets), a one-line verdict, the GitHub job summary.

Pure text from report.json data and regression checks, so a saved report re-renders. In a
GitHub Actions job, ``$GITHUB_STEP_SUMMARY`` names a file whose Markdown is shown on the run's
page; appending the table there puts the answer where reviewers look.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .regression import FAIL, INCONCLUSIVE, PASS, WARNING, Check

__all__ = ["MARKS", "append_github_summary", "final_line", "github_summary", "verdict_table"]

MARKS = {
    PASS: "✅", FAIL: "❌", INCONCLUSIVE: "❔", WARNING: "⚠️", "xfail": "⚠️", "interrupted": "⏸️",
    "invalid": "🚫", "skipped": "⏭️", "usable": "✅", "not usable": "❌",
}
SHORT = {"tok_s_p50": "tok/s P50", "aggregate_tok_s": "agg tok/s", "ttft_p95_s": "TTFT P95", "gap_p95_s": "gap P95",
         "max_usable": "max usable"}
LEGEND = ("✅ pass · ❌ fail · ❔ inconclusive (noise or too few requests) · ⚠️ xfail (beyond the required "
          "concurrency) · ⏸️ interrupted · 🚫 invalid measurement")


def verdict_table(report: Mapping[str, Any], checks: Sequence[Check] | None = None) -> str:
    """Markdown: a row per level, a column per target; each cell the level's verdict and, with
    checks, every metric's change against the baseline with its own outcome mark."""
    targets = list(report.get("targets", {}))
    if not targets:
        return "_no targets measured_"
    checks = list(checks or [])
    levels = sorted({lv["concurrency"] for t in targets for lv in _levels(report, t)}
                    | {c.level for c in checks if c.level is not None and c.target in targets})
    rows = [[f"c={level}", *(_cell(report, t, level, checks) for t in targets)] for level in levels]
    rows.append(["max usable", *(_max_usable_cell(report, t, checks) for t in targets)])
    if any((report["targets"][t] or {}).get("mixed") for t in targets):
        rows.append(["mixed", *(_mixed_cell(report, t) for t in targets)])
    return _markdown_table(["level", *targets], rows)


def final_line(report: Mapping[str, Any], checks: Sequence[Check] | None = None, *,
               inconclusive_fails: bool = False) -> str:
    """One line for the terminal: the overall verdict, each target's max usable, what failed."""
    checks = list(checks or [])
    failed_levels = [f"{t} c={lv['concurrency']}" for t in report.get("targets", {}) for lv in _levels(report, t)
                     if lv.get("status") == "fail"]
    failed_mixed = [f"{t} mixed" for t, entry in report.get("targets", {}).items()
                    if (entry or {}).get("mixed") and entry["mixed"].get("usable") is False]
    invalid = [f"{t} c={lv['concurrency']}" for t in report.get("targets", {}) for lv in _levels(report, t)
               if lv.get("status") == "invalid"]
    not_started = [t for t, entry in report.get("targets", {}).items() if (entry or {}).get("start_error")]
    regressions = [c for c in checks if c.outcome == FAIL]
    unsure = [c for c in checks if c.outcome == INCONCLUSIVE]
    verdict = _overall(report, failed_levels + failed_mixed + not_started, regressions, unsure, invalid,
                       inconclusive_fails)
    parts = [_capacity_summary(report, checks)]
    if not_started:
        parts.append(f"server did not start: {_few(not_started)}")
    if failed_levels or failed_mixed:
        parts.append(f"not usable: {_few(failed_levels + failed_mixed)}")
    if invalid:
        parts.append(f"invalid: {_few(invalid)}")
    if checks:
        parts.append(_checks_summary(regressions, unsure, checks))
    mixed = [f"{t} mixed {'usable' if e['mixed'].get('usable') else 'not usable'}"
             for t, e in report.get("targets", {}).items() if (e or {}).get("mixed")]
    if not any(parts):
        parts.append(", ".join(mixed) or "nothing measured")
    return f"glmperf {verdict}: " + "; ".join(p for p in parts if p)


def github_summary(report: Mapping[str, Any], checks: Sequence[Check] | None = None, *,
                   inconclusive_fails: bool = False, baseline_ref: str | None = None) -> str:
    """The whole job-summary block: verdict line, table, legend, then each regression and warning."""
    checks = list(checks or [])
    against = f" · compared with baseline `{baseline_ref}`" if baseline_ref else ""
    lines = ["### pytest-glmperf", "", f"**{final_line(report, checks, inconclusive_fails=inconclusive_fails)}**",
             "", verdict_table(report, checks), "", LEGEND + against, ""]
    notable = [c for c in checks if c.outcome in (FAIL, WARNING)]
    notable += [c for c in checks if c.outcome == INCONCLUSIVE and c.metric == "max_usable"]
    lines += [f"- {MARKS[c.outcome]} {c.message()}" for c in notable]
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

def _levels(report: Mapping[str, Any], target: str) -> list[dict[str, Any]]:
    entry = report["targets"].get(target) or {}
    return list((entry.get("capacity") or {}).get("levels") or [])


def _cell(report: Mapping[str, Any], target: str, level: int, checks: Sequence[Check]) -> str:
    found = next((lv for lv in _levels(report, target) if lv["concurrency"] == level), None)
    status = found.get("status", "?") if found else "not run"
    head = f"{MARKS.get(status, '')} {status}".strip()
    mine = [c for c in checks if c.target == target and c.level == level]
    return "<br>".join([head, *(_delta(c) for c in mine)])


def _delta(check: Check) -> str:
    name = SHORT.get(check.metric, check.metric)
    if check.delta_pct is not None:
        change = f"{check.delta_pct:+.1f} %"
    elif check.delta is not None:
        change = f"{check.delta:+g}"
    else:
        change = "–"
    return f"{MARKS.get(check.outcome, '')} {name} {change}".strip()


def _max_usable_cell(report: Mapping[str, Any], target: str, checks: Sequence[Check]) -> str:
    capacity = (report["targets"].get(target) or {}).get("capacity") or {}
    value = capacity.get("max_usable")
    text = "–" if value is None else f"**{value}**"
    check = next((c for c in checks if c.target == target and c.metric == "max_usable"), None)
    if check and check.baseline is not None:
        text += f" (baseline {check.baseline:g}) {MARKS.get(check.outcome, '')}"
    return text.strip()


def _mixed_cell(report: Mapping[str, Any], target: str) -> str:
    mixed = (report["targets"].get(target) or {}).get("mixed")
    if not mixed:
        return "–"
    state = "usable" if mixed.get("usable") else "not usable"
    return f"{MARKS[state]} {state}"


def _overall(report: Mapping[str, Any], failed: list[str], regressions: list[Check], unsure: list[Check],
             invalid: list[str], inconclusive_fails: bool) -> str:
    if failed or regressions or (inconclusive_fails and unsure):
        return "FAIL"
    if invalid:
        return "INVALID"
    if report.get("status") == "interrupted":
        return "INTERRUPTED"
    return "PASS"


def _capacity_summary(report: Mapping[str, Any], checks: Sequence[Check]) -> str:
    parts = []
    for target, entry in report.get("targets", {}).items():
        capacity = (entry or {}).get("capacity") or {}
        if not capacity.get("levels"):
            continue
        text = f"{target} max usable {capacity.get('max_usable') if capacity.get('max_usable') is not None else '–'}"
        check = next((c for c in checks if c.target == target and c.metric == "max_usable"), None)
        if check and check.baseline is not None and check.baseline != check.current:
            text += f" (baseline {check.baseline:g})"
        parts.append(text)
    return ", ".join(parts)


def _checks_summary(regressions: list[Check], unsure: list[Check], checks: Sequence[Check]) -> str:
    passed = sum(c.outcome == PASS for c in checks)
    text = f"{len(regressions)} regression(s)"
    if regressions:
        text += " (" + _few([_short_check(c) for c in regressions]) + ")"
    return f"{text}, {len(unsure)} inconclusive, {passed} pass"


def _short_check(check: Check) -> str:
    where = f" c={check.level}" if check.level is not None else ""
    change = f" {check.delta_pct:+.1f} %" if check.delta_pct is not None else ""
    return f"{check.target}{where} {check.metric}{change}"


def _few(items: Iterable[str], keep: int = 3) -> str:
    items = list(items)
    return ", ".join(items[:keep]) + (f", … {len(items) - keep} more" if len(items) > keep else "")


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return "\n".join([line(headers), "|" + "|".join("---" for _ in headers) + "|", *(line(r) for r in rows)])
