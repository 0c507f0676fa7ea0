"""Hand-checked behaviour of the engine model (pytest_glmperf.simulator.engine)."""

from __future__ import annotations

import itertools

import pytest

from pytest_glmperf.simulator.config import parse_server_args
from pytest_glmperf.simulator.costs import CostModel, Segment
from pytest_glmperf.simulator.engine import Engine, QueueFullError
from pytest_glmperf.simulator.hardware import GLM51_FP8, H200X8
from pytest_glmperf.simulator.types import SimRequest, StepResult

HICACHE = ["--tp-size", "8", "--enable-hierarchical-cache", "--hicache-size", "200",
           "--hicache-io-backend", "direct", "--hicache-mem-layout", "page_first",
           "--hicache-write-policy", "write_through", "--mem-fraction-static", "0.85"]
MTP = ["--tp-size", "8", "--speculative-algorithm", "EAGLE", "--speculative-num-steps", "3",
       "--speculative-eagle-topk", "1", "--speculative-num-draft-tokens", "4"]
# --mem-fraction-static 0.71 leaves ~8.3 GiB per GPU for KV: ~145k FP8 tokens (~124k with
# the EAGLE draft's extra layer), one 100k context at a time.
SMALL_POOL = ["--mem-fraction-static", "0.71"]


