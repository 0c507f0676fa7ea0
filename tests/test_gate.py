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

    slowed = run(pytester, 0.05, "slow", "--compare=before")
    slowed.stdout.fnmatch_lines(["*gate c=2 tok_s_p50: * tok/s -> * tok/s (-*) exceeds tolerance -10 %*"])
    slowed.stdout.fnmatch_lines(["FAILED test_reg.py::test_regression[[]gate-c2-tok_s_p50[]]*"])
    assert slowed.ret == pytest.ExitCode.TESTS_FAILED

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
