"""The workloads' timelines: what is sent when, independent of any server."""

from __future__ import annotations

from pytest_glmperf.workloads import MixedSpec, background_events


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
