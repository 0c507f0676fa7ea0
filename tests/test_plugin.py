"""The plugin end to end: inner pytest runs against the real simulator on loopback.

Inner runs use a tiny workload (2k-token contexts, 5-model-second levels at time scale 20),
so each finishes in seconds while going through every real part: simulator subprocess,
streaming client, workloads, statistics, verdicts, reports. Their levels yield a handful of
requests, so they lower --min-requests; the session verdict is one more test item.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REGISTRY
from tests.inner import CAPACITY_TEST, MIXED_TEST, run_folder

TWIN = ["--profile", "sim-hicache"]  # the tests' profile, named: the default is the mixed-chunk what-if
TINY = ["--concurrency-levels", "1,2", "--level-duration", "6", "--contexts", "2",
        "--context-tokens", "2000",
        "--max-output-tokens", "48", "--spike-interval", "3", "--mixed-duration", "6", "--mixed-contexts", "2",
        "--mixed-max-output-tokens", "48", "--mixed-spike-interval", "3", "--revisit-interval", "4",
        "--time-scale", "20", "--require-concurrency", "2", "--min-requests", "2", "-p", "no:cacheprovider"]


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(f"--profiles-file={REGISTRY}", f"--report-dir={pytester.path / 'out'}",
                                         *TWIN, *TINY, *args, timeout=300)


def test_help_lists_every_option_with_its_default(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess("--help")
    result.stdout.fnmatch_lines([
        "*LLM-serving performance (pytest-glmperf); each --glmperf-NAME also answers to --NAME*",
        "*--glmperf-profile=NAME*",
        "*Default: sim-hicache*",
        "*--glmperf-base-url=[[]NAME=[]]URL*",
        "*test servers already running at URL*",
        "*--glmperf-concurrency-levels=N,N,...*",
        "*capacity levels. Default: 1,2,4,8,12*",
        "*--glmperf-max-gap-p95=S*",
        "*Default: 8.0*",
        "*--glmperf-quick*",
    ])


def test_bad_threshold_is_a_usage_error_naming_it(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--max-ttft-p95", "soon")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*threshold max_ttft_p95 must be a number, got 'soon'*"])


def test_unknown_profile_lists_known_ones(pytester: pytest.Pytester):
    result = run_inner(pytester, "--profile", "h100-dreams")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown profile 'h100-dreams'*known:*sim-hicache*sim-mtp*"])


def test_bad_level_list_is_a_usage_error(pytester: pytest.Pytester):
    result = run_inner(pytester, "--concurrency-levels", "1,two")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*concurrency_levels must be a comma-separated list of integers*"])


def test_unreachable_base_url_is_reported_before_tests(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--base-url", "http://127.0.0.1:9")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--base-url http://127.0.0.1:9 is unreachable*"])
    result.stdout.no_fnmatch_line("*test_capacity*")


def test_field_mode_can_show_the_server_what_a_named_earlier_run_sent(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1", "--save-baseline=earlier",
              "--baseline-dir=store").assert_outcomes(passed=2)
    result = run_inner(pytester, "--field-mode", "--field-seen-run=earlier", "--baseline-dir=store")
    result.stdout.fnmatch_lines(["*showing the server * texts of run earlier (--field-mode)*"])
    report = json.loads((run_folder(pytester) / "report.json").read_text())
    target = report["targets"]["sim-hicache"]
    assert target["settings"]["cache_start"] == "field (run earlier seen, no flush)"
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    primed = [r for r in records if r["scenario"] == "prime"]
    assert len(primed) >= 2  # the earlier run's repository and spikes, sent once each
    first = next(r for r in records if r["scenario"] == "capacity" and r["level"] == 1)
    assert first["cached_tokens"] > 1000  # what the earlier run sent at c=1 was there before it ran
    unknown = run_inner(pytester, "--field-mode", "--field-seen-run=never-saved", "--baseline-dir=store")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*baseline 'never-saved' not found*"])


def test_an_extended_level_keeps_its_condition_fresh_spikes_or_seen_ones(pytester: pytest.Pytester):
    """A level short of requests runs on; its extra spikes are fresh prefills on a flushed
    server, and texts the server already saw in the field's mode (docs/metrics.md)."""
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    short = ["--concurrency-levels=1", "--require-concurrency=1", "--min-requests=12", "--max-level-duration=24"]
    spikes = {}
    for mode in ([], ["--field-mode", "--field-seen-levels=1"]):
        run_inner(pytester, *short, *mode)
        report = json.loads((run_folder(pytester) / "report.json").read_text())
        level = report["targets"]["sim-hicache"]["capacity"]["levels"][0]
        assert level["duration_s"] > 6  # it ran past its 6 s window
        records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
        spikes[bool(mode)] = [r["cached_tokens"] / r["prompt_tokens"] for r in records
                              if r["scenario"] == "capacity" and r["kind"] == "spike" and r["outcome"] == "ok"]
    assert len(spikes[False]) >= 3 and max(spikes[False]) < 0.5   # every extra spike a fresh text
    assert len(spikes[True]) >= 3 and min(spikes[True]) > 0.9     # the one seen spike text, again


