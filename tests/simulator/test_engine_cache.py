"""The page-granular radix cache with a host tier (pytest_glmperf.simulator.prefix_cache)."""

from __future__ import annotations

from pytest_glmperf.simulator.prefix_cache import PrefixCache


def keys(ctx: int, pages: int) -> list[int]:
    return [hash((ctx, i)) for i in range(pages)]


def cached(cache: PrefixCache, k: list[int], now: float) -> None:
    """Compute and insert a whole prompt, then release it (a finished request)."""
    assert cache.alloc(len(k) * 64)
    cache.insert(k, 0, len(k), now)
    cache.hit_path(k, len(k))
    cache.unlock(k, len(k), now)


def test_match_counts_leading_pages_on_device_then_host() -> None:
    cache = PrefixCache(page_size=64, device_tokens=64 * 10, host_tokens=64 * 100)
    a, b = keys(1, 6), keys(2, 6)
    cached(cache, a, 1.0)
    cached(cache, b, 2.0)  # needs 2 of a's pages: a's deepest two go to host
    assert cache.evicted_tokens == 128
    match = cache.match(a, 6)
    assert (match.device_pages, match.host_pages) == (4, 2)
    assert cache.match(a, 3).device_pages == 3
    assert cache.match(keys(3, 6), 6).device_pages == 0


def test_lru_evicts_the_least_recently_used_unlocked_prefix() -> None:
    cache = PrefixCache(page_size=64, device_tokens=64 * 8)
    a, b, c = keys(1, 4), keys(2, 4), keys(3, 4)
    cached(cache, a, 1.0)
    cached(cache, b, 2.0)
    cache.lock(a, 4, 3.0)  # a is in use again: b is now the LRU and a is pinned
    cached(cache, c, 4.0)
    assert cache.match(a, 4).device_pages == 4
    assert cache.match(b, 4).device_pages == 0  # no host tier: b is gone
    assert cache.evicted_tokens == 4 * 64


def test_host_tier_evicts_host_only_leaves_when_full() -> None:
    cache = PrefixCache(page_size=64, device_tokens=64 * 4, host_tokens=64 * 6)
    for ctx in range(3):
        cached(cache, keys(ctx, 4), float(ctx))
    # Host holds 6 pages. Writing context 2 through needed 4: the LRU host-only leaves
    # went first (all of context 0, then context 1's two deepest pages).
    assert cache.host_used_tokens == 6 * 64
    assert cache.match(keys(0, 4), 4).host_pages == 0
    assert cache.match(keys(1, 4), 4).host_pages == 2
    assert cache.match(keys(2, 4), 4).device_pages == 4


def test_pool_accounting_adds_up() -> None:
    cache = PrefixCache(page_size=64, device_tokens=1000)
    assert cache.alloc(600)
    assert cache.free_tokens == 400
    assert not cache.alloc(500)
    cache.release(600)
    assert cache.free_tokens == 1000 and cache.used_tokens == 0


def test_a_page_remembers_whether_its_device_copy_was_loaded_back() -> None:
    cache = PrefixCache(page_size=64, device_tokens=64 * 6, host_tokens=64 * 100)
    a, b = keys(1, 4), keys(2, 4)
    cached(cache, a, 1.0)
    cached(cache, b, 2.0)  # a's two deepest pages go to host
    assert cache.loaded_pages(a, 2) == 0
    cache.lock(a, 2, 3.0)  # admission: pin the device prefix, load the rest back
    assert cache.ensure_free(128)
    cache.load_back(a, 2, 4, 3.0)
    cache.lock(a[2:], 2, 3.0)
    assert cache.loaded_pages(a, 4) == 2
    cache.unlock(a, 4, 3.0)
    # Evicted again and recomputed: the device copy is a prefill's again.
    cached(cache, keys(3, 6), 4.0)
    assert cache.match(a, 4).device_pages == 0
    assert cache.alloc(4 * 64)
    cache.insert(a, 0, 4, 5.0)
    assert cache.loaded_pages(a, 4) == 0


def test_write_back_load_back_never_evicts_the_pages_it_loads() -> None:
    # Write-back copies a page to host only when it leaves the device. Loading context a
    # back evicts context b from device, whose copies need host room; the only host-only
    # leaves are a's own pages, which must stay until they are on device.
    cache = PrefixCache(page_size=64, device_tokens=64 * 4, host_tokens=64 * 4,
                        write_policy="write_back")
    a, b = keys(1, 4), keys(2, 4)
    cached(cache, a, 1.0)
    cached(cache, b, 2.0)          # a leaves the device for host
    assert cache.match(a, 4).host_pages == 4
    assert cache.load_back(a, 0, 4, 3.0) == 4 * 64
    assert cache.match(a, 4).device_pages == 4
    assert cache.match(b, 4).device_pages == 0
