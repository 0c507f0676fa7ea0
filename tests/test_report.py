"""Reports: the typed model, written atomically, re-renderable from JSON."""

import io
import json

from pytest_glmperf.outputs import publish
from pytest_glmperf.render import render_markdown, render_terminal
from pytest_glmperf.report import SCHEMA_VERSION, RunReport, read_report
from tests.builders import level, mixed, run, target


def test_max_usable_is_highest_usable_level_and_the_report_round_trips(tmp_path):
    report = run(target("sim-hicache", [level(1), level(2), level(4, "xfail")]))
    publish(tmp_path, report)
    data = json.loads((tmp_path / "report.json").read_text())
    capacity = data["targets"]["sim-hicache"]["capacity"]
    assert capacity["max_usable"] == 2 and capacity["max_usable_aggregate_tok_s"] == 20.0
    assert data["schema_version"] == SCHEMA_VERSION and data["verdict"]["status"] == "PASS"
    assert "gap_p95_s = 12 s > max_gap_p95 8 s" in (tmp_path / "report.md").read_text()
    again = read_report(tmp_path / "report.json")
    assert again.as_dict()["targets"] == data["targets"]
    assert again.verdict == report.verdict


def test_a_schema_1_report_reads_back_with_its_settings_and_verdicts():
    old = {"schema_version": 1, "status": "complete",
           "settings": {"hicache": {"levels": [1], "require_concurrency": 1, "thresholds": {"max_gap_p95": 8.0}}},
           "targets": {"hicache@sglang:v1": {"capacity": {"levels": [
               {"concurrency": 1, "usable": True, "status": "pass", "requests": 30, "failure_rate": 0.0,
                "tok_s_p50": 9.0, "ttft_p95_s": 20.0, "gap_p95_s": 0.5, "aggregate_tok_s": 10.0}]},
               "provenance": {"kind": "compose", "image": {"reference": "sglang:v1", "id": "sha256:abc"}}}}}
    report = RunReport.from_dict(old)
    found = report.targets[0]
    assert found.settings["thresholds"] == {"max_gap_p95": 8.0}
    assert found.levels[0].usable and found.max_usable == 1
    assert (found.image, found.image_id) == ("sglang:v1", "sha256:abc")


def test_side_by_side_with_two_targets():
    report = run(target("sim-hicache", [level(1)]),
                 target("sim-mtp", [level(1, "fail")], mixed=mixed(client_tok_s=168.9, cache={"evicted_tokens": 100})))
    text = render_markdown(report)
    assert "## Side by side" in text and "| max usable" in text
    out = io.StringIO()
    render_terminal(report, lambda line: out.write(line + "\n"))
    assert "sim-mtp" in out.getvalue() and "168.90" in out.getvalue()


def test_the_markdown_opens_with_the_verdict_and_its_reasons():
    report = run(target("sim-hicache", [level(1), level(2, "fail")]))
    text = render_markdown(report)
    assert "**glmperf FAIL: sim-hicache max usable 1 (required 2)" in text
    assert "- ❌ sim-hicache c=2: gap_p95_s = 12 s > max_gap_p95 8 s" in text


def test_report_names_the_conditions_that_decide_comparability():
    settings = {"levels": [1, 2, 4], "capacity": {"level_duration_s": 240.0, "spike_interval_s": 25.0,
                                                  "spike_mode": "slot"}, "cache_start": "warm"}
    report = run(target("sim-hicache@lmsysorg/sglang:v1", [level(1)], settings=settings), decided=False)
    assert ("workload: levels 1,2,4 x 240 s, a spike every 25 s in an agent's slot"
            " · cache primed with its contexts and spikes before each window") in render_markdown(report)
    settings["capacity"].update(spike_mode="extra")
    settings["cache_start"] = "flushed"
    assert "a spike every 25 s beside the agents · cache flushed before" in render_markdown(report)


def test_a_simulator_behind_wall_time_is_reported_beside_the_figures(tmp_path):
    behind = {"late_steps": 7.0, "lag_max_since_start_s": 0.48}
    report = run(target("sim-hicache", [level(1, details={"simulator": {**behind, "late_steps": 0.0}}),
                                        level(2, details={"simulator": behind})],
                        mixed=mixed(client_tok_s=110.0, simulator=behind)))
    publish(tmp_path, report)
    text = (tmp_path / "report.md").read_text()
    assert ("- c=2: the simulator delivered 7 steps late (worst since start 0.48 model s): gaps and "
            "latencies stretched by up to that; a lower --time-scale avoids it") in text
    assert "- c=1: the simulator" not in text
    assert "Mixed run: the simulator delivered 7 steps late" in text
    out = io.StringIO()
    render_terminal(report, lambda line: out.write(line + "\n"))
    assert "glmperf sim-hicache: simulator behind wall time in 2 window(s): 14 steps late, worst 0.48" \
        in out.getvalue()
