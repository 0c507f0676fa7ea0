"""The regression gate: a repeat of a run never fails, a slower run fails naming the metric."""

import dataclasses
import random

import pytest

from pytest_glmperf.baseline import Baseline
from pytest_glmperf.errors import ConfigError
from pytest_glmperf.records import RequestRecord
from pytest_glmperf.regression import (
    ERROR,
    FAIL,
    INCONCLUSIVE,
    PASS,
    TTFT,
    WARNING,
    Check,
    Tolerances,
    bootstrap_change,
    compare_reports,
    split_runs,
)
from pytest_glmperf.report import RunReport, TargetReport
from pytest_glmperf.results import CAPACITY, LevelResult
from pytest_glmperf.stats import LevelStats
from pytest_glmperf.thresholds import Thresholds

S = 1_000_000_000


def request(rnd: random.Random, target: str, level: int, index: int, sent_ns: int, slow: float,
            stall: float) -> RequestRecord:
    """One streamed request: lognormal TTFT, steady decode with one lognormal stall."""
    ttft = rnd.lognormvariate(2.0, 0.5) * slow
    tokens, chunks = 400, 20
    step = tokens / 40.0 * slow / chunks
    stamps = [sent_ns + int(ttft * S)]
    stall_at = rnd.randrange(1, chunks)
    pause = rnd.lognormvariate(0.0, 0.6) * slow * stall
    for k in range(1, chunks):
        stamps.append(stamps[-1] + int((pause if k == stall_at else step) * S))
    return RequestRecord(request_id=f"{target}-{level}-{index}", scenario="capacity", kind="agent", profile=target,
                         level=level, send_ns=sent_ns, first_token_ns=stamps[0], chunk_ns=stamps,
                         chunk_tokens=[tokens // chunks] * chunks, done_ns=stamps[-1], completion_tokens=tokens)


def closed_loop(rnd: random.Random, target: str, level: int, duration_s: float, slow: float = 1.0,
                stall: float = 1.0) -> list[RequestRecord]:
    """``level`` agents, each sending its next request when the last one finished."""
    records: list[RequestRecord] = []
    for _ in range(level):
        clock = 0
        while clock < duration_s * S:
            record = request(rnd, target, level, len(records), clock, slow, stall)
            records.append(record)
            clock = record.done_ns
    return records


def run(seed: int, target: str = "sim", levels=(1, 2, 4), duration_s: float = 600, slow: float = 1.0,
        stall_at: dict[int, float] | None = None, settings: dict | None = None, repeat: int | None = None,
        provenance: dict | None = None):
    """A report built by the real statistics and verdict code, and its records."""
    rnd = random.Random(seed)
    results, records = [], []
    for level in levels:
        recs = closed_loop(rnd, target, level, duration_s, slow, (stall_at or {}).get(level, 1.0))
        if repeat is not None:
            for r in recs:
                r.extra["repeat"] = repeat
        stats = LevelStats.of_level(level, recs, 0)
        results.append(LevelResult.judge(target, CAPACITY, level, stats, Thresholds()))
        records += recs
    entry = TargetReport(target, settings=settings or {"thresholds": Thresholds().as_dict()},
                         levels=tuple(results), provenance=provenance)
    return RunReport(targets=(entry,)), records


def with_target(report: RunReport, **changes) -> RunReport:
    return report.but(targets=(report.targets[0].but(**changes),))


def by_metric(checks: list[Check], metric: str) -> list[Check]:
    return [c for c in checks if c.metric == metric]


# -- tolerances -------------------------------------------------------------------------------

def test_tolerances_from_mapping_accepts_percent_and_fractions():
    tol = Tolerances.from_mapping({"ttft_p95_s": "20%", "gap_p95_s": "0.15", "tok_s_p50": 0.05, "resamples": "500"})
    assert tol.ttft_p95_s == pytest.approx(0.20)
    assert tol.gap_p95_s == pytest.approx(0.15)
    assert tol.tok_s_p50 == 0.05
    assert tol.resamples == 500
    assert tol.aggregate_tok_s == 0.10 and tol.max_usable == 0.0


@pytest.mark.parametrize(("values", "named"), [
    ({"ttft_p99_s": "10%"}, "ttft_p99_s"),
    ({"gap_p95_s": "-5%"}, "gap_p95_s"),
    ({"gap_p95_s": "lots"}, "gap_p95_s"),
    ({"tok_s_p50": "15"}, "15%"),
    ({"confidence": "1.5"}, "confidence"),
    ({"resamples": "10"}, "resamples"),
])
def test_bad_tolerance_names_the_key(values, named):
    with pytest.raises(ConfigError, match=named):
        Tolerances.from_mapping(values)


# -- the noise model ----------------------------------------------------------------------------

def test_a_repeat_of_the_same_run_never_fails():
    """Independent samples from one distribution, many seeds: pass or inconclusive, never fail."""
    outcomes = []
    for seed in range(25):
        base_report, base_records = run(2 * seed)
        report, records = run(2 * seed + 1)
        checks = compare_reports(report, records, Baseline("repeat", base_report, base_records))
        assert not [c.message() for c in checks if c.outcome == FAIL]
        outcomes += [c.outcome for c in checks]
    assert outcomes.count(PASS) > len(outcomes) // 4, "the gate must also be able to say pass"


def test_a_slower_run_fails_naming_the_metric():
    base_report, base_records = run(1)
    report, records = run(2, slow=1.6)
    checks = compare_reports(report, records, Baseline("prod", base_report, base_records))
    failed = [c for c in checks if c.outcome == FAIL]
    assert {"tok_s_p50", "aggregate_tok_s"} <= {c.metric for c in failed}
    message = next(c for c in failed if c.metric == "tok_s_p50").message()
    assert message.startswith("sim c=") and "tok_s_p50" in message
    assert "exceeds tolerance -10 %" in message and "99 % CI of change" in message


def test_slower_ttft_fails_only_when_the_whole_interval_clears_the_tolerance():
    base_report, base_records = run(3)
    report, records = run(4, slow=2.5)
    checks = compare_reports(report, records, Baseline("prod", base_report, base_records))
    ttft = by_metric(checks, "ttft_p95_s")
    assert any(c.outcome == FAIL for c in ttft)
    for check in ttft:
        if check.outcome == FAIL:
            assert check.ci_low > check.tolerance * check.baseline
            assert check.delta > 0 and check.delta_pct > 10


def test_repeats_are_resampled_by_run():
    """Three runs a side, given as lists or tagged extra['repeat']: a repeat passes, a slowdown fails."""
    base = [run(10 + i)[1] for i in range(3)]
    same_report, _ = run(20)
    same = [run(20 + i)[1] for i in range(3)]
    base_tagged = Baseline("prod", run(10)[0], [r for i, rs in enumerate(base) for r in _tag(rs, i)])
    checks = compare_reports(same_report, same, base_tagged)
    assert not [c for c in checks if c.outcome == FAIL]
    slow_report, _ = run(30, slow=1.6)
    slow = [r for i in range(3) for r in run(30 + i, slow=1.6, repeat=i)[1]]
    assert len(split_runs(slow)) == 3
    checks = compare_reports(slow_report, slow, base_tagged)
    assert any(c.outcome == FAIL and c.metric == "tok_s_p50" for c in checks)
    assert all(c.n_current > 30 for c in by_metric(checks, "tok_s_p50"))


def _tag(records: list[RequestRecord], repeat: int) -> list[RequestRecord]:
    for record in records:
        record.extra["repeat"] = repeat
    return records


def test_too_few_requests_is_inconclusive_with_the_reason():
    base_report, base_records = run(5, levels=(1,), duration_s=150)
    report, records = run(6, levels=(1,), duration_s=150, slow=3)
    ttft = by_metric(compare_reports(report, records, Baseline("b", base_report, base_records)), "ttft_p95_s")[0]
    assert ttft.outcome == INCONCLUSIVE
    assert "too few requests" in ttft.reason and "needs >= 20" in ttft.reason
    assert ttft.ci_low is not None  # the interval is still shown


def test_missing_data_is_an_error_on_this_side_and_inconclusive_on_the_baselines():
    base_report, _ = run(7, levels=(1, 2))
    report, records = run(8, levels=(1, 2, 4))
    first = report.targets[0].levels[0]
    gapless = first.but(stats=dataclasses.replace(first.stats, gap_p95_s=None))
    report = with_target(report, levels=(gapless, *report.targets[0].levels[1:]))
    checks = compare_reports(report, records, Baseline("b", base_report, []))
    reasons = {(c.level, c.metric): (c.outcome, c.reason) for c in checks}
    assert reasons[(1, "gap_p95_s")] == (ERROR, "metric missing in this run (no data)")
    assert reasons[(2, "ttft_p95_s")][0] == INCONCLUSIVE
    assert "no per-request records in the baseline" in reasons[(2, "ttft_p95_s")][1]
    assert reasons[(4, "tok_s_p50")] == (INCONCLUSIVE, "c=4 is not in the baseline")


def test_bootstrap_is_seeded_and_repeatable():
    import numpy as np
    base = [(np.arange(1.0, 41.0), None)]
    current = [(np.arange(1.0, 41.0) * 1.5, None)]
    first = bootstrap_change(TTFT, base, current, seed=3)
    assert first == bootstrap_change(TTFT, base, current, seed=3)
    assert first != bootstrap_change(TTFT, base, current, seed=4)
    assert first[0] < 0.5 * 38.05 < first[1]


# -- targets and max usable ---------------------------------------------------------------------

def test_targets_match_by_profile_when_images_differ():
    base_report, base_records = run(9, target="hicache@sglang:v1", levels=(1,))
    report, records = run(10, target="hicache@sglang:v2", levels=(1,))
    checks = compare_reports(report, records, Baseline("b", base_report, base_records))
    warning = checks[0]
    assert warning.outcome == WARNING and "hicache@sglang:v1" in warning.reason
    compared = [c for c in checks if c.outcome != WARNING]
    assert compared and all(c.baseline_target == "hicache@sglang:v1" for c in compared)
    assert all(c.n_baseline > 0 and c.n_current > 0 for c in compared if c.level is not None)


def test_an_unmatched_target_is_a_warning_only():
    base_report, base_records = run(11, target="lru", levels=(1,))
    report, records = run(12, target="hicache", levels=(1,))
    checks = compare_reports(report, records, Baseline("b", base_report, base_records))
    assert [c.outcome for c in checks] == [WARNING]
    assert "no baseline for hicache" in checks[0].message()


def test_same_target_with_a_new_image_id_warns():
    base_report, base_records = run(13, levels=(1,), provenance={"kind": "compose", "image": {"id": "sha256:old"}})
    report, records = run(14, levels=(1,), provenance={"kind": "compose", "image": {"id": "sha256:new"}})
    checks = compare_reports(report, records, Baseline("b", base_report, base_records))
    assert checks[0].outcome == WARNING and "sha256:old" in checks[0].reason


def test_max_usable_drop_fails_when_the_lost_level_is_clearly_over_the_bar():
    base_report, base_records = run(15)
    report, records = run(16, stall_at={4: 12.0})
    assert report.targets[0].max_usable == 2
    check = by_metric(compare_reports(report, records, Baseline("b", base_report, base_records)), "max_usable")[0]
    assert check.outcome == FAIL
    assert (check.baseline, check.current) == (4, 2)
    assert "c=4 is no longer usable" in check.reason and "gap_p95_s" in check.reason
    assert "max_gap_p95 8 s" in check.reason
    assert check.message().startswith("sim max_usable: 4 -> 2 (-50.0 %) exceeds tolerance 0 % (must not drop): c=4")


def test_max_usable_drop_within_noise_is_inconclusive():
    base_report, base_records = run(15)
    report, records = run(16, stall_at={4: 12.0})
    threshold = report.targets[0].levels[-1].stats.gap_p95_s * 0.97  # the bar sits just under the measured P95
    report = with_target(report, settings={"thresholds": {**Thresholds().as_dict(), "max_gap_p95": threshold}})
    check = by_metric(compare_reports(report, records, Baseline("b", base_report, base_records)), "max_usable")[0]
    assert check.outcome == INCONCLUSIVE
    assert "within noise of the bar" in check.reason and "straddles" in check.reason


def test_max_usable_held_passes():
    base_report, base_records = run(17)
    report, records = run(18)
    check = by_metric(compare_reports(report, records, Baseline("b", base_report, base_records)), "max_usable")[0]
    assert check.outcome == PASS
    assert check.message() == "sim max_usable: 4 -> 4 (+0.0 %) within tolerance 0 % (must not drop)"


def test_check_message_names_values_change_interval_and_tolerance():
    check = Check("sim-hicache", 4, "ttft_p95_s", 20.1, 35.7, 15.6, 77.6, 12.0, 19.3, FAIL, "", " s", 0.10, False,
                  0.95)
    assert check.message() == ("sim-hicache c=4 ttft_p95_s: 20.1 s -> 35.7 s (+77.6 %, 95 % CI of change "
                               "+12.0..+19.3 s) exceeds tolerance +10 %")
    unsure = dataclasses.replace(check, outcome=INCONCLUSIVE, reason="too few requests")
    assert unsure.message().endswith("inconclusive: too few requests")
    assert check.name == "sim-hicache-c4-ttft_p95_s"


def test_a_baseline_run_under_other_conditions_warns_naming_them():
    settings = {"thresholds": Thresholds().as_dict(), "cache_start": "flushed",
                "capacity": {"spike_mode": "slot", "spike_interval_s": 25.0, "level_duration_s": 240.0}}
    base_report, base_records = run(17, levels=(1,), settings=settings)
    warm = {**settings, "cache_start": "warm", "capacity": {**settings["capacity"], "spike_mode": "extra"}}
    report, records = run(18, levels=(1,), settings=warm)
    checks = compare_reports(report, records, Baseline("b", base_report, base_records))
    warning = checks[0]
    assert warning.outcome == WARNING
    assert warning.reason == ("not like for like, the workload changed: cache_start flushed -> warm; "
                              "spike_mode slot -> extra")
    assert [c for c in checks if c.outcome != WARNING]  # still compared, with the warning beside


def test_same_conditions_add_no_warning():
    settings = {"thresholds": Thresholds().as_dict(), "cache_start": "flushed", "capacity": {"spike_mode": "slot"}}
    base_report, base_records = run(19, levels=(1,), settings=settings)
    report, records = run(20, levels=(1,), settings=settings)
    checks = compare_reports(report, records, Baseline("b", base_report, base_records))
    assert not [c for c in checks if c.outcome == WARNING]


def test_one_target_is_compared_with_a_baseline_of_one_target_under_another_name():
    """Two --base-url servers labelled differently (prod, then candidate) still compare, with a warning."""
    external = {"kind": "external", "base_url": "http://127.0.0.1:30001"}
    base_report, base_records = run(40, target="prod", provenance=external)
    report, records = run(41, target="candidate", slow=1.6, provenance=external)
    checks = compare_reports(report, records, Baseline("prod", base_report, base_records))
    [warning] = [c for c in checks if c.outcome == WARNING]
    assert "compared with prod, the baseline's one target" in warning.reason
    assert by_metric(checks, "tok_s_p50")[0].outcome == FAIL
    assert {c.metric for c in checks} >= {"failure_rate", "max_usable"}