def test_field_mode_shows_the_seen_levels_once_and_never_flushes(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--field-mode", "--field-seen-levels=1")
    result.stdout.fnmatch_lines(["*showing the server * texts of levels 1 (--field-mode)*"])
    assert result.stdout.str().count("(--field-mode)") == 1  # before the first level only
    report = json.loads((run_folder(pytester) / "report.json").read_text())
    target = report["targets"]["sim-hicache"]
    assert target["settings"]["cache_start"] == "field (levels 1 seen, no flush)"
    assert {lv["cache_start"] for lv in target["capacity"]["levels"]} == {"field (levels 1 seen, no flush)"}
    markdown = (run_folder(pytester) / "report.md").read_text()
    assert "the field's mode: levels 1 seen, no flush (--field-mode)" in markdown
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["scenario"] == "capacity" and r["level"] == 1)
    assert first["cached_tokens"] > 1000  # c=1's repository was there before it ran: a hit from the start


def test_levels_pass_and_reports_are_written(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST, test_mix=MIXED_TEST)
    result = run_inner(pytester, "-v", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*glmperf sim-hicache c=1: * s  requests done *  failed 0  in flight *"
                                 "  TTFT P50 * s  tok/s P50 *  (level 1 of 2, session about * more)"])
    result.stdout.fnmatch_lines(["*test_capacity[[]sim-hicache-c1[]] PASSED*",
                                 "*test_capacity[[]sim-hicache-c2[]] PASSED*",
                                 "*glmperf verdict: sim-hicache usable up to concurrency 2*"])
    out = pytester.path / "out"
    report = json.loads((out / "latest" / "report.json").read_text())
    assert report["status"] == "complete"
    target = report["targets"]["sim-hicache"]
    assert [lv["concurrency"] for lv in target["capacity"]["levels"]] == [1, 2]
    assert target["capacity"]["max_usable"] == 2
    assert target["mixed"]["client_tok_s"] > 0
    assert target["mixed"]["cache"]["generation_tokens"] > 0
    for window in [*target["capacity"]["levels"], target["mixed"]]:  # the simulator's pacing evidence
        assert set(window["simulator"]) == {"late_steps", "lag_max_since_start_s"}
    for level in target["capacity"]["levels"]:  # the server's own queue time, request by request
        assert level["server_queue"]["count"] == level["requests"]
        # what the server did during the level, as the mixed run has it: counter deltas and gauges
        assert level["cache"]["generation_tokens"] >= level["completion_tokens"] > 0
        assert level["cache"]["prompt_tokens"] > 0 and level["cache"]["cached_device_tokens"] is not None
        assert level["gauges"]["num_running_reqs"]["samples"] > 0
        assert 0 < level["gauges"]["num_running_reqs"]["max"] <= level["concurrency"] + 1
        assert 0 <= level["server_queue"]["p50_s"] <= level["server_queue"]["p95_s"]
    mixed = target["mixed"]
    assert mixed["server_queue_p95_s"] is not None and mixed["kv_available_mean"] > 0
    assert "server queue time P95 s" in (out / "latest" / "report.md").read_text()
    assert "| c   | queue mean   | queue P95   | running mean   |" in (out / "latest" / "report.md").read_text()
    records = (out / "latest" / "records.jsonl").read_text().splitlines()
    assert len(records) >= sum(lv["requests"] for lv in target["capacity"]["levels"])
    assert "## sim-hicache" in (out / "latest" / "report.md").read_text()
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="glmperf_gap_p95_s"' in junit and 'name="glmperf_usable"' in junit


