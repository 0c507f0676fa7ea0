"""Regression gate: this run against a saved baseline (only with ``--compare NAME|PATH``).

One test per (profile, level, metric), e.g. ``test_regression[sim-hicache-c4-ttft_p95_s]``,
plus ``max_usable`` per profile. A check fails only when the bootstrap interval of the change
clears the tolerance in the bad direction; inconclusive checks pass with a warning, or fail
with ``--inconclusive=fail``. Save a baseline with ``--save-baseline NAME``.
"""

from pytest_glmperf import RegressionResult


def test_regression(glmperf_regression: RegressionResult) -> None:
    glmperf_regression.assert_ok()
