"""Verdict-bearing results: what a test asserts on, and what the report is made of.

A ``LevelResult`` is frozen once judged: one capacity level, the mixed workload or a user's
scenario, with its statistics, the threshold checks and every reason it could not be
trusted (interrupted, client-bound, an error, too few requests). ``status`` is decided here
and nowhere else; ``assert_usable()`` turns it into a pytest outcome: pass, a failure naming
every broken threshold, an xfail for a level above the required concurrency ("beyond
required capacity"), an error for an invalid measurement, and for too few requests a
warning or a failure (``--inconclusive``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from .attribution import worst_stall_lines
from .checks import ERROR, FAIL, PASS, SKIPPED, Check
from .errors import InconclusiveWarning, MeasurementInvalid
from .records import RequestRecord
from .selfcheck import ClientHealth
from .stats import LevelStats, StreamStats
from .thresholds import Thresholds, Verdict

CAPACITY, MIXED = "capacity", "mixed"
STATUSES = ("pass", "fail", "xfail", "inconclusive", "invalid", "interrupted", "error")


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level, the mixed workload, or a user scenario, judged against the bar."""

    target: str
    workload: str
    concurrency: int
    stats: StreamStats
    verdict: Verdict
    required: bool = True
    require_concurrency: int | None = None   # what "required" was judged against, for messages
    min_requests: int = 0
    interrupted: bool = False
    client: ClientHealth | None = None
    cut_reason: str | None = None    # stopped early: its failure was already settled
    server_note: str | None = None   # the server died during the level (exit reason, log tail)
    error: str | None = None         # the measurement itself broke (the exception, in one line)
    started_at: str | None = None    # ISO wall-clock time the window started
    inconclusive_fails: bool = False
    details: Mapping[str, Any] = field(default_factory=dict)   # report-only evidence (stalls, gauges, …)
    records: tuple[RequestRecord, ...] = field(default=(), repr=False, compare=False)

    @classmethod
    def judge(cls, target: str, workload: str, concurrency: int, stats: StreamStats, thresholds: Thresholds,
              **evidence: Any) -> LevelResult:
        """Judge ``stats`` against ``thresholds``; keyword fields as in the class."""
        verdict = thresholds.judge(stats.as_dict(), stats.samples or None, evidence.get("min_requests", 0))
        return cls(target, workload, concurrency, stats, verdict, **evidence)

    @property
    def name(self) -> str:
        return self.target if self.workload == CAPACITY else f"{self.target} {self.workload}"

    @property
    def invalid_reason(self) -> str | None:
        return self.client.invalid_reason if self.client else None

    @property
    def usable(self) -> bool:
        return self.status == "pass"

    @property
    def status(self) -> str:
        """pass | fail | xfail | inconclusive | invalid | interrupted | error (docs/metrics.md)."""
        if self.error:
            return "error"
        if self.interrupted:
            return "interrupted"
        if self.invalid_reason:
            return "invalid"
        broken = self.cut_reason or self.verdict.broken
        if self.verdict.inconclusive and not self.cut_reason:
            return "inconclusive"
        if broken:
            return "fail" if self.required else "xfail"
        return "pass"

    @property
    def settled(self) -> bool | None:
        """Whether the verdict would hold within the statistics' confidence intervals."""
        return True if self.cut_reason else self.verdict.settled

    def explain(self) -> str:
        """Why the status is what it is, in one line."""
        status = self.status
        if status == "error":
            return f"measurement error: {self.error}"
        if status == "interrupted":
            return "interrupted before the window ended"
        if status == "invalid":
            return f"measurement invalid: {self.invalid_reason}"
        if self.cut_reason:
            return f"stopped early, failure settled: {self.cut_reason}"
        if status == "inconclusive":
            return self._too_few()
        text = self.verdict.explain()
        return text if status == "pass" and self.settled is not False else \
            text + ("" if status != "pass" else " (not settled: within the confidence interval of the bar)")

    def brief(self) -> str:
        """``explain()`` in a few words, for a verdict line that lists several results."""
        if self.status == "inconclusive":
            return f"too few requests ({self._span()} < --min-requests {self.min_requests})"
        return self.explain()

    def _span(self) -> str:
        counts = sorted({c.samples or 0 for c in self.verdict.inconclusive})
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"

    def _too_few(self) -> str:
        if not self.verdict.inconclusive:
            return ""
        return (f"too few requests: its statistics rest on {self._span()} (needs >= {self.min_requests}; "
                "a longer window, --repeats or a lower --min-requests)")

    def failure_message(self) -> str:
        lines = [f"{self.name} at concurrency {self.concurrency} is not usable:"]
        if self.error:
            lines.append(f"  measurement error: {self.error}")
        if self.cut_reason:
            lines.append(f"  stopped early, failure settled: {self.cut_reason}")
        lines += [f"  {check.message()}" for check in self.verdict.broken]
        if self.verdict.inconclusive:
            lines.append(f"  {self._too_few()}")
        if self.server_note:
            lines.append(f"  server died during the level: {self.server_note}")
        lines += [f"  stall {line}" for line in worst_stall_lines(self.details.get("stalls"))]
        return "\n".join(lines)

    def raise_if_invalid(self) -> None:
        """The client was the bottleneck: neither pass nor fail, an error with the reason."""
        if self.invalid_reason and self.required:
            raise MeasurementInvalid(f"{self.name} at concurrency {self.concurrency}: measurement invalid, "
                                     f"{self.invalid_reason}")

    def assert_usable(self) -> None:
        """The pytest outcome of this result (see the module docstring)."""
        status = self.status
        self.raise_if_invalid()
        if status == "pass":
            return
        if not self.required and status != "error":
            beyond = f" > {self.require_concurrency}" if self.require_concurrency is not None else ""
            pytest.xfail(f"beyond required capacity (c={self.concurrency}{beyond}): {self.explain()}")
        if status == "inconclusive":
            message = f"{self.name} at concurrency {self.concurrency}: {self.explain()}"
            if self.inconclusive_fails:
                pytest.fail(f"{message} (--inconclusive=fail)", pytrace=False)
            warnings.warn(InconclusiveWarning(message), stacklevel=2)
            return
        if status == "interrupted":
            pytest.fail(f"{self.name} at concurrency {self.concurrency}: interrupted", pytrace=False)
        pytest.fail(self.failure_message(), pytrace=False)

    def properties(self) -> list[tuple[str, Any]]:
        """Measured values, limits and the outcome, for JUnit <properties> (record_property)."""
        data = self.stats.as_dict()
        keys = ["requests", "failure_rate", "tok_s_p50", "decode_tok_s_p50", "ttft_p50_s", "ttft_p95_s",
                "gap_p50_s", "gap_p95_s", "aggregate_tok_s"]
        props = [(f"glmperf_{k}", data[k]) for k in keys if k in data and data[k] is not None]
        props += [(f"glmperf_limit_{c.key}", c.limit) for c in self.verdict.checks]
        return [*props, ("glmperf_status", self.status), ("glmperf_settled", self.settled),
                ("glmperf_usable", self.usable), ("glmperf_concurrency", self.concurrency)]

    def as_dict(self) -> dict[str, Any]:
        """The report.json entry (docs/report-schema.md): a mixed run keeps its whole table
        at the top and the judged decode streams under ``decode_streams``."""
        stats = self.stats.as_dict()
        flat = {"decode_streams": stats} if self.workload == MIXED else stats
        return {**self.details, **flat, "workload": self.workload, "concurrency": self.concurrency,
                "status": self.status, "usable": self.usable, "required": self.required,
                "require_concurrency": self.require_concurrency, "settled": self.settled,
                "explain": self.explain(), "checks": self.verdict.as_dict(), "min_requests": self.min_requests,
                "cut_short": self.cut_reason, "server_died": self.server_note, "error": self.error,
                "interrupted": self.interrupted, "started_at": self.started_at,
                "client": self.client.as_dict() if self.client else None}

    @classmethod
    def from_dict(cls, target: str, data: Mapping[str, Any], workload: str = CAPACITY) -> LevelResult:
        """A level of a saved report.json (schema 1 or 2), as the model holds it."""
        workload = data.get("workload") or workload
        if workload == MIXED:
            stats: StreamStats = StreamStats.from_dict(dict(data.get("decode_streams") or {}))
        else:
            stats = (LevelStats if workload == CAPACITY else StreamStats).from_dict(dict(data))
        checks = data.get("checks")
        verdict = Verdict.from_dict(checks) if checks else Thresholds().judge(stats.as_dict())
        client = ClientHealth(**data["client"]) if isinstance(data.get("client"), dict) else None
        known = set(stats.as_dict()) | set(_OWN_KEYS)
        details = {k: v for k, v in data.items() if k not in known} if workload != MIXED else \
            {k: v for k, v in data.items() if k not in _OWN_KEYS}
        status = data.get("status")
        return cls(target, workload, int(data.get("concurrency") or 0), stats, verdict,
                   required=bool(data.get("required", True)), require_concurrency=data.get("require_concurrency"),
                   min_requests=int(data.get("min_requests") or 0),
                   interrupted=bool(data.get("interrupted") or status == "interrupted"), client=client,
                   cut_reason=data.get("cut_short"), server_note=data.get("server_died"),
                   error=data.get("error") or (data.get("explain") if status == "error" else None),
                   started_at=data.get("started_at"), details=details)

    def but(self, **changes: Any) -> LevelResult:
        """A copy with some fields changed (a frozen result is never edited in place)."""
        return replace(self, **changes)


_OWN_KEYS = ("workload", "concurrency", "status", "usable", "required", "require_concurrency", "settled", "explain",
             "checks",
             "min_requests", "cut_short", "server_died", "error", "interrupted", "started_at", "client",
             "decode_streams")


@dataclass(frozen=True)
class RegressionResult:
    """One (target, level, metric) regression check, as a pytest outcome."""

    name: str
    check: Check
    inconclusive_fails: bool = False

    def assert_ok(self) -> None:
        """Fail on a regression or a comparison that could not run; an inconclusive check passes
        with a warning, or fails by option."""
        check = self.check
        if check.outcome in (FAIL, ERROR):
            pytest.fail(check.message(), pytrace=False)
        if check.outcome == PASS:
            return
        if check.outcome == SKIPPED:
            pytest.skip(check.reason)
        message = check.message()
        if self.inconclusive_fails:
            pytest.fail(f"{message} (--inconclusive=fail)", pytrace=False)
        warnings.warn(InconclusiveWarning(message), stacklevel=2)
