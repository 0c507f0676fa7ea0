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


HEAVY = ("numpy", "matplotlib", "docker", "uvicorn", "httpx", "httpcore", "pytest_glmperf.session")


def test_a_pytest_run_that_measures_nothing_loads_nothing_heavy(pytester: pytest.Pytester):
    """The plugin is imported by every pytest run in its environment: it must stay cheap there
    (about 40 ms here, `python -X importtime -c "import pytest_glmperf.plugin"`)."""
    pytester.makeconftest(f"""
import sys

def pytest_sessionfinish(session):
    loaded = [name for name in {HEAVY!r} if name in sys.modules]
    (session.config.rootpath / "loaded.txt").write_text(",".join(loaded))
""")
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert (pytester.path / "loaded.txt").read_text() == ""
    result.stdout.no_fnmatch_line("*glmperf:*")  # no header, no summary
    result.stdout.no_fnmatch_line("*verdict*")
