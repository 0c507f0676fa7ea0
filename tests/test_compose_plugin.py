"""The plugin over the real Compose lifecycle: image comparison, a server killed mid-level,
Ctrl-C during a level. Real Docker engine, the locally built simulator image, loopback only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest

from tests.conftest import REGISTRY
from tests.inner import CAPACITY_TEST, run_folder, wait_for_records

pytestmark = pytest.mark.docker

TINY = ["--concurrency-levels=1", "--require-concurrency=1", "--min-requests=2", "--contexts=1",
        "--context-tokens=1500", "--max-output-tokens=40", "--spike-interval=0", "--time-scale=20",
        "-p", "no:cacheprovider", "-rA"]


def sim_containers(client) -> list:
    return [c for c in client.containers.list(all=True) if c.name.startswith("glmperf-sim")]


def test_two_images_side_by_side_with_deltas(pytester: pytest.Pytester, docker_client):
    image = docker_client.images.get("glmperf-sim:latest")
    image.tag("glmperf-sim", "candidate")
    try:
        pytester.makepyfile(test_cap=CAPACITY_TEST)
        result = pytester.runpytest_subprocess(
            f"--profiles-file={REGISTRY}", "--profile=sim", "--image=glmperf-sim:latest",
            "--image=glmperf-sim:candidate", "--report-dir=out", "--level-duration=8", *TINY, timeout=600)
        result.assert_outcomes(passed=3)  # two levels and the verdict
        result.stdout.fnmatch_lines(["*test_capacity[[]sim@glmperf-sim:latest-c1[]]*",
                                     "*test_capacity[[]sim@glmperf-sim:candidate-c1[]]*"])
        report = json.loads((run_folder(pytester) / "report.json").read_text())
        assert list(report["targets"]) == ["sim@glmperf-sim:latest", "sim@glmperf-sim:candidate"]
        for target in report["targets"].values():
            assert target["provenance"]["kind"] == "compose"
            assert target["provenance"]["image"]["id"] == image.id
        markdown = (run_folder(pytester) / "report.md").read_text()
        assert "## Side by side" in markdown
        assert "| c1      | tok_s_p50" in markdown and "%)" in markdown
    finally:
        docker_client.images.remove("glmperf-sim:candidate")
    assert not sim_containers(docker_client)


def test_server_killed_mid_level_fails_that_level_and_later_profiles_still_run(
        pytester: pytest.Pytester, docker_client):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    out = pytester.path / "out"

    def kill_when_loaded() -> None:
        wait_for_records(out / "latest" / "records.jsonl", 3)
        for container in sim_containers(docker_client):
            container.kill()

    killer = threading.Thread(target=kill_when_loaded, daemon=True)
    killer.start()
    result = pytester.runpytest_subprocess(
        f"--profiles-file={REGISTRY}", "--profile=sim,sim-hicache", f"--report-dir={out}", "--level-duration=60",
        *TINY, timeout=600)
    killer.join(timeout=5)
    result.assert_outcomes(passed=1, failed=2)  # sim's level, and the verdict
    result.stdout.fnmatch_lines(["*sim at concurrency 1 is not usable:*", "*failure_rate = * > max_failure_rate*",
                                 "*server died during the level: the container of profile 'sim' is *"])
    result.stdout.fnmatch_lines(["PASSED test_cap.py::test_capacity[[]sim-hicache-c1[]]*"])
    lines = (out / "latest" / "records.jsonl").read_text().splitlines()
    profiles = {json.loads(line)["profile"] for line in lines}
    assert profiles == {"sim", "sim-hicache"}
    assert not sim_containers(docker_client)


def test_ctrl_c_during_a_compose_level_leaves_partial_report_and_no_container(
        pytester: pytest.Pytester, docker_client):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    out = pytester.path / "out"
    command = [sys.executable, "-m", "pytest", f"--profiles-file={REGISTRY}", "--profile=sim",
               f"--report-dir={out}", "--level-duration=3000", *TINY]
    process = subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for_records(out / "latest" / "records.jsonl", 3)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    report = json.loads((out / "latest" / "report.json").read_text())
    assert report["status"] == "interrupted"
    assert report["targets"]["sim"]["capacity"]["levels"][0]["status"] == "interrupted"
    assert not sim_containers(docker_client)
