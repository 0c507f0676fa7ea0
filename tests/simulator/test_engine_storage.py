"""HiCache L3 storage in the engine model (pytest_glmperf.simulator.storage), and when
write-through copies a prompt to host (which is when L3 can have it), hand-checked.

The set-up: a device pool of ~145k tokens and a 10 GB host tier (195k tokens) behind it,
so after three 100k contexts the first one is gone from device and host and only L3
(``--hicache-storage-backend file``) still holds it. Reads and writes run at the file
backend's 1.2 GB/s of KV (61,464 B per token): a whole context takes ~5.1 s either way.
"""

from __future__ import annotations

import pytest

from pytest_glmperf.simulator.config import parse_server_args
from pytest_glmperf.simulator.engine import Engine
from pytest_glmperf.simulator.storage import PREFETCH_BATCH_PAGES, StorageTier
from tests.simulator.test_engine import HICACHE, SMALL_POOL, request, run

SMALL_HOST = [*HICACHE[:4], "10", *HICACHE[5:], *SMALL_POOL]
L3 = ["--hicache-storage-backend", "file"]
PAGE_BYTES = 64 * 61_464


def after_three_contexts(*flags: str, pause_s: float = 30.0) -> Engine:
    """Contexts 1-3 in turn, then a pause: context 1 is left in storage only."""
    engine = Engine(parse_server_args(SMALL_HOST + list(flags)))
    for rid, ctx in (("c1", 1), ("c2", 2), ("c3", 3)):
        engine.add_request(request(rid, 100_000, 8, ctx=ctx))
        run(engine)
    engine.advance_to(engine.now + pause_s)
    return engine


def three_contexts_then_revisit(*flags: str) -> tuple[Engine, float]:
    """Context 1 again after contexts 1-3; the revisit's TTFT."""
    engine = after_three_contexts(*flags)
    sent = engine.now
    engine.add_request(request("revisit", 100_000, 8, ctx=1))
    steps = run(engine)
    first = next(s.end_s for s in steps for e in s.emissions if e.first)
    return engine, first - sent


def test_a_prompt_is_written_to_storage_once_its_prefill_completes() -> None:
    engine = Engine(parse_server_args(SMALL_HOST + L3))
    engine.add_request(request("c1", 100_000, 8, ctx=1))
    steps = run(engine)
    storage = engine.storage
    assert storage is not None
    # SGLang counts no write-through hit for the inserts between chunks: the host copy, and
    # then the one writer to storage, start when the last chunk is in. 1562 pages at
    # 1.2 GB/s take 5.1 s.
    prefilled = next(s.end_s for s in steps for e in s.emissions if e.first)
    keys = request("c1", 100_000, 8, ctx=1).page_keys
    assert storage.hit_pages(keys, 0, len(keys), prefilled) == 0
    write_s = 1562 * PAGE_BYTES / 1.2e9
    assert storage.busy(prefilled + write_s - 0.1)
    assert not storage.busy(prefilled + write_s + 0.1)
    assert storage.hit_pages(keys, 0, len(keys), prefilled + write_s + 0.1) == 1562
    engine.advance_to(prefilled + write_s + 0.1)
    assert engine.counters.storage_backup_tokens == 1562 * 64


@pytest.mark.parametrize(("policy", "on_host_while_decoding"), [
    ("write_through", 1562), ("write_through_selective", 0)])
def test_write_through_selective_copies_a_prompt_on_its_second_hit(
        policy: str, on_host_while_decoding: int) -> None:
    engine = Engine(parse_server_args([*SMALL_HOST, "--hicache-write-policy", policy]))
    engine.add_request(request("c1", 100_000, 8, ctx=1))
    while not any(e.first for e in engine.step().emissions):
        pass
    # The completed prefill is one hit; the finished request's insert is the second.
    assert engine.cache.host_used_tokens == on_host_while_decoding * 64
    run(engine)
    assert engine.cache.host_used_tokens == 1562 * 64


def test_revisit_evicted_from_host_is_prefetched_from_storage() -> None:
    plain, plain_ttft = three_contexts_then_revisit()
    engine, ttft = three_contexts_then_revisit(*L3)
    c = engine.counters
    assert plain.counters.cached_tokens_host == 0 and plain_ttft > 10   # a full re-prefill
    # The host tier had room for ~786 pages of the new input once its host-only leaves were
    # evicted (the rest of it holds contexts 2 and 3, still on device): that much came from
    # storage, 128 pages per batch, then was loaded back like a host hit.
    assert c.cached_tokens_storage == c.storage_prefetched_tokens > 40_000
    assert c.cached_tokens_storage % 64 == 0
    assert c.cached_tokens_host == 0 and c.cached_tokens_device == 0
    assert c.load_back_tokens >= c.cached_tokens_storage
    read_s = c.cached_tokens_storage / 64 * PAGE_BYTES / 1.2e9
    assert ttft > read_s
    assert ttft < plain_ttft    # reading the head of the context beats recomputing it


def test_best_effort_stops_the_prefetch_as_soon_as_the_request_is_scheduled() -> None:
    engine, _ = three_contexts_then_revisit(*L3, "--hicache-storage-prefetch-policy",
                                            "best_effort")
    # An idle scheduler reaches the request at once: nothing has arrived yet.
    assert engine.counters.cached_tokens_storage == 0
    assert engine.counters.storage_prefetched_tokens == 0


