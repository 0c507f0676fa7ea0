"""Typed results for tests that render or compare reports without running a server.

Each builder goes through the real model (``LevelResult.judge``, ``TargetReport``,
``RunReport``), so what a test renders is what the plugin would have produced.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pytest_glmperf.report import RunReport, TargetReport
from pytest_glmperf.results import CAPACITY, MIXED, LevelResult
from pytest_glmperf.selfcheck import ClientHealth
from pytest_glmperf.stats import LevelStats, StreamStats
from pytest_glmperf.thresholds import Thresholds
from pytest_glmperf.verdict import Claims, decide


def level(c: int, status: str = "pass", *, target: str = "sim-hicache", gap: float | None = None,
          tok_s: float = 9.0, ttft: float = 20.0, agg: float | None = None, requests: int = 40,
          **fields: Any) -> LevelResult:
    """A capacity level whose status is ``status``: pass, fail, xfail (beyond the required
    level), invalid, interrupted or error; ``gap`` defaults to one that gives that status."""
    broken = status in ("fail", "xfail")
    stats = LevelStats(requests=requests, failures=0, failure_rate=0.0, tok_s_p50=tok_s, ttft_p50_s=ttft / 2,
                       ttft_p95_s=ttft, gap_p50_s=0.3, gap_p95_s=gap if gap is not None else (12.0 if broken else 0.5),
                       concurrency=c, duration_s=240.0, aggregate_tok_s=agg if agg is not None else 10.0 * c)
    extra: dict[str, Any] = {"required": status != "xfail", **fields}
    if status == "invalid":
        extra["client"] = ClientHealth(invalid_reason="client event-loop lag P99 80 ms > 50 ms")
    if status == "interrupted":
        extra["interrupted"] = True
    if status == "error":
        extra["error"] = "MeasurementError: calibration request failed"
    return LevelResult.judge(target, CAPACITY, c, stats, Thresholds(), **extra)


def mixed(status: str = "pass", target: str = "sim-hicache", **table: Any) -> LevelResult:
    decode = StreamStats(requests=30, failure_rate=0.0, tok_s_p50=30.0, ttft_p95_s=10.0,
                         gap_p95_s=12.0 if status == "fail" else 0.6)
    return LevelResult.judge(target, MIXED, 3, decode, Thresholds(), details=table)


def target(key: str, levels: Iterable[LevelResult] = (), *, settings: dict[str, Any] | None = None,
           **fields: Any) -> TargetReport:
    levels = tuple(lv.but(target=key) for lv in levels)
    settings = settings if settings is not None else {
        "levels": [lv.concurrency for lv in levels], "thresholds": Thresholds().as_dict(),
        "require_concurrency": max((lv.concurrency for lv in levels if lv.required), default=1)}
    return TargetReport(key=key, settings=settings, levels=levels, **fields)


def run(*targets: TargetReport, status: str = "complete", decided: bool = True) -> RunReport:
    """A finished report; ``decided`` gives it the verdict its targets earn (capacity claimed)."""
    verdict = decide(targets, Claims(capacity=frozenset(t.key for t in targets),
                                     mixed=frozenset(t.key for t in targets if t.mixed))) if decided else None
    return RunReport(targets=tuple(targets), status=status, verdict=verdict)
