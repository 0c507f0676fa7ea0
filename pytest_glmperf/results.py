"""Verdict-bearing results: what a test asserts on.

``LevelResult.assert_usable()`` is the one place that turns statistics and thresholds into a
pytest outcome: pass, a failure naming every broken threshold, or an xfail for a level above
the required concurrency ("beyond required capacity").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import pytest

from .errors import MeasurementInvalid
from .records import RequestRecord
from .regression import FAIL, PASS, Check
from .selfcheck import ClientHealth
from .stats import LevelStats, StreamStats
from .thresholds import Thresholds, Verdict


@dataclass
class LevelResult:
    """One concurrency level (or a user scenario) judged against the bar."""

    name: str
    concurrency: int
    stats: StreamStats
    verdict: Verdict
    require_concurrency: int | None = None
    records: list[RequestRecord] = field(default_factory=list, repr=False)
    interrupted: bool = False
    client: ClientHealth | None = None
    cut_reason: str | None = None  # stopped early: its failure was already settled
    server_note: str | None = None  # the server died during the level (exit reason, log tail)

    @classmethod
    def judge(cls, name: str, concurrency: int, stats: StreamStats, thresholds: Thresholds,
              require_concurrency: int | None = None, records: list[RequestRecord] | None = None) -> LevelResult:
        return cls(name, concurrency, stats, thresholds.judge(stats.as_dict()), require_concurrency,
                   records or [])

    @property
    def required(self) -> bool:
        return self.require_concurrency is None or self.concurrency <= self.require_concurrency

    @property
    def invalid_reason(self) -> str | None:
        return self.client.invalid_reason if self.client else None

    @property
    def usable(self) -> bool:
        return self.verdict.usable and not self.cut_reason and not self.invalid_reason

    @property
    def status(self) -> str:
        if self.interrupted:
            return "interrupted"
        if self.invalid_reason:
            return "invalid"
        if self.usable:
            return "pass"
        return "fail" if self.required else "xfail"

    def explain(self) -> str:
        if self.invalid_reason:
            return self.invalid_reason
        if self.cut_reason:
            return f"stopped early, failure settled: {self.cut_reason}"
        return self.verdict.explain()

    def failure_message(self) -> str:
        lines = [f"{self.name} at concurrency {self.concurrency} is not usable:"]
        if self.cut_reason:
            lines.append(f"  stopped early, failure settled: {self.cut_reason}")
        lines += [f"  {check.message()}" for check in self.verdict.broken]
        if self.server_note:
            lines.append(f"  server died during the level: {self.server_note}")
        return "\n".join(lines)

    def raise_if_invalid(self) -> None:
        """The client was the bottleneck: neither pass nor fail, an error with the reason."""
        if self.invalid_reason:
            raise MeasurementInvalid(f"{self.name} at concurrency {self.concurrency}: measurement invalid, "
                                     f"{self.invalid_reason}")

    def assert_usable(self) -> None:
        """Fail naming each broken threshold; xfail above the required concurrency."""
        self.raise_if_invalid()
        if self.usable:
            return
        if not self.required:
            pytest.xfail(f"beyond required capacity (c={self.concurrency} > "
                         f"{self.require_concurrency}): {self.explain()}")
        pytest.fail(self.failure_message(), pytrace=False)

    def properties(self) -> list[tuple[str, Any]]:
        """Measured values for JUnit <properties> (record_property)."""
        data = self.stats.as_dict()
        keys = ["requests", "failure_rate", "tok_s_p50", "decode_tok_s_p50", "ttft_p50_s", "ttft_p95_s",
                "gap_p50_s", "gap_p95_s", "aggregate_tok_s"]
        props = [(f"glmperf_{k}", data[k]) for k in keys if k in data and data[k] is not None]
        return [*props, ("glmperf_usable", self.usable), ("glmperf_concurrency", self.concurrency)]

    def as_report(self) -> dict[str, Any]:
        """The report.json entry for this level."""
        data = self.stats.as_dict()
        if isinstance(self.stats, LevelStats):
            data["concurrency"] = self.concurrency
        return {**data, "concurrency": self.concurrency, "usable": self.usable, "status": self.status,
                "explain": self.explain(), "required": self.required, "cut_short": self.cut_reason,
                "server_died": self.server_note,
                "client": self.client.as_dict() if self.client else None}


class InconclusiveWarning(UserWarning):
    """A regression check could not tell a change from noise."""


@dataclass
class RegressionResult:
    """One (target, level, metric) regression check, as a pytest outcome."""

    name: str
    check: Check | None
    inconclusive_fails: bool = False

    def assert_ok(self) -> None:
        """Fail on a regression; an inconclusive check passes with a warning, or fails by option."""
        check = self.check
        if check is None:
            message = f"{self.name}: inconclusive: not measured in this run or in the baseline"
        elif check.outcome == FAIL:
            pytest.fail(check.message(), pytrace=False)
        elif check.outcome == PASS:
            return
        else:
            message = check.message()
        if self.inconclusive_fails:
            pytest.fail(f"{message} (--inconclusive=fail)", pytrace=False)
        warnings.warn(InconclusiveWarning(message), stacklevel=2)