def test_every_figure_peers_report_is_in_the_report_and_the_csv(pytester: pytest.Pytester):
    import csv

    pytester.makepyfile(test_cap=CAPACITY_TEST, test_mix=MIXED_TEST)
    result = run_inner(pytester, "--percentiles=50,99")
    result.assert_outcomes(passed=4)
    out = pytester.path / "out"
    target = json.loads((out / "latest" / "report.json").read_text())["targets"]["sim-hicache"]
    level = target["capacity"]["levels"][0]
    assert set(level["distributions"]) == {"ttft_s", "e2e_s", "max_gap_s", "itl_s", "tpot_s", "output_tok_s"}
    assert set(level["distributions"]["itl_s"]) == {"n", "mean", "p50", "p99"}
    assert level["distributions"]["itl_s"]["n"] > level["distributions"]["e2e_s"]["n"]  # a sample per chunk gap
    assert level["requests_per_s"] > 0 and target["mixed"]["requests_per_s"] > 0
    markdown = (out / "latest" / "report.md").read_text()
    assert "command: `" in markdown and "--percentiles=50,99" in markdown
    assert ("bar: failed <= 5%, tok/s P50 >= 4, TTFT P95 <= 180 s, gap P95 <= 8 s, each on >= 2 requests; "
            "required concurrency 2") in markdown
    assert "### Distributions" in markdown and "| c=1      | itl_s" in markdown
    levels = list(csv.DictReader((out / "latest" / "levels.csv").open()))
    assert [(row["workload"], row["concurrency"]) for row in levels] == [("capacity", "1"), ("capacity", "2"),
                                                                        ("mixed", "3")]
    assert levels[0]["e2e_s_p99"] and levels[2]["ttft_p95_s"]
    requests = list(csv.DictReader((out / "latest" / "requests.csv").open()))
    assert len(requests) == len((out / "latest" / "records.jsonl").read_text().splitlines())
    assert {"ttft_s", "e2e_s", "tpot_s", "send_s", "outcome"} <= set(requests[0])


