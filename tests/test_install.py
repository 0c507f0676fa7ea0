"""The plugin as a user gets it: a wheel in a fresh virtual environment, run from an empty folder.

Nothing of this checkout is on the path there: the built-in suite comes from the installed
package (``pytest --pyargs pytest_glmperf.perf_tests``), the profiles from its data, and the
README's own-tests example runs as a user would paste it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_glmperf.sim_image import build_wheel

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) holding the wheel built from this checkout."""
    where = tmp_path_factory.mktemp("install")
    wheel = build_wheel(where / "dist", ROOT)
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True)
    python = where / "venv" / "bin" / "python"
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return python


def run_from(folder: Path, python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in ``folder`` with the venv's python, in an environment that knows nothing of us."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLMPERF_", "PYTEST_", "PYTHON"))}
    env.pop("GITHUB_STEP_SUMMARY", None)
    return subprocess.run([str(python), "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=600)


def readme_example() -> str:
    """The Python block under the README's "Your own performance tests"."""
    section = ROOT.joinpath("README.md").read_text().split("## Your own performance tests", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_wheel_carries_the_suite_and_the_profiles(venv_python: Path, tmp_path: Path):
    done = subprocess.run([str(venv_python), "-c", "import pytest_glmperf.profiles as p, pathlib, sys;"
                           "r = p.load_profiles(None); print(r.sources[0]); print(','.join(sorted(r.profiles)));"
                           "print(r.get('hicache').compose_file.is_file())"], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    source, names, compose_found = done.stdout.split()
    assert "site-packages/pytest_glmperf/builtin/profiles.yaml" in source
    assert {"sim-hicache", "sim-mtp", "hicache", "mtp", "sim"} <= set(names.split(","))
    assert compose_found == "True"


def test_the_built_in_quick_suite_runs_from_an_empty_folder(venv_python: Path, tmp_path: Path):
    result = run_from(tmp_path, venv_python, "--pyargs", "pytest_glmperf.perf_tests", "--quick")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "glmperf PASS" in result.stdout, result.stdout[-2000:]
    report = json.loads((tmp_path / "perf-report" / "latest" / "report.json").read_text())
    assert list(report["targets"]) == ["sim-hicache-mixed-chunk"]
    assert report["verdict"]["status"] == "PASS"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["perf-report"]  # nothing else written here


def test_the_readme_example_runs_from_an_empty_folder(venv_python: Path, tmp_path: Path):
    tmp_path.joinpath("test_my_agents.py").write_text(readme_example())
    result = run_from(tmp_path, venv_python, "test_my_agents.py", "-q")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout[-2000:]  # two examples and the verdict


def test_a_project_registry_layers_over_the_built_in_one(venv_python: Path, tmp_path: Path):
    """A project's compose/profiles.yaml adds profiles and replaces built-in ones by name."""
    (tmp_path / "compose").mkdir()
    (tmp_path / "compose" / "profiles.yaml").write_text(
        "profiles:\n"
        "  sim-mtp:\n    kind: simulated\n    description: ours\n    require_concurrency: 2\n"
        "    server_args: [--enable-metrics]\n"
        "  sim-tiny:\n    kind: simulated\n    require_concurrency: 1\n    server_args: [--enable-metrics]\n")
    done = subprocess.run([str(venv_python), "-c", "import pytest_glmperf.profiles as p, pathlib;"
                           "r = p.load_profiles(pathlib.Path('compose/profiles.yaml'));"
                           "print(r.get('sim-mtp').description, r.get('sim-tiny').source.parent.parent.name,"
                           " r.get('sim-hicache').source.parent.name)"],
                          cwd=tmp_path, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["ours", tmp_path.name, "builtin"]
