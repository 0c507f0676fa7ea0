"""Charts are valid SVG with the expected series; report.html opens offline with them inline."""

import random
import xml.etree.ElementTree as ET

import pytest

from pytest_glmperf.charts import MAX_TICK_BINS, assign_lanes, capacity_chart, timeline_chart
from pytest_glmperf.htmlreport import markdown_to_html, write_html
from pytest_glmperf.records import FAILED, RequestRecord
from pytest_glmperf.render import render_markdown
from pytest_glmperf.thresholds import Thresholds
from tests.builders import level, run, target

S = 1_000_000_000
SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    return root


def ids(root: ET.Element) -> set[str]:
    return {el.get("id") for el in root.iter() if el.get("id")}


def texts(root: ET.Element) -> str:
    return " ".join("".join(el.itertext()) for el in root.iter(f"{SVG}text"))


def report(key: str, gaps: dict[int, float]) -> dict:
    levels = [level(c, "pass" if gap <= 8 else "fail", gap=gap, tok_s=20.0 / c ** 0.3, ttft=10.0 * c, agg=18.0 * c)
              for c, gap in gaps.items()]
    return run(target(key, levels), status="running", decided=False).as_dict()


# -- capacity ------------------------------------------------------------------------------------

def test_capacity_chart_overlays_targets_with_thresholds_and_usable_region():
    reports = {"baseline": report("sim", {1: 0.5, 2: 1.0, 4: 3.0, 8: 9.5}),
               "current": report("sim", {1: 0.6, 2: 2.0, 4: 9.0, 8: 14.0})}
    root = parse(capacity_chart(reports, Thresholds().as_dict()))
    found = ids(root)
    for panel in ("tok_s", "ttft", "gap"):
        assert {f"capacity-{panel}-baseline_sim", f"capacity-{panel}-current_sim"} <= found
        assert {f"capacity-{panel}-threshold", f"capacity-{panel}-usable-region"} <= found
        assert f"capacity-{panel}-unusable-current_sim" in found
        assert {f"capacity-{panel}-max-baseline_sim", f"capacity-{panel}-max-current_sim"} <= found
    assert {"capacity-aggregate-baseline_sim", "capacity-aggregate-current_sim"} <= found
    words = texts(root)
    for label in ("baseline · sim", "current · sim", "TTFT P95 (s)", "max chunk gap P95 (s)", "per-request tok/s P50",
                  "concurrency (agents)", "bar 8", "bar 180", "level not usable"):
        assert label in words


def test_capacity_chart_takes_target_entries_and_several_targets():
    run = report("sim-hicache", {1: 0.5, 2: 1.0})
    run["targets"].update(report("sim-lru", {1: 0.5, 2: 12.0})["targets"])
    root = parse(capacity_chart({"run": run}, {"max_gap_p95": 8.0}))
    assert {"capacity-gap-sim-hicache", "capacity-gap-sim-lru", "capacity-gap-threshold"} <= ids(root)
    assert "capacity-ttft-threshold" not in ids(root)  # no threshold given, no line
    entry_only = parse(capacity_chart({"old image": run["targets"]["sim-lru"]}, {}))
    assert "capacity-tok_s-old_image" in ids(entry_only)


def test_capacity_chart_without_levels_still_renders():
    root = parse(capacity_chart({}, Thresholds().as_dict()))
    assert "no capacity levels measured" in texts(root)


# -- timeline ------------------------------------------------------------------------------------

def decode_stream(name: str, sent_s: float, chunks: int, rnd: random.Random, *, kind: str = "decode",
                  ttft_s: float = 2.0, stall_every: int = 700, stall_s: float = 12.0, ok: bool = True) -> RequestRecord:
    stamps = [int((sent_s + ttft_s) * S)]
    for k in range(1, chunks):
        gap = stall_s if k % stall_every == 0 else rnd.uniform(0.02, 0.04)
        stamps.append(stamps[-1] + int(gap * S))
    return RequestRecord(request_id=name, kind=kind, scenario="mixed", send_ns=int(sent_s * S),
                         first_token_ns=stamps[0], chunk_ns=stamps, chunk_tokens=[1] * chunks, done_ns=stamps[-1],
                         completion_tokens=chunks, prompt_tokens=100_000, outcome="ok" if ok else FAILED)


def mixed_workload(requests_per_worker: int = 20, chunks: int = 2000):
    """3 closed-loop decode workers, spikes and revisits: ~70 requests x 2000 chunks."""
    rnd = random.Random(7)
    records = []
    for worker in range(3):
        clock = 0.0
        for i in range(requests_per_worker):
            record = decode_stream(f"decode-{worker}-{i}", clock, chunks, rnd, ok=i != 3)
            records.append(record)
            clock = record.done_ns / S
    end = max(r.done_ns for r in records) / S
    records += [decode_stream(f"spike-{n}", n * end / 10, 64, rnd, kind="spike", ttft_s=40, stall_every=10**6)
                for n in range(1, 10)]
    records += [decode_stream(f"revisit-{n}", n * end / 5, chunks, rnd, kind="revisit", ttft_s=10,
                              stall_every=10**6) for n in range(1, 5)]
    samples = [i * 1.5 for i in range(int(end / 1.5))]
    gauges = {"num_queue_reqs": [(t, float(rnd.randint(0, 4))) for t in samples],
              "num_running_reqs": [(t, float(rnd.randint(2, 6))) for t in samples],
              "gen_throughput": [(t, rnd.uniform(80, 120)) for t in samples],
              "token_usage": [(t, 0.5) for t in samples]}
    return records, gauges


