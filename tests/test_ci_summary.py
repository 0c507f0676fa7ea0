"""CI output: the verdict table, the one-line verdict, and the GitHub job summary file."""

import os

from pytest_glmperf.ci_summary import append_github_summary, final_line, github_summary, verdict_table
from pytest_glmperf.regression import FAIL, INCONCLUSIVE, PASS, WARNING, Check
from pytest_glmperf.report import RunReport


def level(c: int, status: str) -> dict:
    return {"concurrency": c, "usable": status == "pass", "status": status, "requests": 40, "tok_s_p50": 9.0,
            "ttft_p95_s": 20.0, "gap_p95_s": 0.5 if status == "pass" else 12.0, "aggregate_tok_s": 10.0 * c}


def two_targets() -> dict:
    run = RunReport.start({})
    for c, status in [(1, "pass"), (2, "pass"), (4, "xfail")]:
        run.record_level("sim-hicache", level(c, status))
    for c, status in [(1, "pass"), (2, "fail")]:
        run.record_level("hicache@sglang:v2", level(c, status))
    run.target("sim-hicache")["mixed"] = {"usable": True}
    run.status = "complete"
    return run.as_dict()


def check(target: str, level: int | None, metric: str, outcome: str, pct: float | None) -> Check:
    base = 10.0
    current = None if pct is None else base * (1 + pct / 100)
    return Check(target, level, metric, base, current, None if pct is None else current - base, pct, None, None,
                 outcome, "" if outcome != INCONCLUSIVE else "too few requests", " s", 0.1, False)


def test_table_rows_are_levels_columns_are_targets():
    table = verdict_table(two_targets())
    lines = table.splitlines()
    assert lines[0] == "| level | sim-hicache | hicache@sglang:v2 |"
    assert lines[1] == "|---|---|---|"
    assert lines[2] == "| c=1 | ✅ pass | ✅ pass |"
    assert lines[3] == "| c=2 | ✅ pass | ❌ fail |"
    assert lines[4] == "| c=4 | ⚠️ xfail | not run |"
    assert lines[5] == "| max usable | **2** | **1** |"
    assert lines[6] == "| mixed | ✅ usable | – |"


def test_table_cells_carry_deltas_and_outcomes_of_checks():
    checks = [check("sim-hicache", 2, "ttft_p95_s", FAIL, 77.6), check("sim-hicache", 2, "tok_s_p50", PASS, -2.0),
              check("sim-hicache", 4, "gap_p95_s", INCONCLUSIVE, 30.0),
              check("sim-hicache", 8, "gap_p95_s", INCONCLUSIVE, None),
              Check("sim-hicache", None, "max_usable", 4, 2, -2, -50.0, None, None, FAIL, "c=4 is no longer usable")]
    table = verdict_table(two_targets(), checks)
    assert "| c=2 | ✅ pass<br>❌ TTFT P95 +77.6 %<br>✅ tok/s P50 -2.0 % | ❌ fail |" in table
    assert "| c=4 | ⚠️ xfail<br>❔ gap P95 +30.0 % | not run |" in table
    assert "| c=8 | not run<br>❔ gap P95 – | not run |" in table  # a level only the baseline has
    assert "| max usable | **2** (baseline 4) ❌ | **1** |" in table


def test_final_line_says_the_verdict_and_why():
    report = two_targets()
    assert final_line(report) == ("glmperf FAIL: sim-hicache max usable 2, hicache@sglang:v2 max usable 1; "
                                  "not usable: hicache@sglang:v2 c=2")
    del report["targets"]["hicache@sglang:v2"]
    assert final_line(report) == "glmperf PASS: sim-hicache max usable 2"
    regressions = [check("sim-hicache", 2, "ttft_p95_s", FAIL, 77.6), check("sim-hicache", 1, "gap_p95_s", PASS, 1)]
    assert final_line(report, regressions) == ("glmperf FAIL: sim-hicache max usable 2; 1 regression(s) "
                                               "(sim-hicache c=2 ttft_p95_s +77.6 %), 0 inconclusive, 1 pass")


def test_inconclusive_maps_to_pass_or_fail_on_request():
    report = two_targets()
    del report["targets"]["hicache@sglang:v2"]
    unsure = [check("sim-hicache", 2, "ttft_p95_s", INCONCLUSIVE, 20.0)]
    assert final_line(report, unsure).startswith("glmperf PASS")
    assert final_line(report, unsure, inconclusive_fails=True).startswith("glmperf FAIL")
    report["targets"]["sim-hicache"]["capacity"]["levels"][0]["status"] = "invalid"
    assert final_line(report, unsure).startswith("glmperf INVALID")
    assert "invalid: sim-hicache c=1" in final_line(report, unsure)


def test_github_summary_lists_regressions_and_warnings():
    checks = [check("sim-hicache", 2, "ttft_p95_s", FAIL, 77.6),
              Check("sim-hicache", None, "target", None, None, None, None, None, None, WARNING, "image differs")]
    text = github_summary(two_targets(), checks, baseline_ref="prod")
    assert text.startswith("### pytest-glmperf\n\n**glmperf FAIL")
    assert "| level | sim-hicache | hicache@sglang:v2 |" in text and "compared with baseline `prod`" in text
    assert "- ❌ sim-hicache c=2 ttft_p95_s: 10.0 s -> 17.8 s (+77.6 %) exceeds tolerance +10 %" in text
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
    target = tmp_path / "explicit.md"
    assert append_github_summary("x", env={"GITHUB_STEP_SUMMARY": str(target)})
    assert target.read_text() == "x\n"
    assert os.environ.get("GITHUB_STEP_SUMMARY") is None
