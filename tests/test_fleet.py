"""A fleet behind SGLang's own router: the real ``sglang-router`` binary in front of real simulator
processes on loopback, started, measured through and stopped by the plugin."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pytest_glmperf.windows import routing_locality
from tests.conftest import REGISTRY
from tests.inner import CAPACITY_TEST, MIXED_TEST, run_folder, wait_for_records

pytestmark = pytest.mark.skipif(not __import__("shutil").which("sglang-router"),
                                reason="sglang-router is not installed (pip install 'pytest-glmperf[router]')")
# The router runs in wall time: at time scale 5 its few milliseconds per request stay a small part
# of a model second, where at 20 they would eat into the closed loops' achieved concurrency.
TINY = ["--concurrency-levels", "1,2", "--level-duration", "12", "--contexts", "2", "--context-tokens", "2000",
        "--max-output-tokens", "96", "--spike-interval", "4", "--mixed-duration", "16", "--mixed-contexts", "2",
        "--mixed-max-output-tokens", "128", "--mixed-spike-interval", "4", "--revisit-interval", "5",
        "--time-scale", "5", "--require-concurrency", "2", "--min-requests", "2", "-p", "no:cacheprovider"]


def fleets(path: Path) -> Path:
    """A project registry: the built-in sim-router's two workers under each routing policy."""
    spec = {"kind": "router", "require_concurrency": 2, "workers": ["sim-hicache", "sim-hicache"]}
    profiles = {f"fleet-{policy}": {**spec, "router_args": ["--policy", policy]}
                for policy in ("cache_aware", "round_robin")}
    target = path / "fleets.yaml"
    target.write_text(yaml.safe_dump({"profiles": profiles}))
    return target


def run_inner(pytester: pytest.Pytester, profile: str, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--profiles-file={fleets(pytester.path)}", f"--profile={profile}",
                                         f"--report-dir={pytester.path / 'out'}", *TINY, *args, timeout=300)


def fleet_of(report: dict, key: str) -> dict:
    return report["targets"][key]["provenance"]


def test_a_two_worker_cache_aware_fleet_passes_the_quick_suite_and_its_workers_add_up(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST, test_mix=MIXED_TEST)
    result = pytester.runpytest_subprocess(f"--profiles-file={REGISTRY}", "--profile=sim-router", "--quick",
                                           f"--report-dir={pytester.path / 'out'}", "-p", "no:cacheprovider",
                                           timeout=300)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*starting sglang-router --policy cache_aware in front of 2 workers*",
                                 "glmperf PASS: sim-router max usable 4 (required 4)*"])
    out = run_folder(pytester)
    report = json.loads((out / "report.json").read_text())
    provenance = fleet_of(report, "sim-router")
    assert provenance["kind"] == "router" and provenance["router"]["version"]
    assert provenance["router"]["args"] == ["--policy", "cache_aware"]
    scale = report["targets"]["sim-router"]["settings"]["time_scale"]
    assert [w["server_args"]["sim_time_scale"] for w in provenance["workers"]] == [scale, scale]
    target = report["targets"]["sim-router"]
    for window in [*target["capacity"]["levels"], target["mixed"]]:
        per_worker = [w["counters"]["requests"] for w in window["workers"].values()]
        sent = window["requests"] if "decode_streams" not in window else \
            sum(kind["requests"] for kind in window["by_kind"].values())
        # each worker's own count, the router's count and the client's agree
        assert sum(per_worker) == window["router"]["requests"] == sent
        assert sum(o["success"] for o in window["router"]["worker_outcomes"].values()) == sent
        assert window["routing"]["follow_ups"] > 0
    assert (out / "sim-router" / "router.log").stat().st_size > 0
    assert (out / "sim-router" / "worker-2.log").read_text().count('"event": "listening"') == 1
    assert "Workers behind the router" in (out / "report.md").read_text()


def test_cache_aware_routing_keeps_repositories_hot_where_round_robin_does_not(pytester: pytest.Pytester):
    pytester.makepyfile(test_mix=MIXED_TEST)
    many = ["--mixed-contexts", "6", "--decode-workers", "3", "--mixed-duration", "20", "--revisit-interval", "3"]
    locality = {}
    for policy in ("cache_aware", "round_robin"):
        result = run_inner(pytester, f"fleet-{policy}", *many)
        assert result.ret == 0, result.stdout.str()
        mixed = json.loads((run_folder(pytester) / "report.json").read_text())["targets"][f"fleet-{policy}"]["mixed"]
        locality[policy] = mixed["routing"]
        assert mixed["routing"]["follow_ups"] >= 6
    assert locality["cache_aware"]["locality"] > locality["round_robin"]["locality"] + 0.2, locality
    assert locality["cache_aware"]["cached_share"] > locality["round_robin"]["cached_share"], locality