def test_lanes_recover_closed_loop_workers():
    records, _ = mixed_workload(requests_per_worker=4, chunks=50)
    lanes = dict(assign_lanes(records))
    assert [name for name in lanes if name.startswith("decode")] == ["decode 1", "decode 2", "decode 3"]
    assert all(len(lanes[f"decode {i}"]) == 4 for i in (1, 2, 3))
    assert "spike 1" in lanes and "revisit 1" in lanes
    for record in records:
        record.extra["worker"] = record.request_id.split("-")[1]
    assert "decode 0" in dict(assign_lanes(records))


def test_timeline_has_lanes_ticks_stalls_marks_and_gauges():
    records, gauges = mixed_workload()
    assert len(records) >= 65 and sum(len(r.chunk_ns) for r in records) > 120_000
    svg = timeline_chart(records, gauges, gap_bar_s=8.0)
    assert len(svg) < 3_000_000, "decimated ticks keep the SVG small"
    root = parse(svg)
    found = ids(root)
    assert {f"timeline-ticks-decode_{i}" for i in (1, 2, 3)} <= found
    assert {"timeline-stalls", "timeline-marks-spike", "timeline-marks-revisit", "timeline-ticks-revisit_1",
            "timeline-failed-decode_1"} <= found
    assert {f"timeline-gauge-{name}" for name in ("num_queue_reqs", "num_running_reqs", "gen_throughput")} <= found
    assert "timeline-gauge-token_usage" not in found  # only the gauges asked for get a panel
    stalls = sum(1 for r in records for a, b in zip(r.chunk_ns, r.chunk_ns[1:], strict=False) if b - a > 8 * S)
    words = texts(root)
    assert f"{stalls} chunk gap(s) above the 8 s bar" in words
    for label in ("decode 1", "decode 3", "spike 1", "revisit 1", "num_queue_reqs", "gen_throughput", "12 s"):
        assert label in words
    ticks = next(el for el in root.iter() if el.get("id") == "timeline-ticks-decode_1")
    assert 100 < len(list(ticks.iter(f"{SVG}path"))) + len(list(ticks.iter(f"{SVG}use"))) <= MAX_TICK_BINS + 1


def test_timeline_scales_stamps_to_model_seconds():
    rnd = random.Random(1)
    fast = decode_stream("d", 0.0, 100, rnd, stall_every=50, stall_s=1.0)
    fast.time_scale = 10.0  # a 1 s wall stall is 10 model seconds
    root = parse(timeline_chart([fast], {}, gap_bar_s=8.0))
    assert "1 chunk gap(s) above the 8 s bar" in texts(root)
    assert "10 s" in texts(root)


def test_timeline_of_nothing_renders():
    parse(timeline_chart([], {}, gap_bar_s=8.0))


# -- report.html ---------------------------------------------------------------------------------

def test_write_html_inlines_charts_and_needs_nothing_online(tmp_path):
    data = report("sim-hicache", {1: 0.5, 2: 12.0})
    typed = run(target("sim-hicache", [level(1), level(2, "fail")]), status="running", decided=False)
    markdown = render_markdown(typed) + "\n## Charts\n\n![capacity](capacity.svg)\n"
    svg = capacity_chart({"run": data}, Thresholds().as_dict())
    path = write_html(tmp_path, markdown, {"capacity": svg, "timeline": timeline_chart([], {}, 8.0)})
    assert path == tmp_path / "report.html"
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<title>pytest-glmperf report</title>" in page
    assert page.count("<svg") == 2 and "<?xml" not in page and "<!DOCTYPE svg" not in page
    assert "<script" not in page and "<link" not in page and 'src="http' not in page
    assert "<table>" in page and "<th>TTFT P95 s</th>" in page and "<strong>running</strong>" in page
    # the referenced chart sits where the Markdown put it; the other one is appended under "Charts"
    assert page.count("<h2>Charts</h2>") == 2
    assert page.index("<figcaption>capacity</figcaption>") < page.rindex("<h2>Charts</h2>") < \
        page.index("<figcaption>timeline</figcaption>")


@pytest.mark.parametrize(("markdown", "expected"), [
    ("# Title", "<h1>Title</h1>"),
    ("a **b** `c<d>` [e](f.md)", '<p>a <strong>b</strong> <code>c&lt;d&gt;</code> <a href="f.md">e</a></p>'),
    ("- one\n- *two*", "<ul>\n<li>one</li>\n<li><em>two</em></li>\n</ul>"),
    ("| a | b |\n|---|--:|\n| 1 | x<br>y |", "<table>\n<thead><tr><th>a</th><th>b</th></tr></thead>\n<tbody>\n"
     "<tr><td>1</td><td>x<br>y</td></tr>\n</tbody>\n</table>"),
    ("<script>x</script>", "<p>&lt;script&gt;x&lt;/script&gt;</p>"),
])
def test_markdown_subset(markdown, expected):
    assert markdown_to_html(markdown)[0] == expected