def test_timeout_policy_keeps_the_batches_that_arrived_in_time() -> None:
    slow = ["--sim-storage-read-gbps", "0.2"]
    waited, waited_ttft = three_contexts_then_revisit(*L3, *slow, "--hicache-storage-prefetch-policy",
                                                      "wait_complete")
    timed, timed_ttft = three_contexts_then_revisit(*L3, *slow)
    full = waited.counters.cached_tokens_storage
    got = timed.counters.cached_tokens_storage
    # timeout = 2 s + 0.1 s per 1024 prefetched tokens; batches of 128 pages at 0.2 GB/s.
    timeout = 2 + 0.1 * full / 1024
    batch_s = PREFETCH_BATCH_PAGES * PAGE_BYTES / 0.2e9
    assert got == int(timeout / batch_s) * PREFETCH_BATCH_PAGES * 64
    assert 0 < got < full
    assert waited_ttft > full / 64 * PAGE_BYTES / 0.2e9
    assert timed_ttft > timeout


def test_a_waiting_prefetch_does_not_hold_back_the_queue() -> None:
    engine = after_three_contexts(*L3, "--hicache-storage-prefetch-policy", "wait_complete")
    engine.add_request(request("revisit", 100_000, 8, ctx=1))
    engine.add_request(request("short", 2_000, 8, ctx=9))
    steps = run(engine)
    order = [e.rid for s in steps for e in s.emissions if e.first]
    assert order == ["short", "revisit"]   # the scheduler skips a request still prefetching
    idle = [s for s in steps if s.kind == "idle"]   # then waits for it
    assert idle and engine.wake_at() is None


def test_flush_keeps_storage_and_clear_empties_it() -> None:
    engine = Engine(parse_server_args(SMALL_HOST + L3))
    engine.add_request(request("c1", 100_000, 8, ctx=1))
    run(engine)
    assert not engine.flush_cache()          # refused while the backup is still writing
    engine.advance_to(engine.now + 10)
    assert engine.flush_cache()
    engine.add_request(request("again", 100_000, 8, ctx=1))
    steps = run(engine)
    first = next(e for s in steps for e in s.emissions if e.first)
    assert first.cached_tokens == engine.counters.cached_tokens_storage > 50_000

    assert engine.clear_storage()
    engine.advance_to(engine.now + 10)
    assert engine.flush_cache()
    engine.add_request(request("cold", 100_000, 8, ctx=1))
    steps = run(engine)
    assert next(e for s in steps for e in s.emissions if e.first).cached_tokens == 0


def test_an_abort_releases_the_prefetch_host_slots() -> None:
    engine = after_three_contexts(*L3, "--hicache-storage-prefetch-policy", "wait_complete")
    engine.add_request(request("revisit", 100_000, 8, ctx=1))
    assert engine.cache.host_reserved > 0 and engine.storage.occupied > 0
    engine.abort("revisit")
    assert engine.cache.host_reserved == 0 and engine.storage.occupied == 0
    assert not engine.storage.busy(engine.now)


@pytest.mark.parametrize(("flags", "message"), [
    ([*L3, "--mem-fraction-static", "0.85"], "needs --enable-hierarchical-cache"),
    ([*SMALL_HOST, "--hicache-storage-backend", "mooncake"], "mooncake is not modelled; modelled: file"),
    (SMALL_HOST + L3 + ["--hicache-storage-backend-extra-config", '{"prefetch_threshold": "1"}'],
     "--hicache-storage-backend-extra-config: prefetch_threshold must be int"),
    (SMALL_HOST + L3 + ["--hicache-storage-backend-extra-config", "{bad"],
     "--hicache-storage-backend-extra-config: not valid JSON"),
    ([*SMALL_HOST, "--hicache-storage-prefetch-policy", "eager"],
     "--hicache-storage-prefetch-policy: invalid value 'eager'"),
])
def test_storage_flags_are_checked(flags: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_server_args(flags)


def test_extra_config_sets_the_prefetch_knobs(tmp_path) -> None:
    config_file = tmp_path / "l3.yaml"
    config_file.write_text("prefetch_threshold: 4096\nprefetch_timeout_base: 5\n")
    config = parse_server_args(SMALL_HOST + L3 + ["--hicache-storage-backend-extra-config",
                                                  f"@{config_file}"])
    settings = config.storage_settings
    assert settings.prefetch_threshold == 4096
    assert settings.timeout_s(10_240) == pytest.approx(5 + 0.1 * 10)
    assert settings.timeout_s(10_000_000) == 30.0


@pytest.mark.parametrize("policy", ["timeout", "wait_complete"])
@pytest.mark.parametrize("created", [0.0, 1234.567, 98_765.4321])
def test_a_prefetch_is_ready_at_the_instant_its_next_event_names(policy: str, created: float) -> None:
    # The driver parks the engine until next_event_s; were ready() still false there (a
    # rounding apart), it would wake at the same instant again and again.
    tier = StorageTier(page_size=64, bytes_per_token=61_464, read_bandwidth=0.2e9,
                       write_bandwidth=1.2e9, policy=policy, capacity_limit_tokens=10**9)
    tier.start("r", 0, 1562, 1562 * 64, created)
    now = tier.next_event_s(created)
    assert now > created
    assert tier.ready("r", now)
    assert not tier.ready("r", now - 1e-3)


def test_the_prefill_log_counts_storage_hits_in_the_cache_hit_rate() -> None:
    engine = after_three_contexts(*L3)
    engine.add_request(request("revisit", 100_000, 8, ctx=1))
    while not engine.step().prefill_tokens:   # idle while the prefetch runs
        wake = engine.wake_at()
        assert wake is not None
        engine.advance_to(wake)
    stored = engine._by_rid["revisit"].cached_storage
    assert stored > 40_000
    assert engine.gauges.cache_hit_rate == pytest.approx(stored / 100_000)
