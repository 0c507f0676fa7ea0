"""Faster capacity answers: stop a level once its failure is settled, bisect the levels.

Settled failure. The max chunk gap of a request never shrinks, and a request still waiting
for its first token past the TTFT bar will end above it. So during a level we can count
requests that have *already* broken a bar, and bound how many requests the level can still
produce: ``n_max = done + in flight + agents x remaining time / (half the shortest request
seen)``. A type-7 P95 exceeds the bar once the values above it number at least
``0.05 n + 0.95`` (then the lower interpolation rank already lies above the bar); as that
bound grows with n, reaching it at ``n_max`` settles the failure for any final n. Likewise
the failure rate exceeds 5 % for good once ``failures > 0.05 n_max``. A pass is never
settled early: a later stall could still break it.

Search order. Assuming usability falls with concurrency, the highest usable level is found by
binary search over the allowed levels, ordered to spend few passes: a failed probe is cut
short and cheap, a passing one costs a full level and its drain. So the top level goes first
(a server that holds it is settled in one run), then the required level (the answer the user
expects), and after every pass the top of what remains, before plain halving resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .records import RequestRecord
from .thresholds import Thresholds

SAFETY = 0.5  # future requests may be up to twice as fast as the fastest seen so far


@dataclass(frozen=True)
class LevelProgress:
    """What is known about a running level at one instant."""

    concurrency: int
    done: Sequence[RequestRecord]
    active: Sequence[RequestRecord]
    now_ns: int
    remaining_s: float  # model seconds left in the load window
    time_scale: float


def max_requests(progress: LevelProgress) -> int | None:
    """Upper bound on the agents' requests this level can still end with; None if unknown."""
    durations = [r.e2e_s for r in progress.done if r.ok and r.e2e_s]
    if not durations:
        return None
    shortest = min(durations) * SAFETY
    future = progress.concurrency * int(max(progress.remaining_s, 0.0) / shortest + 1)
    return len(progress.done) + len(progress.active) + future


def breaking(progress: LevelProgress, thresholds: Thresholds) -> dict[str, int]:
    """How many requests have already, irrevocably, broken each bar."""
    scale = progress.time_scale / 1e9
    active_ids = {id(record) for record in progress.active}
    gap = ttft = 0
    for record in [*progress.done, *progress.active]:
        stamps = record.chunk_ns
        live = id(record) in active_ids
        worst = record.max_gap_s or 0.0
        if live and stamps:
            worst = max(worst, (progress.now_ns - stamps[-1]) * scale)
        gap += worst > thresholds.max_gap_p95
        waited = record.ttft_s if record.first_token_ns else (
            (progress.now_ns - record.send_ns) * scale if live else None)
        ttft += waited is not None and waited > thresholds.max_ttft_p95
    failures = sum(not r.ok for r in progress.done)
    return {"max_gap_p95": gap, "max_ttft_p95": ttft, "max_failure_rate": failures}


def settled_failure(progress: LevelProgress, thresholds: Thresholds) -> str | None:
    """The reason this level can no longer be usable, or None while it still could be."""
    bound = max_requests(progress)
    if bound is None:
        return None
    counts = breaking(progress, thresholds)
    needed = {
        "max_gap_p95": 0.05 * bound + 0.95,
        "max_ttft_p95": 0.05 * bound + 0.95,
        "max_failure_rate": thresholds.max_failure_rate * bound,
    }
    for key, count in counts.items():
        if count and count > needed[key]:
            return f"{count} of at most {bound} requests already broke {key}"
    return None


def bisect_levels(levels: Sequence[int], usable: Callable[[int], bool], start: int | None = None,
                  expect: int | None = None) -> int | None:
    """Highest level for which ``usable(level)`` holds, in O(log n) probes (see the module docstring).

    ``expect``: the answer a reference gave (prod's max usable, for a candidate; 0 for none): that
    level and the one above it go first, and a candidate that matches is settled in those two probes.
    Assumes monotonicity (usable at c implies usable below c). Returns None if none is usable.
    """
    ordered = sorted(levels)
    low, high = -1, len(ordered)  # ordered[low] usable (or none), ordered[high] not (or none)
    preferred = [len(ordered) - 1] + ([ordered.index(start)] if start in ordered else [])
    if expect is not None:  # 0: the reference had no usable level, so the lowest goes first
        at = max([i for i, c in enumerate(ordered) if c <= expect], default=0)
        preferred = [at] + ([at + 1] if at + 1 < len(ordered) and ordered[at] <= expect else [])
    while high - low > 1:
        candidates = [i for i in preferred if low < i < high]
        probe = candidates[0] if candidates else (low + high) // 2
        preferred = [i for i in preferred if i != probe]
        if usable(ordered[probe]):
            low = probe
            if expect is None:
                preferred.insert(0, high - 1)  # after a pass: the top of what remains
        else:
            high = probe
    return ordered[low] if low >= 0 else None


def stop_check(concurrency: int, thresholds: Thresholds, window_s: float, time_scale: float,
               active: Callable[[], Sequence[RequestRecord]], done: Callable[[], Sequence[RequestRecord]],
               started_ns: Callable[[], int]) -> Callable[[], str | None]:
    """A closure the workload polls: the settled-failure reason for the agents, or None."""
    def check() -> str | None:
        now = time.perf_counter_ns()
        elapsed = (now - started_ns()) / 1e9 * time_scale
        progress = LevelProgress(concurrency, [r for r in done() if r.kind == "agent"],
                                 [r for r in active() if r.kind == "agent"], now, window_s - elapsed, time_scale)
        return settled_failure(progress, thresholds)
    return check
