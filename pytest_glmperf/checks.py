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
        parts = [fmt_num(self.delta_pct, "{:+.1f} %") if self.delta_pct is not None else f"{fmt_num(self.delta)}"]
        if self.ci_low is not None and self.ci_high is not None:
            interval = f"{fmt_signed(self.ci_low)}..{fmt_signed(self.ci_high)}{self.unit}"
            parts.append(f"{fmt_conf(self.confidence)} CI of change {interval}")
        change = f"{fmt_num(self.baseline)}{self.unit} -> {fmt_num(self.current)}{self.unit} ({', '.join(parts)})"
        tol = self.tolerance_text()
        if self.outcome == FAIL:
            return f"{head}: {change} exceeds tolerance {tol}" + (f": {self.reason}" if self.reason else "")
        if self.outcome == PASS:
            return f"{head}: {change} within tolerance {tol}"
        return f"{head}: {change} {self.outcome}: {self.reason}"

    @property
    def window(self) -> str:
        """Where the check looked: 'c=4', 'mixed' or 'all levels' (max usable)."""
        if self.level is not None:
            return f"c={self.level}"
        return "mixed" if self.metric.startswith("mixed_") else "all levels"

    def why(self) -> str:
        """The outcome's reason in words, also where the gate needed none (a clear pass or fail)."""
        if self.reason:
            return self.reason
        if self.outcome == PASS:
            return f"the whole {fmt_conf(self.confidence)} interval lies within the tolerance"
        if self.outcome == FAIL:
            return f"the whole {fmt_conf(self.confidence)} interval lies beyond the tolerance"
        return ""

    @property
    def floor(self) -> float:
        """The smallest change that counts for this metric, in its unit (regression.Metric.floor)."""
        from .regression import BY_STAT  # numpy only once a comparison is shown

        metric = BY_STAT.get(self.metric.removeprefix("mixed_"))
        return metric.floor if metric else 0.0

    def limit_pct(self) -> float | None:
        """The tolerance as a % of the baseline, with the metric's floor applied: how far the
        change may go in the bad direction."""
        if self.tolerance is None or not self.baseline:
            return None
        return max(self.tolerance * abs(self.baseline), self.floor) / abs(self.baseline) * 100

    def allowed_text(self) -> str:
        """The tolerance as the gate applied it: '+10 %', or '+10 % (floor +0.5 s)' where the floor is wider."""
        text = self.tolerance_text()
        if self.tolerance is not None and self.floor > self.tolerance * abs(self.baseline or 0.0):
            sign = "-" if self.higher_is_better else "+"
            text += f" (floor {sign}{self.floor:g}{self.unit})"
        return text

    def tolerance_text(self) -> str:
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


def fmt_num(value: float | None, pattern: str | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, int) and not pattern:
        return str(value)
    if pattern:
        return pattern.format(value)
    magnitude = abs(value)
    return f"{value:.0f}" if magnitude >= 100 else f"{value:.1f}" if magnitude >= 10 else f"{value:.2f}"


def fmt_conf(confidence: float) -> str:
    """0.95 -> '95 %' (the report's spacing)."""
    return f"{confidence * 100:g} %"


def fmt_signed(value: float) -> str:
    text = fmt_num(value)
    return text if text.startswith("-") else f"+{text}"
