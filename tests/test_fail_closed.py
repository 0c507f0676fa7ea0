"""The gate never says PASS on less than it claims: one test per way it once did (issue 22).

Each test runs the plugin as a user would (an inner pytest in a subprocess) against the real
simulator or a small real HTTP server that misbehaves, and checks that every channel says
the same verdict: the exit code, the terminal verdict line, report.json's status and verdict,
the GitHub step summary and the JUnit verdict case (``agreed``).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml

from pytest_glmperf.provenance import image_provenance
from pytest_glmperf.regression import match_target
from pytest_glmperf.report import RunReport, TargetReport
from tests.conftest import REGISTRY
from tests.inner import CAPACITY_TEST, REGRESSION_TEST, run_folder, wait_for_records
from tests.test_plugin import _simulator_children

TINY = ["--profile=sim-hicache", "--concurrency-levels=1,2", "--require-concurrency=2", "--min-requests=2",
        "--level-duration=6",
        "--contexts=2", "--context-tokens=2000", "--max-output-tokens=48", "--spike-interval=3",
        "--mixed-duration=6", "--mixed-contexts=2", "--mixed-max-output-tokens=48", "--mixed-spike-interval=3",
        "--revisit-interval=4", "--time-scale=20", "-p", "no:cacheprovider"]
EXIT_OF = {"PASS": 0, "FAIL": 1, "INTERRUPTED": 2}


def inner(pytester: pytest.Pytester, *args: str, registry: Path = REGISTRY, timeout: float = 300,
          env: dict[str, str] | None = None) -> pytest.RunResult:
    """An inner run that writes its report to out/, its step summary to summary.md, JUnit to junit.xml."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"GITHUB_STEP_SUMMARY": str(pytester.path / "summary.md"), **(env or {})}.items():
            patch.setenv(key, value)
        return pytester.runpytest_subprocess(f"--profiles-file={registry}", f"--report-dir={pytester.path / 'out'}",
                                             f"--junitxml={pytester.path / 'junit.xml'}", *TINY, *args,
                                             timeout=timeout)


def agreed(pytester: pytest.Pytester, result: pytest.RunResult) -> dict[str, Any]:
    """Assert that every channel carries the same verdict; return report.json."""
    report = json.loads((run_folder(pytester) / "report.json").read_text())
    verdict = report["verdict"]
    line = verdict["line"]
    assert line in result.stdout.str(), f"terminal lacks {line!r}:\n{result.stdout.str()[-3000:]}"
    assert f"**{line}**" in (pytester.path / "summary.md").read_text()
    expected = EXIT_OF.get(verdict["status"], 0 if verdict["exit_ok"] else 1)
    assert result.ret == expected, f"exit {result.ret} but the verdict says {line}"
    assert report["status"] == ("interrupted" if verdict["status"] == "INTERRUPTED" else "complete")
    junit = pytester.path / "junit.xml"
    if verdict["status"] != "INTERRUPTED" and junit.exists():
        case = next(c for c in ET.parse(junit).iter("testcase") if c.get("classname") == "glmperf")
        assert (case.find("failure") is None) == verdict["exit_ok"]
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        assert properties["glmperf_verdict"] == verdict["status"]
    return report


def registry_with(pytester: pytest.Pytester, name: str, base: str = "sim-hicache", extra_args: tuple[str, ...] = (),
                  **fields: Any) -> Path:
    profiles = yaml.safe_load(REGISTRY.read_text())["profiles"]
    profile = {**profiles[base], **fields}
    profile["server_args"] = [*profile.get("server_args", ()), *extra_args]
    path = pytester.path / "profiles.yaml"
    path.write_text(yaml.safe_dump({"profiles": {name: profile}}))
    return path


# -- 1. comparisons measure what they compare ----------------------------------------------------

