"""Page-granular radix prefix cache with an optional host tier (SGLang RadixCache/HiCache).

Prompts arrive as chained page hashes (``SimRequest.page_keys``): key i names the whole
prefix up to page i, so the tree is a dict of pages with parent links and a match is
"how many leading keys are cached". The cache also owns the device KV pool's accounting:
every slot is free, held by a tree page, or held privately by a running request.

SGLang semantics kept (mem_cache/radix_cache.py, unified_radix_cache.py, 0.5.23):

* eviction is on demand when an allocation finds too few free slots, leaf-first over
  unlocked pages in LRU order (``--radix-eviction-policy lru``);
* a running request locks its matched path (lock_ref), so it cannot be evicted;
* with HiCache, ``write_through`` backs a device page up to host once a non-chunked insert
  has passed over it (``hit_path``; ``_inc_hit_count`` skips the inserts between chunks,
  so a long prompt is copied when its prefill completes), ``write_through_selective`` once
  two have; a device-evicted page with a host copy becomes host-only; a later match
  continues from the device prefix into host-only pages, which are loaded back;
  ``write_back`` copies a page to host only when it is evicted from device;
* the host tier evicts host-only leaves in LRU order only when a backup (or an L3
  prefetch, ``storage.py``) needs room, and skips the backup when nothing can be evicted;
* pages fetched from L3 storage join the tree as host-only pages below the request's
  host match (``_insert_helper_host``). With L3 enabled, every new host copy is reported
  (``take_backups``) so the engine can queue it for storage.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


class _Page:
    __slots__ = ("children", "depth", "dev_children", "hits", "key", "last", "loaded", "lock",
                 "on_dev", "on_host", "parent", "pinned")

    def __init__(self, key: int, parent: _Page | None, depth: int) -> None:
        self.key, self.parent, self.depth = key, parent, depth
        self.children = 0       # child pages that exist (on device or host)
        self.dev_children = 0   # child pages resident on device
        self.on_dev = False
        self.on_host = False
        self.loaded = False     # device copy came from host (load-back), not a prefill
        self.lock = 0
        self.hits = 0           # non-chunked inserts that passed over it (write-through)
        self.pinned = False     # host copy being loaded back: not a host-eviction victim
        self.last = 0.0


@dataclass(frozen=True)
class Match:
    """Leading pages of a prompt found on device, then continuing on host."""

    device_pages: int
    host_pages: int


class PrefixCache:
    """Device pool accounting plus the radix tree of cached pages (and host tier)."""

    def __init__(self, *, page_size: int, device_tokens: int, host_tokens: int = 0,
                 write_policy: str = "write_through", enabled: bool = True,
                 track_backups: bool = False) -> None:
        self.page_size = page_size
        self.capacity = device_tokens
        self.host_capacity = host_tokens
        self.write_through = write_policy.startswith("write_through")
        # HiRadixCache.write_through_threshold: hits before a page is copied to host
        self.backup_after_hits = 2 if write_policy == "write_through_selective" else 1
        self.enabled = enabled
        self._pages: dict[int, _Page] = {}
        self._dev_heap: list[tuple[float, int, int, int]] = []
        self._host_heap: list[tuple[float, int, int, int]] = []
        self._seq = 0
        self.dev_pages = 0
        self.locked_dev_pages = 0
        self.host_pages = 0
        self.host_reserved = 0       # host pages held for L3 prefetches in flight
        self.track_backups = track_backups
        self._new_backups: list[int] = []
        self.request_tokens = 0      # slots held privately by requests (not in the tree)
        self.evicted_tokens = 0
        self.backup_tokens = 0
        self.load_back_tokens = 0
        self.version = 0             # bumped whenever residency changes (match memo key)

    # ---- pool accounting ----------------------------------------------------------------

    @property
    def free_tokens(self) -> int:
        return self.capacity - self.dev_pages * self.page_size - self.request_tokens

    @property
    def evictable_tokens(self) -> int:
        return (self.dev_pages - self.locked_dev_pages) * self.page_size

    @property
    def used_tokens(self) -> int:
        """Slots neither free nor evictable (SGLang's num_used_tokens)."""
        return self.capacity - self.free_tokens - self.evictable_tokens

    @property
    def host_used_tokens(self) -> int:
        return self.host_pages * self.page_size

    @property
    def host_free_pages(self) -> int:
        return self.host_capacity // self.page_size - self.host_pages - self.host_reserved

    def ensure_free(self, tokens: int) -> bool:
        """Evict LRU unlocked device pages until ``tokens`` slots are free."""
        need = tokens - self.free_tokens
        if need > 0:
            self._evict_device(need)
        return self.free_tokens >= tokens

    def alloc(self, tokens: int) -> bool:
        """Hand ``tokens`` free slots to a request (evicting as needed)."""
        if not self.ensure_free(tokens):
            return False
        self.request_tokens += tokens
        return True

    def release(self, tokens: int) -> None:
        """A request gives back private slots."""
        self.request_tokens -= tokens

    # ---- matching and locking -----------------------------------------------------------

    def match(self, keys: Sequence[int], max_pages: int) -> Match:
        """Device prefix, then the host-only continuation, of the first ``max_pages`` keys."""
        if not self.enabled:
            return Match(0, 0)
        pages = self._pages
        n = min(len(keys), max_pages)
        dev = 0
        while dev < n:
            page = pages.get(keys[dev])
            if page is None or not page.on_dev:
                break
            dev += 1
        host = dev
        while host < n:
            page = pages.get(keys[host])
            if page is None or not page.on_host:
                break
            host += 1
        return Match(dev, host - dev)

    def lock(self, keys: Sequence[int], count: int, now: float) -> None:
        """Pin the first ``count`` pages (all on device) for a running request."""
        pages = self._pages
        for i in range(count):
            page = pages[keys[i]]
            if page.lock == 0:
                self.locked_dev_pages += 1
            page.lock += 1
            page.last = now

    def unlock(self, keys: Sequence[int], count: int, now: float) -> None:
        """Unpin a request's pages; the deepest unpinned leaf becomes evictable."""
        pages = self._pages
        for i in range(count - 1, -1, -1):
            page = pages.get(keys[i])
            if page is None:
                continue
            page.lock -= 1
            page.last = now
            if page.lock == 0:
                self.locked_dev_pages -= 1
                if page.dev_children == 0:
                    self._push_dev(page)

    # ---- insertion and load-back -------------------------------------------------------

    def insert(self, keys: Sequence[int], start: int, end: int, now: float) -> int:
        """Put pages [start, end) of a request into the tree, locked by that request.

        The request's private slots for those pages move into the tree. A page someone
        else inserted meanwhile is shared instead and the duplicate slots are freed.
        Returns the number of pages taken over (0 when the cache is disabled).
        """
        if not self.enabled or end <= start:
            return 0
        parent = self._pages.get(keys[start - 1]) if start > 0 else None
        for i in range(start, end):
            page, _ = self._get_or_add(keys[i], parent, i)
            if not page.on_dev:
                page.loaded = False
                self._set_dev(page, True)
            self.request_tokens -= self.page_size
            if page.lock == 0:
                self.locked_dev_pages += 1
            page.lock += 1
            page.last = now
            parent = page
        return end - start

    def hit_path(self, keys: Sequence[int], count: int) -> None:
        """A non-chunked insert over pages [0, count) (a completed prefill, a finished
        request): each device page counts a hit, and under write-through one without a
        host copy is backed up once it has enough. Root first; the walk stops at a page
        whose parent has no host copy, as backed-up pages form a prefix (``write_backup``)."""
        if not (self.write_through and self.host_capacity):
            return
        pages = self._pages
        for i in range(count):
            page = pages.get(keys[i])
            if page is None:
                return
            if not page.on_dev:
                continue
            page.hits += 1
            if page.on_host or page.hits < self.backup_after_hits:
                continue
            if page.parent is not None and not page.parent.on_host:
                return
            self._backup(page)

    def load_back(self, keys: Sequence[int], start: int, end: int, now: float) -> int:
        """Bring host-only pages [start, end) back to device, evicting device pages for
        room first. The pages to load are pinned meanwhile: under write-back those
        evictions copy pages to host and may have to evict host pages."""
        tokens = (end - start) * self.page_size
        loading = [self._pages[keys[i]] for i in range(start, end)]
        for page in loading:
            page.pinned = True
        self.ensure_free(tokens)
        for page in loading:
            page.pinned = False
            page.loaded = True
            self._set_dev(page, True)
            page.last = now
        self.load_back_tokens += tokens
        return tokens

    def loaded_pages(self, keys: Sequence[int], count: int) -> int:
        """How many of the first ``count`` pages (on device) were loaded back from host
        rather than computed: only the state a load-back copies is there."""
        pages = self._pages
        return sum(1 for i in range(count) if pages[keys[i]].loaded)

    # ---- L3 storage side -----------------------------------------------------------------

    def take_backups(self) -> list[int]:
        """Keys of pages that got a host copy since the last call (L3 backup queue)."""
        keys, self._new_backups = self._new_backups, []
        return keys

    def make_host_room(self, pages: int) -> int:
        """Evict host-only LRU leaves toward ``pages`` free host pages; the free count."""
        if self.host_free_pages < pages:
            self._evict_host(pages - self.host_free_pages)
        return max(0, self.host_free_pages)

    def reserve_host(self, pages: int) -> None:
        self.host_reserved += pages

    def unreserve_host(self, pages: int) -> None:
        self.host_reserved -= pages

    def insert_host(self, keys: Sequence[int], start: int, end: int, now: float) -> int:
        """Pages [start, end) arrived from storage into reserved host slots: add the ones
        the tree lacks as host-only pages. Returns how many were new (the storage hit);
        all reserved slots are released, the duplicates' too. Nothing lands if the page
        before ``start`` left the tree meanwhile."""
        self.host_reserved -= end - start
        parent = self._pages.get(keys[start - 1]) if start > 0 else None
        if start > 0 and parent is None:
            return 0
        added = 0
        for i in range(start, end):
            page, new = self._get_or_add(keys[i], parent, i)
            if new:
                page.on_host = True
                self.host_pages += 1
                added += 1
            page.last = now
            parent = page
        if added:
            self.version += 1
            if parent is not None and parent.children == 0 and not parent.on_dev:
                self._push_host(parent)
        return added

    def flush(self) -> None:
        """Drop every unlocked page from device and host (``/flush_cache``)."""
        for page in list(self._pages.values()):
            if page.lock == 0:
                if page.on_dev:
                    self.dev_pages -= 1
                if page.on_host:
                    self.host_pages -= 1
                del self._pages[page.key]
        for page in self._pages.values():
            page.children = page.dev_children = 0
        for page in self._pages.values():
            if page.parent is not None and page.parent.key in self._pages:
                page.parent.children += 1
                page.parent.dev_children += int(page.on_dev)
        self._dev_heap.clear()
        self._host_heap.clear()
        self.version += 1

    # ---- internals ----------------------------------------------------------------------

    def _get_or_add(self, key: int, parent: _Page | None, depth: int) -> tuple[_Page, bool]:
        """The page ``key`` under ``parent``, created (neither on device nor host) if the
        tree lacks it; whether it was created."""
        page = self._pages.get(key)
        if page is not None:
            return page, False
        page = _Page(key, parent, depth)
        self._pages[key] = page
        if parent is not None:
            parent.children += 1
        return page, True

    def _set_dev(self, page: _Page, on: bool) -> None:
        self.version += 1
        page.on_dev = on
        delta = 1 if on else -1
        self.dev_pages += delta
        if page.parent is not None:
            page.parent.dev_children += delta

    def _push_dev(self, page: _Page) -> None:
        self._seq += 1
        heapq.heappush(self._dev_heap, (page.last, -page.depth, self._seq, page.key))

    def _push_host(self, page: _Page) -> None:
        self._seq += 1
        heapq.heappush(self._host_heap, (page.last, -page.depth, self._seq, page.key))

    def _evict_device(self, tokens: int) -> None:
        """Leaf-first LRU over unlocked device pages until ``tokens`` slots are freed."""
        freed = 0
        heap = self._dev_heap
        while freed < tokens and heap:
            last, _, _, key = heapq.heappop(heap)
            page = self._pages.get(key)
            if (page is None or not page.on_dev or page.lock or page.dev_children
                    or page.last != last):
                continue
            self._evict_page(page)
            freed += self.page_size
        self.evicted_tokens += freed

    def _evict_page(self, page: _Page) -> None:
        self._set_dev(page, False)
        if self.host_capacity and not page.on_host and not self.write_through:
            self._backup(page)  # write_back: copy to host on eviction
        parent = page.parent
        if not page.on_host:
            self._delete(page)
        elif page.children == 0:
            self._push_host(page)
        if parent is not None and parent.on_dev and parent.lock == 0 \
                and parent.dev_children == 0:
            self._push_dev(parent)

    def _delete(self, page: _Page) -> None:
        del self._pages[page.key]
        parent = page.parent
        if parent is not None:
            parent.children -= 1
            if parent.children == 0 and parent.on_host and not parent.on_dev:
                self._push_host(parent)

    def _backup(self, page: _Page) -> None:
        """Copy one page to host, evicting host-only LRU leaves for room; skip if full."""
        if self.host_free_pages <= 0:
            self._evict_host(1)
        if self.host_free_pages <= 0:
            return
        page.on_host = True
        self.version += 1
        self.host_pages += 1
        self.backup_tokens += self.page_size
        if self.track_backups:
            self._new_backups.append(page.key)

    def _evict_host(self, pages: int) -> None:
        heap = self._host_heap
        freed = 0
        while freed < pages and heap:
            last, _, _, key = heapq.heappop(heap)
            page = self._pages.get(key)
            if (page is None or page.on_dev or not page.on_host or page.children
                    or page.lock or page.pinned or page.last != last):
                continue
            page.on_host = False
            self.version += 1
            self.host_pages -= 1
            self._delete(page)
            freed += 1
