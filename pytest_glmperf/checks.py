"""A comparison check: one (target, level, metric) against a reference run, and its outcome.

Kept apart from ``regression.py`` (which needs numpy for its bootstrap) so that results and
reports can hold checks without loading it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

PASS, FAIL, INCONCLUSIVE, WARNING = "pass", "fail", "inconclusive", "warning"
ERROR = "error"  # the comparison could not run on this session's data: never a pass
SKIPPED = "skipped"  # neither side measured the level: --capacity-search settled without it

__all__ = ["ERROR", "FAIL", "INCONCLUSIVE", "PASS", "SKIPPED", "WARNING", "Check"]


@dataclass(frozen=True)
class Check:
    """One (target, level, metric) compared with the baseline, and its outcome."""

    target: str
    level: int | None
    metric: str
    baseline: float | None
    current: float | None
    delta: float | None
    delta_pct: float | None
    ci_low: float | None
    ci_high: float | None
    outcome: str
    reason: str
    unit: str = ""
    tolerance: float | None = None
    higher_is_better: bool = True
    confidence: float = 0.99
    baseline_target: str | None = None
    n_baseline: int = 0
    n_current: int = 0

    @property
    def name(self) -> str:
        """Stable id for a pytest item: 'sim-hicache-c4-ttft_p95_s'."""
        where = f"-c{self.level}" if self.level is not None else ""
        return f"{self.target}{where}-{self.metric}"

    def message(self) -> str:
        """E.g. 'sim c=4 ttft_p95_s: 20.1 s -> 35.7 s (+77.6 %, 95 % CI of change +12.0..+19.3 s) exceeds ...'."""
        head = f"{self.target} c={self.level} {self.metric}" if self.level is not None else \
            f"{self.target} {self.metric}"
        if self.baseline is None or self.current is None or self.outcome == ERROR:
            return f"{head}: {self.outcome}: {self.reason}"
        parts = [_num(self.delta_pct, "{:+.1f} %") if self.delta_pct is not None else f"{_num(self.delta)}"]
        if self.ci_low is not None and self.ci_high is not None:
            parts.append(f"{_conf(self.confidence)} CI of change {_signed(self.ci_low)}..{_signed(self.ci_high)}"
                         f"{self.unit}")
        change = f"{_num(self.baseline)}{self.unit} -> {_num(self.current)}{self.unit} ({', '.join(parts)})"
        tol = self._tolerance_text()
        if self.outcome == FAIL:
            return f"{head}: {change} exceeds tolerance {tol}" + (f": {self.reason}" if self.reason else "")
        if self.outcome == PASS:
            return f"{head}: {change} within tolerance {tol}"
        return f"{head}: {change} {self.outcome}: {self.reason}"

    def _tolerance_text(self) -> str:
        if self.tolerance is None:
            return "–"
        if self.tolerance == 0:
            return "0 % (must not drop)" if self.higher_is_better else "0 % (must not rise)"
        sign = "-" if self.higher_is_better else "+"
        return f"{sign}{self.tolerance * 100:g} %"

    def as_dict(self) -> dict[str, Any]:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Check:
        return cls(**{item.name: data[item.name] for item in fields(cls) if item.name in data})


def _num(value: float | None, pattern: str | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int) and not pattern:
        return str(value)
    if pattern:
        return pattern.format(value)
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"


def _conf(confidence: float) -> str:
    """0.95 -> '95 %' (the report's spacing)."""
    return f"{confidence * 100:g} %"


def _signed(value: float) -> str:
    text = _num(value)
    return text if text.startswith("-") else f"+{text}"
