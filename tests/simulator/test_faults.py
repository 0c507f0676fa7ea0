"""Fault injection and scripted streams, over real HTTP (issue 3 item 6, issue 2 proof).

Each fault is shown to produce exactly the failure a client must count: an in-stream error
payload under HTTP 200, a 503 before the stream, a stall of known length, a stream without
``[DONE]``, a malformed SSE line, a process crash, slow readiness.
"""

from __future__ import annotations

import itertools
import json
import time

import httpx
import pytest

from pytest_glmperf.simulator.faults import (
    Fault,
    FaultBoard,
    FaultSpecError,
    StreamFaults,
    parse_fault,
    parse_faults,
)

# -- spec parsing (pure) ----------------------------------------------------------------------


def test_parse_fault_specs():
    assert parse_fault("mid_stream_error:after=20") == Fault("mid_stream_error", after=20)
    assert parse_fault("queue_full") == Fault("queue_full", code=503)
    assert parse_fault("stall:seconds=5,after=10") == Fault("stall", after=10, seconds=5.0)
    assert parse_fault("truncate:after=30").after == 30
    assert parse_fault("malformed:after=5").kind == "malformed"
    assert [f.kind for f in parse_faults("stall:seconds=1;truncate:after=3")] == [
        "stall", "truncate"]
    for fault in parse_faults("mid_stream_error:after=2,code=503,p=0.5;stall:seconds=1.5"):
        assert parse_fault(fault.spec()) == fault


@pytest.mark.parametrize("spec, words", [
    ("explode", "unknown fault"), ("stall:seconds=x", "seconds"), ("stall:colour=red", "colour"),
    ("truncate:after=-1", "after"), ("mid_stream_error:code=999", "code"), ("stall:3", "KEY"),
    ("truncate:p=2", "p must"),
])
def test_bad_fault_specs_name_the_problem(spec, words):
    with pytest.raises(FaultSpecError, match=words):
        parse_fault(spec)


def test_stream_faults_fire_in_order_once():
    faults = StreamFaults.build(parse_faults("truncate:after=5;stall:after=2;queue_full"))
    assert faults.queue_full is not None
    assert faults.due(1) == []
    assert [f.kind for f in faults.due(2)] == ["stall"]
    assert faults.due(2) == []
    assert [f.kind for f in faults.due(7)] == ["truncate"]


def test_probability_draws_are_seeded():
    def draws(seed: int) -> list[bool]:
        board = FaultBoard(parse_faults("truncate:after=1,p=0.5"), seed=seed)
        return [bool(board.for_request(None).pending) for _ in range(40)]

    assert draws(3) == draws(3)
    assert 5 < sum(draws(3)) < 35


# -- faults over HTTP ---------------------------------------------------------------------------

def _hdr(spec: str) -> dict[str, str]:
    return {"x-glmperf-fault": spec}


def test_mid_stream_error_payload_then_usage_and_done(http):
    s = http.chat(http.body(max_tokens=40), headers=_hdr("mid_stream_error:after=5,code=503"))
    assert s.status == 200
    assert len(s.token_chunks()) == 5
    errors = [c for c in s.chunks() if "error" in c]
    assert len(errors) == 1
    err = errors[0]["error"]
    assert err == {"object": "error", "message": err["message"], "type": "SERVICE_UNAVAILABLE",
                   "param": None, "code": 503}
    # A chunk may carry several tokens when the client falls behind (SGLang coalesces too):
    # the usage counts exactly the tokens streamed before the error.
    streamed = s.token_chunks()[-1]["usage"]["completion_tokens"]
    assert streamed >= 5
    assert "usage" in s.chunks()[-1] and s.chunks()[-1]["usage"]["completion_tokens"] == streamed
    assert s.done
    assert not any(c["choices"] and c["choices"][0].get("finish_reason") for c in s.chunks()
                   if "choices" in c)


def test_error_as_first_output_is_in_band(http):
    s = http.chat(http.body(max_tokens=10), headers=_hdr("mid_stream_error:after=0"))
    assert s.status == 200 and s.done
    assert s.token_chunks() == []
    assert any(c.get("error", {}).get("code") == 500 for c in s.chunks())


def test_queue_full_is_503_before_the_stream(http):
    s = http.chat(http.body(), headers=_hdr("queue_full"))
    assert s.status == 503
    body = json.loads(s.body)
    assert body["object"] == "error" and body["code"] == 503


def test_stall_holds_the_stream_for_the_given_model_seconds(http):
    # Shared server runs at time scale 50: 5 model s = 100 ms wall.
    s = http.chat(http.body(max_tokens=30), headers=_hdr("stall:seconds=5,after=10"))
    assert s.done
    stamps = s.token_stamps()
    gaps = [(b - a) / 1e9 * 50 for a, b in itertools.pairwise(stamps)]
    assert max(gaps) == pytest.approx(5.0, abs=0.6)
    assert gaps.index(max(gaps)) == 9  # between token chunk 10 and 11
    sends = http.sends(s.rid)
    token_sends = [t for t, k in zip(sends["send_ns"], sends["kinds"], strict=True)
                   if k in ("reasoning", "content")]
    assert (token_sends[10] - token_sends[9]) / 1e9 * 50 >= 5.0


