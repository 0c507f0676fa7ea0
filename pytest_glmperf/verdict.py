"""The session verdict: decided once, from what was claimed and what was measured.

A session *claims* what its selected tests assert: a target's capacity (every level up to
the required concurrency usable), its mixed workload, each regression check, each scenario
that ran. ``decide`` holds every claim against the typed results:

* PASS          every claim measured, usable, and resting on enough requests;
* FAIL          a claim broken, or not measured at all (a required level missing, errored,
                invalid or interrupted; a server that did not start; a comparison with no
                current data; a glmperf test that failed; a lost record);
* INCONCLUSIVE  nothing failed, but some claim rests on too few requests or an interval too
                wide to tell; it exits 0 under ``--inconclusive=pass`` (the default), 1 under
                ``fail``;
* INTERRUPTED   Ctrl-C or SIGTERM ended the session.

The exit code, the terminal verdict line, report.json, the job summary and the JUnit verdict
case are all this one object (docs/verdicts.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import TargetReport
    from .results import LevelResult

PASS, FAIL, INCONCLUSIVE, INTERRUPTED = "PASS", "FAIL", "INCONCLUSIVE", "INTERRUPTED"


@dataclass(frozen=True)
class Claims:
    """What the selected tests assert, by target key."""

    capacity: frozenset[str] = frozenset()
    mixed: frozenset[str] = frozenset()
    regression: frozenset[tuple[str, int | None, str]] = frozenset()


@dataclass(frozen=True)
class SessionVerdict:
    """PASS | FAIL | INCONCLUSIVE | INTERRUPTED, with every reason and a one-line summary."""

    status: str
    failures: tuple[str, ...] = ()
    inconclusive: tuple[str, ...] = ()
    summary: tuple[str, ...] = ()        # per target: "sim-hicache max usable 4 (required 4)"
    inconclusive_fails: bool = False

    @property
    def ok(self) -> bool:
        """Whether the session exits 0 on this verdict."""
        return self.status == PASS or (self.status == INCONCLUSIVE and not self.inconclusive_fails)

    def line(self) -> str:
        """'glmperf FAIL: sim-hicache max usable 2 (required 4); not usable: sim-hicache c=4 (…)'."""
        parts = [" · ".join(self.summary)] if self.summary else []
        if self.failures:
            parts.append(_few(self.failures))
        if self.inconclusive:
            counted = "counted as a failure" if self.inconclusive_fails else "counted as a pass"
            parts.append(f"inconclusive ({counted}, --inconclusive): {_few(self.inconclusive)}")
        return f"glmperf {self.status}: " + ("; ".join(parts) or "nothing measured")

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "exit_ok": self.ok, "line": self.line(), "failures": list(self.failures),
                "inconclusive": list(self.inconclusive), "summary": list(self.summary),
                "inconclusive_fails": self.inconclusive_fails}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionVerdict:
        return cls(str(data.get("status") or FAIL), tuple(data.get("failures") or ()),
                   tuple(data.get("inconclusive") or ()), tuple(data.get("summary") or ()),
                   bool(data.get("inconclusive_fails")))


@dataclass
class _Tally:
    failures: list[str] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)

    def result(self, where: str, result: LevelResult) -> None:
        """A claimed result: anything but a pass is a failure or inconclusive."""
        status = result.status
        if status == "pass":
            return
        text = f"{where}: {result.brief()}"
        (self.unsure if status == "inconclusive" else self.failures).append(text)


def decide(targets: Sequence[TargetReport], claims: Claims, *, problems: Iterable[str] = (),
           failed_tests: Iterable[str] = (), interrupted: bool = False,
           inconclusive_fails: bool = False, min_scaling_efficiency: float | None = None) -> SessionVerdict:
    """The one verdict of a session (see the module docstring); with ``min_scaling_efficiency``
    every swept worker count above one must scale at least that well (scaling.py)."""
    from .scaling import scaling_claims, scaling_rows

    tally = _Tally(failures=list(problems))
    failures, unsure = scaling_claims(scaling_rows(targets), min_scaling_efficiency)
    tally.failures += failures
    tally.unsure += unsure
    for target in targets:
        if target.start_error:
            reason = target.start_error.splitlines()[0].split("; last log lines", 1)[0].rstrip(". ")
            tally.failures.append(f"{target.key}: server did not start ({reason})")
            continue
        if target.key in claims.capacity:
            _capacity_claim(target, tally)
        if target.key in claims.mixed:
            if target.mixed is None:
                tally.failures.append(f"{target.key} mixed: not measured")
            else:
                tally.result(f"{target.key} mixed", target.mixed)
        for scenario in target.scenarios:
            tally.result(f"{target.key} {scenario.workload} c={scenario.concurrency}", scenario)
        _regression_claims(target, claims, tally)
    tally.failures += [f"test failed: {nodeid}" for nodeid in failed_tests]
    status = INTERRUPTED if interrupted else FAIL if tally.failures else INCONCLUSIVE if tally.unsure else PASS
    summaries = (_summary(t, claims) for t in targets)
    return SessionVerdict(status, tuple(tally.failures), tuple(tally.unsure), tuple(s for s in summaries if s),
                          inconclusive_fails)


def _capacity_claim(target: TargetReport, tally: _Tally) -> None:
    """Every level up to the required concurrency measured and usable (with --capacity-search,
    a usable level at or above it stands for those below, which the search skipped)."""
    require = target.require_concurrency or 0
    planned = [c for c in target.settings.get("levels", ()) if c <= require]
    searched = target.search is not None
    best = target.max_usable or 0
    for level in planned:
        found = target.level(level)
        if found is None:
            if searched and best >= level:
                continue
            tally.failures.append(f"{target.key} c={level}: not measured (required up to c={require})")
            continue
        tally.result(f"{target.key} c={level}", found)
    for found in target.levels:  # above the required level only a broken measurement counts
        if found.concurrency > require and found.status == "error":
            tally.failures.append(f"{target.key} c={found.concurrency}: {found.explain()}")


def _regression_claims(target: TargetReport, claims: Claims, tally: _Tally) -> None:
    wanted = {(level, metric) for key, level, metric in claims.regression if key == target.key}
    for level, metric in sorted(wanted, key=lambda item: (item[0] or 0, item[1])):
        check = next((c for c in target.checks if c.level == level and c.metric == metric), None)
        where = f"{target.key}{f' c={level}' if level is not None else ''} {metric}"
        if check is None:
            tally.failures.append(f"{where}: comparison did not run")
        elif check.outcome in ("fail", "error"):
            tally.failures.append(f"{where}: {check.outcome}: {check.reason or check.message()}")
        elif check.outcome == "inconclusive":
            tally.unsure.append(f"{where}: {check.reason}")
        # "skipped": neither side measured the level (--capacity-search), so nothing was claimed


def _summary(target: TargetReport, claims: Claims) -> str:
    """What a reader wants first: how many agents this target can take, and what else ran."""
    if target.start_error:
        return ""
    parts = []
    if target.levels or target.key in claims.capacity:
        best, require = target.max_usable, target.require_concurrency
        parts.append(f"max usable {best if best is not None else '–'}" + (f" (required {require})" if require else ""))
    if target.mixed:
        parts.append(f"mixed {target.mixed.status}")
    for scenario in target.scenarios:
        parts.append(f"{scenario.workload} c={scenario.concurrency} {scenario.status}")
    return f"{target.key} " + ", ".join(parts) if parts else ""


def _few(items: Sequence[str], keep: int = 3) -> str:
    return "; ".join(items[:keep]) + (f"; … {len(items) - keep} more" if len(items) > keep else "")
