"""Capacity search: the settled-failure rule and bisection, on records with known timing."""

from pytest_glmperf.records import RequestRecord
from pytest_glmperf.search import LevelProgress, bisect_levels, max_requests, settled_failure
from pytest_glmperf.thresholds import Thresholds

S = 1_000_000_000


def finished(gap_s: float, e2e_s: float = 20.0) -> RequestRecord:
    return RequestRecord(request_id="r", kind="agent", send_ns=0, first_token_ns=1 * S,
                         chunk_ns=[1 * S, int((1 + gap_s) * S)], chunk_tokens=[1, 1], done_ns=int(e2e_s * S),
                         completion_tokens=2)


def probes(levels, best, start=None, expect=None):
    seen = []
    answer = bisect_levels(levels, lambda c: seen.append(c) or (best is not None and c <= best), start, expect)
    return answer, seen


def test_a_candidate_that_matches_its_reference_is_settled_in_two_probes():
    levels = [1, 2, 4, 8, 12]
    assert probes(levels, 4, start=4, expect=4) == (4, [4, 8])   # prod's answer, then the level above
    assert probes(levels, 12, start=4, expect=12) == (12, [12])
    assert probes(levels, None, start=4, expect=0) == (None, [1])  # prod had none usable
    for best in [None, *levels]:  # a candidate unlike its reference still gets the right answer
        for expect in [0, *levels]:
            assert probes(levels, best, start=4, expect=expect)[0] == best


def test_search_probes_top_then_required_then_top_of_what_remains():
    levels = [1, 2, 4, 8, 12]
    assert probes(levels, 4, start=4) == (4, [12, 4, 8])       # the field's hicache: one pass
    assert probes(levels, 12, start=4) == (12, [12])           # a server that holds the top
    assert probes(levels, 1, start=1) == (1, [12, 1, 8, 2])    # the field's mtp: one pass
    assert probes(levels, None, start=1) == (None, [12, 1])
    assert probes(levels, 2, start=4) == (2, [12, 4, 1, 2])


def test_search_is_always_right():
    levels = [1, 2, 4, 8, 12]
    for best in [None, *levels]:
        for start in [None, *levels]:
            answer, seen = probes(levels, best, start)
            assert answer == best
            assert len(seen) <= len(levels) and len(seen) == len(set(seen))


def test_bound_on_requests_uses_half_the_fastest_request():
    progress = LevelProgress(2, [finished(0.1, e2e_s=10.0)], [], now_ns=0, remaining_s=100.0, time_scale=1.0)
    assert max_requests(progress) == 1 + 0 + 2 * int(100 / 5.0 + 1)


def test_failure_settles_once_enough_requests_broke_the_gap_bar():
    bar = Thresholds()
    done = [finished(12.0) for _ in range(3)] + [finished(0.2) for _ in range(5)]
    far_from_end = LevelProgress(2, done, [], now_ns=0, remaining_s=200.0, time_scale=1.0)
    assert settled_failure(far_from_end, bar) is None  # up to 8 + 2*21 requests: 3 broken is not yet >5 %
    near_end = LevelProgress(2, done, [], now_ns=0, remaining_s=5.0, time_scale=1.0)
    assert "already broke max_gap_p95" in settled_failure(near_end, bar)


def test_a_stall_still_running_counts_as_broken():
    stalled = [RequestRecord(request_id="s", kind="agent", send_ns=0, first_token_ns=S, chunk_ns=[S],
                             chunk_tokens=[1]) for _ in range(2)]
    progress = LevelProgress(1, [finished(0.1)], stalled, now_ns=11 * S, remaining_s=0.0, time_scale=1.0)
    assert settled_failure(progress, Thresholds()) == "2 of at most 4 requests already broke max_gap_p95"
    not_yet = LevelProgress(1, [finished(0.1)], stalled, now_ns=8 * S, remaining_s=0.0, time_scale=1.0)
    assert settled_failure(not_yet, Thresholds()) is None


def test_a_pass_is_never_settled_early():
    done = [finished(0.2) for _ in range(50)]
    assert settled_failure(LevelProgress(4, done, [], 0, 0.0, 1.0), Thresholds()) is None