def test_truncate_ends_without_done(http):
    s = http.chat(http.body(max_tokens=50), headers=_hdr("truncate:after=7"))
    assert s.status == 200
    assert len(s.token_chunks()) == 7
    assert not s.done
    assert "[DONE]" not in s.payloads


def test_malformed_line_then_stream_continues(http):
    # 40 tokens: a reader that falls behind gets coalesced chunks, and 12 tokens could then
    # come in three chunks, before the fault's turn.
    s = http.chat(http.body(max_tokens=40), headers=_hdr("malformed:after=3"))
    bad = []
    for payload in s.payloads:
        try:
            json.loads(payload) if payload != "[DONE]" else None
        except json.JSONDecodeError:
            bad.append(payload)
    assert len(bad) == 1
    assert s.payloads.index(bad[0]) == 4  # role chunk + 3 token chunks, then the bad line
    assert s.done


def test_bad_fault_header_is_400(http):
    s = http.chat(http.body(), headers=_hdr("explode:after=1"))
    assert s.status == 400
    assert "unknown fault" in json.loads(s.body)["message"]


def test_admin_endpoint_sets_lists_and_clears_server_faults(http):
    resp = http.post("/glmperf/faults", json={"faults": ["truncate:after=2"]})
    assert resp.status_code == 200 and resp.json()["faults"] == ["truncate:after=2"]
    assert http.get("/glmperf/faults").json()["faults"] == ["truncate:after=2"]
    assert not http.chat(http.body(max_tokens=10)).done
    assert http.delete("/glmperf/faults").json()["faults"] == []
    assert http.chat(http.body(max_tokens=10)).done
    assert http.post("/glmperf/faults", json={"faults": "nope"}).status_code == 400


def test_cli_fault_applies_to_every_request(start_sim, client_for):
    proc = start_sim("--time-scale", "50", "--sim-fault", "mid_stream_error:after=2")
    proc.wait_ready()
    client = client_for(proc)
    for _ in range(3):
        s = client.chat(client.body(max_tokens=10))
        assert any("error" in c for c in s.chunks()) and s.done


def test_crash_fault_kills_the_process_mid_stream(start_sim, client_for):
    proc = start_sim("--time-scale", "50")
    proc.wait_ready()
    client = client_for(proc)
    with pytest.raises(httpx.HTTPError):
        client.chat(client.body(max_tokens=50), headers=_hdr("crash:after=3"))
    assert proc.proc.wait(timeout=10) == 1
    assert "simulated crash" in proc.proc.stderr.read()


def test_crash_after_model_seconds(start_sim):
    began = time.monotonic()
    proc = start_sim("--time-scale", "10", "--sim-crash-after", "5")
    assert proc.proc.wait(timeout=10) == 1
    assert time.monotonic() - began >= 0.45  # 5 model s at scale 10


def test_admin_crash_after(start_sim, client_for):
    proc = start_sim("--time-scale", "100")
    proc.wait_ready()
    resp = client_for(proc).post("/glmperf/faults", json={"crash_after_s": 10})
    assert resp.status_code == 200 and resp.json()["crash_at_s"] is not None
    assert proc.proc.wait(timeout=10) == 1


# -- scripted streams -----------------------------------------------------------------------------

SCRIPT = {
    "ttft_s": 0.2, "prompt_tokens": 1000, "cached_tokens": 640,
    "chunks": [{"gap_s": 0.0, "tokens": 1, "channel": "reasoning"},
               *[{"gap_s": 0.03, "tokens": 1, "channel": "reasoning"} for _ in range(4)],
               {"gap_s": 0.25, "tokens": 3, "channel": "content"},
               *[{"gap_s": 0.02, "tokens": 2, "channel": "content"} for _ in range(5)]],
}


def _script_times() -> list[float]:
    """Model-time instant of each scripted chunk after the request arrived."""
    out, t = [], SCRIPT["ttft_s"]
    for chunk in SCRIPT["chunks"]:
        t += chunk["gap_s"]
        out.append(t)
    return out


