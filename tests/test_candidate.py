"""Candidate against prod in one session: later servers are compared with the first.

Three simulators someone else started (``--base-url``), all with the sim-mtp flags: "prod", a
"candidate" whose speculative decoding accepts far fewer drafts (slower decode that still
clears the absolute bar), and a repeat of prod. The candidate must fail the comparison while
passing every level of the bar; the repeat must not fail anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import REGISTRY
from tests.inner import CAPACITY_TEST, MIXED_TEST, REGRESSION_TEST, run_folder

pytestmark = pytest.mark.slow
WORKLOAD = ("--concurrency-levels=2", "--require-concurrency=2", "--level-duration=30", "--contexts=2",
            "--context-tokens=1500", "--max-output-tokens=40", "--spike-interval=0", "--mixed-duration=20",
            "--mixed-contexts=2", "--mixed-max-output-tokens=40", "--mixed-spike-interval=4",
            "--revisit-interval=5", "--min-requests=2")


def simulator(tmp_path: Path, name: str, accept_prob: float) -> Iterator[str]:
    from tests.test_client import Simulator

    args = yaml.safe_load(REGISTRY.read_text())["profiles"]["sim-mtp"]["server_args"]
    server = Simulator("--time-scale", "20", *args, "--sim-spec-accept-prob", str(accept_prob),
                       log=tmp_path / f"{name}.log")
    yield server.base_url
    server.stop()


@pytest.fixture
def prod(tmp_path: Path) -> Iterator[str]:
    yield from simulator(tmp_path, "prod", 0.8)


@pytest.fixture
def candidate(tmp_path: Path) -> Iterator[str]:
    yield from simulator(tmp_path, "candidate", 0.05)


@pytest.fixture
def prod_again(tmp_path: Path) -> Iterator[str]:
    yield from simulator(tmp_path, "again", 0.8)


def run(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict]:
    pytester.makepyfile(test_cap=CAPACITY_TEST, test_mix=MIXED_TEST, test_reg=REGRESSION_TEST)
    result = pytester.runpytest_subprocess(f"--report-dir={pytester.path / 'out'}", *WORKLOAD, "-p",
                                           "no:cacheprovider", "-rA", *args, timeout=400)
    return result, json.loads((run_folder(pytester) / "report.json").read_text())


def test_a_slowed_candidate_that_clears_the_bar_fails_against_prod(pytester: pytest.Pytester, prod: str,
                                                                  candidate: str):
    result, report = run(pytester, f"--base-url=prod={prod}", f"--base-url=candidate={candidate}")
    assert list(report["targets"]) == ["prod", "candidate"]
    for key in ("prod", "candidate"):  # each image holds the absolute bar on its own
        assert [lv["status"] for lv in report["targets"][key]["capacity"]["levels"]] == ["pass"]
    result.stdout.fnmatch_lines(["PASSED test_cap.py::test_capacity[[]candidate-c2[]]*",
                                 "FAILED test_reg.py::test_regression[[]candidate-c2-tok_s_p50[]]*"])
    result.stdout.no_fnmatch_line("*test_regression[[]prod-*")  # the reference is not compared with itself
    checks = report["targets"]["candidate"]["regression"]
    assert checks["baseline"] == "prod (this session's reference target)"
    by_name = {(c["level"], c["metric"]): c for c in checks["checks"]}
    assert by_name[(2, "tok_s_p50")]["outcome"] == "fail"
    assert by_name[(None, "mixed_tok_s_p50")]["outcome"] == "fail"  # the mixed workload is gated too
    assert {(2, "failure_rate"), (None, "mixed_failure_rate"), (None, "max_usable")} <= set(by_name)
    assert report["verdict"]["status"] == "FAIL"
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # The reviewer's report names the reference with its build and date, and has the changes chart.
    reference = checks["reference"]
    assert reference["target"] == "prod" and reference["server_version"] and reference["measured_at"]
    markdown = (run_folder(pytester) / "report.md").read_text()
    assert "### Compared with prod (this session's reference target)" in markdown
    assert "![changes against the reference](changes-candidate.svg)" in markdown
    capacity = (run_folder(pytester) / "capacity.svg").read_text()
    assert 'id="capacity-tok_s-prod"' in capacity and 'id="reference-tok_s-' not in capacity  # drawn once


def test_a_repeat_of_prod_passes_and_servers_are_named_from_themselves(pytester: pytest.Pytester, prod: str,
                                                                      prod_again: str):
    result, report = run(pytester, f"--base-url={prod},{prod_again}")
    # Both say glm-5.1 at the simulator's version: two servers of one name get their addresses.
    keys = [prod.split("//", 1)[1], prod_again.split("//", 1)[1]]
    assert list(report["targets"]) == keys
    checks = report["targets"][keys[1]]["regression"]["checks"]
    assert checks and {c["outcome"] for c in checks} <= {"pass", "inconclusive", "warning"}, checks
    assert report["verdict"]["status"] in ("PASS", "INCONCLUSIVE")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]


def test_one_base_url_is_named_from_its_server_info(pytester: pytest.Pytester, prod: str):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = pytester.runpytest_subprocess(f"--base-url={prod}", "--profile=sim-mtp", "--collect-only", "-q",
                                           "--concurrency-levels=1,2", timeout=120)
    result.stdout.fnmatch_lines(["test_cap.py::test_capacity[[]glm-5.1@*+glmperf.sim-c1[]]"])
    result.stdout.no_fnmatch_line("*sim-mtp*")  # a profile lends its bar, never its name


def test_with_capacity_search_the_candidate_starts_at_prods_answer(pytester: pytest.Pytester, prod: str,
                                                                   prod_again: str):
    result, report = run(pytester, f"--base-url=prod={prod}", f"--base-url=again={prod_again}",
                         "--capacity-search", "--concurrency-levels=1,2", "--require-concurrency=1")
    searches = {key: target["capacity"]["search"] for key, target in report["targets"].items()}
    assert searches["prod"]["probed"][0] == 2 and searches["prod"]["max_usable"] == 2
    assert searches["again"]["probed"] == [2]  # prod's answer first, and nothing above it to try
    checks = {(c["level"], c["metric"]): c["outcome"] for c in report["targets"]["again"]["regression"]["checks"]}
    assert checks[(1, "tok_s_p50")] == "skipped"  # neither measured c=1: no claim, not an inconclusive
    result.stdout.fnmatch_lines(["SKIPPED * c=1 was not needed by --capacity-search*the reference has no c=1*"])
    assert checks[(None, "max_usable")] == "pass"
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