def request(rid: str, prompt: int, new: int, ctx: int | None = None) -> SimRequest:
    """A request whose full pages are keyed by context ``ctx`` (None: uncacheable)."""
    keys = [] if ctx is None else [hash((ctx, i)) for i in range(prompt // 64)]
    return SimRequest(rid=rid, prompt_tokens=prompt, max_new_tokens=new, page_keys=keys)


def run(engine: Engine, until: str | None = None) -> list[StepResult]:
    """Step until idle (or until request ``until`` finishes); return the steps. When
    nothing can run, the clock moves to ``wake_at()`` (an L3 prefetch may end then)."""
    steps = []
    while engine.has_work():
        step = engine.step()
        if step.duration_s <= 0 and not step.emissions:
            wake = engine.wake_at()
            assert wake is not None, "the engine has work but nothing can run"
            engine.advance_to(wake)
        steps.append(step)
        if until and any(e.rid == until and e.finished for e in step.emissions):
            break
    return steps


def emissions_of(steps: list[StepResult], rid: str) -> list[tuple[float, int]]:
    return [(s.end_s, e.tokens) for s in steps for e in s.emissions if e.rid == rid]


def start_decoding(engine: Engine, rid: str = "a") -> list[StepResult]:
    """Admit a short request and run it until it has produced a few tokens."""
    engine.add_request(request(rid, 1000, 2000))
    return [engine.step() for _ in range(5)]


# ---- chunked prefill stalls decode ----------------------------------------------------

def test_100k_prefill_freezes_decode_for_every_chunk_with_eagle() -> None:
    engine = Engine(parse_server_args(MTP))
    before = start_decoding(engine)
    engine.add_request(request("b", 100_000, 64))
    steps = run(engine, until="b")
    prefill = [s for s in steps if s.kind == "prefill"]
    # 100,000 = 12 x 8192 + 1,696: thirteen chunks, back to back, no decode in between.
    assert [s.prefill_tokens for s in prefill] == [8192] * 12 + [1696]
    assert steps[:13] == prefill
    expected = sum(engine.cost.prefill_time([Segment(i * 8192, n)], with_draft=True)
                   for i, n in enumerate([8192] * 12 + [1696]))
    a = emissions_of(before + steps, "a")
    gaps = [t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(a)]
    # a's stall is the 13 prefill steps plus its own next verify step.
    verify = steps[13].duration_s
    assert max(gaps) == pytest.approx(expected + verify)
    assert 9.0 < expected < 14.0  # the field report's ~12 s freeze


def test_100k_prefill_lets_decode_ride_along_with_mixed_chunk() -> None:
    engine = Engine(parse_server_args([*HICACHE, "--enable-mixed-chunk"]))
    before = start_decoding(engine)
    engine.add_request(request("b", 100_000, 64))
    steps = run(engine, until="b")
    mixed = [s for s in steps if s.prefill_tokens]
    assert all(s.kind == "mixed" and s.decode_requests == 1 for s in mixed)
    # Mixed chunk: the chunk budget gives one token per running request to decode.
    assert [s.prefill_tokens for s in mixed][:12] == [8128] * 12
    a = emissions_of(before + steps, "a")
    gaps = [t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(a)]
    assert max(gaps) == pytest.approx(max(s.duration_s for s in mixed))
    assert max(gaps) < 2.0


def test_without_mixed_chunk_only_fresh_prompts_freeze_hicache_streams() -> None:
    # SGLang's own rule without --enable-mixed-chunk (the field's compose flags): a fresh
    # 100k prompt stops every decoding stream past the capacity bar's 8 s, a prompt the
    # server has seen costs it one short step (docs/simulator.md: the field's capacity
    # verdicts need exactly this).
    engine = Engine(parse_server_args(HICACHE + SMALL_POOL))
    for rid, ctx in (("earlier", 7), ("other", 6)):  # context 7 ends up on host
        engine.add_request(request(rid, 100_000, 1, ctx=ctx))
        run(engine)

    last = start_decoding(engine)[-1:]

    def longest_gap_of_a_while(rid: str, ctx: int) -> float:
        engine.add_request(request(rid, 100_000, 64, ctx=ctx))
        steps = last + run(engine, until=rid)
        last[:] = steps[-1:]
        a = emissions_of(steps, "a")
        return max(t2 - t1 for (t1, _), (t2, _) in itertools.pairwise(a))

    seen = longest_gap_of_a_while("seen", 7)
    fresh = longest_gap_of_a_while("fresh", 8)
    assert engine.counters.load_back_tokens > 50_000
    assert seen < 1.0  # one load-back step (~0.26 s per 100k over the direct io backend)
    assert fresh > 8.0
    assert fresh == pytest.approx(sum(
        engine.cost.prefill_time([Segment(i * 8192, n)]) for i, n in
        enumerate([8192] * 12 + [1696])), rel=0.05)


# ---- HiCache: eviction to host and load-back ------------------------------------------

def context_1_on_host(*flags: str) -> Engine:
    """A small-pool HiCache engine that served context 1, then context 2, which pushed
    most of context 1 to host."""
    engine = Engine(parse_server_args(HICACHE + SMALL_POOL + list(flags)))
    for rid, ctx in (("first", 1), ("other", 2)):
        engine.add_request(request(rid, 100_000, 8, ctx=ctx))
        run(engine)
    return engine


def revisit_after_eviction(*flags: str) -> tuple[Engine, list[StepResult]]:
    """The steps of a revisit of context 1 once it is on host."""
    engine = context_1_on_host(*flags)
    engine.add_request(request("revisit", 100_000, 8, ctx=1))
    return engine, run(engine)


def test_revisit_after_eviction_loads_back_from_host() -> None:
    engine, steps = revisit_after_eviction()
    pool = engine.config.device_pool_tokens
    assert 100_000 < pool < 200_000  # room for one 100k context at a time
    # context 2 evicted context 1 to host
    assert engine.counters.evicted_tokens >= 100_000 // 64 * 64 - pool + 100_000 // 2
    first = next(e for s in steps for e in s.emissions if e.first)
    assert first.cached_tokens == 99_968  # 1562 full pages; the last token is recomputed
    c = engine.counters
    # The head of context 1 stayed on device (LRU evicts leaf pages first), the rest
    # came back from host; every host-hit token was loaded back.
    assert c.cached_tokens_device + c.cached_tokens_host == 99_968
    assert c.cached_tokens_host > 50_000
    assert c.load_back_tokens == c.cached_tokens_host
    # The H2D copy (61,464 B per token per rank; the direct io path uses 0.85 of a 55.5 GB/s
    # link shared by two GPUs) delays the first step.
    load = c.cached_tokens_host * 61_464 / (55.5e9 * 0.85 / 2)
    assert steps[0].duration_s >= load > 0.1
    assert steps[0].prefill_tokens == 32


@pytest.mark.parametrize("io_backend", ["direct", "kernel"])
def test_direct_io_launches_after_its_load_kernel_io_overlaps_it(io_backend: str) -> None:
    # bench/hicache_direct_io.py on an H200: SGLang's direct ops return only when their
    # copies are all but done (issued in 0.127 s of 0.128 s), and start_loading runs on the
    # scheduler thread as it forms the batch, so the revisit's forward launches after its
    # load. The kernel ops are issued in 2 ms; each layer waits on the GPU for its copies.
    engine, steps = revisit_after_eviction("--hicache-io-backend", io_backend)
    load = engine.cost.load_back_time(engine.counters.cached_tokens_host, 61_464, io_backend)
    forward = engine.cost.prefill_time([Segment(99_968, 32)])
    assert forward > 0.02  # a 32-token forward still reads the weights
    after_load = forward if io_backend == "direct" else forward / 78  # (the last layer)
    assert steps[0].duration_s == pytest.approx(load + after_load)


def test_a_queued_host_hit_loads_back_while_the_previous_batch_runs() -> None:
    # SGLang's overlap loop forms the next batch while the last one runs on the GPU: a
    # request that waited in the queue starts loading then, and the last decode step hides
    # that much of its load (one that arrives during a step loads from its arrival).
    engine = context_1_on_host("--max-running-requests", "1")
    engine.add_request(request("a", 1_000, 4))    # holds the only running slot
    engine.add_request(request("revisit", 100_000, 8, ctx=1))  # waits behind it
    steps = run(engine)
    i = next(i for i, s in enumerate(steps) if s.kind == "prefill" and s.prefill_tokens == 32)
    assert steps[i - 1].kind == "decode"          # the step in which "a" finished
    load = engine.cost.load_back_time(engine.counters.cached_tokens_host, 61_464, "direct")
    forward = engine.cost.prefill_time([Segment(99_968, 32)])
    assert steps[i].duration_s == pytest.approx(load - steps[i - 1].duration_s + forward)


def test_load_back_rate_is_the_io_paths_share_of_the_pcie_uplink() -> None:
    """Hand-checked against bench/hicache_direct_io.py on one H200: a 100.8k-token FP8 hit
    (6.2 GB) took 0.128-0.137 s through the direct path alone and 0.240-0.265 s with two
    loaders on the link; the kernel path 0.448-0.480 s, latency-bound."""
    hit = (100_800, 61_464)
    alone, tp8 = CostModel(H200X8, GLM51_FP8, tp=1), CostModel(H200X8, GLM51_FP8, tp=8)
    assert alone.load_back_time(*hit, "direct") == pytest.approx(6_195_571_200 / 47.175e9)
    assert tp8.load_back_time(*hit, "direct") == pytest.approx(6_195_571_200 / 23.5875e9)
    for cost in (alone, tp8):  # the cap binds before the link does
        assert cost.load_back_time(*hit, "kernel") == pytest.approx(6_195_571_200 / 13.3e9)


def test_decode_floor_flag_sets_the_per_layer_latency_floor() -> None:
    """--sim-decode-floor-us moves every decode step by the floor difference x 78 layers."""
    def decode_step(*flags: str) -> float:
        engine = Engine(parse_server_args(HICACHE + list(flags)))
        return start_decoding(engine)[-1].duration_s

    default, faster = decode_step(), decode_step("--sim-decode-floor-us", "170")
    assert default - faster == pytest.approx(80e-6 * 78, rel=1e-6)


def test_without_hicache_an_evicted_prefix_is_recomputed() -> None:
    engine = Engine(parse_server_args(MTP + SMALL_POOL))
    for rid, ctx in (("first", 1), ("other", 2), ("revisit", 1)):
        engine.add_request(request(rid, 100_000, 8, ctx=ctx))
        steps = run(engine)
    assert engine.counters.cached_tokens_host == 0
    assert engine.counters.load_back_tokens == 0
    first = next(e for s in steps for e in s.emissions if e.first)
    computed = sum(s.prefill_tokens for s in steps)
    # What context 2 pushed out of the pool is gone: recomputed, not loaded.
    assert computed + first.cached_tokens == 100_000
    assert computed > 50_000


def test_a_finished_answer_stays_cached_as_an_evictable_leaf() -> None:
    # cache_finished_req: prompt + output (up to the last token with KV) go into the tree in
    # whole pages; only the partial tail is freed. Write-through backs the answer up too.
    engine = Engine(parse_server_args(HICACHE))
    engine.add_request(request("a", 1000, 200, ctx=1))   # 15 full prompt pages
    run(engine)
    cache = engine.cache
    assert cache.dev_pages == (1000 + 200 - 1) // 64 == 18
    assert cache.request_tokens == 0 and cache.locked_dev_pages == 0
    assert cache.evictable_tokens == 18 * 64
    assert cache.host_used_tokens == 18 * 64
    # The answer is the LRU leaf: evicted before the prompt it hangs from.
    cache.ensure_free(cache.free_tokens + 3 * 64)
    assert cache.evicted_tokens == 3 * 64
    assert cache.match(request("b", 1000, 8, ctx=1).page_keys, 15).device_pages == 15


def test_device_hit_skips_the_cached_prefix() -> None:
    engine = Engine(parse_server_args(HICACHE))
    engine.add_request(request("a", 50_000, 4, ctx=7))
    run(engine)
    engine.add_request(request("b", 50_000, 4, ctx=7))
    steps = run(engine)
    assert sum(s.prefill_tokens for s in steps) == 50_000 - 49_984
    assert engine.counters.cached_tokens_device == 49_984


# ---- speculative decoding ------------------------------------------------------------

def test_speculative_steps_carry_several_tokens() -> None:
    engine = Engine(parse_server_args(MTP), seed=3)
    engine.add_request(request("a", 1000, 2000))
    steps = run(engine)
    tokens = [t for _, t in emissions_of(steps, "a")]
    assert tokens[0] == 1 and sum(tokens) == 2000
    assert set(tokens[1:]) <= {1, 2, 3, 4} and max(tokens) == 4
    mean = (sum(tokens) - 1) / (len(tokens) - 1)
    assert mean == pytest.approx(engine.spec.mean_accept_length, rel=0.08)
    assert engine.counters.spec_verify_calls == len(tokens) - 1
    assert engine.gauges.spec_accept_length > 1.5
    assert engine.internal_state()["avg_spec_accept_length"] == pytest.approx(mean, rel=0.01)


def mean_accept(steps: list[StepResult], rid: str) -> float:
    """Tokens per verify step of ``rid`` after its first token."""
    tokens = [t for _, t in emissions_of(steps, rid)][1:]
    return sum(tokens) / len(tokens)


def accept_length(p: float) -> float:
    return 1 + p + p**2 + p**3   # (3, 1, 4): three drafts and the bonus token


@pytest.mark.parametrize("draft_indexer", ["stale", "restored"])
def test_load_back_leaves_the_eagle_draft_indexer_stale(draft_indexer: str) -> None:
    # The June image restores the draft's MLA latent on a load-back but not its DSA
    # indexer K (sglang#28895): the draft picks its sparse keys from stale index K over
    # the loaded share of the prompt, and acceptance drops until those pages are recomputed.
    flags = HICACHE + MTP[2:] + SMALL_POOL + ["--sim-hicache-draft-indexer", draft_indexer]
    engine = Engine(parse_server_args(flags), seed=5)
    engine.add_request(request("first", 100_000, 8, ctx=1))
    run(engine)
    engine.add_request(request("other", 100_000, 8, ctx=2))  # evicts context 1 to host
    run(engine)
    engine.add_request(request("revisit", 100_000, 1500, ctx=1))
    revisit = run(engine)
    loaded = engine.counters.load_back_tokens
    assert loaded > 50_000
    engine.add_request(request("again", 100_000, 1500, ctx=1))  # a device hit, same pages
    again = run(engine)
    engine.add_request(request("fresh", 1000, 1500))            # nothing loaded back
    fresh = run(engine)

    share = loaded // 64 * 64 / 100_000
    stale = accept_length(0.87 * (1 - share) + 0.37 * share)
    expected = stale if draft_indexer == "stale" else accept_length(0.87)
    assert mean_accept(revisit, "revisit") == pytest.approx(expected, rel=0.08)
    assert mean_accept(again, "again") == pytest.approx(expected, rel=0.08)
    assert mean_accept(fresh, "fresh") == pytest.approx(accept_length(0.87), rel=0.08)
    if draft_indexer == "stale":
        assert stale < 2.6  # vs 3.29: the measured collapse (1.59 of 4.49 at 5 drafts)


# ---- admission -----------------------------------------------------------------------

def test_kv_admission_queues_a_request_that_does_not_fit() -> None:
    engine = Engine(parse_server_args(HICACHE + SMALL_POOL))
    engine.add_request(request("a", 100_000, 200, ctx=1))
    engine.step()
    engine.add_request(request("b", 100_000, 10, ctx=2))
    steps = run(engine, until="a")
    assert engine.gauges.num_queue_reqs == 1
    assert not any(e.rid == "b" for s in steps for e in s.emissions)
    rest = run(engine)
    assert rest[0].prefill_tokens == 8192  # b starts once a has finished and left
    assert any(e.rid == "b" and e.finished for s in rest for e in s.emissions)


def test_admission_counts_only_new_token_ratio_of_running_outputs() -> None:
    engine = Engine(parse_server_args(HICACHE + SMALL_POOL))
    cfg = engine.config
    assert (cfg.init_new_token_ratio, cfg.min_new_token_ratio) == (0.7, pytest.approx(0.098))
    engine.add_request(request("a", 1000, 50_000))
    steps = [engine.step() for _ in range(6)]  # a's prefill, then five decode steps
    assert engine.new_token_ratio == pytest.approx(0.7 - 5 * cfg.new_token_ratio_decay)
    # b fits beside a only because a is expected to claim ~0.7 x 4,096 more slots, not all
    # 4,096 (SGLang reserves everything only on its ignore_eos path without radix cache).
    used = 1000 + 6
    room_at_ratio_1 = engine.cache.capacity - used - 4096
    b_need = room_at_ratio_1 + 1000
    engine.add_request(request("b", b_need - 8 - 64, 8))
    steps += run(engine, until="b")
    assert any(e.rid == "b" and e.first for s in steps for e in s.emissions)
    assert engine._by_rid["a"].generated < 50_000  # admitted while a was still decoding
    assert engine.gauges.new_token_ratio > 0.6
    run(engine)
    engine.step()  # idle: the ratio goes back to its initial value
    assert engine.new_token_ratio == 0.7


def test_a_request_that_did_not_fit_waits_for_a_running_one_to_finish() -> None:
    """SGLang's batch_is_full latch: after NO_TOKEN nothing is admitted until a running
    request leaves, even once the decaying new_token_ratio would make room sooner."""
    engine = Engine(parse_server_args(HICACHE + SMALL_POOL))
    decay = engine.config.new_token_ratio_decay
    engine.add_request(request("a", 1000, 50_000))
    engine.add_request(request("c", 1000, 40))
    steps = [engine.step()]                   # a and c prefill together
    ratio = engine.new_token_ratio
    used = engine.cache.capacity - engine.cache.free_tokens - engine.cache.evictable_tokens
    reserved = (4096 + 39) * ratio            # what a and c are expected to still claim
    room = engine.cache.capacity - used - reserved
    # b misses by 10 slots now; the ratio's decay frees ~4 slots a step (a and c use 2),
    # so the budget alone would admit it after ~5 decode steps, long before c finishes.
    b_max_new = 8
    engine.add_request(request("b", int(room) + 10 - b_max_new - 64, b_max_new))
    steps += run(engine, until="b")
    c_done = [s.end_s for s in steps for e in s.emissions if e.rid == "c" and e.finished]
    b_first = [s.end_s for s in steps for e in s.emissions if e.rid == "b" and e.first]
    assert engine.new_token_ratio < ratio - 30 * decay  # b would have fitted long before
    assert c_done and b_first[0] > c_done[0]
    prefills = [s for s in steps if s.prefill_tokens]
    assert prefills[1].start_s >= c_done[0]   # b's first chunk is the step after c left


def test_retraction_requeues_the_youngest_request_and_reestimates_the_ratio() -> None:
    engine = Engine(parse_server_args(HICACHE + SMALL_POOL))
    for rid in ("a", "b"):  # together they outgrow the pool: 120k prompts + 2 x 40k outputs
        engine.add_request(request(rid, 60_000, 40_000))
        engine.step()
    while engine.counters.retracted_requests == 0:
        engine.step()
    a = engine._by_rid["a"]
    # b's prefill ran before either decoded (prefill-first), so both had decoded the same
    # number of tokens: the tie goes to the newest, the last of SGLang's stable sort.
    assert [r.rid for r in engine.running] == ["a"] and engine.waiting[0].rid == "b"
    assert engine.waiting[0].generated == a.generated - 1
    # retract_decode, before the step's own token: (tokens decoded by the requests kept +
    # 20 each) / (their max_new_tokens + 1).
    assert engine.new_token_ratio == pytest.approx((a.generated - 1 + 20) / 40_001)
    # The sglang:num_retracted_reqs gauge shows it from the next log tick (every 40 decode
    # steps) to the one after, which counts no retraction.
    seen = [engine.gauges.num_retracted_reqs]
    for _ in range(80):
        engine.step()
        seen.append(engine.gauges.num_retracted_reqs)
    assert 1 in seen and set(seen) == {0, 1} and seen[-1] == 0
    run(engine)  # b resumes (re-prefilling prompt + output) once a has finished
    assert engine.counters.generation_tokens == 80_000 and engine.counters.requests == 2


def test_request_over_the_context_length_is_refused() -> None:
    engine = Engine(parse_server_args(MTP))
    with pytest.raises(ValueError, match="maximum context length of 202752"):
        engine.add_request(request("a", 200_000, 4096))


def test_queue_limit_raises_queue_full() -> None:
    engine = Engine(parse_server_args([*MTP, "--max-queued-requests", "1"]))
    engine.add_request(request("a", 10, 4))
    with pytest.raises(QueueFullError):
        engine.add_request(request("b", 10, 4))


def test_abort_frees_the_kv_of_a_running_request() -> None:
    engine = Engine(parse_server_args(HICACHE))
    start_decoding(engine)
    used = engine.cache.capacity - engine.cache.free_tokens
    assert used > 1000
    engine.abort("a")
    assert not engine.has_work()
    assert engine.cache.request_tokens == 0
    assert engine.counters.aborted_requests == 1


# ---- queue order (--schedule-policy) and batch input (--max-prefill-tokens) -------------

def first_token_order(flags: list[str], requests: list[SimRequest],
                      warm: tuple[SimRequest, ...] = ()) -> list[str]:
    """Request ids in the order their first tokens come out, on a fresh engine."""
    engine = Engine(parse_server_args(HICACHE + flags))
    for req in warm:
        engine.add_request(req)
        run(engine)
    for req in requests:
        engine.add_request(req)
    return [e.rid for s in run(engine) for e in s.emissions if e.first]


def test_lpm_serves_the_longest_cached_prefix_first() -> None:
    queue = [request("fresh", 20_000, 4, ctx=1), request("cached", 20_000, 4, ctx=2)]
    warm = (request("warm", 20_000, 1, ctx=2),)
    assert first_token_order([], queue, warm) == ["fresh", "cached"]
    assert first_token_order(["--schedule-policy", "lpm"], queue, warm) == ["cached", "fresh"]


def test_lpm_holds_back_a_request_sharing_a_prefix_with_one_ahead() -> None:
    """In-batch prefix caching: y (same context as x) is not prefilled beside x but in the
    next batch, on x's cache; with fcfs both compute the whole prompt."""
    def first_tokens(flags: list[str]) -> list[tuple[str, int]]:
        engine = Engine(parse_server_args([*HICACHE, "--max-prefill-tokens", "6500", *flags]))
        for rid, ctx in (("x", 5), ("y", 5), ("z", 6)):
            engine.add_request(request(rid, 3_000, 2, ctx=ctx))
        return [(e.rid, e.cached_tokens) for s in run(engine) for e in s.emissions if e.first]

    assert first_tokens([]) == [("x", 0), ("y", 0), ("z", 0)]
    assert first_tokens(["--schedule-policy", "lpm"]) == [("x", 0), ("z", 0), ("y", 2944)]


def test_lof_serves_the_longest_output_first() -> None:
    queue = [request("short", 20_000, 8, ctx=1), request("long", 20_000, 800, ctx=2)]
    assert first_token_order(["--schedule-policy", "lof"], queue) == ["long", "short"]


def test_unmodelled_policies_run_as_fcfs_and_say_so() -> None:
    config = parse_server_args(["--schedule-policy", "dfs-weight"])
    assert config.unmodelled_args == ("--schedule-policy", "dfs-weight")
    queue = [request("a", 20_000, 4, ctx=1), request("b", 20_000, 4, ctx=2)]
    assert first_token_order(["--schedule-policy", "dfs-weight"], queue) == ["a", "b"]


def test_max_prefill_tokens_stops_adding_requests_to_a_batch() -> None:
    def first_steps(flags: list[str]) -> list[int]:
        engine = Engine(parse_server_args(HICACHE + flags))
        for rid, ctx in (("a", 1), ("b", 2)):
            engine.add_request(request(rid, 3_000, 2, ctx=ctx))
        return [i for i, s in enumerate(run(engine)) for e in s.emissions if e.first]

    assert first_steps([]) == [0, 0]                          # 6,000 < 8,192: one batch
    assert first_steps(["--max-prefill-tokens", "4096"]) == [0, 1]   # 3,000 + 3,000 > 4,096


# ---- cache flush and gauges ----------------------------------------------------------

def test_flush_cache_refuses_while_busy_and_empties_both_tiers_when_idle() -> None:
    engine = Engine(parse_server_args(HICACHE))
    engine.add_request(request("a", 10_000, 4, ctx=1))
    engine.step()
    assert engine.flush_cache() is False
    run(engine)
    assert engine.cache.host_used_tokens > 0
    assert engine.flush_cache() is True
    assert engine.cache.host_used_tokens == 0 and engine.cache.dev_pages == 0
    assert engine.cache.free_tokens == engine.cache.capacity


def test_gen_throughput_refreshes_every_40_decode_steps_and_zeroes_when_idle() -> None:
    engine = Engine(parse_server_args(HICACHE))
    engine.add_request(request("a", 100, 200))
    engine.step()  # prefill
    decode = [engine.step() for _ in range(39)]
    assert engine.gauges.gen_throughput == 0.0
    decode.append(engine.step())
    assert engine.gauges.gen_throughput == pytest.approx(40 / engine.now)
    run(engine)
    end = engine.now
    # A short pause leaves the gauges as last logged (running 1, the last window's rate);
    # SGLang's idle loop logs once 30 s have passed since the last log.
    engine.advance_to(end + 5)
    assert engine.gauges.num_running_reqs == 1
    assert engine.gauges.gen_throughput > 0
    engine.advance_to(end + 30)
    assert engine.gauges.gen_throughput == 0.0
    assert engine.gauges.num_running_reqs == 0


def test_prefill_log_counts_the_decode_batch_not_the_prompt_being_prefilled() -> None:
    # PrefillStats.from_adder: num_running_reqs is the running batch the prefill formed
    # beside; a chunked 100k prompt is not running yet.
    engine = Engine(parse_server_args(MTP))
    start_decoding(engine, "a")
    engine.add_request(request("b", 100_000, 8))
    engine.add_request(request("c", 100_000, 8))
    step = engine.step()
    assert step.kind == "prefill" and step.prefill_tokens == 8192
    assert (engine.gauges.num_running_reqs, engine.gauges.num_queue_reqs) == (1, 1)


def test_internal_state_reports_memory_like_sglang() -> None:
    engine = Engine(parse_server_args(HICACHE))
    state = engine.internal_state()
    memory = state["memory_usage"]
    assert isinstance(memory, dict)
    assert memory["token_capacity"] == engine.config.device_pool_tokens
    assert 85 < memory["weight"] < 92  # GiB of FP8 weights per GPU
    assert "avg_spec_accept_length" not in state
    assert state["effective_max_running_requests_per_dp"] == 2048


def test_one_token_request_finishes_at_its_prefill() -> None:
    engine = Engine(parse_server_args(HICACHE))
    engine.add_request(request("a", 500, 1, ctx=1))
    step = engine.step()
    assert [(e.tokens, e.first, e.finished) for e in step.emissions] == [(1, True, True)]
    assert not engine.has_work()
    assert engine.counters.requests == 1 and engine.cache.request_tokens == 0


def test_step_is_idle_without_work() -> None:
    engine = Engine(parse_server_args(MTP))
    assert engine.step().kind == "idle"
