"""Regression gate: this run against a reference, either a saved baseline (``--compare
NAME|PATH``) or, in one session, the first of several images (``--image prod --image
candidate``) or ``--base-url`` servers; deselected when there is nothing to compare with.

One test per (target, level, metric), e.g. ``test_regression[hicache@cand-c4-ttft_p95_s]``,
plus ``max_usable`` and the mixed workload's ``mixed_<metric>`` per target. A check fails only
when the bootstrap interval of the change clears the tolerance in the bad direction;
inconclusive checks pass with a warning, or fail with ``--inconclusive=fail``. Save a
baseline with ``--save-baseline NAME``.
"""

from pytest_glmperf import RegressionResult


def test_regression(glmperf_regression: RegressionResult) -> None:
    glmperf_regression.assert_ok()
