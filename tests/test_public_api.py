"""The public API: what users import is pinned, and the README's example runs as written."""

import re

import pytest

import pytest_glmperf
from tests.conftest import REGISTRY, REPO


def test_exported_members_are_pinned():
    assert pytest_glmperf.__all__ == [
        "Agent", "ConfigError", "GlmperfError", "GlmperfServer", "InconclusiveWarning", "LevelResult",
        "MeasurementInvalid", "RegressionResult", "RequestRecord", "ServerNotReady", "ServerStartError",
        "StreamingClient", "Thresholds",
    ]
    for name in pytest_glmperf.__all__:
        assert getattr(pytest_glmperf, name)


def test_readme_example_runs(pytester: pytest.Pytester):
    readme = (REPO / "README.md").read_text()
    example = re.search(r"## Your own performance tests.*?```python\n(.*?)```", readme, re.S).group(1)
    pytester.makepyfile(test_readme=example.replace("duration_s=120", "duration_s=4"))
    result = pytester.runpytest_subprocess(f"--profiles-file={REGISTRY}", "--report-dir=out", "--time-scale=20",
                                           "--min-requests=3", "-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=3)  # the two tests and the session verdict
    result.stdout.fnmatch_lines(["glmperf PASS: *"])
