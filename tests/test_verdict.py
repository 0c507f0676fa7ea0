"""The session verdict: every claim held against the typed results, decided in one place."""

from pytest_glmperf.checks import ERROR, FAIL, INCONCLUSIVE, PASS, Check
from pytest_glmperf.thresholds import Thresholds
from pytest_glmperf.verdict import Claims, SessionVerdict, decide
from tests.builders import level, mixed, target

CAPACITY = Claims(capacity=frozenset({"sim"}))


def required(levels, require=2, **fields):
    return target("sim", levels, settings={"levels": [1, 2, 4], "require_concurrency": require,
                                           "thresholds": Thresholds().as_dict()}, **fields)


def test_every_required_level_measured_and_usable_is_a_pass():
    verdict = decide([required([level(1), level(2), level(4, "xfail")])], CAPACITY)
    assert verdict.status == "PASS" and verdict.ok
    assert verdict.line() == "glmperf PASS: sim max usable 2 (required 2)"


def test_a_required_level_not_measured_is_a_failure_not_a_pass():
    verdict = decide([required([level(1)])], CAPACITY)
    assert verdict.status == "FAIL" and not verdict.ok
    assert verdict.failures == ("sim c=2: not measured (required up to c=2)",)


def test_a_capacity_search_may_skip_levels_below_a_usable_one():
    searched = required([level(4)], search={"max_usable": 4, "probed": [4], "skipped": [1, 2]})
    assert decide([searched], CAPACITY).status == "PASS"
    failed = required([level(4, "xfail"), level(2, "fail")], search={"max_usable": None})
    assert decide([failed], CAPACITY).status == "FAIL"


def test_errored_invalid_and_interrupted_required_levels_fail():
    for status in ("error", "invalid", "interrupted"):
        verdict = decide([required([level(1), level(2, status)])], CAPACITY)
        assert verdict.status == "FAIL", status
        assert verdict.failures[0].startswith("sim c=2: ")


def test_an_error_above_the_required_level_still_fails_the_session():
    verdict = decide([required([level(1), level(2), level(4, "error", required=False)])], CAPACITY)
    assert verdict.status == "FAIL" and "sim c=4: measurement error" in verdict.failures[0]


def test_too_few_requests_is_inconclusive_and_exits_as_told():
    few = level(2).but(min_requests=100)
    five = {"failure_rate": [0.0] * 5, "tok_s_p50": [9.0] * 5, "ttft_p95_s": [20.0] * 5, "gap_p95_s": [0.5] * 5}
    few = few.but(verdict=Thresholds().judge(few.stats.as_dict(), five, 100))
    verdict = decide([required([level(1), few])], CAPACITY)
    assert verdict.status == "INCONCLUSIVE" and verdict.ok
    assert "sim c=2: too few requests (5 < --min-requests 100)" in verdict.line()
    strict = decide([required([level(1), few])], CAPACITY, inconclusive_fails=True)
    assert strict.status == "INCONCLUSIVE" and not strict.ok and "counted as a failure" in strict.line()


def test_claims_follow_the_selection():
    broken = required([level(1), level(2, "fail")], mixed=mixed("fail"))
    assert decide([broken], Claims()).status == "PASS"  # nothing claimed, nothing broken
    assert decide([broken], Claims(mixed=frozenset({"sim"}))).failures[0].startswith("sim mixed: ")
    unmeasured = decide([required([level(1), level(2)])], Claims(mixed=frozenset({"sim"})))
    assert unmeasured.failures == ("sim mixed: not measured",)


def test_a_comparison_that_did_not_run_on_this_sessions_data_fails():
    claims = Claims(regression=frozenset({("sim", 1, "ttft_p95_s"), ("sim", None, "max_usable")}))
    def check(level, metric, outcome, reason=""):
        return Check("sim", level, metric, None, None, None, None, None, None, outcome, reason)
    ran = required([level(1), level(2)], checks=(check(1, "ttft_p95_s", PASS), check(None, "max_usable", PASS)))
    assert decide([ran], claims).status == "PASS"
    errored = required([level(1)], checks=(check(1, "ttft_p95_s", ERROR, "c=1 was not measured in this run"),))
    verdict = decide([errored], claims)
    assert verdict.status == "FAIL"
    assert verdict.failures == ("sim max_usable: comparison did not run",
                                "sim c=1 ttft_p95_s: error: c=1 was not measured in this run")
    unsure = required([level(1)], checks=(check(1, "ttft_p95_s", INCONCLUSIVE, "interval too wide"),
                                          check(None, "max_usable", FAIL, "c=4 is no longer usable")))
    assert decide([unsure], claims).status == "FAIL"


def test_scenarios_that_ran_are_claims_and_other_failures_count():
    scenario = level(2, "invalid").but(workload="loop")
    verdict = decide([required([], scenarios=(scenario,))], Claims())
    assert verdict.status == "FAIL" and verdict.failures[0].startswith("sim loop c=2: measurement invalid")
    verdict = decide([], Claims(), failed_tests=["test_x.py::test_one"], problems=["cannot write records.jsonl"])
    assert verdict.failures == ("cannot write records.jsonl", "test failed: test_x.py::test_one")


def test_an_interruption_wins_and_a_server_that_never_started_fails():
    assert decide([required([level(1), level(2)])], CAPACITY, interrupted=True).status == "INTERRUPTED"
    dead = target("sim", start_error="ServerStartError: simulator did not start. exit code 2; last log lines:\nx")
    verdict = decide([dead], CAPACITY)
    assert verdict.failures == ("sim: server did not start (ServerStartError: simulator did not start. exit code 2)",)


def test_the_verdict_round_trips_through_json():
    verdict = decide([required([level(1)])], CAPACITY, inconclusive_fails=True)
    assert SessionVerdict.from_dict(verdict.as_dict()) == verdict