@pytest.mark.parametrize("selection", [["-k", "regression"], ["test_reg.py"]], ids=["-k regression", "file alone"])
def test_a_comparison_alone_measures_the_levels_it_compares(pytester: pytest.Pytester, selection: list[str]):
    pytester.makepyfile(test_cap=CAPACITY_TEST, test_reg=REGRESSION_TEST)
    saved = inner(pytester, "--save-baseline=base", "--baseline-dir=store", "test_cap.py")
    assert saved.ret == 0, saved.stdout.str()[-2000:]
    result = inner(pytester, "--compare=base", "--baseline-dir=store", *selection)
    report = agreed(pytester, result)
    target = report["targets"]["sim-hicache"]
    assert [lv["concurrency"] for lv in target["capacity"]["levels"]] == [1, 2]  # measured on demand
    checks = [c for c in target["regression"]["checks"] if c["outcome"] != "warning"]
    assert len(checks) == 15 and all(c["n_current"] > 0 for c in checks if c["level"] is not None)
    mixed = [c for c in checks if c["metric"].startswith("mixed_")]  # the baseline has none: not measured for it
    assert len(mixed) == 4 and all(c["outcome"] == "inconclusive" for c in mixed) and target["mixed"] is None
    assert not [c for c in checks if "not measured" in c["reason"]]
    assert "nothing measured" not in report["verdict"]["line"]


def test_inconclusive_comparisons_fail_the_gate_when_asked(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST, test_reg=REGRESSION_TEST)
    inner(pytester, "--save-baseline=base", "--baseline-dir=store", "test_cap.py")
    result = inner(pytester, "--compare=base", "--baseline-dir=store", "--inconclusive=fail", "test_reg.py")
    report = agreed(pytester, result)
    assert report["verdict"]["status"] == "INCONCLUSIVE" and not report["verdict"]["exit_ok"]
    assert "counted as a failure" in report["verdict"]["line"]


def test_a_level_a_capacity_search_skipped_is_an_explicit_inconclusive_comparison(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST, test_reg=REGRESSION_TEST)
    inner(pytester, "--save-baseline=base", "--baseline-dir=store", "test_cap.py")
    result = inner(pytester, "--compare=base", "--baseline-dir=store", "--capacity-search", "test_reg.py")
    report = agreed(pytester, result)
    checks = {(c["level"], c["metric"]): c for c in report["targets"]["sim-hicache"]["regression"]["checks"]}
    skipped = report["targets"]["sim-hicache"]["capacity"]["search"]["skipped"]
    assert skipped == [1]  # the top level passed first, settling the answer
    assert checks[(1, "ttft_p95_s")]["outcome"] == "inconclusive"
    assert "not needed by --capacity-search" in checks[(1, "ttft_p95_s")]["reason"]
    assert report["verdict"]["status"] in ("PASS", "INCONCLUSIVE") and checks[(2, "ttft_p95_s")]["n_current"] > 0


