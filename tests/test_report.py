"""Reports: written atomically as results arrive, re-renderable from JSON."""

import io
import json

from pytest_glmperf.report import RunReport, render_markdown, render_terminal


def level(c: int, usable: bool, tok_s: float) -> dict:
    return {"concurrency": c, "usable": usable, "status": "pass" if usable else "fail", "requests": 30,
            "failure_rate": 0.0, "tok_s_p50": 9.0, "ttft_p50_s": 10.0, "ttft_p95_s": 20.0, "gap_p50_s": 0.3,
            "gap_p95_s": 0.5 if usable else 12.0, "aggregate_tok_s": tok_s,
            "explain": "usable" if usable else "gap_p95_s = 12 s > max_gap_p95 8 s", "notes": []}


def test_max_usable_is_highest_usable_level(tmp_path):
    report = RunReport.start({})
    for c, usable in [(1, True), (2, True), (4, False)]:
        report.record_level("sim-hicache", level(c, usable, 10.0 * c))
    report.write(tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["targets"]["sim-hicache"]["capacity"]["max_usable"] == 2
    assert data["targets"]["sim-hicache"]["capacity"]["max_usable_aggregate_tok_s"] == 20.0
    assert data["schema_version"] == 1
    assert "gap_p95_s = 12 s > max_gap_p95 8 s" in (tmp_path / "report.md").read_text()


def test_side_by_side_with_two_targets():
    report = RunReport.start({})
    report.record_level("sim-hicache", level(1, True, 40.0))
    report.record_level("sim-mtp", level(1, False, 45.0))
    report.target("sim-mtp")["mixed"] = {"client_tok_s": 168.9, "cache": {"evicted_tokens": 100}}
    text = render_markdown(report.as_dict())
    assert "## Side by side" in text
    assert "| max usable" in text
    out = io.StringIO()
    render_terminal(report.as_dict(), lambda line: out.write(line + "\n"))
    assert "sim-mtp" in out.getvalue() and "168.90" in out.getvalue()


def test_report_names_the_conditions_that_decide_comparability():
    settings = {"levels": [1, 2, 4], "capacity": {"level_duration_s": 240.0, "spike_interval_s": 25.0,
                                                  "spike_mode": "slot"}, "cache_start": "warm"}
    report = RunReport.start({"sim-hicache": settings})
    report.record_level("sim-hicache@lmsysorg/sglang:v1", level(1, True, 40.0))
    text = render_markdown(report.as_dict())
    assert ("workload: levels 1,2,4 x 240 s, a spike every 25 s in an agent's slot"
            " · cache primed with its contexts and spikes before each window") in text
    settings["capacity"].update(spike_mode="extra")
    settings["cache_start"] = "flushed"
    assert "a spike every 25 s beside the agents · cache flushed before" in render_markdown(report.as_dict())


def test_a_simulator_behind_wall_time_is_reported_beside_the_figures(tmp_path):
    report = RunReport.start({})
    behind = {"late_steps": 7.0, "lag_max_since_start_s": 0.48}
    report.record_level("sim-hicache", {**level(1, True, 40.0), "simulator": {**behind, "late_steps": 0.0}})
    report.record_level("sim-hicache", {**level(2, True, 70.0), "simulator": behind})
    report.target("sim-hicache")["mixed"] = {"client_tok_s": 110.0, "simulator": behind}
    report.write(tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert ("- c=2: the simulator delivered 7 steps late (worst since start 0.48 model s): gaps and "
            "latencies stretched by up to that; a lower --time-scale avoids it") in text
    assert "- c=1: the simulator" not in text
    assert "Mixed run: the simulator delivered 7 steps late" in text
    out = io.StringIO()
    render_terminal(report.as_dict(), lambda line: out.write(line + "\n"))
    assert "glmperf sim-hicache: simulator behind wall time in 2 window(s): 14 steps late, worst 0.48" \
        in out.getvalue()
