"""Stall attribution lines a long chunk gap up with prefills, gauges and load-back at that moment."""

import pytest

from pytest_glmperf.attribution import attribute_stalls
from pytest_glmperf.records import RequestRecord

S = 1_000_000_000
START = 5 * S  # the run started 5 s after the clock's origin


def at(seconds: float) -> int:
    return START + int(seconds * S)


def stream(name: str, kind: str, sent: float, first: float | None, chunks: list[float], *, prompt: int | None = None,
           cached: int | None = None, scale: float = 1.0) -> RequestRecord:
    return RequestRecord(request_id=name, kind=kind, scenario="mixed", time_scale=scale, send_ns=at(sent),
                         first_token_ns=at(first) if first is not None else None,
                         chunk_ns=[at(t) for t in chunks], chunk_tokens=[1] * len(chunks),
                         done_ns=at(chunks[-1]) if chunks else None, prompt_tokens=prompt, cached_tokens=cached,
                         completion_tokens=len(chunks))


def workload() -> list[RequestRecord]:
    steady = [0.5 + 0.1 * i for i in range(100)]  # 0.5 .. 10.4
    stalled = [*steady, 22.4, 22.5, 22.6]         # silent from 10.4 to 22.4: 12 s
    return [
        stream("decode-0", "decode", 0.0, 0.5, stalled, prompt=100_000, cached=99_000),
        stream("decode-1", "decode", 0.0, 0.5, steady, prompt=100_000),
        stream("spike-1", "spike", 9.0, 30.0, [30.0, 30.1], prompt=100_000),
        stream("revisit-1", "revisit", 11.0, 14.0, [14.0, 14.1], prompt=100_000, cached=60_000),
        stream("spike-0", "spike", 1.0, 5.0, [5.0, 5.1], prompt=80_000),     # prefill ended before the gap
        stream("pending", "spike", 20.0, None, [], prompt=None),              # never got a token
    ]


GAUGES = {
    "num_queue_reqs": [(t * 1.5, 3.0 if 10 <= t * 1.5 <= 20 else 0.0) for t in range(20)],
    "num_running_reqs": [(t * 1.5, 4.0) for t in range(20)],
    "load_back_tokens": [(t * 1.5, 0.0 if t * 1.5 < 12 else 60_000.0) for t in range(20)],
    "hicache_host_used_tokens": [(t * 1.5, 500_000.0) for t in range(20)],
}


def test_a_stall_names_the_prefills_gauges_and_load_back_of_its_moment():
    stalls = attribute_stalls(workload(), GAUGES, bar_s=8.0, run_start_ns=START)
    assert [s["request_id"] for s in stalls] == ["decode-0"]
    stall = stalls[0]
    assert stall["gap_start_s"] == pytest.approx(10.4) and stall["gap_end_s"] == pytest.approx(22.4)
    assert stall["gap_s"] == pytest.approx(12.0) and stall["gaps_above_bar"] == 1
    names = [p["request_id"] for p in stall["in_prefill"]]
    assert names == ["spike-1", "revisit-1", "pending"]  # the biggest uncached prefill first
    spike = stall["in_prefill"][0]
    assert spike["prompt_tokens"] == 100_000 and spike["new_tokens"] == 100_000 and spike["kind"] == "spike"
    assert spike["overlap_s"] == pytest.approx(12.0)
    assert stall["in_prefill"][1]["new_tokens"] == 40_000
    assert stall["in_prefill"][2]["first_token_s"] is None
    queue = stall["gauges"]["num_queue_reqs"]
    assert queue["nearest_t_s"] == pytest.approx(10.5) and queue["nearest"] == 3.0 and queue["max_during"] == 3.0
    assert stall["load_back"] == {"load_back_tokens": 60_000.0, "hicache_host_used_tokens": 0.0}
    explain = stall["explain"]
    assert explain.startswith("decode request decode-0 stopped writing for 12.0 s (10.4-22.4 s) while 3 other")
    for words in ("spike spike-1: 100,000 prompt tokens", "revisit revisit-1: 100,000 prompt tokens, 60,000 cached",
                  "3 queued and 4 running", "60,000 tokens were loaded back from host memory"):
        assert words in explain


def test_gaps_under_the_bar_are_not_reported():
    assert attribute_stalls(workload(), GAUGES, bar_s=12.5, run_start_ns=START) == []


def test_a_stall_with_no_prefill_beside_it_says_so():
    lonely = [stream("decode-0", "decode", 0.0, 0.5, [0.5, 1.0, 11.0, 11.5])]
    stall = attribute_stalls(lonely, {}, bar_s=8.0, run_start_ns=START)[0]
    assert stall["in_prefill"] == [] and stall["gauges"] == {} and stall["load_back"] == {}
    assert stall["explain"] == ("decode request decode-0 stopped writing for 10.0 s (1.0-11.0 s) while no other "
                                "request was in prefill.")


def test_simulator_time_scale_gives_model_seconds():
    fast = stream("decode-0", "decode", 0.0, 0.05, [0.05, 0.1, 1.3], scale=10.0)
    stall = attribute_stalls([fast], {}, bar_s=8.0, run_start_ns=START)[0]
    assert stall["gap_s"] == pytest.approx(12.0) and stall["gap_start_s"] == pytest.approx(1.0)


def test_a_stall_reads_in_one_line_where_a_reviewer_looks_first():
    from pytest_glmperf.attribution import stall_line

    [stall] = attribute_stalls(workload(), GAUGES, bar_s=8.0, run_start_ns=START)
    assert stall_line(stall) == ("12.0 s at 10 s (decode decode-0): 3 prefills of up to 100k tokens in flight, "
                                 "queue 3, 60,000 tokens loaded back")
