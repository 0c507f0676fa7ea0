"""The regression gate end to end: save a baseline, change the server, compare.

A profile named ``gate`` is declared in a registry of the inner project; the "upgrade" is a
change of its speculative-decoding acceptance (fewer accepted drafts, slower decode), as an
image or flag change would do. Also checks the session outputs: charts, report.html and
the GitHub job summary.
"""

import json
import re
import xml.etree.ElementTree as ET

import pytest

from pytest_glmperf.checks import fmt_signed
from tests.conftest import REGISTRY
from tests.inner import CAPACITY_TEST, MIXED_TEST, REGRESSION_TEST


def registry(accept_prob: float) -> str:
    """The sim-mtp profile's flags under the name 'gate', with a given acceptance probability."""
    import yaml

    profile = yaml.safe_load(REGISTRY.read_text())["profiles"]["sim-mtp"]
    profile["server_args"] = [*profile["server_args"], "--sim-spec-accept-prob", str(accept_prob)]
    profile["require_concurrency"] = 2
    return yaml.safe_dump({"profiles": {"gate": profile}})


def run(pytester: pytest.Pytester, accept_prob: float, out: str, *args: str) -> pytest.RunResult:
    (pytester.path / "profiles.yaml").write_text(registry(accept_prob))
    return pytester.runpytest_subprocess(
        "--profiles-file=profiles.yaml", "--profile=gate", f"--report-dir={out}", "--baseline-dir=store",
        "--concurrency-levels=2", "--level-duration=30", "--contexts=2", "--context-tokens=1500",
        "--max-output-tokens=40", "--spike-interval=0", "--mixed-duration=8", "--mixed-contexts=2",
        "--mixed-max-output-tokens=40", "--mixed-spike-interval=4", "--revisit-interval=5",
        "--time-scale=20", "-p", "no:cacheprovider", "-rA", *args, timeout=300)


def test_slower_server_fails_the_gate_and_a_repeat_does_not(pytester: pytest.Pytester, monkeypatch):
    pytester.makepyfile(test_cap=CAPACITY_TEST, test_mix=MIXED_TEST, test_reg=REGRESSION_TEST)
    summary = pytester.path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))

    saved = run(pytester, 0.8, "base", "--save-baseline=before")
    saved.assert_outcomes(passed=3)  # two tests and the verdict: regression items exist only with --compare
    assert (pytester.path / "store" / "before").is_dir()

    # The upgrade, under a gap bar it breaks too, so its level has stalls to explain.
    slowed = run(pytester, 0.05, "slow", "--compare=before", "--max-gap-p95=0.01")
    slowed.stdout.fnmatch_lines(["*gate c=2 tok_s_p50: * tok/s -> * tok/s (-*) exceeds tolerance -10 %*"])
    slowed.stdout.fnmatch_lines(["FAILED test_reg.py::test_regression[[]gate-c2-tok_s_p50[]]*"])
    slowed.stdout.fnmatch_lines(["  c=2 stall * s at * s (agent *): *"])  # the terminal names the worst stalls
    assert slowed.ret == pytest.ExitCode.TESTS_FAILED
    check_the_evidence_a_reviewer_reads(pytester.path / "slow" / "latest")

    repeat = run(pytester, 0.8, "again", "--compare=before")
    outcomes = repeat.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, repeat.stdout.str()
    report = json.loads((pytester.path / "again" / "latest" / "report.json").read_text())
    outcomes = {c["outcome"] for c in report["targets"]["gate"]["regression"]["checks"]}
    assert outcomes <= {"pass", "inconclusive", "warning"}

    out = pytester.path / "again"
    for chart in ("capacity.svg", "timeline-gate.svg"):
        root = ET.fromstring((out / "latest" / chart).read_text())
        assert root.tag.endswith("svg")
    html = (out / "latest" / "report.html").read_text()
    assert "<svg" in html
    assert not re.search(r'(src|href)="https?://', html)  # opens offline: nothing to fetch
    text = summary.read_text()
    assert text.count("### pytest-glmperf") == 3 and "gate" in text


def check_the_evidence_a_reviewer_reads(out):
    """report.md, the charts and report.html (in Chromium) of a run compared with a saved baseline."""
    report = json.loads((out / "report.json").read_text())
    regression = report["targets"]["gate"]["regression"]
    reference = regression["reference"]  # the other side's build and date
    assert reference["target"] == "gate" and reference["server_version"] and reference["measured_at"]
    assert [lv["concurrency"] for lv in reference["capacity"]["levels"]] == [2]
    tok = next(c for c in regression["checks"] if (c["level"], c["metric"]) == (2, "tok_s_p50"))
    assert tok["outcome"] == "fail"

    md = (out / "report.md").read_text()
    assert "### Compared with before (saved " in md
    assert f"reference: gate · server version {reference['server_version']} · measured " in md
    assert re.search(r"\n\| window +\| metric +\| reference +\| this run +\| change +\| 99 % CI of change +\| "
                     r"tolerance +\| outcome +\| why +\|\n", md)
    row = next(line for line in md.splitlines() if line.startswith("| c=2 ") and "| tok_s_p50 " in line)
    interval = f"{fmt_signed(tok['ci_low'])}..{fmt_signed(tok['ci_high'])} tok/s"
    assert f"{tok['delta_pct']:+.1f} %" in row and interval in row
    assert "| -10 % " in row and "❌ fail" in row and "lies beyond the tolerance" in row
    gap = next(line for line in md.splitlines() if line.startswith("| c=2 ") and "| gap_p95_s " in line)
    assert "+10 % (floor +0.5 s)" in gap  # the tolerance as the gate applied it
    assert "![changes against the reference](changes-gate.svg)" in md
    changes = (out / "changes-gate.svg").read_text()
    assert 'id="changes-interval-2-tok_s_p50-fail"' in changes and 'id="changes-allowed-2-tok_s_p50"' in changes
    # The failing level: its worst stalls, one line each, and a link to its timeline.
    assert "- c=2: " in md and "([timeline](timeline-gate-c2.svg))" in md
    assert re.search(r"\n  - stall \d+\.\d+ s at \d+ s \(agent ", md)
    timeline = (out / "timeline-gate-c2.svg").read_text()
    assert 'id="timeline-stalls"' in timeline and "(requests)" in timeline  # gauges carry units
    capacity = (out / "capacity.svg").read_text()
    assert 'id="reference-tok_s-reference_of_gate_gate"' in capacity  # the baseline, under the run
    assert "TTFT P95 (s) · log scale" in capacity  # sub-second TTFTs under a 180 s bar stay visible

    from tests.browser import rendered_text, screenshot

    page = out / "report.html"
    dom = rendered_text(page)
    assert "Compared with before (saved " in dom and "lies beyond the tolerance" in dom
    assert 'href="#chart-timeline-gate-c2"' in dom and 'id="chart-timeline-gate-c2"' in dom
    shot = screenshot(page, "report-compared-with-baseline.png")
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[1] == 1280 and pixels.std() > 0.05  # a page was drawn, not a blank