def test_broken_bar_fails_naming_threshold_and_xfails_beyond_required(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--max-gap-p95", "0.000001", "--require-concurrency", "1", "-rxX")
    result.assert_outcomes(failed=2, xfailed=1)  # c1, and the verdict
    result.stdout.fnmatch_lines([
        "*sim-hicache at concurrency 1 is not usable:*",
        "*gap_p95_s = * s > max_gap_p95 1e-06 s*",
        "*stall * s at * s (agent *): * in flight*",  # the worst stalls, one line each, in the failure
        "*XFAIL*c2*beyond required capacity (c=2 > 1)*",
    ])
    markdown = (run_folder(pytester) / "report.md").read_text()
    assert markdown.count("  - stall ") >= 2  # listed under each level that broke the bar


def _simulator_children(parent: int) -> list[int]:
    """Pids of simulator processes started by ``parent`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"pytest_glmperf.simulator" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _process_state(pid: int) -> str:
    """The state letter of /proc/<pid>/stat (Z: a zombie nobody reaped), for failure messages."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_keeps_records_a_partial_report_and_no_simulator(pytester: pytest.Pytester, signum: int):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    out = pytester.path / "out"
    command = [sys.executable, "-m", "pytest", f"--profiles-file={REGISTRY}", f"--report-dir={out}",
               *TWIN, *TINY, "--level-duration", "600"]
    process = subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        records = out / "latest" / "records.jsonl"
        if records.exists() and records.read_text().count("\n") >= 3:
            break
        time.sleep(0.2)
    simulators = _simulator_children(process.pid)
    assert simulators
    process.send_signal(signum)
    output = process.communicate(timeout=60)[0].decode(errors="replace")
    left = {pid: _process_state(pid) for pid in simulators if Path(f"/proc/{pid}").exists()}
    assert not left, f"simulator still there ({left}); pytest said:\n{output[-3000:]}"
    report = json.loads((out / "latest" / "report.json").read_text())
    assert report["status"] == "interrupted", output[-3000:]
    levels = report["targets"]["sim-hicache"]["capacity"]["levels"]
    assert levels, f"no level in the partial report; pytest said:\n{output[-3000:]}"
    assert levels[0]["status"] == "interrupted" and levels[0]["requests"] >= 3
    assert "interrupted" in (out / "latest" / "report.md").read_text()
    assert (out / "latest" / "records.jsonl").read_text().count("\n") >= 3


HOG_CONFTEST = """
import threading, time
import pytest

@pytest.fixture(scope="session", autouse=True)
def cpu_hog():
    # sum() over a range is one C call: it holds the GIL for ~100 ms at a time, starving the event loop.
    stop = threading.Event()
    def hog():
        while not stop.is_set():
            sum(range(4_000_000))
            time.sleep(0.001)
    thread = threading.Thread(target=hog, daemon=True)
    thread.start()
    yield
    stop.set()
"""


def test_starved_client_makes_the_level_invalid_not_failed(pytester: pytest.Pytester):
    pytester.makeconftest(HOG_CONFTEST)
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--concurrency-levels", "1", "--require-concurrency", "1")
    result.assert_outcomes(errors=1, failed=1)
    # Which symptom shows first (loop lag, CPU, concurrency) depends on the machine; each names the client.
    result.stdout.fnmatch_lines(["*MeasurementInvalid: sim-hicache at concurrency 1: measurement invalid, client*"])
    report = json.loads((run_folder(pytester) / "report.json").read_text())
    level = report["targets"]["sim-hicache"]["capacity"]["levels"][0]
    assert level["status"] == "invalid" and level["usable"] is False


def test_a_simulator_behind_wall_time_says_so_in_the_report(pytester: pytest.Pytester):
    # At 2000 model seconds per wall second no host keeps up: ~25 ms model steps would need
    # ~12 us of wall time each, so steps arrive late and the report must say by how much.
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--concurrency-levels", "1", "--require-concurrency", "1", "--time-scale", "2000")
    result.stdout.fnmatch_lines(["*glmperf sim-hicache: simulator behind wall time in 1 window(s): * steps late*"])
    out = pytester.path / "out"
    level = json.loads((out / "latest" / "report.json").read_text())["targets"]["sim-hicache"]["capacity"]["levels"][0]
    assert level["simulator"]["late_steps"] > 0
    assert level["simulator"]["lag_max_since_start_s"] > 0.1
    assert "- c=1: the simulator delivered" in (out / "latest" / "report.md").read_text()


def test_server_errors_mid_run_are_recorded_and_the_run_goes_on(pytester: pytest.Pytester):
    import yaml

    profiles = yaml.safe_load(REGISTRY.read_text())["profiles"]
    flaky = dict(profiles["sim-hicache"], server_args=[*profiles["sim-hicache"]["server_args"],
                                                       "--sim-fault", "mid_stream_error:after=3,p=0.5"])
    (pytester.path / "profiles.yaml").write_text(yaml.safe_dump({"profiles": {"flaky": flaky}}))
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = pytester.runpytest_subprocess("--profiles-file=profiles.yaml", "--profile=flaky", "--report-dir=out",
                                           *TINY, timeout=300)
    result.assert_outcomes(failed=3)  # both levels ran to the end despite the errors
    result.stdout.fnmatch_lines(["*failure_rate = 0.* > max_failure_rate 0.05*"])
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    errors = [r for r in records if r["outcome"] == "failed"]
    assert errors and all("error in stream" in r["error"] for r in errors)
    assert any(r["outcome"] == "ok" for r in records)


@pytest.mark.parametrize("profile", ["sim-hicache-mtp", "sim-hicache-400g", "sim-hicache-l3"])
def test_profiles_declared_in_yaml_alone_run(pytester: pytest.Pytester, profile: str):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, f"--profile={profile}", "--concurrency-levels=1", "--require-concurrency=1")
    result.assert_outcomes(passed=2)


def test_a_server_that_cannot_start_errors_its_tests_and_is_reported(pytester: pytest.Pytester):
    import yaml

    profiles = yaml.safe_load(REGISTRY.read_text())["profiles"]
    broken = dict(profiles["sim-hicache"], server_args=[*profiles["sim-hicache"]["server_args"],
                                                        "--sim-crash-after", "0"])
    (pytester.path / "profiles.yaml").write_text(yaml.safe_dump({"profiles": {"broken": broken}}))
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = pytester.runpytest_subprocess("--profiles-file=profiles.yaml", "--profile=broken", "--report-dir=out",
                                           *TINY, timeout=120)
    result.assert_outcomes(errors=2, failed=1)
    result.stdout.fnmatch_lines(["*ServerStartError: simulator for profile 'broken' *",
                                 "*glmperf-sim: simulated crash*"])
    # it dies before or just after it listens: "did not start" or "exited during start-up", with its exit code
    result.stdout.fnmatch_lines(["glmperf FAIL: broken: server did not start (*simulator for profile 'broken' *."
                                 " exit code *)"])
    result.stdout.no_fnmatch_line("*During handling of the above exception*")
    report = json.loads((run_folder(pytester) / "report.json").read_text())
    assert "simulated crash" in report["targets"]["broken"]["start_error"]
    assert report["verdict"]["status"] == "FAIL"
    assert "server did not start" in (run_folder(pytester) / "report.md").read_text()


