"""Percentiles and per-level statistics on records whose timing is known exactly."""

import pytest

from pytest_glmperf.records import FAILED, RequestRecord
from pytest_glmperf.stats import LevelStats, StreamStats, percentile

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


def test_low_confidence_flagged_for_small_samples():
    stats = StreamStats.of([record(100, [10]) for _ in range(5)])
    assert any("P95 from 5 requests" in note for note in stats.notes)
    assert not StreamStats.of([record(100, [10]) for _ in range(25)]).notes


def test_failed_requests_carry_no_timing():
    stats = StreamStats.of([record(100, [10], ok=False)])
    assert stats.failure_rate == 1.0
    assert stats.ttft_p95_s is None
    assert stats.tok_s_p50 is None
