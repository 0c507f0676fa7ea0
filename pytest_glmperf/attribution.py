"""Stall attribution: for every request that stopped writing for longer than the bar, what was going on.

A decode stream that goes silent for 12 s is a symptom; the cause is almost always something
else the server was doing at that moment: a long prefill admitted beside it (a spike, or a
revisit re-reading its context), a queue build-up, or KV cache loaded back from host memory.
This module lines each long gap up with the other requests' prefill windows (send..first
token) and the server gauge samples of the same moment, and says so in one sentence.

Times are model seconds since ``run_start_ns`` (the workload's start; gauge samples use the
same origin). Pure data in, plain dicts out, ready for report.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .records import RequestRecord

__all__ = ["attribute_stalls", "stall_line", "worst_stall_lines"]

STALLS_SHOWN = 3  # worst stalls named in a failing level's message and in report.md

QUEUE, RUNNING = "num_queue_reqs", "num_running_reqs"
HOST_USED = "hicache_host_used_tokens"


def attribute_stalls(records: Sequence[RequestRecord], gauges: Mapping[str, Sequence[tuple[float, float]]],
                     bar_s: float, run_start_ns: int) -> list[dict[str, Any]]:
    """One entry per request whose longest chunk gap exceeds ``bar_s``, in order of the gap's start.

    Each entry: the request, its longest gap (start, end, length; ``gaps_above_bar`` counts all
    of its gaps over the bar), the requests in prefill during it,
    the gauge samples nearest its start and the highest during it, load-back evidence when the
    gauges carry it, and ``explain``.
    """
    found = []
    for record in records:
        gap = _longest_gap(record, run_start_ns)
        if gap is None or gap[2] <= bar_s:
            continue
        start, end, length = gap
        prefills = _prefills(records, record, start, end, run_start_ns)
        entry = {
            "request_id": record.request_id, "kind": record.kind, "level": record.level,
            "gap_start_s": start, "gap_end_s": end, "gap_s": length,
            "gaps_above_bar": sum(g > bar_s for g in record.gaps_s),
            "in_prefill": prefills,
            "gauges": {name: _gauge_at(samples, start, end) for name, samples in gauges.items() if samples},
            "load_back": _load_back(gauges, start, end),
        }
        entry["explain"] = _explain(entry)
        found.append(entry)
    return sorted(found, key=lambda item: item["gap_start_s"])


def _to_s(ns: int, run_start_ns: int, record: RequestRecord) -> float:
    return (ns - run_start_ns) / 1e9 * record.time_scale


def _longest_gap(record: RequestRecord, run_start_ns: int) -> tuple[float, float, float] | None:
    """(start, end, length) in model seconds of the record's longest chunk gap."""
    stamps = record.chunk_ns
    if len(stamps) < 2:
        return None
    i = max(range(len(stamps) - 1), key=lambda k: stamps[k + 1] - stamps[k])
    start, end = _to_s(stamps[i], run_start_ns, record), _to_s(stamps[i + 1], run_start_ns, record)
    return start, end, end - start


def _prefills(records: Sequence[RequestRecord], stalled: RequestRecord, start: float, end: float,
              run_start_ns: int) -> list[dict[str, Any]]:
    """Other requests sent but without a first token at some point inside [start, end]."""
    found = []
    for other in records:
        if other is stalled:
            continue
        sent = _to_s(other.send_ns, run_start_ns, other)
        first_ns = other.first_token_ns if other.first_token_ns is not None else other.done_ns
        first = _to_s(first_ns, run_start_ns, other) if first_ns is not None else float("inf")
        overlap = min(end, first) - max(start, sent)
        if overlap <= 0:
            continue
        found.append({
            "request_id": other.request_id, "kind": other.kind, "prompt_tokens": other.prompt_tokens,
            "cached_tokens": other.cached_tokens, "new_tokens": _new_tokens(other),
            "sent_s": sent, "first_token_s": None if first == float("inf") else first, "overlap_s": overlap,
        })
    return sorted(found, key=lambda item: -(item["new_tokens"] or item["prompt_tokens"] or 0))


def _new_tokens(record: RequestRecord) -> int | None:
    """Prompt tokens the server had to compute (not served from cache)."""
    if record.prompt_tokens is None:
        return None
    return record.prompt_tokens - (record.cached_tokens or 0)