def _assert_precise(errors_s: list[float], typical_ms: float = 2.0, worst_ms: float = 25.0) -> None:
    """Typical error within *typical_ms*; a rare outlier (the OS preempting the server on a
    busy CI box) within *worst_ms*. The pacing itself is sub-millisecond."""
    errors_ms = sorted(abs(e) * 1e3 for e in errors_s)
    assert errors_ms[len(errors_ms) // 2] <= typical_ms, errors_ms
    assert errors_ms[-1] <= worst_ms, errors_ms


@pytest.mark.usefixtures("no_gc_pauses")
def test_scripted_stream_is_played_exactly(sim_realtime, client_for):
    client = client_for(sim_realtime)
    body = client.body(max_tokens=None, glmperf_script=SCRIPT)
    client.chat(client.body(max_tokens=None, glmperf_script={"chunks": []}))  # warm connection
    sent = time.perf_counter_ns()
    s = client.chat(body)
    assert s.done
    tokens = [c["usage"]["completion_tokens"] for c in s.token_chunks()]
    assert tokens == [1, 2, 3, 4, 5, 8, 10, 12, 14, 16, 18]
    usage = s.chunks()[-1]["usage"]
    assert usage == {"prompt_tokens": 1000, "total_tokens": 1018, "completion_tokens": 18,
                     "prompt_tokens_details": {"cached_tokens": 640}, "reasoning_tokens": 5}
    kinds = ["r" if c["choices"][0]["delta"]["reasoning_content"] else "c"
             for c in s.token_chunks()]
    assert kinds == ["r"] * 5 + ["c"] * 6
    # Client arrivals vs the script (time scale 1: model s == wall s). The client's own
    # overhead (request building, response set-up) shifts every arrival alike, so TTFT gets
    # a looser bound and the gaps are judged around the median offset.
    offsets = [(t - sent) / 1e9 - w for t, w in zip(s.token_stamps(), _script_times(), strict=True)]
    assert offsets[0] == pytest.approx(0.0, abs=0.025)
    median = sorted(offsets)[len(offsets) // 2]
    _assert_precise([o - median for o in offsets])


@pytest.mark.usefixtures("no_gc_pauses")
def test_server_send_stamps_match_the_script(sim_realtime, client_for):
    client = client_for(sim_realtime)
    s = client.chat(client.body(max_tokens=None, glmperf_script=SCRIPT))
    sends = client.sends(s.rid)
    stamps = [t for t, k in zip(sends["send_ns"], sends["kinds"], strict=True)
              if k in ("reasoning", "content")]
    # Around the median offset from the script: the first write also carries the response
    # headers and the role chunk, so it may trail the others by about a millisecond.
    offsets = [t / 1e9 - w for t, w in zip(stamps, _script_times(), strict=True)]
    median = sorted(offsets)[len(offsets) // 2]
    _assert_precise([o - median for o in offsets[1:]])
    assert offsets[0] - median == pytest.approx(0.0, abs=0.005)
    # Client stamps trail the server's send stamps by loopback latency only (the server
    # stamps right after its write; if the OS preempts it just then, the client is earlier).
    lag_ms = sorted((c - t) / 1e6 for c, t in zip(s.token_stamps(), stamps, strict=True))
    assert lag_ms[0] > -5.0 and lag_ms[len(lag_ms) // 2] < 5.0


def test_script_faults_error_truncate_malformed(sim, client_for):
    client = client_for(sim)
    chunks = [{"gap_s": 0.0, "tokens": 1}] * 10
    err = client.chat(client.body(glmperf_script={"chunks": chunks, "error_after": 4}))
    assert len(err.token_chunks()) == 4 and err.done
    assert any("error" in c for c in err.chunks())
    cut = client.chat(client.body(glmperf_script={"chunks": chunks, "truncate_after": 6}))
    assert len(cut.token_chunks()) == 6 and not cut.done
    bad = client.chat(client.body(glmperf_script={"chunks": chunks, "malformed_after": 2}))
    assert bad.done and len(bad.payloads) == 1 + 10 + 1 + 2 + 1  # role, tokens, bad, end


def test_scripted_stall_and_multi_token_chunk_timing(sim_realtime, client_for):
    client = client_for(sim_realtime)
    script = {"ttft_s": 0.05, "chunks": [{"gap_s": 0, "tokens": 1}, {"gap_s": 0.4, "tokens": 4},
                                         {"gap_s": 0.01, "tokens": 1}]}
    s = client.chat(client.body(max_tokens=None, glmperf_script=script))
    sends = client.sends(s.rid)
    tok = [(t, n) for t, k, n in zip(sends["send_ns"], sends["kinds"], sends["tokens"],
                                     strict=True) if n]
    assert [n for _, n in tok] == [1, 4, 1]
    assert (tok[1][0] - tok[0][0]) / 1e9 == pytest.approx(0.4, abs=0.025)
    assert (tok[2][0] - tok[1][0]) / 1e9 == pytest.approx(0.01, abs=0.025)


def test_invalid_script_is_400(http):
    s = http.chat(http.body(glmperf_script={"chunks": [{"tokens": 0}]}))
    assert s.status == 400
    s = http.chat(http.body(glmperf_script={"ttft_s": -1}))
    assert s.status == 400
