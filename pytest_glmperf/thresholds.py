"""The usability bar and the verdict it gives on measured statistics.

A level is usable when ALL hold (field report, workload 2): failure rate <= 5 %, per-request
output tok/s P50 >= 4, TTFT P95 <= 180 s, max chunk gap P95 <= 8 s. A statistic that could
not be measured (``None``) breaks its threshold with "no data": an empty sample never passes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Limit:
    """One threshold: which statistic, which direction, how it is called by users."""

    key: str          # option key, e.g. "max_ttft_p95"
    stat: str         # statistic name in LevelStats, e.g. "ttft_p95_s"
    upper: bool       # True: measured must be <= limit; False: >= limit
    unit: str


LIMITS: tuple[Limit, ...] = (
    Limit("max_failure_rate", "failure_rate", upper=True, unit=""),
    Limit("min_tok_s_p50", "tok_s_p50", upper=False, unit=" tok/s"),
    Limit("max_ttft_p95", "ttft_p95_s", upper=True, unit=" s"),
    Limit("max_gap_p95", "gap_p95_s", upper=True, unit=" s"),
)


@dataclass(frozen=True)
class Thresholds:
    """The usability bar. Validated on construction; every error names the option key."""

    max_failure_rate: float = 0.05
    min_tok_s_p50: float = 4.0
    max_ttft_p95: float = 180.0
    max_gap_p95: float = 8.0

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            _check_number(item.name, value)
        if self.max_failure_rate > 1:
            raise ConfigError(f"max_failure_rate must be a fraction in [0, 1], got {self.max_failure_rate}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Thresholds:
        """Build from option values (strings allowed); unknown keys are an error."""
        known = {item.name for item in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown threshold {sorted(unknown)[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**{key: parse_threshold(key, value) for key, value in values.items()})

    def as_dict(self) -> dict[str, float]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def judge(self, stats: Mapping[str, Any]) -> Verdict:
        """Compare a statistics mapping (LevelStats.as_dict()) with every limit."""
        checks = [_check(limit, getattr(self, limit.key), stats.get(limit.stat)) for limit in LIMITS]
        return Verdict(checks=tuple(checks))


@dataclass(frozen=True)
class Check:
    """One threshold applied to one measured value."""

    key: str
    stat: str
    measured: float | None
    limit: float
    upper: bool
    unit: str

    @property
    def ok(self) -> bool:
        if self.measured is None or math.isnan(self.measured):
            return False
        return self.measured <= self.limit if self.upper else self.measured >= self.limit

    def message(self) -> str:
        """E.g. 'gap_p95_s = 11.95 s > max_gap_p95 8 s'."""
        if self.measured is None:
            return f"{self.stat}: no data (needed for {self.key} {self.limit:g}{self.unit})"
        relation = ("<=" if self.ok else ">") if self.upper else (">=" if self.ok else "<")
        return f"{self.stat} = {self.measured:.4g}{self.unit} {relation} {self.key} {self.limit:g}{self.unit}"


@dataclass(frozen=True)
class Verdict:
    """All checks of one level; usable when every one holds."""

    checks: tuple[Check, ...]

    @property
    def usable(self) -> bool:
        return all(check.ok for check in self.checks)

    @property
    def broken(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def explain(self) -> str:
        """One line per broken threshold, or 'usable'."""
        broken = self.broken
        return "usable" if not broken else "; ".join(check.message() for check in broken)


def parse_threshold(key: str, value: Any) -> float:
    """Turn an option value into a non-negative number or raise ConfigError naming the key."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold {key} must be a number, got {value!r}") from None
    _check_number(key, number)
    return number


def _check_number(key: str, value: float) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ConfigError(f"threshold {key} must be a non-negative number, got {value!r}")


def _check(limit: Limit, bound: float, measured: Any) -> Check:
    value = None if measured is None else float(measured)
    return Check(limit.key, limit.stat, value, bound, limit.upper, limit.unit)
