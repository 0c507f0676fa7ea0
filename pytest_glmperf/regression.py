"""The regression gate: is this run worse than the baseline, or is that noise?

Each metric has a direction (tok/s must not drop, TTFT P95 and gap P95 must not rise) and a
relative tolerance. A single number per side cannot tell a regression from noise: a P95 from
40 requests moves by 20 % between two runs of the same server. So the gate resamples the
per-request samples of both runs (bootstrap, seeded, 2000 resamples) and gets an interval for
the change. The outcome is

* ``fail``          only when the whole interval lies beyond the tolerance in the bad direction;
* ``pass``          when the whole interval lies within the tolerance;
* ``inconclusive``  otherwise, with the reason: too few requests, a metric or the records
                    missing on one side, or an interval that straddles the tolerance.

With several runs per side (``--repeats N``, records tagged ``extra["repeat"]``), runs are
resampled too (a two-level bootstrap), so run-to-run drift widens the interval as it should.
See docs/baselines.md.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from .checks import ERROR, FAIL, INCONCLUSIVE, PASS, WARNING, Check, fmt_conf, fmt_num, fmt_signed
from .errors import ConfigError
from .records import RequestRecord
from .results import CAPACITY, MIXED
from .thresholds import Thresholds

if TYPE_CHECKING:
    from .baseline import Baseline
    from .report import RunReport, TargetReport
    from .results import LevelResult

MIXED_PREFIX = "mixed_"  # a mixed-workload check is named mixed_<metric> and has no level

__all__ = [
    "ERROR", "FAIL", "INCONCLUSIVE", "METRICS", "MIXED_CHECKS", "PASS", "WARNING", "Check", "Metric", "Tolerances",
    "bootstrap_change", "compare_level", "compare_max_usable", "compare_mixed", "compare_reports", "match_target",
    "split_runs",
]


@dataclass(frozen=True)
class Metric:
    """A statistic of a level, how it is computed from records, and which way is worse."""

    name: str
    higher_is_better: bool
    unit: str
    value: Callable[[RequestRecord], float | None]
    reducer: str = "pct"          # pct: percentile | rate: tokens / duration | mean
    pct: float = 50.0
    agents_only: bool = True      # the streams a user sits behind; spikes are background load
    min_requests: int = 20
    # The smallest change a user can notice, in the metric's unit: a relative tolerance of a
    # tiny baseline (a 0.12 s gap, a 0.2 s TTFT) would otherwise gate on clock jitter.
    floor: float = 0.0

    def reduce(self, samples: np.ndarray, occupancy: float | None = None) -> np.ndarray:
        """The statistic of each resample (the last axis holds requests; rates carry (tokens, e2e) pairs).

        A rate is tokens per busy request-second times the level's mean occupancy (Little's law):
        on the full sample that is exactly tokens / duration, and under resampling it varies with
        the requests' speed, which is where a closed-loop level's throughput noise comes from.
        """
        if self.reducer == "pct":
            return np.percentile(samples, self.pct, axis=-1)
        if self.reducer == "rate":
            busy = samples[..., 1].sum(axis=-1)
            with np.errstate(divide="ignore", invalid="ignore"):
                return samples[..., 0].sum(axis=-1) / busy * (occupancy or np.nan)
        return samples.mean(axis=-1)


def _ok(get: Callable[[RequestRecord], float | None]) -> Callable[[RequestRecord], float | None]:
    return lambda r: get(r) if r.ok else None


TOK_S = Metric("tok_s_p50", True, " tok/s", lambda r: r.output_tok_s, pct=50, min_requests=10)
AGGREGATE = Metric("aggregate_tok_s", True, " tok/s", lambda r: float(r.output_tokens) if r.ok else 0.0,
                   reducer="rate", agents_only=False, min_requests=10)
TTFT = Metric("ttft_p95_s", False, " s", _ok(lambda r: r.ttft_s), pct=95, floor=1.0)
GAP = Metric("gap_p95_s", False, " s", _ok(lambda r: r.max_gap_s), pct=95, floor=0.5)
# Failures are rare: a relative tolerance of 0 % is no tolerance, so two points of failure rate
# are the smallest change that counts.
FAILURES = Metric("failure_rate", False, "", lambda r: 0.0 if r.ok else 1.0, reducer="mean",
                  agents_only=False, min_requests=10, floor=0.02)
METRICS: tuple[Metric, ...] = (TOK_S, AGGREGATE, TTFT, GAP, FAILURES)
MIXED_METRICS: tuple[Metric, ...] = (TOK_S, TTFT, GAP, FAILURES)  # open-loop streams: no closed-loop rate
MIXED_CHECKS = tuple(MIXED_PREFIX + m.name for m in MIXED_METRICS)
BY_STAT = {m.name: m for m in METRICS}


@dataclass(frozen=True)
class Tolerances:
    """How much worse a metric may get before it counts as a regression, and the noise model.

    Tolerances are fractions of the baseline value (0.10 = 10 %). ``max_usable`` 0.0 means the
    highest usable concurrency must not drop at all. ``confidence`` is 99 %, not 95 %: a run
    makes ~20 checks, and percentile-bootstrap intervals of a P95 from under 100 requests are
    a little too narrow; at 95 % a run compared with a repeat of itself failed about one check
    in 300 (synthetic closed-loop levels), at 99 % none in 3600 (docs/baselines.md).
    """

    tok_s_p50: float = 0.10
    aggregate_tok_s: float = 0.10
    ttft_p95_s: float = 0.10
    gap_p95_s: float = 0.10
    failure_rate: float = 0.10
    max_usable: float = 0.0
    confidence: float = 0.99
    resamples: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tok_s_p50", "aggregate_tok_s", "ttft_p95_s", "gap_p95_s", "failure_rate", "max_usable"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
                raise ConfigError(f"tolerance {name} must be a non-negative fraction (0.1 = 10 %), got {value!r}")
        if not 0.5 <= self.confidence < 1:
            raise ConfigError(f"tolerance confidence must be in [0.5, 1), got {self.confidence!r}")
        if not isinstance(self.resamples, int) or self.resamples < 100:
            raise ConfigError(f"tolerance resamples must be an integer >= 100, got {self.resamples!r}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Tolerances:
        """Build from option values: '10%', '0.1' and 0.1 all mean ten percent; unknown keys fail."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown tolerance {unknown[0]!r}; known: {', '.join(sorted(known))}")
        return cls(**{key: _parse(key, value) for key, value in values.items()})

    def of(self, metric: str) -> float:
        return float(getattr(self, metric))