def listening(log: Path, timeout_s: float = 60) -> dict:
    """A simulator's start-up event (its port and pid), from its log."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines() if log.exists() else []:
            if '"event": "listening"' in line:
                return json.loads(line)
        time.sleep(0.1)
    raise TimeoutError(f"{log} never said where it listens")


def inner_process(pytester: pytest.Pytester, *args: str) -> subprocess.Popen[str]:
    """An inner run in the background, so the test can act on its fleet while it measures."""
    command = [sys.executable, "-m", "pytest", f"--profiles-file={REGISTRY}", "--profile=sim-router",
               f"--report-dir={pytester.path / 'out'}", *TINY, *args]
    return subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_dir(pytester: pytest.Pytester) -> Path:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        runs = [p for p in (pytester.path / "out").glob("2*") if p.is_dir()]
        if runs:
            return runs[0]
        time.sleep(0.1)
    raise TimeoutError("the inner run made no run folder")


def test_a_worker_killed_mid_level_is_named_in_the_failing_level(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    inner = inner_process(pytester, "--concurrency-levels=2", "--level-duration=30", "--max-failure-rate=0",
                          "test_cap.py")
    folder = run_dir(pytester)
    worker = listening(folder / "sim-router" / "worker-2.log")
    wait_for_records(folder / "records.jsonl", 4)
    os.kill(worker["pid"], signal.SIGKILL)
    output, _ = inner.communicate(timeout=300)
    assert inner.returncode == pytest.ExitCode.TESTS_FAILED, output
    assert f"server died during the level: worker 2 (http://127.0.0.1:{worker['port']}) is gone" in output
    level = json.loads((folder / "report.json").read_text())["targets"]["sim-router"]["capacity"]["levels"][0]
    assert level["status"] == "fail" and level["failures"] >= 1
    assert "worker 2" in level["server_died"]


def test_nothing_is_left_running_after_ctrl_c(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    inner = inner_process(pytester, "--concurrency-levels=2", "--level-duration=60", "test_cap.py")
    folder = run_dir(pytester)
    workers = [listening(folder / "sim-router" / f"worker-{n}.log") for n in (1, 2)]
    wait_for_records(folder / "records.jsonl", 2)
    provenance = json.loads((folder / "report.json").read_text())["targets"]["sim-router"]["provenance"]
    command = provenance["router"]["command"]
    router_port = int(command[command.index("--port") + 1])
    inner.send_signal(signal.SIGINT)
    output, _ = inner.communicate(timeout=120)
    assert "interrupted" in output.lower(), output
    for port in [router_port, *(w["port"] for w in workers)]:
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers after Ctrl-C"
    for worker in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(worker["pid"], 0)


def test_locality_counts_returns_found_in_cache():
    from pytest_glmperf.records import RequestRecord

    def turn(context: int, cached: int, at: int) -> RequestRecord:
        return RequestRecord(request_id=f"r{at}", scenario="mixed", kind="decode", profile="p", context_id=context,
                             send_ns=at, outcome="ok", prompt_tokens=1000, cached_tokens=cached)

    found = routing_locality([turn(0, 0, 1), turn(1, 0, 2), turn(0, 990, 3), turn(1, 100, 4), turn(0, 600, 5)])
    assert found == {"follow_ups": 3, "local": 2, "locality": 2 / 3, "cached_share": 1690 / 3000}


def test_disaggregation_keeps_the_agents_streaming_through_long_prefills(pytester: pytest.Pytester):
    """The hicache twin on one server breaks a 2 s gap bar (each 60k-token spike prefill runs
    before any decode step); the same flags split into a prefill and a decode worker do not, and
    the spikes' prefills run on the prefill worker. The TTFT cost is measured beside it."""
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    long_prefills = ["--concurrency-levels=2", "--level-duration=60", "--context-tokens=60000",
                     "--max-output-tokens=200", "--spike-interval=6", "--max-gap-p95=2", "--time-scale=10",
                     "test_cap.py"]
    levels = {}
    for profile in ("sim-hicache", "sim-pd"):
        run_inner(pytester, profile, f"--profiles-file={REGISTRY}", *long_prefills)
        report = json.loads((run_folder(pytester) / "report.json").read_text())
        levels[profile] = report["targets"][profile]["capacity"]["levels"][0]
    single, split = levels["sim-hicache"], levels["sim-pd"]
    assert single["status"] == "fail" and single["gap_p95_s"] > 2, single["explain"]
    assert split["status"] == "pass" and split["gap_p95_s"] < 1.5, split["explain"]
    prefill, decode = split["workers"]["1"]["counters"], split["workers"]["2"]["counters"]
    assert prefill["generation_tokens"] == prefill["requests"]      # one token each: it only prefills
    assert decode["generation_tokens"] == split["completion_tokens"]  # every answer decoded there
    assert split["spike_requests"] > 0
    print(f"TTFT P50 {single['ttft_p50_s']:.2f} s on one server, {split['ttft_p50_s']:.2f} s disaggregated; "
          f"gap P95 {single['gap_p95_s']:.2f} -> {split['gap_p95_s']:.2f} s")