# -- 2. the required level must be in what runs -------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--concurrency-levels=1,2", "--require-concurrency=8"], "*required concurrency 8 is not among the levels 1,2*"),
    (["-k", "c1"], "*leaves out required level(s) 2 (required concurrency 2)*--require-concurrency 1*"),
])
def test_a_required_level_left_out_is_a_usage_error_before_any_server(pytester: pytest.Pytester, args, message):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = inner(pytester, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert not (run_folder(pytester) / "report.json").exists()  # nothing started, nothing written


# -- 3. a server that dies between levels ---------------------------------------------------------

KILL_AFTER_C1 = """
import json, os, signal
from pathlib import Path

def pytest_runtest_logfinish(nodeid, location):
    if nodeid.endswith("[sim-hicache-c1]"):
        log = Path("out/latest/sim-hicache/server.log").read_text().splitlines()
        pid = next(json.loads(line)["pid"] for line in log if line.startswith('{"event": "listening"'))
        os.kill(pid, signal.SIGKILL)
"""


def test_a_server_that_dies_between_levels_fails_the_gate(pytester: pytest.Pytester):
    pytester.makeconftest(KILL_AFTER_C1)
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    report = agreed(pytester, inner(pytester))
    assert report["verdict"]["status"] == "FAIL"
    levels = {lv["concurrency"]: lv for lv in report["targets"]["sim-hicache"]["capacity"]["levels"]}
    assert levels[1]["status"] == "pass" and levels[2]["status"] == "error"
    assert "sim-hicache c=2: measurement error" in report["verdict"]["line"]
    assert "no longer running" in levels[2]["server_died"] or "exited" in levels[2]["server_died"]


@pytest.mark.parametrize(("option", "value"), [("--request-timeout", "nan"), ("--time-scale", "inf"),
                                               ("--level-duration", "nan"), ("--concurrency-levels", "")])
def test_non_numbers_and_empty_values_are_usage_errors(pytester: pytest.Pytester, option: str, value: str):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = inner(pytester, option, value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{option.lstrip('-').replace('-', '_')}*" if value else f"*{option}*empty*"])


# -- 4. a capacity search's cut requests are not failures ----------------------------------------

def test_requests_cut_by_a_settled_search_are_not_failures(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = inner(pytester, "--capacity-search", "--max-gap-p95=0.000001", "--level-duration=60")
    report = agreed(pytester, result)
    assert report["verdict"]["status"] == "FAIL"
    levels = report["targets"]["sim-hicache"]["capacity"]["levels"]
    assert levels and all(lv["cut_short"] and lv["failures"] == 0 for lv in levels)
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    assert {r["outcome"] for r in records} <= {"ok", "cut"} and any(r["outcome"] == "cut" for r in records)


# -- 5. the image behind a tag changed ---------------------------------------------------------------

@pytest.mark.docker
def test_a_new_image_under_the_same_name_warns(docker_client):
    images = [image for image in docker_client.images.list() if image.tags][:2]
    if len(images) < 2:
        pytest.skip("needs two local images (.ci/setup-docker.sh builds them)")
    reports = [TargetReport("hicache", provenance={"kind": "compose", **_compose_image(docker_client, image)})
               for image in images]
    baseline = type("B", (), {"report": RunReport(targets=(reports[0],)), "records": []})()
    _, warnings = match_target(reports[1], baseline)
    assert warnings and "image id" in warnings[0].reason and images[0].id in warnings[0].reason


def _compose_image(client: Any, image: Any) -> dict[str, Any]:
    """The provenance record compose.py writes, for one real image."""
    return {"image": image_provenance(client, image.tags[0])}


# -- 6. a verdict on a handful of requests --------------------------------------------------------

@pytest.mark.parametrize("inconclusive", ["pass", "fail"])
def test_too_few_requests_is_inconclusive_and_counts_as_told(pytester: pytest.Pytester, inconclusive: str):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = inner(pytester, "--min-requests=20", f"--inconclusive={inconclusive}")
    report = agreed(pytester, result)
    verdict = report["verdict"]
    assert verdict["status"] == "INCONCLUSIVE" and verdict["exit_ok"] == (inconclusive == "pass")
    level = report["targets"]["sim-hicache"]["capacity"]["levels"][0]
    assert level["status"] == "inconclusive" and "needs >= 20" in level["explain"]
    assert all(check["enough"] is False for check in level["checks"])


# -- 7. errors inside the load, and a record that cannot be written ------------------------------

FULL_DISK = """
from pathlib import Path

def pytest_runtestloop(session):
    # the run folder exists once the first server is up; records.jsonl opens with the first record
    run = session.config.stash[__import__("pytest_glmperf.plugin").plugin.RUN_KEY]
    (run.report_dir / "records.jsonl").symlink_to("/dev/full")  # every write: "No space left on device"
"""


def test_a_record_that_cannot_be_written_fails_the_run_loudly(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    pytester.makeconftest(FULL_DISK)
    report = agreed(pytester, inner(pytester, "--concurrency-levels=1", "--require-concurrency=1"))
    assert report["verdict"]["status"] == "FAIL"
    assert any("cannot write" in reason and "records.jsonl" in reason for reason in report["verdict"]["failures"])
    level = report["targets"]["sim-hicache"]["capacity"]["levels"][0]
    assert level["status"] == "error" and "RecordWriteError" in level["error"]


# -- 8. SIGTERM with every kind of server ---------------------------------------------------------

def test_sigterm_with_a_base_url_keeps_records_and_a_partial_report(pytester: pytest.Pytester, simulator: str):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    out = pytester.path / "out"
    command = [sys.executable, "-m", "pytest", f"--profiles-file={REGISTRY}", f"--report-dir={out}", *TINY,
               "--level-duration=600", f"--base-url={simulator}"]
    process = subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    wait_for_records(out / "latest" / "records.jsonl", 3)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0].decode(errors="replace")
    assert process.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    report = json.loads((out / "latest" / "report.json").read_text())
    assert report["status"] == "interrupted" and report["verdict"]["status"] == "INTERRUPTED"
    assert report["verdict"]["line"] in output  # the summary was printed
    [target] = report["targets"].values()  # named from the server itself (glm-5.1@<version>)
    level = target["capacity"]["levels"][0]
    records = (out / "latest" / "records.jsonl").read_text().splitlines()
    assert level["status"] == "interrupted" and len(records) >= level["requests"] >= 3
    assert any(json.loads(line).get("extra", {}).get("error_kind") == "cancelled" for line in records)


def test_the_embedded_simulator_dies_with_a_killed_pytest(pytester: pytest.Pytester):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    out = pytester.path / "out"
    command = [sys.executable, "-m", "pytest", f"--profiles-file={REGISTRY}", f"--report-dir={out}", *TINY,
               "--level-duration=600"]
    process = subprocess.Popen(command, cwd=pytester.path, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    wait_for_records(out / "latest" / "records.jsonl", 1)
    simulators = _simulator_children(process.pid)
    assert simulators
    process.kill()
    process.wait(30)
    deadline = time.monotonic() + 15
    while any(Path(f"/proc/{pid}").exists() for pid in simulators) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in simulators if Path(f"/proc/{pid}").exists()]


@pytest.fixture
def simulator(tmp_path: Path) -> Iterator[str]:
    """A simulator someone else started (the sim-hicache flags), for --base-url."""
    from tests.test_client import Simulator

    args = yaml.safe_load(REGISTRY.read_text())["profiles"]["sim-hicache"]["server_args"]
    server = Simulator("--time-scale", "20", *args, log=tmp_path / "simulator.log")
    yield server.base_url
    server.stop()


# -- 9. a server that never answers ----------------------------------------------------------------

def test_a_server_that_never_answers_is_reported_with_progress_and_ends(pytester: pytest.Pytester):
    registry = registry_with(pytester, "mute", extra_args=("--sim-fault", "stall:after=0,seconds=1000000"))
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    began = time.monotonic()
    # --max-ttft-p95 40 makes the first-token limit 80 model s: 4 wall s at time scale 20.
    result = inner(pytester, "--profile=mute", "--max-ttft-p95=40", "--concurrency-levels=1",
                   "--require-concurrency=1", registry=registry, env={"GLMPERF_HEARTBEAT_S": "1"})
    report = agreed(pytester, result)
    assert time.monotonic() - began < 120
    assert report["verdict"]["status"] == "FAIL"
    result.stdout.fnmatch_lines(["*glmperf mute calibration: calibrating characters per token*still waiting*"])
    level = report["targets"]["mute"]["capacity"]["levels"][0]
    assert "calibration request failed: timeout: no first token within 80 s" in level["error"]


def test_a_stream_gone_silent_fails_its_request_and_the_level(pytester: pytest.Pytester):
    registry = registry_with(pytester, "stalls", extra_args=("--sim-fault", "stall:after=3,seconds=1000000"))
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = inner(pytester, "--profile=stalls", "--stall-timeout=10", "--concurrency-levels=1",
                   "--require-concurrency=1", registry=registry)
    report = agreed(pytester, result)
    level = report["targets"]["stalls"]["capacity"]["levels"][0]
    assert level["status"] == "fail" and level["failure_rate"] == 1.0
    records = [json.loads(line) for line in (run_folder(pytester) / "records.jsonl").read_text().splitlines()]
    assert records and all("stream silent for 10 s" in r["error"] for r in records)


# -- 10. typos and bad places ----------------------------------------------------------------------

@pytest.mark.parametrize(("fields", "extra_args", "message"), [
    ({"requires_concurrency": 2}, (), "*unknown key 'requires_concurrency' (did you mean 'require_concurrency'?)*"),
    ({}, ("--hicache-sise", "400"), "*unknown SGLang flag --hicache-sise (did you mean --hicache-size?)*"),
    ({"options": {"level_duraton": 5}}, (), "*option 'level_duraton' is unknown*"),
])
def test_a_typo_in_a_profile_is_a_usage_error(pytester: pytest.Pytester, fields, extra_args, message):
    registry = registry_with(pytester, "typo", extra_args=extra_args, **fields)
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = inner(pytester, "--profile=typo", registry=registry)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


@pytest.mark.parametrize("where", ["a-file", "a-file/below"])
def test_a_report_dir_that_cannot_be_written_is_a_usage_error(pytester: pytest.Pytester, where: str):
    (pytester.path / "a-file").write_text("not a folder")
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    result = pytester.runpytest_subprocess(f"--profiles-file={REGISTRY}", f"--report-dir={where}", *TINY)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--report-dir *{where} is not a folder this run can write*"])


# -- 11. a third-party server: no /flush_cache, short keep-alive, credentials in the URL --------

def chat_app(delay_s: float) -> Callable[..., Any]:
    """A minimal OpenAI-compatible streaming server: /v1/chat/completions only, 404 elsewhere."""
    import asyncio

    async def app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] != "/v1/chat/completions":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for n in range(1, 9):
            await asyncio.sleep(delay_s)
            chunk = {"choices": [{"index": 0, "delta": {"content": "x"}}],
                     "usage": {"prompt_tokens": 3000, "completion_tokens": n, "total_tokens": 3000 + n}}
            await send({"type": "http.response.body", "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                        "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
    return app


@pytest.fixture
def third_party() -> Iterator[str]:
    """uvicorn with a 50 ms keep-alive: idle pooled connections close under the client."""
    server = uvicorn.Server(uvicorn.Config(chat_app(0.02), host="127.0.0.1", port=0, timeout_keep_alive=0.05,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.01)
    yield f"127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


def test_a_third_party_server_is_measured_without_blaming_it_for_the_client(pytester: pytest.Pytester,
                                                                             third_party: str):
    pytester.makepyfile(test_cap=CAPACITY_TEST)
    began = time.monotonic()
    result = inner(pytester, f"--base-url=http://user:s3cret@{third_party}", "--flush-cache=true",
                   "--level-duration=3", "--spike-interval=0", "--time-scale=1")
    report = agreed(pytester, result)
    assert time.monotonic() - began < 60  # no 60 s wait per level for a /flush_cache that does not exist
    assert report["verdict"]["status"] == "PASS"
    assert list(report["targets"]) == [third_party]  # no /server_info: named by its address, no credentials
    levels = report["targets"][third_party]["capacity"]["levels"]
    assert all(lv["failures"] == 0 and lv["cache_start"] == "as-is (no /flush_cache)" for lv in levels)
    result.stdout.fnmatch_lines(["*this server has no /flush_cache (HTTP 404)*"])
    text = (run_folder(pytester) / "report.json").read_text() + (run_folder(pytester) / "report.md").read_text()
    assert "s3cret" not in text and "user:" not in text


# -- 12. scenarios are claims like levels ---------------------------------------------------------

SCENARIO_TEST = """
import pytest

async def turn(agent):
    await agent.send(agent.contexts.messages(agent.contexts.text("repo", 1000), "go"), max_tokens=32)

@pytest.mark.asyncio
async def test_scenario(glmperf_scenario):
    await glmperf_scenario(turn, concurrency=2, duration_s=4, name="loop")  # no assert: the verdict judges it
"""


def test_a_scenario_reaches_the_report_and_the_verdict(pytester: pytest.Pytester):
    pytester.makepyfile(test_scn=SCENARIO_TEST)
    report = agreed(pytester, inner(pytester))
    scenario = report["targets"]["sim-hicache"]["scenarios"][0]
    assert scenario["workload"] == "loop" and scenario["status"] == "pass" and scenario["requests"] > 2
    assert scenario["client"]["target_concurrency"] == 2 and "stalls" in scenario
    assert report["verdict"]["line"].startswith("glmperf PASS: sim-hicache loop c=2 pass")


def test_a_scenario_with_a_starved_client_fails_the_verdict(pytester: pytest.Pytester):
    from tests.test_plugin import HOG_CONFTEST

    pytester.makeconftest(HOG_CONFTEST)
    pytester.makepyfile(test_scn=SCENARIO_TEST)
    report = agreed(pytester, inner(pytester))
    scenario = report["targets"]["sim-hicache"]["scenarios"][0]
    assert scenario["status"] == "invalid" and report["verdict"]["status"] == "FAIL"