def _parse(key: str, value: Any) -> Any:
    if key in ("resamples", "seed"):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"tolerance {key} must be an integer, got {value!r}") from None
    text = str(value).strip()
    match = re.fullmatch(r"([-+0-9.eE]+)\s*%", text)
    try:
        number = float(match.group(1)) / 100 if match else float(text)
    except ValueError:
        raise ConfigError(f"tolerance {key} must be a fraction or a percentage like 10%, got {value!r}") from None
    if key != "confidence" and not match and number > 10:
        raise ConfigError(f"tolerance {key}={value!r} reads as {number:.0%}; write '{value}%' for a percentage")
    return number


# -- records per run -------------------------------------------------------------------------

Records = Sequence[RequestRecord] | Sequence[Sequence[RequestRecord]]
Sample = tuple[np.ndarray, float | None]  # one run's per-request values (and occupancy, for a rate)


def split_runs(records: Records) -> list[list[RequestRecord]]:
    """Records as a list of runs: given as lists already, else grouped by ``extra['repeat']``."""
    if not records:
        return []
    if not isinstance(records[0], RequestRecord):
        return [list(run) for run in records if run]  # type: ignore[arg-type]
    groups: dict[Any, list[RequestRecord]] = {}
    for record in records:
        groups.setdefault(record.extra.get("repeat", 0), []).append(record)  # type: ignore[union-attr]
    return [groups[key] for key in sorted(groups, key=str)]


