"""Workload 1 of the field report: decode workers, prefill spikes and revisits at once.

The usability bar is asserted on the decode streams (the agents' long answers); the full
mixed table, server gauges and cache counter deltas go to the report.
"""

from pytest_glmperf import LevelResult


def test_mixed(glmperf_mixed: LevelResult) -> None:
    glmperf_mixed.assert_usable()
