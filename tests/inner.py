"""What the plugin's own tests put in an inner pytest project: the suite's test files, and a wait."""

from __future__ import annotations

import time
from pathlib import Path

CAPACITY_TEST = """
from pytest_glmperf import LevelResult

def test_capacity(glmperf_capacity: LevelResult) -> None:
    glmperf_capacity.assert_usable()
"""
MIXED_TEST = """
def test_mixed(glmperf_mixed):
    glmperf_mixed.assert_usable()
"""
REGRESSION_TEST = """
def test_regression(glmperf_regression):
    glmperf_regression.assert_ok()
"""


def wait_for_records(path: Path, count: int, timeout_s: float = 120) -> None:
    """Until ``path`` (a records.jsonl being written) holds ``count`` records."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{path} never held {count} records")


def run_folder(pytester: object, report_dir: str = "out") -> Path:
    """Where an inner run that was given ``--report-dir=<pytester.path>/out`` wrote its files."""
    return Path(pytester.path) / report_dir / "latest"  # type: ignore[attr-defined]