@dataclass
class Side:
    """One target of one run (or several runs): its typed report and its records split by run."""

    target: TargetReport
    runs: list[list[RequestRecord]]

    @classmethod
    def of(cls, target: TargetReport, records: Records, only_target: bool = False) -> Side:
        """``only_target``: records without a profile (older files) belong to this target."""
        mine = [[r for r in run if r.profile == target.key or (only_target and not r.profile)]
                for run in split_runs(records)]
        return cls(target, [run for run in mine if run])

    @property
    def key(self) -> str:
        return self.target.key

    @property
    def thresholds(self) -> Thresholds:
        try:
            return self.target.thresholds
        except ConfigError:
            return Thresholds()

    def levels(self) -> dict[int, LevelResult]:
        return {lv.concurrency: lv for lv in self.target.levels}

    def result(self, level: int | None) -> LevelResult | None:
        """A capacity level's result, or (``None``) the mixed workload's."""
        return self.target.mixed if level is None else self.levels().get(level)

    def level_runs(self, level: int | None) -> list[list[RequestRecord]]:
        """Per run, the records of a capacity level, or (``None``) of the mixed workload."""
        picked = [[r for r in run if (r.scenario == MIXED if level is None else
                                      r.level == level and r.scenario == CAPACITY)] for run in self.runs]
        return [run for run in picked if run]

    def samples(self, metric: Metric, level: int | None) -> list[Sample]:
        """Per run: the per-request values of ``metric`` (and the level's occupancy, for rates)."""
        runs = self.level_runs(level)
        found = self.result(level)
        reported = found.stats.as_dict().get("duration_s") if found else None
        return [_sample(metric, run, reported if len(runs) == 1 and reported else _span_s(run)) for run in runs]

    def point(self, metric: Metric, level: int | None) -> float | None:
        """The report's figure for one run; the mean of the runs' figures for several."""
        found = self.result(level)
        entry = found.stats.as_dict() if found else {}
        samples = self.samples(metric, level)
        if metric.name in entry and len(samples) <= 1:
            return None if entry[metric.name] is None else float(entry[metric.name])
        figures = [float(metric.reduce(values, occupancy)) for values, occupancy in samples if len(values)]
        figures = [f for f in figures if math.isfinite(f)]
        return sum(figures) / len(figures) if figures else None


def _sample(metric: Metric, records: Sequence[RequestRecord], duration_s: float | None) -> Sample:
    """One run's resampling unit: per-request values, or (tokens, e2e) rows and occupancy for a rate."""
    pool = [r for r in records if r.counted and not (metric.agents_only and r.kind == "spike")]
    if metric.reducer == "rate":
        rows = np.array([(metric.value(r) or 0.0, r.e2e_s or 0.0) for r in pool], dtype=float).reshape(-1, 2)
        occupancy = rows[:, 1].sum() / duration_s if duration_s else None
        return rows, occupancy
    raw = (metric.value(r) for r in pool)
    return np.array([v for v in raw if v is not None and math.isfinite(v)], dtype=float), None


def _span_s(records: Sequence[RequestRecord]) -> float | None:
    ends = [r.done_ns for r in records if r.done_ns is not None]
    if not ends:
        return None
    return (max(ends) - min(r.send_ns for r in records)) / 1e9 * records[0].time_scale


# -- the bootstrap -----------------------------------------------------------------------------