def test_a_misspelt_sglang_flag_is_a_usage_error_before_any_server_starts(pytester: pytest.Pytester):
    import yaml

    profiles = yaml.safe_load(REGISTRY.read_text())["profiles"]
    typo = dict(profiles["sim-hicache"], server_args=["--enable-hierarchical-cache", "--hicache-sise", "400"])
    (pytester.path / "profiles.yaml").write_text(yaml.safe_dump({"profiles": {"typo": typo}}))
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = pytester.runpytest_subprocess("--profiles-file=profiles.yaml", "--profile=typo", "--report-dir=out",
                                           *TINY, timeout=120)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*profile 'typo': unknown SGLang flag --hicache-sise (did you mean --hicache-size?)*"])
    assert not (run_folder(pytester) / "report.json").exists()


def test_repeats_run_each_level_again_and_pool_the_statistics(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1", "--repeats=2")
    result.assert_outcomes(passed=2)
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    repeats = {r["extra"].get("repeat") for r in records if r["scenario"] == "capacity"}
    assert repeats == {0, 1}
    level = json.loads((run_folder(pytester) / "report.json").read_text())["targets"]["sim-hicache"]["capacity"]
    assert level["levels"][0]["requests"] == sum(r["scenario"] == "capacity" for r in records)


def test_overriding_the_thresholds_fixture_changes_the_verdict(pytester: pytest.Pytester):
    pytester.makeconftest("""
import pytest
from pytest_glmperf import Thresholds

@pytest.fixture
def glmperf_thresholds():
    return Thresholds(max_gap_p95=0.000001)
""")
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*gap_p95_s = * s > max_gap_p95 1e-06 s*"])


def test_warm_cache_primes_each_window_and_its_spikes_hit_the_cache(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST, test_mix=MIXED_TEST)
    result = run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1", "--warm-cache")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*glmperf sim-hicache c=1: priming 2 contexts (--warm-cache)*",
                                 "*glmperf sim-hicache mixed: priming 3 contexts (--warm-cache)*"])
    out = pytester.path / "out"
    records = [json.loads(line) for line in (out / "latest" / "records.jsonl").read_text().splitlines()]
    primes = [r for r in records if r["scenario"] == "prime"]
    # Level 1: spikes at 3 s (one in a 6 s window) + repo-0; mixed: one spike + 2 repositories.
    assert [(r["level"], r["max_tokens"]) for r in primes] == [(1, 1)] * 2 + [(None, 1)] * 3
    assert all(r["outcome"] == "ok" for r in primes)
    spikes = [r for r in records if r["kind"] == "spike"]
    assert spikes and all(r["cached_tokens"] > 0.9 * r["prompt_tokens"] for r in spikes)
    report = json.loads((out / "latest" / "report.json").read_text())
    assert report["targets"]["sim-hicache"]["settings"]["cache_start"] == "warm"
    target = report["targets"]["sim-hicache"]
    assert target["capacity"]["levels"][0]["requests"] == sum(r["scenario"] == "capacity" for r in records)


