"""Workload 2 of the field report: can N coding agents share this server?

One test per (profile, concurrency level), e.g. ``test_capacity[sim-hicache-c4]``. A level
fails naming each broken threshold; a level above the required concurrency that breaks the
bar is an xfail ("beyond required capacity"), not a failure.
"""

from pytest_glmperf import LevelResult


def test_capacity(glmperf_capacity: LevelResult) -> None:
    glmperf_capacity.assert_usable()