def test_a_worker_sweep_runs_each_count_as_its_own_target_and_reports_the_scaling(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST, test_mix=MIXED_TEST)
    result = run_inner(pytester, "sim-router", f"--profiles-file={REGISTRY}", "--workers=1,2", "-v",
                       "--min-scaling-efficiency=40%")
    result.stdout.fnmatch_lines(["*test_capacity[[]sim-router-x1-c2[]] PASSED*",
                                 "*test_capacity[[]sim-router-x2-c2[]] PASSED*",
                                 "glmperf scaling with workers*", "*sim-router*2*"])
    assert result.ret == 0, result.stdout.str()
    out = run_folder(pytester)
    report = json.loads((out / "report.json").read_text())
    assert list(report["targets"]) == ["sim-router-x1", "sim-router-x2"]
    assert [len(t["provenance"]["workers"]) for t in report["targets"].values()] == [1, 2]
    rows = report["scaling"]
    assert [(r["workers"], r["max_usable"], r["efficiency"], r["bound"]) for r in rows] == [
        (1, 2, 1.0, "exact"), (2, 2, 0.5, "unknown")]  # both usable at the top level run: no more than a bound
    assert rows[1]["locality"] is not None
    assert "## Scaling with workers" in (out / "report.md").read_text()
    assert 'id="scaling-sim-router"' in (out / "scaling.svg").read_text()


def test_a_sweep_of_a_profile_that_is_no_fleet_is_a_usage_error(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "sim-hicache", f"--profiles-file={REGISTRY}", "--workers=1,2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--workers resizes router profiles; 'sim-hicache' is simulated*"])


def slow_fleet(path: Path, slow_start_s: float) -> Path:
    """A fleet whose second worker answers /health_generate 503 for its first ``slow_start_s``
    model seconds (at time scale 5: a fifth of that in wall time)."""
    profiles = {"slow-worker": {"extends": "sim-hicache", "extra_args": ["--sim-slow-start", str(slow_start_s)]},
                "fleet-slow": {"kind": "router", "require_concurrency": 2, "router_args": ["--policy", "cache_aware"],
                               "workers": ["sim-hicache", "slow-worker"]}}
    target = path / "slow.yaml"
    target.write_text(yaml.safe_dump({"profiles": profiles}))
    return target


def test_a_worker_slow_to_become_healthy_is_waited_for_or_named(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    waited = run_inner(pytester, "fleet-slow", f"--profiles-file={slow_fleet(pytester.path, 10)}", "test_cap.py")
    waited.assert_outcomes(passed=3)
    waited.stdout.fnmatch_lines(["*worker 2 (slow-worker) healthy after *"])
    line = next(ln for ln in waited.stdout.lines if "worker 2 (slow-worker) healthy after" in ln)
    assert float(line.rsplit("after ", 1)[1].split(" s")[0]) >= 2.0  # it waited the worker's 10 / 5 s out

    late = run_inner(pytester, "fleet-slow", f"--profiles-file={slow_fleet(pytester.path, 600)}",
                     "--startup-timeout=4", "test_cap.py")
    assert late.ret == pytest.ExitCode.TESTS_FAILED
    late.stdout.fnmatch_lines(["*worker 2 of 'fleet-slow' (slow-worker) did not become healthy: * not ready "
                               "after 4 s: /health_generate answered 503*"])
    log = run_folder(pytester) / "fleet-slow" / "worker-1.log"
    first = listening(log)
    with pytest.raises(ProcessLookupError):  # the healthy worker it had started is stopped again
        os.kill(first["pid"], 0)


def test_an_existing_router_is_measured_through_never_stopped_or_flushed(pytester: pytest.Pytester, tmp_path: Path):
    import httpx

    from pytest_glmperf.fleet import free_port
    from tests.test_client import Simulator

    workers = [Simulator("--time-scale", "5", "--enable-metrics", log=tmp_path / f"w{n}.log") for n in (1, 2)]
    port, prometheus = free_port(), free_port()
    router = subprocess.Popen(["sglang-router", "launch", "--worker-urls", *(w.base_url for w in workers),
                               "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1",
                               "--prometheus-port", str(prometheus)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        (pytester.path / "theirs.yaml").write_text(yaml.safe_dump({"profiles": {"theirs": {
            "kind": "router", "require_concurrency": 2, "router_url": f"http://127.0.0.1:{port}",
            "router_metrics_url": f"http://127.0.0.1:{prometheus}/metrics"}}}))
        pytester.makepyfile(test_cap=CAPACITY_TEST)
        result = run_inner(pytester, "theirs", "--profiles-file=theirs.yaml", "test_cap.py")
        result.assert_outcomes(passed=3)
        report = json.loads((run_folder(pytester) / "report.json").read_text())
        target = report["targets"]["theirs"]
        assert target["provenance"]["router"]["started"] is False
        assert {w["base_url"] for w in target["provenance"]["workers"]} == {w.base_url for w in workers}
        level = target["capacity"]["levels"][-1]
        assert sum(w["counters"]["requests"] for w in level["workers"].values()) == level["router"]["requests"]
        assert router.poll() is None  # still running: not ours to stop
        metrics = httpx.get(f"http://127.0.0.1:{prometheus}/metrics").text
        assert 'path="/flush_cache"' not in metrics  # someone else's cache is never flushed unasked
    finally:
        router.terminate()
        router.wait()
        for worker in workers:
            worker.stop()
