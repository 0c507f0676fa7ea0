"""The usability bar: validation errors name the key, verdicts name the broken threshold."""

import pytest

from pytest_glmperf.errors import ConfigError
from pytest_glmperf.thresholds import Thresholds

GOOD = {"failure_rate": 0.0, "tok_s_p50": 20.0, "ttft_p95_s": 30.0, "gap_p95_s": 0.5}


def test_defaults_are_the_field_reports_bar():
    assert Thresholds().as_dict() == {"max_failure_rate": 0.05, "min_tok_s_p50": 4.0, "max_ttft_p95": 180.0,
                                      "max_gap_p95": 8.0}


def test_usable_when_every_threshold_holds():
    verdict = Thresholds().judge(GOOD)
    assert verdict.usable
    assert verdict.explain() == "usable"


def test_broken_threshold_is_named_with_value_and_limit():
    verdict = Thresholds().judge({**GOOD, "gap_p95_s": 11.95, "tok_s_p50": 3.0})
    assert not verdict.usable
    assert [c.key for c in verdict.broken] == ["min_tok_s_p50", "max_gap_p95"]
    assert "gap_p95_s = 11.95 s > max_gap_p95 8 s" in verdict.explain()
    assert "tok_s_p50 = 3 tok/s < min_tok_s_p50 4 tok/s" in verdict.explain()


def test_missing_statistic_fails_with_no_data():
    verdict = Thresholds().judge({**GOOD, "ttft_p95_s": None})
    assert not verdict.usable
    assert "ttft_p95_s: no data" in verdict.explain()


@pytest.mark.parametrize(("key", "value"), [("max_gap_p95", "fast"), ("min_tok_s_p50", -1), ("max_ttft_p95", "nan")])
def test_bad_threshold_names_its_key(key, value):
    with pytest.raises(ConfigError, match=key):
        Thresholds.from_mapping({key: value})


def test_unknown_threshold_is_rejected():
    with pytest.raises(ConfigError, match="unknown threshold 'max_itl'"):
        Thresholds.from_mapping({"max_itl": 1})


def test_failure_rate_is_a_fraction():
    with pytest.raises(ConfigError, match="max_failure_rate"):
        Thresholds(max_failure_rate=5)


def test_each_check_says_how_much_evidence_it_rests_on():
    values = {"failure_rate": [0.0] * 60, "tok_s_p50": [20.0] * 60, "ttft_p95_s": [30.0] * 60,
              "gap_p95_s": [0.5] * 57 + [12.0] * 3}
    verdict = Thresholds().judge(GOOD, values, min_requests=20)
    gap = verdict.checks[-1]
    assert (gap.samples, gap.beyond, gap.enough) == (60, 3, True)
    assert gap.ok and gap.settled is False  # 3 of 60 beyond: a server past the bar could do that
    assert verdict.usable and verdict.settled is False
    clear = Thresholds().judge(GOOD, {**values, "gap_p95_s": [0.5] * 60}, min_requests=20)
    assert clear.settled is True  # none of 60 beyond: below 5 % at 95 % confidence


def test_a_break_on_a_handful_of_requests_stands_when_settled():
    broken = {**GOOD, "ttft_p95_s": 400.0}
    values = {"failure_rate": [0.0] * 4, "tok_s_p50": [20.0] * 4, "ttft_p95_s": [400.0] * 4, "gap_p95_s": [0.5] * 4}
    verdict = Thresholds().judge(broken, values, min_requests=20)
    assert not verdict.usable and verdict.settled and verdict.inconclusive == []
    assert "(4 of 4 requests beyond, too few requests, settled)" in verdict.explain()
    one_slow = {**values, "ttft_p95_s": [30.0] * 3 + [400.0]}
    assert [c.stat for c in Thresholds().judge(broken, one_slow, min_requests=20).inconclusive] == \
        ["failure_rate", "tok_s_p50", "ttft_p95_s", "gap_p95_s"]


def test_no_data_at_all_is_a_settled_failure():
    empty = {"failure_rate": [], "tok_s_p50": [], "ttft_p95_s": [], "gap_p95_s": []}
    verdict = Thresholds().judge({}, empty, min_requests=20)
    assert not verdict.usable and verdict.settled and verdict.inconclusive == []
