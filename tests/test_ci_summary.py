"""CI output: the verdict table, the verdict line as decided, and the GitHub job summary file."""

import os

from pytest_glmperf.checks import FAIL, INCONCLUSIVE, PASS, WARNING, Check
from pytest_glmperf.ci_summary import append_github_summary, github_summary, verdict_line, verdict_table
from tests.builders import level, mixed, run, target


def two_targets(checks: tuple[Check, ...] = ()):
    return run(target("sim-hicache", [level(1), level(2), level(4, "xfail")], mixed=mixed(), checks=checks,
                      baseline="prod" if checks else None),
               target("hicache@sglang:v2", [level(1), level(2, "fail")]))


def check(target: str, level: int | None, metric: str, outcome: str, pct: float | None) -> Check:
    base = 10.0
    current = None if pct is None else base * (1 + pct / 100)
    return Check(target, level, metric, base, current, None if pct is None else current - base, pct, None, None,
                 outcome, "" if outcome != INCONCLUSIVE else "too few requests", " s", 0.1, False)


def test_table_rows_are_levels_columns_are_targets():
    lines = verdict_table(two_targets()).splitlines()
    assert lines[0] == "| level | sim-hicache | hicache@sglang:v2 |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| c=1 | ✅ pass | ✅ pass |"
    assert lines[3] == "| c=2 | ✅ pass | ❌ fail |"
    assert lines[4] == "| c=4 | ⚠️ xfail | not run |"
    assert lines[5] == "| max usable | **2** | **1** |"
    assert lines[6] == "| mixed | ✅ pass | – |"


def test_table_cells_carry_deltas_and_outcomes_of_checks():
    checks = (check("sim-hicache", 2, "ttft_p95_s", FAIL, 77.6), check("sim-hicache", 2, "tok_s_p50", PASS, -2.0),
              check("sim-hicache", 4, "gap_p95_s", INCONCLUSIVE, 30.0),
              check("sim-hicache", 8, "gap_p95_s", INCONCLUSIVE, None),
              Check("sim-hicache", None, "max_usable", 4, 2, -2, -50.0, None, None, FAIL, "c=4 is no longer usable"))
    table = verdict_table(two_targets(checks))
    assert "| c=2 | ✅ pass<br>❌ TTFT P95 +77.6 %<br>✅ tok/s P50 -2.0 % | ❌ fail |" in table
    assert "| c=4 | ⚠️ xfail<br>❔ gap P95 +30.0 % | not run |" in table
    assert "| c=8 | not run<br>❔ gap P95 – | not run |" in table  # a level only the baseline has
    assert "| max usable | **2** (baseline 4) ❌ | **1** |" in table


def test_the_line_is_the_reports_own_verdict():
    report = two_targets()
    assert verdict_line(report) == report.verdict.line()
    assert verdict_line(report).startswith("glmperf FAIL: sim-hicache max usable 2 (required 2), mixed pass · "
                                           "hicache@sglang:v2 max usable 1 (required 2); hicache@sglang:v2 c=2: ")
    assert verdict_line(report.but(verdict=None, status="running")) == "glmperf RUNNING: no verdict yet"


def test_github_summary_lists_failures_and_warnings():
    checks = (check("sim-hicache", 2, "ttft_p95_s", FAIL, 77.6),
              Check("sim-hicache", None, "target", None, None, None, None, None, None, WARNING, "image differs"))
    text = github_summary(two_targets(checks))
    assert text.startswith("### pytest-glmperf\n\n**glmperf FAIL")
    assert "| level | sim-hicache | hicache@sglang:v2 |" in text and "compared with `prod`" in text
    assert "- ❌ hicache@sglang:v2 c=2: gap_p95_s = 12 s > max_gap_p95 8 s" in text
    assert "- ⚠️ sim-hicache target: warning: image differs" in text


def test_summary_file_is_appended_when_the_variable_is_set(tmp_path, monkeypatch):
    summary = tmp_path / "step_summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert append_github_summary("| a |")
    assert append_github_summary(github_summary(two_targets()))
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier step\n| a |\n### pytest-glmperf")
    assert "| c=2 | ✅ pass | ❌ fail |" in text


def test_no_summary_outside_github_actions(tmp_path, monkeypatch):
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert append_github_summary("x") is False
    assert append_github_summary("x", env={"GITHUB_STEP_SUMMARY": ""}) is False
    unwritable = tmp_path / "missing-dir" / "summary.md"
    assert append_github_summary("x", env={"GITHUB_STEP_SUMMARY": str(unwritable)}) is False
    target_file = tmp_path / "explicit.md"
    assert append_github_summary("x", env={"GITHUB_STEP_SUMMARY": str(target_file)})
    assert target_file.read_text() == "x\n"
    assert os.environ.get("GITHUB_STEP_SUMMARY") is None