def _gauge_at(samples: Sequence[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """The sample nearest the gap's start, and the highest sample inside the gap."""
    nearest = min(samples, key=lambda sample: abs(sample[0] - start))
    inside = [value for t, value in samples if start <= t <= end]
    return {"nearest_t_s": nearest[0], "nearest": nearest[1], "max_during": max(inside) if inside else None,
            "samples_during": len(inside)}


def _load_back(gauges: Mapping[str, Sequence[tuple[float, float]]], start: float, end: float) -> dict[str, Any]:
    """Evidence of KV cache brought back from host memory during the gap, when gauges carry it.

    ``load_back_tokens`` (a cumulative counter sampled like a gauge): its increase over the gap;
    ``hicache_host_used_tokens``: its change over the gap. Absent series give None.
    """
    evidence: dict[str, Any] = {}
    for name, samples in gauges.items():
        if "load_back" in name or name == HOST_USED:
            evidence[name] = _change(samples, start, end)
    return evidence


def _change(samples: Sequence[tuple[float, float]], start: float, end: float) -> float | None:
    """Value at the last sample at or before ``end`` minus the last at or before ``start``."""
    before = [v for t, v in samples if t <= start]
    until = [v for t, v in samples if t <= end]
    if not before or not until:
        return None
    return until[-1] - before[-1]


def _explain(entry: dict[str, Any]) -> str:
    """One sentence: the gap, then the likeliest causes in order of weight."""
    head = (f"{entry['kind']} request {entry['request_id']} stopped writing for {entry['gap_s']:.1f} s "
            f"({entry['gap_start_s']:.1f}-{entry['gap_end_s']:.1f} s)")
    causes = []
    prefills = entry["in_prefill"]
    if prefills:
        shown = ", ".join(_describe_prefill(p) for p in prefills[:3])
        more = f" and {len(prefills) - 3} more" if len(prefills) > 3 else ""
        causes.append(f"{len(prefills)} other request(s) were in prefill ({shown}{more})")
    gauges = entry["gauges"]
    counts = [f"{_fmt(_peak(gauges[name]))} {label}" for name, label in ((QUEUE, "queued"), (RUNNING, "running"))
              if name in gauges]
    if counts:
        causes.append("the server had up to " + " and ".join(counts) + " requests")
    loaded = [value for name, value in entry["load_back"].items() if "load_back" in name and value]
    if loaded:
        causes.append(f"{_fmt(sum(loaded))} tokens were loaded back from host memory")
    if not prefills:
        causes.insert(0, "no other request was in prefill")
    return f"{head} while " + "; ".join(causes) + "." if causes else head + "."


def worst_stall_lines(stalls: Mapping[str, Any] | None, most: int = STALLS_SHOWN) -> list[str]:
    """A window's longest gaps above the bar (its ``stalls`` block), one line each."""
    return [stall_line(entry) for entry in ((stalls or {}).get("worst") or [])[:most]]


def stall_line(entry: Mapping[str, Any]) -> str:
    """A stall where a reviewer reads first (a failing test's message, report.md), in one line:
    '12.3 s at 41 s: 2 prefills of 101k tokens in flight, queue 3'."""
    prefills = entry.get("in_prefill") or []
    sizes = [p["prompt_tokens"] for p in prefills if p.get("prompt_tokens")]
    parts = ["no prefill in flight"] if not prefills else [
        f"{len(prefills)} prefill{'s' if len(prefills) > 1 else ''}"
        + (f" of up to {max(sizes) / 1000:.0f}k tokens" if sizes else "") + " in flight"]
    gauges = entry.get("gauges") or {}
    if QUEUE in gauges:
        parts.append(f"queue {_fmt(_peak(gauges[QUEUE]))}")
    loaded = sum(v for k, v in (entry.get("load_back") or {}).items() if "load_back" in k and v)
    if loaded:
        parts.append(f"{_fmt(loaded)} tokens loaded back")
    return f"{entry['gap_s']:.1f} s at {entry['gap_start_s']:.0f} s ({entry['kind']} {entry['request_id']}): " \
           + ", ".join(parts)


def _peak(gauge: dict[str, Any]) -> float:
    """The highest sample inside the gap, else the one nearest its start."""
    return gauge["max_during"] if gauge["max_during"] is not None else gauge["nearest"]


def _describe_prefill(prefill: dict[str, Any]) -> str:
    tokens = prefill["prompt_tokens"]
    text = f"{prefill['kind']} {prefill['request_id']}"
    if tokens is not None:
        text += f": {tokens:,} prompt tokens"
        if prefill["cached_tokens"]:
            text += f", {prefill['cached_tokens']:,} cached"
    return text


def _fmt(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() or abs(value) >= 100 else f"{value:.1f}"
