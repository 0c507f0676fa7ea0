"""docs/ci.md's GitHub workflow, run as written against the ``sim`` compose profile.

The workflow's own ``run:`` steps (name the baseline, measure prod, gate the candidate, take
the server down) run in bash on the real Docker engine, in an empty workspace, with the
``sim`` profile in place of ``hicache`` and two local tags of the simulator image in place of
the pulled ones. PYTEST_ADDOPTS shrinks the workload; nothing else is changed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_glmperf.sim_image import SIM_IMAGE

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.docker, pytest.mark.slow]
WORKLOAD = ("--concurrency-levels=1,2 --require-concurrency=2 --level-duration=60 --contexts=2 "
            "--context-tokens=1500 --max-output-tokens=40 --spike-interval=0 --mixed-duration=40 "
            "--mixed-contexts=2 --mixed-max-output-tokens=40 --mixed-spike-interval=8 --revisit-interval=10 "
            "--time-scale=20 --min-requests=2 -p no:cacheprovider")


def workflow() -> dict[str, Any]:
    text = (ROOT / "docs" / "ci.md").read_text()
    block = re.search(r"```yaml\n(# \.github/workflows/sglang-upgrade-gate\.yml\n.*?)```", text, re.S).group(1)
    return yaml.safe_load(block)


def step(flow: dict[str, Any], name: str) -> str:
    """A step's ``run:`` as the runner would see it, for the sim profile."""
    found = next(s for s in flow["jobs"]["gate"]["steps"] if s.get("name", "").startswith(name))
    command = re.sub(r"\$\{\{[^}]*\}\}", "", found["run"])  # no dispatch inputs: refresh_baseline is empty
    return command.replace("--profile hicache", "--profile sim").replace("glmperf-hicache-", "glmperf-sim-")


def bash(command: str, env: dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-eo", "pipefail", "-c", command], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def github_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_the_documented_gate_runs_as_written(docker_client: Any, tmp_path: Path):
    flow = workflow()
    assert flow["concurrency"]["group"] and flow["concurrency"]["cancel-in-progress"] is False
    for image in ("recipe-prod", "recipe-candidate"):
        docker_client.images.get(SIM_IMAGE).tag("glmperf-sim", image)
    workspace, store = tmp_path / "workspace", tmp_path / "runner-disk" / "baselines"
    workspace.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GLMPERF_", "PYTEST_", "GITHUB_"))}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", GITHUB_ENV=str(tmp_path / "github_env"),
               PROD_IMAGE="glmperf-sim:recipe-prod", CANDIDATE_IMAGE="glmperf-sim:recipe-candidate",
               GLMPERF_BASELINE_DIR=str(store), PYTEST_ADDOPTS=WORKLOAD)
    try:
        named = bash(step(flow, "Pick the candidate"), env, workspace)
        assert named.returncode == 0, named.stderr
        env.update(github_env(tmp_path / "github_env"))
        assert env["PROD_BASELINE"] == "prod-glmperf-sim-recipe-prod"

        prod = bash(step(flow, "Prod baseline"), env, workspace)
        assert prod.returncode == 0 and "::warning::" not in prod.stdout, prod.stdout[-3000:] + prod.stderr[-2000:]
        assert (store / env["PROD_BASELINE"] / "sim").is_dir()  # on the runner's disk, not in the workspace

        kept = {**env, "PYTEST_ADDOPTS": f"{WORKLOAD} --keep-running"}  # as if the job were killed before down
        gate = bash(step(flow, "Gate the candidate"), kept, workspace)
        assert gate.returncode == 0, gate.stdout[-4000:] + gate.stderr[-2000:]
        report = json.loads((workspace / "perf-report" / "candidate" / "latest" / "report.json").read_text())
        [target] = report["targets"].values()
        checks = target["regression"]["checks"]
        assert target["regression"]["baseline"].startswith(env["PROD_BASELINE"])
        assert {c["metric"] for c in checks} >= {"tok_s_p50", "failure_rate", "max_usable", "mixed_tok_s_p50"}
        assert report["verdict"]["status"] == "PASS"  # a repeat of prod, with --inconclusive fail
        assert (workspace / "perf-report" / "junit.xml").is_file()
        assert running(docker_client), "--keep-running should have left the candidate up for the clean-up step"

        down = bash(step(flow, "Take the server down"), env, workspace)
        assert down.returncode == 0, down.stderr
        assert not running(docker_client)
    finally:
        for image in ("recipe-prod", "recipe-candidate"):
            docker_client.images.remove(f"glmperf-sim:{image}", noprune=True)
        for container in running(docker_client):
            container.remove(force=True)


def running(docker_client: Any) -> list[Any]:
    return [c for c in docker_client.containers.list(all=True)
            if c.labels.get("com.docker.compose.project", "").startswith("glmperf-sim-")]
