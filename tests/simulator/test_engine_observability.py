"""SGLang's pool, queue-time, retraction and speculative gauges as the engine model keeps them."""

from __future__ import annotations

import pytest

from pytest_glmperf.simulator.config import parse_server_args
from pytest_glmperf.simulator.engine import Engine
from tests.simulator.test_engine import HICACHE, MTP, SMALL_POOL, request, run


def test_queue_time_runs_from_arrival_to_the_first_forward_batch() -> None:
    engine = Engine(parse_server_args(HICACHE + SMALL_POOL))
    engine.add_request(request("a", 100_000, 50, ctx=1))
    first = engine.step()
    assert first.queue_times_s == [0.0]          # admitted by the step it arrived before
    engine.add_request(request("b", 100_000, 10, ctx=2))   # does not fit beside a
    arrived = engine.now
    steps = run(engine)
    waits = [(s.start_s, s.queue_times_s) for s in steps if s.queue_times_s]
    a_done = max(s.end_s for s in steps for e in s.emissions if e.rid == "a" and e.finished)
    assert len(waits) == 1                       # one observation, when b's first chunk runs
    start, [waited] = waits[0]
    assert start >= a_done and waited == pytest.approx(start - arrived)


def test_a_retracted_request_is_not_observed_again() -> None:
    # set_forward_entry_time observes once: b's second wait, after its retraction, is not.
    engine = Engine(parse_server_args(HICACHE + SMALL_POOL))
    observed = []
    for rid in ("a", "b"):   # together they outgrow the pool: 120k prompts + 2 x 40k outputs
        engine.add_request(request(rid, 60_000, 40_000))
        observed += engine.step().queue_times_s
    while engine.counters.retracted_requests == 0:
        observed += engine.step().queue_times_s
    b = engine.waiting[0]
    assert b.rid == "b"
    generated = b.generated
    c = engine.counters
    assert (c.retracted_input_tokens, c.retracted_output_tokens) == (60_000, generated)
    observed += [t for s in run(engine) for t in s.queue_times_s]
    assert len(observed) == 2 and engine.counters.requests == 2


def test_pool_gauges_split_the_device_pool_into_free_cached_and_locked() -> None:
    engine = Engine(parse_server_args(HICACHE))
    capacity = engine.config.device_pool_tokens
    engine.add_request(request("a", 100_032, 200, ctx=1))     # 1,563 full pages
    while not engine.running:                    # a's chunked prefill
        engine.step()
    engine.add_request(request("b", 64_000, 10, ctx=1))       # a prefix of a's context
    engine.step()                                # b's prefill log: a still running
    g = engine.gauges
    assert g.kv_available_tokens + g.kv_evictable_tokens + g.num_used_tokens == capacity
    assert g.kv_evictable_tokens == 0            # a's pages are locked by a and b
    assert g.num_used_tokens >= 100_032
    run(engine)
    engine.advance_to(engine.now + 30)           # the idle log refreshes the pool gauges
    # Finished: the prompt and the answer's whole pages stay cached, unlocked, evictable.
    assert g.kv_evictable_tokens == (100_032 + 199) // 64 * 64
    assert g.num_used_tokens == 0
    assert g.kv_available_tokens == capacity - g.kv_evictable_tokens


def test_decode_log_reports_the_batch_sequence_lengths() -> None:
    engine = Engine(parse_server_args(HICACHE))
    engine.add_request(request("a", 100, 200))
    engine.add_request(request("b", 300, 200))
    engine.step()                                # both prefill, one token each
    for _ in range(40):
        engine.step()
    # 40 decode steps later each has its prompt + 41 tokens.
    assert engine.gauges.decode_sum_seq_lens == 100 + 41 + 300 + 41


def test_spec_accept_rate_is_accepted_over_proposed_drafts() -> None:
    engine = Engine(parse_server_args(MTP))
    engine.add_request(request("a", 1000, 4000))
    engine.step()
    for _ in range(40):
        engine.step()
    g = engine.gauges
    assert 1 < g.spec_accept_length <= 4
    # Three drafts proposed per verify (draft tokens 4, one of them the bonus token).
    assert g.spec_accept_rate == pytest.approx((g.spec_accept_length - 1) / 3)
