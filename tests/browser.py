"""report.html opened as a reviewer opens it: in a real browser (Debian's headless Chromium)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

# Screenshots are kept here for a person (or a CI artefact upload) to look at after the run.
ARTIFACTS = Path(os.environ.get("GLMPERF_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


def chromium() -> str:
    """The browser's path; CI installs it (scripts/check), elsewhere a missing one skips."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: scripts/check installs Debian's chromium package")
    pytest.skip("chromium is not installed (apt-get install chromium)")


def _headless(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", "--user-data-dir=" + str(page.parent / ".chromium"), *args, page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=True)


def rendered_text(page: Path) -> str:
    """The page's DOM after the browser laid it out (what a reviewer's browser holds)."""
    return _headless(page, "--dump-dom").stdout


def screenshot(page: Path, name: str, height: int = 6000) -> Path:
    """A full-width PNG of the page's top ``height`` pixels, kept under ARTIFACTS."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / name
    target.unlink(missing_ok=True)
    _headless(page, f"--screenshot={target}", f"--window-size=1280,{height}")
    return target
