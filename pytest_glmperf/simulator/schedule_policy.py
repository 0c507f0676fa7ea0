"""The waiting queue's order before each prefill batch (SGLang's ``SchedulePolicy``).

``--schedule-policy`` (schedule_policy.py, 0.5.12): ``fcfs`` (the default) keeps arrival
order; ``lpm`` puts the longest device prefix match first, except that a request with
almost nothing cached whose prompt shares a prefix with one already ahead of it in the
queue waits at the back, so that it can hit that one's cache once it is prefilled
("in-batch prefix caching"); over 128 waiting requests ``lpm`` falls back to ``fcfs``;
``lof`` puts the longest ``max_new_tokens`` first; ``random`` shuffles (seeded here). The
others (``dfs-weight``, ``priority``, ``routing-key``) are not modelled: the simulator
runs them as ``fcfs`` and lists the flag among its unmodelled arguments.

Prefixes are compared page by page (64 tokens), where SGLang compares tokens against its
32-token thresholds: one shared page stands for "more than 32 tokens in common".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar

__all__ = ["LPM_MAX_QUEUE", "MODELLED_POLICIES", "order_waiting"]

MODELLED_POLICIES = ("fcfs", "lpm", "lof", "random")
LPM_MAX_QUEUE = 128            # _determine_active_policy: LPM only up to 128 waiting
R = TypeVar("R")


def order_waiting(policy: str, waiting: Sequence[R], *, cached_pages: Callable[[R], int],
                  page_keys: Callable[[R], Sequence[int]], max_new: Callable[[R], int],
                  rng: random.Random) -> list[R]:
    """The queue in the order the prefill adder will scan it."""
    if policy == "lpm" and len(waiting) <= LPM_MAX_QUEUE:
        return _longest_prefix_first(waiting, cached_pages, page_keys)
    if policy == "lof":
        return sorted(waiting, key=lambda r: -max_new(r))
    if policy == "random":
        shuffled = list(waiting)
        rng.shuffle(shuffled)
        return shuffled
    return list(waiting)


def _longest_prefix_first(waiting: Sequence[R], cached_pages: Callable[[R], int],
                          page_keys: Callable[[R], Sequence[int]]) -> list[R]:
    ahead: set[int] = set()        # first-page keys of uncached requests already placed
    rank: dict[int, float] = {}
    for i, req in enumerate(waiting):
        pages = cached_pages(req)
        rank[i] = -pages
        keys = page_keys(req)
        if pages == 0 and keys:
            if keys[0] in ahead:   # shares a prefix with a request ahead: let it go first
                rank[i] = float("inf")
            else:
                ahead.add(keys[0])
    order = sorted(range(len(waiting)), key=lambda i: rank[i])   # stable: FCFS on ties
    return [waiting[i] for i in order]