def bootstrap_change(metric: Metric, baseline: list[Sample], current: list[Sample], *, resamples: int = 2000,
                     confidence: float = 0.99, seed: int = 0) -> tuple[float, float]:
    """Interval of (current - baseline) for ``metric``, resampling requests (and runs if several)."""
    rng = np.random.default_rng(seed)
    diff = _replicates(rng, metric, current, resamples) - _replicates(rng, metric, baseline, resamples)
    diff = diff[np.isfinite(diff)]
    if not len(diff):
        return math.nan, math.nan
    alpha = 1 - confidence
    low, high = np.quantile(diff, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _replicates(rng: np.random.Generator, metric: Metric, runs: list[Sample], resamples: int) -> np.ndarray:
    """Bootstrap replicates of one side's statistic: requests within runs, and runs themselves."""
    runs = [run for run in runs if len(run[0])]
    if len(runs) == 1:
        return _within(rng, metric, runs[0], resamples)
    picks = rng.integers(0, len(runs), size=(resamples, len(runs)))
    total = np.zeros(resamples)
    for slot in range(len(runs)):
        per_run = np.stack([_within(rng, metric, run, resamples) for run in runs])
        total += per_run[picks[:, slot], np.arange(resamples)]
    return total / len(runs)


def _within(rng: np.random.Generator, metric: Metric, run: Sample, resamples: int) -> np.ndarray:
    values, occupancy = run
    index = rng.integers(0, len(values), size=(resamples, len(values)))
    return metric.reduce(values[index], occupancy)


def _seed(base: int, *key: Any) -> int:
    """A per-check seed: results do not depend on the order checks are computed in."""
    return base + zlib.crc32("|".join(map(str, key)).encode())


# -- comparing ---------------------------------------------------------------------------------

def compare_reports(current: RunReport, current_records: Records, baseline: Baseline,
                    tolerances: Tolerances | None = None) -> list[Check]:
    """Every (target, level, metric) of the current run against the baseline, plus max_usable.

    Targets match by name, else by profile (the part before '@') when images differ; such a
    match, or a target with no counterpart, adds a ``warning`` entry saying so.
    """
    tolerances = tolerances or Tolerances()
    checks: list[Check] = []
    single = len(current.targets) == 1
    for target in current.targets:
        match, warnings = match_target(target, baseline, sole=single)
        checks += warnings
        if match is None:
            continue
        for level in sorted({lv.concurrency for lv in (*target.levels, *match.levels)}):
            checks += compare_level(target, current_records, match, baseline.records, level, tolerances,
                                    only_target=single)
        checks.append(compare_max_usable(target, current_records, match, baseline.records, tolerances,
                                         only_target=single))
        if target.mixed or match.mixed:
            checks += compare_mixed(target, current_records, match, baseline.records, tolerances, only_target=single)
    return checks


def match_target(target: TargetReport, baseline: Baseline, sole: bool = False) -> tuple[TargetReport | None,
                                                                                      list[Check]]:
    """The baseline's counterpart of ``target``, and warnings about how alike the two are.

    By name, else by profile; ``sole`` (the current run tests this one target) also matches a
    baseline of one target under another name when both are servers someone else runs
    (``--base-url prod=…`` then ``--base-url candidate=…``), which have no profile to match by."""
    targets = {t.key: t for t in baseline.report.targets}
    key = target.key
    if key in targets:
        match, warnings = targets[key], [_image_warning(target, targets[key])]
    elif sole and len(targets) == 1 and _external(target) and _external(next(iter(targets.values()))):
        match = next(iter(targets.values()))
        warnings = [_warning(key, match.key, f"no baseline for {key}; compared with {match.key}, "
                                             "the baseline's one target")]
    else:
        same = [t for t in targets.values() if t.profile == target.profile]
        if len(same) != 1:
            why = (f"{len(same)} baseline targets share profile {target.profile!r}: "
                   f"{', '.join(t.key for t in same)}" if same else
                   f"no baseline for {key}; baseline has {', '.join(targets) or 'no targets'}")
            return None, [_warning(key, None, why)]
        match = same[0]
        warnings = [_warning(key, match.key, f"no baseline for {key}; compared with {match.key} "
                                             "(same profile, different image)")]
    warnings.append(_conditions_warning(target, match))
    return match, [w for w in warnings if w]


def _external(target: TargetReport) -> bool:
    return (target.provenance or {}).get("kind") == "external"


def compare_level(now_target: TargetReport, now_records: Records, then_target: TargetReport, then_records: Records,
                  level: int, tolerances: Tolerances, only_target: bool = False) -> list[Check]:
    """Each metric of one capacity level against the reference."""
    now, then = Side.of(now_target, now_records, only_target), Side.of(then_target, then_records, True)
    return [_metric_check(then, now, level, metric, tolerances) for metric in METRICS]


def compare_mixed(now_target: TargetReport, now_records: Records, then_target: TargetReport, then_records: Records,
                  tolerances: Tolerances, only_target: bool = False) -> list[Check]:
    """Each metric of the mixed workload against the reference (checks ``mixed_<metric>``)."""
    now, then = Side.of(now_target, now_records, only_target), Side.of(then_target, then_records, True)
    return [_metric_check(then, now, None, metric, tolerances) for metric in MIXED_METRICS]


def compare_max_usable(now_target: TargetReport, now_records: Records, then_target: TargetReport,
                       then_records: Records, tolerances: Tolerances, only_target: bool = False) -> Check:
    now, then = Side.of(now_target, now_records, only_target), Side.of(then_target, then_records, True)
    return _max_usable_check(then, now, tolerances)


def _image_warning(now: TargetReport, then: TargetReport) -> Check | None:
    """Same target name but a different build behind it (a moved tag, a new server version)."""
    for what, old, new in (("image id", then.image_id, now.image_id),
                           ("server version", then.server_version, now.server_version)):
        if old and new and old != new:
            return _warning(now.key, then.key, f"baseline {what} {old} differs from {new} (same name, "
                                               "another build: the tag moved)")
    return None


# Workload conditions that change what a figure means: (setting, settings section or None,
# value a report that predates the setting ran with; spikes went beside the agents before
# spike_mode existed).
CONDITIONS = (("cache_start", None, "flushed"), ("spike_mode", "capacity", "extra"),
              ("spike_interval_s", "capacity", None), ("level_duration_s", "capacity", None),
              ("context_tokens", "capacity", None), ("max_output_tokens", "capacity", None),
              ("min_agent_requests", "capacity", 0), ("max_level_duration_s", "capacity", None))


def _conditions_warning(now: TargetReport, then: TargetReport) -> Check | None:
    """A warning when the two runs drove the server differently (e.g. a warm run against a flushed one)."""
    if not now.settings or not then.settings:
        return None
    differ = []
    for name, section, default in CONDITIONS:
        old, new = _setting(then.settings, section, name, default), _setting(now.settings, section, name, default)
        if old is not None and new is not None and old != new:
            differ.append(f"{name} {old} -> {new}")
    if not differ:
        return None
    return _warning(now.key, then.key, "not like for like, the workload changed: " + "; ".join(differ))


def _setting(settings: Mapping[str, Any], section: str | None, name: str, default: Any) -> Any:
    scope = (settings.get(section) or {}) if section else settings
    return scope.get(name, default)


def _warning(key: str, match: str | None, reason: str) -> Check:
    return Check(key, None, "target", None, None, None, None, None, None, WARNING, reason, baseline_target=match)


def _metric_check(then: Side, now: Side, level: int | None, metric: Metric, tolerances: Tolerances) -> Check:
    """One metric of a capacity level (or, ``level`` None, of the mixed workload) against the reference."""
    base, cur = then.point(metric, level), now.point(metric, level)
    base_samples, cur_samples = then.samples(metric, level), now.samples(metric, level)
    n_base = sum(len(v) for v, _ in base_samples)
    n_cur = sum(len(v) for v, _ in cur_samples)
    tol = tolerances.of(metric.name)
    low = high = None
    if n_base >= 2 and n_cur >= 2:
        low, high = bootstrap_change(metric, base_samples, cur_samples, resamples=tolerances.resamples,
                                     confidence=tolerances.confidence,
                                     seed=_seed(tolerances.seed, now.key, level, metric.name))
        low, high = (None, None) if math.isnan(low) else (low, high)
    outcome, reason = _judge(metric, then, now, level, base, cur, (low, high), (n_base, n_cur), tol)
    delta = cur - base if base is not None and cur is not None else None
    name = metric.name if level is not None else MIXED_PREFIX + metric.name
    return Check(now.key, level, name, base, cur, delta, _pct(delta, base), low, high, outcome, reason,
                 metric.unit, tol, metric.higher_is_better, tolerances.confidence, then.key, n_base, n_cur)


def _judge(metric: Metric, then: Side, now: Side, level: int | None, base: float | None, cur: float | None,
           ci: tuple[float | None, float | None], counts: tuple[int, int], tol: float) -> tuple[str, str]:
    """pass / fail / inconclusive / error, and why; the order of the tests is the order of the reasons."""
    absent = _current_missing(now, level, cur)
    if absent:
        return ERROR, absent
    if then.result(level) is None:
        return INCONCLUSIVE, f"{_window(level)} is not in the baseline"
    if base is None:
        return INCONCLUSIVE, "metric missing in the baseline (no data)"
    n_base, n_cur = counts
    if not then.level_runs(level):
        return INCONCLUSIVE, "no per-request records in the baseline: the noise cannot be judged"
    if min(n_base, n_cur) < metric.min_requests:
        return INCONCLUSIVE, (f"too few requests: baseline {n_base}, current {n_cur} "
                              f"(needs >= {metric.min_requests} per side)")
    low, high = ci
    if low is None or high is None:
        return INCONCLUSIVE, "no bootstrap interval could be computed"
    limit = max(tol * abs(base or 0.0), metric.floor)
    harm_low, harm_high = (-high, -low) if metric.higher_is_better else (low, high)
    if harm_low > limit:
        return FAIL, ""
    if harm_high <= limit:
        return PASS, ""
    return INCONCLUSIVE, ("interval too wide: the CI of the change straddles the tolerance "
                          f"({'-' if metric.higher_is_better else '+'}{tol * 100:g} % = "
                          f"{fmt_signed(-limit if metric.higher_is_better else limit)}{metric.unit}); "
                          "more requests or --repeats would settle it")


def _window(level: int | None) -> str:
    return "the mixed workload" if level is None else f"c={level}"


def _current_missing(now: Side, level: int | None, cur: float | None) -> str | None:
    """Why this session has no data to compare: never an inconclusive, always an error."""
    found = now.result(level)
    if found is None:
        return f"{_window(level)} was not measured in this run"
    if found.status in ("error", "interrupted"):
        return f"{_window(level)} could not be measured: {found.explain()}"
    if cur is None:
        return "metric missing in this run (no data)"
    if not now.level_runs(level):
        return "no per-request records in this run"
    return None


def _pct(delta: float | None, base: float | None) -> float | None:
    if delta is None or not base:
        return None
    return delta / abs(base) * 100


# -- max usable ------------------------------------------------------------------------------

def _max_usable_check(then: Side, now: Side, tolerances: Tolerances) -> Check:
    """max_usable must not drop, unless the level that was lost is only lost within noise."""
    tol = tolerances.max_usable
    make = _usable_maker(then, now, tol, tolerances.confidence)
    if not now.levels():
        return make(ERROR, "no capacity level was measured in this run")
    broken = [lv for lv in now.levels().values() if lv.status in ("error", "interrupted")]
    if broken:
        return make(ERROR, f"c={broken[0].concurrency} could not be measured: {broken[0].explain()}")
    if not then.levels():
        return make(INCONCLUSIVE, "no capacity levels in the baseline")
    base, cur = _max_usable(then), _max_usable(now)
    if cur >= base * (1 - tol):
        return make(PASS, "")
    lost = [c for c, lv in sorted(now.levels().items()) if cur < c <= base and not lv.usable]
    if not lost:
        return make(INCONCLUSIVE, f"no level between {cur} and {base} was measured in this run")
    settled, detail = _settled(now, lost[0], tolerances)
    if settled:
        return make(FAIL, f"c={lost[0]} is no longer usable: {detail}")
    return make(INCONCLUSIVE, f"c={lost[0]} is not usable now, but within noise of the bar: {detail}")


def _usable_maker(then: Side, now: Side, tol: float, confidence: float) -> Callable[[str, str], Check]:
    def make(outcome: str, reason: str) -> Check:
        base = _max_usable(then) if then.levels() else None
        cur = _max_usable(now) if now.levels() else None
        delta = cur - base if base is not None and cur is not None else None
        return Check(now.key, None, "max_usable", base, cur, delta, _pct(delta, base), None, None, outcome, reason,
                     "", tol, True, confidence, then.key)
    return make


def _max_usable(side: Side) -> int:
    return side.target.max_usable or 0


def _settled(side: Side, level: int, tolerances: Tolerances) -> tuple[bool, str]:
    """Whether some broken threshold of ``level`` is broken by its whole interval, with the evidence."""
    stats = side.levels()[level].stats.as_dict()
    verdict = side.thresholds.judge(stats)
    runs = side.level_runs(level)
    details = []
    for check in verdict.broken:
        if check.measured is None:
            return True, f"{check.stat}: no data"
        metric = BY_STAT.get(check.stat)
        duration = stats.get("duration_s") if len(runs) == 1 else None
        samples = [_sample(metric, run, duration or _span_s(run)) for run in runs] if metric else []
        if not metric or sum(len(v) for v, _ in samples) < 5:
            details.append(f"{check.message()} (too few requests to judge)")
            continue
        low, high = _interval(metric, samples, tolerances, side.key, level)
        beyond = low > check.limit if check.upper else high < check.limit
        relation = ("beyond" if beyond else "straddles") + f" {check.key} {check.limit:g}{check.unit}"
        interval = f"{fmt_num(low)}..{fmt_num(high)}{check.unit}"
        text = f"{check.stat} {fmt_conf(tolerances.confidence)} CI {interval} {relation}"
        if beyond:
            return True, text
        details.append(text)
    return False, "; ".join(details) or "no threshold is broken"


def _interval(metric: Metric, samples: list[Sample], tolerances: Tolerances,
              key: str, level: int) -> tuple[float, float]:
    rng = np.random.default_rng(_seed(tolerances.seed, key, level, metric.name, "bar"))
    reps = _replicates(rng, metric, samples, tolerances.resamples)
    alpha = 1 - tolerances.confidence
    low, high = np.quantile(reps[np.isfinite(reps)], [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)

