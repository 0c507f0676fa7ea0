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
