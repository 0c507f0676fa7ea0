"""Percentiles and per-level statistics on records whose timing is known exactly."""

import pytest

from pytest_glmperf.records import FAILED, RequestRecord
from pytest_glmperf.scrape import HistogramDelta, MetricsSnapshot
from pytest_glmperf.stats import LevelStats, StreamStats, bucket_quantile, percentile

MS = 1_000_000


def record(ttft_ms: int, gaps_ms: list[int], *, kind: str = "agent", ok: bool = True, tokens: int | None = None,
           scale: float = 1.0) -> RequestRecord:
    """A record sent at t=0 whose first chunk arrives at ttft_ms, then after each gap."""
    stamps = [ttft_ms * MS]
    for gap in gaps_ms:
        stamps.append(stamps[-1] + gap * MS)
    return RequestRecord(
        request_id="r", kind=kind, time_scale=scale, send_ns=0, first_token_ns=stamps[0], chunk_ns=stamps,
        chunk_tokens=[1] * len(stamps), done_ns=stamps[-1], completion_tokens=tokens or len(stamps),
        outcome="ok" if ok else FAILED,
    )


@pytest.mark.parametrize(("values", "pct", "expected"), [
    ([1, 2, 3, 4], 50, 2.5),
    ([1, 2, 3, 4, 5], 50, 3),
    (list(range(1, 21)), 95, 19.05),
    ([7], 95, 7),
    ([10, 0], 100, 10),
])
def test_percentile_is_numpy_linear(values, pct, expected):
    assert percentile(values, pct) == pytest.approx(expected)


def test_percentile_of_nothing_is_none_not_zero():
    assert percentile([], 50) is None
    assert percentile([None, None], 95) is None


def test_record_figures_in_model_seconds():
    rec = record(200, [50, 2000, 50], scale=10.0)
    assert rec.ttft_s == pytest.approx(2.0)
    assert rec.max_gap_s == pytest.approx(20.0)
    assert rec.e2e_s == pytest.approx(23.0)
    assert rec.output_tok_s == pytest.approx(4 / 23.0)
    assert rec.decode_tok_s == pytest.approx(3 / 21.0)


def test_level_stats_judge_agents_but_count_every_failure():
    agents = [record(1000, [100] * 10) for _ in range(19)]
    spikes = [record(5000, [50], kind="spike"), record(1, [], kind="spike", ok=False)]
    stats = LevelStats.of_level(4, agents + spikes, start_ns=0)
    assert stats.requests == 21
    assert stats.failures == 1
    assert stats.failure_rate == pytest.approx(1 / 21)
    assert stats.ttft_p95_s == pytest.approx(1.0)  # spikes' 5 s TTFT is not an agent's
    assert stats.gap_p95_s == pytest.approx(0.1)
    assert stats.spike_requests == 2
    assert stats.duration_s == pytest.approx(5.05)  # until the last request closed
    assert stats.aggregate_tok_s == pytest.approx((19 * 11 + 2) / 5.05)


def test_statistics_keep_the_values_they_rest_on_for_the_verdict():
    stats = StreamStats.of([record(100, [10]) for _ in range(5)])
    assert {name: len(values) for name, values in stats.samples.items()} == \
        {"failure_rate": 5, "tok_s_p50": 5, "ttft_p95_s": 5, "gap_p95_s": 5}
    assert "samples" not in stats.as_dict()  # the records are the report's evidence, not a copy


def test_failed_requests_carry_no_timing():
    stats = StreamStats.of([record(100, [10], ok=False)])
    assert stats.failure_rate == 1.0
    assert stats.ttft_p95_s is None
    assert stats.tok_s_p50 is None


INF = float("inf")


@pytest.mark.parametrize(("buckets", "q", "expected"), [
    ([(1, 2), (2, 6), (5, 10), (INF, 10)], 0.5, 1.75),    # rank 5: a quarter into (1, 2]
    ([(1, 2), (2, 6), (5, 10), (INF, 10)], 0.95, 4.625),  # rank 9.5: (2, 5], 3.5 of 4
    ([(10, 4), (20, 4)], 0.5, 5.0),                        # first bucket: from 0
    ([(1, 1), (INF, 3)], 0.95, 1.0),                       # +Inf: the highest finite bound
    ([(0.0, 3), (1, 3), (INF, 3)], 0.95, 0.0),             # all observations exactly 0
    ([(1, 0), (INF, 0)], 0.5, None),
])
def test_bucket_quantile_is_promql_histogram_quantile(buckets, q, expected):
    assert bucket_quantile(buckets, q) == (None if expected is None else pytest.approx(expected))


def exposition(count: int, total: float, cumulative: list[tuple[str, int]]) -> MetricsSnapshot:
    lines = [f'sglang:queue_time_seconds_bucket{{le="{le}",tp_rank="0"}} {n}' for le, n in cumulative]
    lines += [f'sglang:queue_time_seconds_count{{tp_rank="0"}} {count}',
              f'sglang:queue_time_seconds_sum{{tp_rank="0"}} {total}']
    return MetricsSnapshot.parse("# TYPE sglang:queue_time_seconds histogram\n" + "\n".join(lines) + "\n")


def test_histogram_delta_is_the_window_not_the_server_lifetime():
    before = exposition(2, 0.5, [("1.0", 2), ("10.0", 2), ("+Inf", 2)])
    after = exposition(6, 24.5, [("1.0", 3), ("10.0", 6), ("+Inf", 6)])
    delta = HistogramDelta.between(before, after)
    assert delta is not None and (delta.count, delta.total) == (4, 24.0)
    summary = delta.summary()
    assert summary["mean_s"] == 6.0
    assert summary["p50_s"] == pytest.approx(1 + 9 * (2 - 1) / 3)   # rank 2 of 4, in (1, 10]
    both = HistogramDelta.merged([delta, None, delta])
    assert both is not None and both.count == 8 and both.buckets[10.0] == 8
    assert HistogramDelta.between(after, before) is None            # a restart in between
    assert HistogramDelta.between(None, MetricsSnapshot.parse("")) is None  # not exported


def test_distributions_give_the_mean_and_asked_percentiles_of_every_figure():
    from pytest_glmperf.stats import distributions

    records = [record(ttft, [10, 30]) for ttft in (100, 200, 300, 400)] + [record(50, [10], ok=False)]
    found = distributions(records, (50, 99))
    assert found["ttft_s"] == {"n": 4, "mean": pytest.approx(0.25), "p50": pytest.approx(0.25),
                               "p99": pytest.approx(0.397)}
    assert found["itl_s"]["n"] == 8 and found["itl_s"]["mean"] == pytest.approx(0.02)  # every chunk gap pooled
    assert found["max_gap_s"]["p50"] == pytest.approx(0.03)
    assert found["tpot_s"]["mean"] == pytest.approx(0.02)  # (e2e - TTFT) / (3 tokens - 1)
