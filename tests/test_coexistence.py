"""The plugin lives beside others: pytest-base-url and pytest-profiling declare ``--base-url`` and
``--profile`` too, pytest-benchmark its own group. With all three installed, pytest starts, the
short forms those plugins own are theirs, and the suite runs through the ``--glmperf-`` forms.

The three come from ``scripts/check`` (``$GLMPERF_FOREIGN_PLUGINS``, a folder installed with
``pip --target``), put on the inner runs' PYTHONPATH only, so this environment stays as it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import IN_CI, REGISTRY
from tests.inner import CAPACITY_TEST

FOREIGN = os.environ.get("GLMPERF_FOREIGN_PLUGINS", "")


@pytest.fixture
def foreign(monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = Path(FOREIGN)
    if not FOREIGN or not (folder / "pytest_base_url").is_dir():
        message = "the other plugins are not installed (scripts/check installs them in $GLMPERF_FOREIGN_PLUGINS)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    return folder


def test_pytest_starts_with_plugins_that_declare_the_same_options(pytester: pytest.Pytester, foreign: Path):
    result = pytester.runpytest_subprocess("--help")
    assert result.ret == 0, result.stderr.str()[-2000:]
    for line in ("*--base-url=url*base url for the application under test*", "*--profile *generate profiling*",
                 "*--glmperf-base-url=[[]NAME=[]]URL*", "*--glmperf-profile=NAME*", "*--benchmark-*"):
        result.stdout.fnmatch_lines([line])


def test_the_suite_runs_through_the_glmperf_forms(pytester: pytest.Pytester, foreign: Path):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    out = pytester.path / "out"
    result = pytester.runpytest_subprocess(
        f"--glmperf-profiles-file={REGISTRY}", "--glmperf-profile=sim-mtp", f"--glmperf-report-dir={out}",
        "--glmperf-concurrency-levels=1", "--require-concurrency=1", "--min-requests=2", "--level-duration=6",
        "--context-tokens=2000", "--max-output-tokens=48", "--time-scale=20", "-p", "no:cacheprovider", timeout=300)
    result.stdout.fnmatch_lines([
        "glmperf: --base-url, --profile belong to another plugin here; use --glmperf-base-url, --glmperf-profile",
        "glmperf PASS: sim-mtp max usable 1 (required 1)"])
    assert result.ret == 0
    assert json.loads((out / "latest" / "report.json").read_text())["targets"]["sim-mtp"]["capacity"]["max_usable"] == 1


def test_without_them_the_short_forms_are_ours(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = pytester.runpytest_subprocess(f"--profiles-file={REGISTRY}", "--profile=nope", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown profile 'nope' (--profile)*"])
