"""The workloads' timelines: what is sent when, independent of any server."""

from __future__ import annotations

import pytest

from pytest_glmperf.errors import ConfigError
from pytest_glmperf.records import RequestRecord
from pytest_glmperf.workloads import CapacitySpec, LevelWindow, Load, MixedSpec, WorkloadRun, background_events


def test_spikes_and_revisits_share_one_timeline_spike_first_at_a_tie():
    fired: list[str] = []
    events = background_events(MixedSpec(), lambda n: fired.append(f"spike-{n}"),
                               lambda n: fired.append(f"revisit-{n}"))
    times = [at for at, _, _ in events]
    assert times == sorted(times)
    assert len(times) == 19 + 13                     # the brief's 600 s window
    for _, fire, n in events:
        fire(n)
    at_90 = fired[times.index(90.0):times.index(90.0) + 2]
    assert at_90 == ["spike-3", "revisit-2"]         # every 90 s, the same order every run
    assert fired[:3] == ["spike-1", "revisit-1", "spike-2"]   # 30, 45, 60 s


def test_no_revisits_when_their_interval_is_zero():
    events = background_events(MixedSpec(revisit_interval_s=0), lambda n: None, lambda n: None)
    assert [at for at, _, _ in events] == [30.0 * n for n in range(1, 20)]


class _Clock:
    """Model time set by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t


def _level_window(min_agent_requests: int, longest: float | None) -> tuple[LevelWindow, _Clock, Load]:
    clock = _Clock()
    load = Load.__new__(Load)  # only what LevelWindow reads: the clock and the finished records
    load.clock, load.run = clock, WorkloadRun(start_ns=0)  # type: ignore[assignment]
    spec = CapacitySpec(level_duration_s=240, min_agent_requests=min_agent_requests, max_level_duration_s=longest)
    return LevelWindow(load, spec, start=0.0), clock, load


def _finish(load: Load, kind: str, n: int = 1) -> None:
    for _ in range(n):
        load.run.records.append(RequestRecord(request_id="r", scenario="capacity", kind=kind, profile="p",
                                              outcome="ok"))


def test_a_level_short_of_agent_requests_runs_on_until_it_has_them():
    window, clock, load = _level_window(min_agent_requests=20, longest=960)
    _finish(load, "agent", 6)
    _finish(load, "spike", 11)             # spikes are not the agents' evidence
    clock.t = 239.9
    assert window.open() and not window.extended
    clock.t = 240.0
    assert window.open() and window.extended   # 6 of 20: extended
    _finish(load, "agent", 14)
    clock.t = 700.0
    assert not window.open()                   # 20 of 20: closed, and it stays closed
    _finish(load, "agent", 0)
    assert not window.open() and window.load_s() == 700.0


def test_an_extension_stops_at_the_longest_window_even_short_of_requests():
    window, clock, load = _level_window(min_agent_requests=20, longest=960)
    _finish(load, "agent", 3)
    clock.t = 959.0
    assert window.open()
    clock.t = 1000.0                           # noticed late: the window still ends at 960
    assert not window.open() and window.load_s() == 960.0


def test_a_level_with_enough_requests_or_no_minimum_ends_on_time():
    window, clock, load = _level_window(min_agent_requests=20, longest=960)
    _finish(load, "agent", 20)
    clock.t = 240.0
    assert not window.open() and window.load_s() == 240.0
    window, clock, _ = _level_window(min_agent_requests=0, longest=960)
    clock.t = 240.0
    assert not window.open()
    assert CapacitySpec(min_agent_requests=0, max_level_duration_s=960).longest_s == 240


def test_a_longest_window_shorter_than_the_level_is_refused():
    with pytest.raises(ConfigError, match=r"max_level_duration \(100 s\) must be at least level_duration \(240 s\)"):
        CapacitySpec(level_duration_s=240, max_level_duration_s=100)


def test_a_settled_failure_needs_no_extension():
    window, clock, load = _level_window(min_agent_requests=20, longest=960)
    window.settled = lambda: "3 of at most 9 requests already broke max_gap_p95"
    _finish(load, "agent", 3)
    clock.t = 240.0
    assert not window.open() and window.load_s() == 240.0
