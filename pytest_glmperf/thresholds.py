"""The usability bar and the verdict it gives on measured statistics.

A level is usable when ALL hold (field report, workload 2): failure rate <= 5 %, per-request
output tok/s P50 >= 4, TTFT P95 <= 180 s, max chunk gap P95 <= 8 s. A statistic that could
not be measured (``None``) breaks its threshold with "no data": an empty sample never passes.

Given the per-request values behind each statistic, every check also says how much evidence
it rests on (docs/metrics.md, "How sure a verdict is"):

* ``enough``: the statistic rests on at least ``min_requests`` requests;
* ``settled``: the verdict would not flip within the statistic's 95 % confidence interval.
  A P95 is at most the limit exactly when at most 5 % of the population lies beyond it, so
  with ``beyond`` of ``samples`` requests past the limit an exact binomial test decides it,
  whatever the distribution: a break is settled when so many requests beyond could not come
  from a server within the limit, a pass when so few could not come from one beyond it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from .errors import ConfigError

SETTLED_CONFIDENCE = 0.95


@dataclass(frozen=True)
class Limit:
    """One threshold: which statistic, which direction, how it is called by users."""

    key: str          # option key, e.g. "max_ttft_p95"
    stat: str         # statistic name in LevelStats, e.g. "ttft_p95_s"
    upper: bool       # True: measured must be <= limit; False: >= limit
    unit: str
    # The share of requests that may lie beyond the limit while the statistic holds: 5 % for
    # a P95, half for a P50; None for a rate, where the limit itself is that share.
    share: float | None = None


LIMITS: tuple[Limit, ...] = (
    Limit("max_failure_rate", "failure_rate", upper=True, unit=""),
    Limit("min_tok_s_p50", "tok_s_p50", upper=False, unit=" tok/s", share=0.5),
    Limit("max_ttft_p95", "ttft_p95_s", upper=True, unit=" s", share=0.05),
    Limit("max_gap_p95", "gap_p95_s", upper=True, unit=" s", share=0.05),
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

    def judge(self, stats: Mapping[str, Any], samples: Mapping[str, Sequence[float]] | None = None,
              min_requests: int = 0) -> Verdict:
        """Compare a statistics mapping (LevelStats.as_dict()) with every limit.

        ``samples`` holds the per-request values behind each statistic (failure_rate: 1.0 per
        failed request, 0.0 per other); with them each check says whether it rests on at
        least ``min_requests`` requests and whether it is settled.
        """
        checks = [_check(limit, getattr(self, limit.key), stats.get(limit.stat),
                         None if samples is None else samples.get(limit.stat, ()), min_requests)
                  for limit in LIMITS]
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
    samples: int | None = None    # requests the statistic rests on (None: not known)
    beyond: int | None = None     # of those, how many lie beyond the limit
    settled: bool | None = None   # the verdict holds at SETTLED_CONFIDENCE (None: not known)
    enough: bool = True           # samples >= the run's --min-requests

    @property
    def ok(self) -> bool:
        if self.measured is None or math.isnan(self.measured):
            return False
        return self.measured <= self.limit if self.upper else self.measured >= self.limit

    @property
    def inconclusive(self) -> bool:
        """Too few requests to say, and not broken beyond doubt either."""
        return not self.enough and not (not self.ok and self.settled)

    def message(self) -> str:
        """E.g. 'gap_p95_s = 11.95 s > max_gap_p95 8 s (19 of 40 requests beyond, settled)'."""
        if self.measured is None:
            return f"{self.stat}: no data (needed for {self.key} {self.limit:g}{self.unit})"
        relation = ("<=" if self.ok else ">") if self.upper else (">=" if self.ok else "<")
        text = f"{self.stat} = {self.measured:.4g}{self.unit} {relation} {self.key} {self.limit:g}{self.unit}"
        return f"{text} ({self.evidence()})" if self.samples is not None else text

    def evidence(self) -> str:
        """How much the check rests on: '3 of 12 requests beyond, too few (needs >= 20)'."""
        parts = [f"{self.beyond} of {self.samples} requests beyond"]
        if not self.enough:
            parts.append("too few requests")
        parts.append("settled" if self.settled else "not settled")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)} | {"ok": self.ok}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        return cls(**{item.name: data[item.name] for item in fields(cls) if item.name in data})


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

    @property
    def inconclusive(self) -> list[Check]:
        """Checks resting on too few requests, unless some broken check is settled anyway."""
        if any(not check.ok and check.settled for check in self.checks):
            return []
        return [check for check in self.checks if check.inconclusive]

    @property
    def settled(self) -> bool | None:
        """Whether the verdict holds within the statistics' confidence intervals (None: not known).

        A failure is settled when one broken check is; a pass when every check is.
        """
        if any(check.settled is None for check in self.checks):
            return None
        broken = self.broken
        return any(c.settled for c in broken) if broken else all(c.settled for c in self.checks)

    def explain(self) -> str:
        """One line per broken threshold, or 'usable'."""
        broken = self.broken
        return "usable" if not broken else "; ".join(check.message() for check in broken)

    def as_dict(self) -> list[dict[str, Any]]:
        return [check.as_dict() for check in self.checks]

    @classmethod
    def from_dict(cls, data: Sequence[Mapping[str, Any]]) -> Verdict:
        return cls(checks=tuple(Check.from_dict(item) for item in data))


def parse_threshold(key: str, value: Any) -> float:
    """Turn an option value into a non-negative number or raise ConfigError naming the key."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold {key} must be a number, got {value!r}") from None
    _check_number(key, number)
    return number


def _check_number(key: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"threshold {key} must be a non-negative finite number, got {value!r}")


def _check(limit: Limit, bound: float, measured: Any, values: Sequence[float] | None, min_requests: int) -> Check:
    value = None if measured is None else float(measured)
    check = Check(limit.key, limit.stat, value, bound, limit.upper, limit.unit)
    if values is None:
        return check
    beyond = sum((v > bound) if limit.upper else (v < bound) for v in values)
    share = bound if limit.share is None else limit.share
    n = len(values)
    if value is None:  # nothing to judge it on: an empty sample never passes, and never will
        settled = True
    elif check.ok:  # settled when this few beyond could not come from a server past the limit
        settled = binomial_at_most(beyond, n, share) < 1 - SETTLED_CONFIDENCE
    else:           # settled when this many beyond could not come from a server within it
        settled = n > 0 and binomial_at_least(beyond, n, share) < 1 - SETTLED_CONFIDENCE
    return Check(limit.key, limit.stat, value, bound, limit.upper, limit.unit, samples=n, beyond=beyond,
                 settled=settled, enough=n >= min_requests)


def binomial_at_least(k: int, n: int, p: float) -> float:
    """P(K >= k) for K ~ Binomial(n, p)."""
    return sum(_binomial_pmf(i, n, p) for i in range(max(k, 0), n + 1))


def binomial_at_most(k: int, n: int, p: float) -> float:
    """P(K <= k) for K ~ Binomial(n, p)."""
    return sum(_binomial_pmf(i, n, p) for i in range(0, min(k, n) + 1))


def _binomial_pmf(i: int, n: int, p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return float(i == (0 if p <= 0.0 else n))
    log = math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
    return math.exp(log)