def test_without_warm_cache_each_window_starts_flushed_and_spikes_are_fresh(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1")
    result.assert_outcomes(passed=2)
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    assert not [r for r in records if r["scenario"] == "prime"]
    spikes = [r for r in records if r["kind"] == "spike"]
    assert spikes and all(not r["cached_tokens"] for r in spikes)
    report = json.loads((run_folder(pytester) / "report.json").read_text())
    assert report["targets"]["sim-hicache"]["settings"]["cache_start"] == "flushed"


@pytest.mark.parametrize("clear", [False, True])
def test_clear_storage_makes_flushed_windows_cold_on_an_l3_server(pytester: pytest.Pytester, clear: bool):
    """/flush_cache leaves an L3 tier: level 2 finds level 1's context in storage, unless
    --clear-storage empties it before the flush."""
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--profile=sim-hicache-l3", *(["--clear-storage"] if clear else []))
    result.assert_outcomes(passed=3)
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    level2 = sorted((r for r in records if r["level"] == 2 and r["kind"] == "agent"), key=lambda r: r["send_ns"])
    opening = next(r for r in level2 if r["context_id"] == 0)   # seen at level 1, then flushed
    assert (opening["cached_tokens"] == 0) if clear else (opening["cached_tokens"] > 1000)
    report = json.loads((run_folder(pytester) / "report.json").read_text())
    assert report["targets"]["sim-hicache-l3"]["settings"]["cache_start"] == ("cold" if clear else "flushed")


def _busy_intervals(records: list[dict], kind: str) -> list[tuple[int, int]]:
    return [(r["send_ns"], r["done_ns"]) for r in records if r["kind"] == kind and r["scenario"] == "capacity"]


@pytest.mark.parametrize("mode", ["slot", "extra"])
def test_spike_mode_decides_whether_a_spike_takes_an_agents_slot(pytester: pytest.Pytester, mode: str):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1", "--spike-interval=2",
                       f"--spike-mode={mode}")
    result.assert_outcomes(passed=2)
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    spikes, agents = _busy_intervals(records, "spike"), _busy_intervals(records, "agent")
    assert len(spikes) == 2  # due at 2 and 4 s of the 6 s window
    overlapping = [(s0, s1) for s0, s1 in spikes if any(a0 < s1 and s0 < a1 for a0, a1 in agents)]
    # slot: one request in flight at level 1, spikes included; extra: beside the agent.
    assert (overlapping == []) if mode == "slot" else (overlapping == spikes)
    report = json.loads((run_folder(pytester) / "report.json").read_text())
    assert report["targets"]["sim-hicache"]["settings"]["capacity"]["spike_mode"] == mode


def test_a_revisit_goes_back_to_a_context_already_worked_on(pytester: pytest.Pytester):
    pytester.makepyfile(test_mix=MIXED_TEST)
    # One worker walking 8 contexts: at each revisit most contexts are still unopened.
    result = run_inner(pytester, "--mixed-contexts=8", "--decode-workers=1", "--revisit-interval=1.5")
    result.assert_outcomes(passed=2)
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    mixed = sorted((r for r in records if r["scenario"] == "mixed" and r["kind"] != "spike"),
                   key=lambda r: r["send_ns"])
    revisits = [r for r in mixed if r["kind"] == "revisit"]
    assert len(revisits) >= 3
    for revisit in revisits:
        sent_before = [r for r in mixed if r["send_ns"] < revisit["send_ns"]]
        last_sent = {r["context_id"]: r["send_ns"] for r in sent_before}
        # The least recently sent of the contexts already worked on, never a first visit.
        assert revisit["context_id"] == min(last_sent, key=lambda c: (last_sent[c], c)), (revisit, last_sent)


def test_junit_carries_limits_status_and_the_server_without_warnings(pytester: pytest.Pytester):
    import xml.etree.ElementTree as ET

    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1", "--min-requests=20",
                       "--junitxml=junit.xml")  # pytest's default junit_family: xunit2
    result.stdout.no_fnmatch_line("*record_property is incompatible*")
    cases = {case.get("name"): {p.get("name"): p.get("value") for p in case.iter("property")}
             for case in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    level = cases["test_capacity[sim-hicache-c1]"]
    assert level["glmperf_status"] == "inconclusive" and level["glmperf_settled"] == "False"
    assert level["glmperf_limit_max_gap_p95"] == "8.0" and level["glmperf_server_version"]
    assert cases["verdict"]["glmperf_verdict"] == "INCONCLUSIVE"


def test_each_session_keeps_its_own_run_folder_and_latest_points_at_the_newest(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    first = run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1")
    first.assert_outcomes(passed=2)
    runs = [folder for folder in (pytester.path / "out").iterdir() if folder.name != "latest"]
    kept = (runs[0] / "records.jsonl").read_text()
    second = run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1", "-k", "nothing-selected")
    assert second.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # a session that measures nothing writes nothing
    third = run_inner(pytester, "--concurrency-levels=1", "--require-concurrency=1")
    third.assert_outcomes(passed=2)
    folders = sorted(folder for folder in (pytester.path / "out").iterdir() if folder.name != "latest")
    assert len(folders) == 2 and (folders[0] / "records.jsonl").read_text() == kept
    assert run_folder(pytester).resolve() == folders[1].resolve()
    third.stdout.fnmatch_lines([f"glmperf report: {folders[1]}/report.md"])
