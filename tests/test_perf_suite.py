"""The main job itself: ``pytest perf_tests --quick`` on the embedded simulator."""

import json

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_quick_perf_suite_passes_and_writes_every_report(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess(str(REPO / "perf_tests"), f"--rootdir={REPO}", "--quick",
                                           f"--report-dir={pytester.path / 'out'}", "-p", "no:cacheprovider",
                                           timeout=600)
    result.assert_outcomes(passed=6)  # levels 1, 2, 4, mixed, the agent loop, and the session verdict
    result.stdout.fnmatch_lines(["glmperf PASS: sim-hicache-mixed-chunk max usable 4 (required 4), mixed pass, "
                                 "agent-loop c=2 pass"])
    out = pytester.path / "out"
    for name in ("records.jsonl", "report.json", "report.md", "report.html", "capacity.svg",
                 "timeline-sim-hicache-mixed-chunk.svg", "sim-hicache-mixed-chunk/server.log"):
        assert (out / "latest" / name).is_file(), name
    report = json.loads((out / "latest" / "report.json").read_text())
    assert report["status"] == "complete" and report["verdict"]["status"] == "PASS"
    target = report["targets"]["sim-hicache-mixed-chunk"]
    assert target["capacity"]["max_usable"] == 4
    assert all(lv["requests"] >= 20 for lv in target["capacity"]["levels"])  # the preset meets --min-requests
