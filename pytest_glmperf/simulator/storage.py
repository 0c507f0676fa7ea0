"""HiCache L3: a storage tier behind the host tier (``--hicache-storage-backend file``).

SGLang semantics kept (0.5.12.post1: mem_cache/hiradix_cache.py, managers/cache_controller.py,
managers/scheduler.py, mem_cache/hicache_storage.py):

* **backup**: every page that gets a host copy is then written to storage
  (``write_backup_storage`` once the D2H copy is confirmed) by one backup thread, in order;
  a page is found in storage only once its write finished;
* **prefetch**: when a request arrives (``_prefetch_kvcache``), the part of its prompt past
  the device + host match is looked up page by page from its start (``batch_exists``:
  consecutive pages only). Fewer than ``prefetch_threshold`` (256) hit tokens revoke it. No
  prefetch starts while running ones already hold 80 % of (host - device) tokens
  (``prefetch_rate_limited``). One IO thread serves prefetches in arrival order, 128 pages
  per batch; a page counts as arrived when its batch has;
* the request waits in the queue meanwhile. When the scheduler reaches it,
  ``--hicache-storage-prefetch-policy`` decides (``can_terminate_prefetch``):
  ``best_effort`` stops the prefetch at once and keeps what arrived; ``wait_complete`` skips
  the request until all of it arrived; ``timeout`` (the default) until all arrived or
  min(max, base + per_ki_token x tokens / 1024) seconds passed since it started (2 s, 0.1 s,
  30 s, overridable in ``--hicache-storage-backend-extra-config``). What arrived joins the
  tree as host pages and is loaded back like any host hit, counted as a storage hit;
* ``/flush_cache`` resets the tree and host tier only, and is refused while a prefetch or
  backup is in flight; ``POST /hicache/storage-backend/clear`` empties storage. The ``file``
  backend grows without bound (files under /tmp/hicache); so does this tier.

The engine owns the host-memory side (``PrefixCache.make_host_room`` / ``reserve_host``);
this module keeps what is stored, the two IO threads' timelines and the policies.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

# SGLang's names (server_args.py choices); only ``file`` is modelled.
STORAGE_BACKENDS = ("file", "mooncake", "hf3fs", "nixl", "aibrix", "dynamic", "eic", "simm",
                    "mori")
MODELLED_BACKENDS = {"file": "HiCacheFile"}     # --hicache-storage-backend -> class name
PREFETCH_POLICIES = ("best_effort", "wait_complete", "timeout")
PREFETCH_BATCH_PAGES = 128                      # cache_controller.storage_batch_size
PREFETCH_CAPACITY_SHARE = 0.8                   # prefetch_capacity_limit: of host - device


@dataclass(frozen=True)
class StorageSettings:
    """``--hicache-storage-backend-extra-config`` keys SGLang reads for prefetching."""

    prefetch_threshold: int = 256               # tokens
    prefetch_timeout_base: float = 2.0          # s (hicache_storage.PrefetchTimeoutConfig)
    prefetch_timeout_per_ki_token: float = 0.1  # s per 1024 tokens
    prefetch_timeout_max: float = 30.0          # s

    def timeout_s(self, tokens: int) -> float:
        return min(self.prefetch_timeout_max,
                   self.prefetch_timeout_base + self.prefetch_timeout_per_ki_token * tokens / 1024)


def parse_extra_config(text: str) -> StorageSettings:
    """A JSON string, or ``@path`` to a .json/.yaml file, as SGLang reads the flag. Keys
    other than the prefetch ones belong to real backends and are ignored here."""
    if text.startswith("@"):
        path = Path(text[1:])
        if path.suffix.lower() not in (".json", ".yaml", ".yml"):
            raise ValueError(f"unsupported config file {path} (use .json or .yaml)")
        raw = path.read_text()
        data = json.loads(raw) if path.suffix.lower() == ".json" else yaml.safe_load(raw)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object")
    threshold = data.get("prefetch_threshold", 256)
    if not isinstance(threshold, int) or isinstance(threshold, bool):
        raise ValueError(f"prefetch_threshold must be int, got {type(threshold).__name__}")
    numbers = {}
    for key in ("prefetch_timeout_base", "prefetch_timeout_per_ki_token", "prefetch_timeout_max"):
        value = data.get(key, getattr(StorageSettings, key))
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{key} must be number, got {type(value).__name__}")
        numbers[key] = float(value)
    return StorageSettings(prefetch_threshold=threshold, **numbers)


@dataclass
class _Prefetch:
    """One prefetch operation: ``pages`` stored pages from page index ``start`` on."""

    rid: str
    start: int
    pages: int               # stored pages it fetches; after stop(), the ones that arrived
    reserved: int            # host pages held for it
    occupied: int            # tokens counted against the rate limit (the whole new input)
    created_s: float
    timeout_s: float
    begin_s: float = 0.0     # when the IO thread reaches it
    stopped_s: float | None = None

    def end_s(self, page_s: float) -> float:
        """When the IO thread is done with it (projected while it runs on)."""
        full = self.begin_s + self.pages * page_s
        if self.stopped_s is None:
            return full
        return min(full, max(self.begin_s, self.stopped_s))


class StorageTier:
    """Stored pages, the backup and prefetch threads' timelines, the prefetch policy."""

    def __init__(self, *, page_size: int, bytes_per_token: int, read_bandwidth: float,
                 write_bandwidth: float, policy: str = "timeout",
                 settings: StorageSettings | None = None, capacity_limit_tokens: int = 0) -> None:
        self.page_size = page_size
        self.policy = policy
        self.settings = settings or StorageSettings()
        self.threshold = max(self.settings.prefetch_threshold, page_size)
        self.capacity_limit = capacity_limit_tokens
        self.page_read_s = page_size * bytes_per_token / read_bandwidth
        self.page_write_s = page_size * bytes_per_token / write_bandwidth
        self.stored: set[int] = set()
        self._writes: deque[tuple[float, list[int]]] = deque()   # (done at, page keys)
        self._write_free_s = 0.0
        self._ops: list[_Prefetch] = []          # in arrival order, until the thread passes
        self._io_free_s = 0.0
        self._by_rid: dict[str, _Prefetch] = {}
        self.occupied = 0
        self.backed_up_tokens = 0
        self.prefetched_tokens = 0

    # ---- backup ---------------------------------------------------------------------------

    def backup(self, keys: Sequence[int], now: float) -> None:
        """Queue pages that just got a host copy; they are stored once written."""
        self.settle(now)
        if not keys:
            return
        done = max(now, self._write_free_s) + len(keys) * self.page_write_s
        self._write_free_s = done
        self._writes.append((done, list(keys)))

    def settle(self, now: float) -> None:
        """Pages whose write finished by ``now`` become stored."""
        while self._writes and self._writes[0][0] <= now:
            _, keys = self._writes.popleft()
            self.stored.update(keys)
            self.backed_up_tokens += len(keys) * self.page_size

    # ---- prefetch -------------------------------------------------------------------------

    @property
    def rate_limited(self) -> bool:
        return self.occupied >= self.capacity_limit

    def hit_pages(self, keys: Sequence[int], start: int, end: int, now: float) -> int:
        """Consecutive pages of keys[start:end] already in storage."""
        self.settle(now)
        stored = self.stored
        n = start
        while n < end and keys[n] in stored:
            n += 1
        return n - start

    def start(self, rid: str, start: int, pages: int, occupied: int, now: float) -> None:
        op = _Prefetch(rid, start, pages, pages, occupied, now,
                       self.settings.timeout_s(pages * self.page_size))
        self._ops.append(op)
        self._by_rid[rid] = op
        self.occupied += occupied

    def ongoing(self, rid: str) -> bool:
        return rid in self._by_rid

    def arrived_pages(self, rid: str, now: float) -> int:
        """Pages of ``rid``'s prefetch in host memory at ``now`` (whole batches)."""
        op = self._by_rid[rid]
        self._schedule()
        if now >= op.end_s(self.page_read_s):   # the very instant next_event_s names
            return op.pages
        elapsed = now - op.begin_s
        if elapsed <= 0:
            return 0
        batch_s = PREFETCH_BATCH_PAGES * self.page_read_s
        return min(op.pages, int(elapsed / batch_s + 1e-9) * PREFETCH_BATCH_PAGES)

    def ready(self, rid: str, now: float) -> bool:
        """Whether the scheduler may stop ``rid``'s prefetch now (the policy)."""
        op = self._by_rid.get(rid)
        if op is None or self.policy == "best_effort":
            return True
        if self.arrived_pages(rid, now) >= op.pages:
            return True
        return self.policy == "timeout" and now >= op.created_s + op.timeout_s

    def next_event_s(self, now: float) -> float:
        """The next time after ``now`` a prefetch completes or times out (inf: none). At
        that instant ``ready`` is true for it: both compare the same expressions."""
        self._schedule()
        times = []
        for op in self._by_rid.values():
            times.append(op.end_s(self.page_read_s))
            if self.policy == "timeout":
                times.append(op.created_s + op.timeout_s)
        return min((t for t in times if t > now), default=math.inf)

    def stop(self, rid: str, now: float) -> _Prefetch:
        """Terminate ``rid``'s prefetch; the IO thread drops the rest of it."""
        arrived = self.arrived_pages(rid, now)
        op = self._by_rid.pop(rid)
        op.stopped_s = now
        op.pages = arrived
        self.occupied -= op.occupied
        while self._ops and self._ops[0].stopped_s is not None:
            self._io_free_s = self._ops.pop(0).end_s(self.page_read_s)
        return op

    def _schedule(self) -> None:
        """Place the IO thread's operations on its timeline, in arrival order."""
        t = self._io_free_s
        for op in self._ops:
            op.begin_s = max(op.created_s, t)
            t = op.end_s(self.page_read_s)

    # ---- lifecycle ------------------------------------------------------------------------

    def busy(self, now: float) -> bool:
        """A backup or prefetch still in flight (SGLang then refuses /flush_cache)."""
        self.settle(now)
        return bool(self._writes or self._by_rid)

    def clear(self) -> None:
        """``/hicache/storage-backend/clear``: delete every stored page."""
        self.stored.clear()
