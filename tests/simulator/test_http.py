"""The simulator's HTTP surface against SGLang's protocol (sglang-facts.md sections 2 and 3).

Every test talks real HTTP to a real simulator process on 127.0.0.1.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import httpx


def test_cli_prints_one_listening_line_and_stops_cleanly_on_sigterm(start_sim):
    proc = start_sim("--time-scale", "20")
    assert set(proc.listening) == {"event", "host", "port", "pid"}
    assert proc.listening["event"] == "listening"
    assert proc.listening["host"] == "127.0.0.1"
    assert proc.listening["pid"] == proc.proc.pid
    assert isinstance(proc.listening["port"], int) and proc.listening["port"] > 0
    proc.wait_ready()
    assert proc.stop(signal.SIGTERM) == 0
    assert proc.proc.stdout.read() == ""  # nothing after the listening line


def test_sigint_also_exits_zero(start_sim):
    proc = start_sim()
    proc.wait_ready()
    assert proc.stop(signal.SIGINT) == 0


def test_bad_flag_value_exits_2_naming_the_flag():
    cmd = [sys.executable, "-m", "pytest_glmperf.simulator", "--port", "0", "--time-scale", "-3"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "--time-scale" in done.stderr
    assert done.stdout == ""


def test_misspelt_sglang_flag_exits_2_with_the_nearest_spelling():
    """A typo must not start a simulator that models another configuration."""
    cmd = [sys.executable, "-m", "pytest_glmperf.simulator", "--port", "0", "--enable-hierarchical-cache",
           "--hicache-sise", "200"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert "unknown SGLang flag --hicache-sise (did you mean --hicache-size?)" in done.stderr
    assert done.stdout == ""


def test_stream_has_sglang_chunk_sequence(http):
    s = http.chat(http.body(max_tokens=12))
    assert s.status == 200
    assert s.done
    chunks = s.chunks()
    role = chunks[0]
    assert role["object"] == "chat.completion.chunk"
    assert role["choices"][0]["delta"] == {"reasoning_content": None, "role": "assistant",
                                           "content": ""}
    assert len({c["id"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {"glm-5.1"}
    for chunk in chunks[:-1]:
        choice = chunk["choices"][0]
        assert "reasoning_content" in choice["delta"]
        assert {"logprobs", "finish_reason", "matched_stop"} <= set(choice)
    finish = chunks[-2]
    assert finish["choices"][0]["delta"] == {"reasoning_content": None}
    assert finish["choices"][0]["finish_reason"] == "length"
    usage = chunks[-1]
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 12
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 12
    assert usage["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


def test_reasoning_chunks_come_before_content_chunks(http):
    s = http.chat(http.body(max_tokens=40))
    kinds = []
    for chunk in s.token_chunks():
        delta = chunk["choices"][0]["delta"]
        kinds.append("r" if delta["reasoning_content"] else "c")
        assert not (delta.get("content") and delta["reasoning_content"])
    assert kinds[0] == "r" and kinds[-1] == "c"
    assert "".join(kinds) == "r" * kinds.count("r") + "c" * kinds.count("c")
    usage = s.chunks()[-1]["usage"]
    assert usage["reasoning_tokens"] == 10  # --sim-reasoning-share 0.25 of 40


def test_continuous_usage_is_cumulative_and_matches_tokens(http):
    s = http.chat(http.body(max_tokens=20))
    seen = [c["usage"]["completion_tokens"] for c in s.token_chunks()]
    assert seen == sorted(seen) and seen[-1] == 20
    assert all(c.get("usage") is None for c in s.chunks()[:1])  # not on the role chunk


def test_thinking_off_gives_content_only(http):
    for extra in ({"chat_template_kwargs": {"enable_thinking": False}},
                  {"reasoning_effort": "none"}):
        s = http.chat(http.body(max_tokens=10, **extra))
        assert all(c["choices"][0]["delta"]["reasoning_content"] is None
                   for c in s.token_chunks())
        assert s.chunks()[-1]["usage"]["reasoning_tokens"] == 0


def test_usage_only_when_asked(http):
    body = http.body(max_tokens=5, stream_options={})
    s = http.chat(body)
    assert s.done
    assert all("usage" not in c for c in s.chunks())
    assert s.chunks()[-1]["choices"][0]["finish_reason"] == "length"


def test_max_completion_tokens_wins_over_max_tokens(http):
    s = http.chat(http.body(max_tokens=30, max_completion_tokens=7))
    assert s.chunks()[-1]["usage"]["completion_tokens"] == 7


def test_non_streaming_completion(http):
    resp = http.post("/v1/chat/completions", json=http.body(max_tokens=9, stream=False))
    assert resp.status_code == 200
    data = resp.json()
    assert data["object"] == "chat.completion"
    msg = data["choices"][0]["message"]
    assert msg["role"] == "assistant" and msg["content"] and msg["reasoning_content"]
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["usage"]["completion_tokens"] == 9


def _error(resp: httpx.Response, code: int) -> dict:
    assert resp.status_code == code
    body = resp.json()
    assert body["object"] == "error" and body["code"] == code
    assert set(body) == {"object", "message", "type", "param", "code"}
    return body


def test_pre_stream_errors_are_json_400(http):
    bad_ctype = http.post("/v1/chat/completions", content=b"{}",
                          headers={"content-type": "text/plain"})
    _error(bad_ctype, 400)
    bad_json = http.post("/v1/chat/completions", content=b"{not json",
                         headers={"content-type": "application/json"})
    _error(bad_json, 400)
    no_messages = http.post("/v1/chat/completions", json={"model": "glm-5.1", "stream": True})
    assert _error(no_messages, 400)["type"] == "Bad Request"
    negative = http.post("/v1/chat/completions", json=http.body(max_tokens=-1))
    _error(negative, 400)


def test_request_beyond_context_length_is_400_before_the_stream(http):
    resp = http.post("/v1/chat/completions", json=http.body(max_tokens=10_000_000))
    assert _error(resp, 400)["type"] == "BadRequestError"


def test_models_and_model_card(http):
    data = http.get("/v1/models").json()
    assert data["object"] == "list"
    card = data["data"][0]
    assert card["id"] == "glm-5.1" and card["owned_by"] == "sglang"
    assert card["max_model_len"] > 100_000
    assert http.get("/v1/models/glm-5.1").json()["id"] == "glm-5.1"
    assert http.get("/v1/models/nope").status_code == 404


def test_health_ping_and_unknown_path(http):
    assert http.get("/health").status_code == 200
    assert http.get("/health_generate").status_code == 200
    assert http.get("/ping").status_code == 200
    assert http.get("/no/such/path").status_code == 404


def test_server_info_has_args_states_version_and_time_scale(http):
    for path in ("/server_info", "/get_server_info"):
        info = http.get(path).json()
        assert info["served_model_name"] == "glm-5.1"
        assert info["tp_size"] == 8 and info["enable_metrics"] is True
        assert info["sim_time_scale"] == 50.0
        assert info["sim_lag_max_s"] >= 0.0
        assert isinstance(info["version"], str) and info["version"]
        assert isinstance(info["internal_states"], list) and info["internal_states"]
        assert "last_gen_throughput" in info["internal_states"][0]


def test_model_info(http):
    info = http.get("/model_info").json()
    assert info["is_generation"] is True
    assert info["architectures"] == ["GlmMoeDsaForCausalLM"]


def test_flush_cache_only_when_idle(http, sim):
    assert http.post("/flush_cache").status_code == 200
    assert http.get("/flush_cache").status_code == 200
    opened, flushed = threading.Event(), threading.Event()

    def long_stream() -> None:
        with httpx.Client(base_url=sim.base_url, timeout=30) as c, c.stream(
                "POST", "/v1/chat/completions", json=http.body(max_tokens=3000)) as resp:
            for _ in resp.iter_lines():
                opened.set()
                flushed.wait(10)
                break  # close early: the server must abort it

    worker = threading.Thread(target=long_stream)
    worker.start()
    assert opened.wait(10)
    busy = http.post("/flush_cache")
    flushed.set()
    worker.join()
    assert busy.status_code == 400
    _wait_idle(http)


def _wait_idle(http, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http.post("/flush_cache").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError("server did not become idle (aborted request still running?)")


def test_client_disconnect_aborts_the_request(http, sim):
    with httpx.Client(base_url=sim.base_url, timeout=30) as c, c.stream(
            "POST", "/v1/chat/completions", json=http.body(max_tokens=100_000)) as resp:
        for _ in zip(range(3), resp.iter_lines(), strict=False):
            pass
    _wait_idle(http)  # 100k tokens would take minutes of wall time if not aborted


def test_send_stamps_cover_every_chunk(http):
    s = http.chat(http.body(max_tokens=6))
    sends = http.sends(s.rid)
    assert len(sends["send_ns"]) == len(s.payloads)
    assert sends["kinds"][0] == "role" and sends["kinds"][-1] == "done"
    assert sum(sends["tokens"]) == 6
    assert sends["send_ns"] == sorted(sends["send_ns"])
    # Same clock in both processes: the last send precedes its arrival (the server stamps
    # right after its write, so allow the client to be a hair earlier).
    assert sends["send_ns"][-1] <= s.stamps[-1] + 1_000_000
    assert http.get("/glmperf/sends/unknown-rid").status_code == 404


def test_client_rid_becomes_chunk_id(http):
    s = http.chat(http.body(max_tokens=3, rid="my-request-1"))
    assert s.rid == "my-request-1"


def test_concurrent_streams_all_complete(http, sim):
    results: list[bool] = []

    def one() -> None:
        with httpx.Client(base_url=sim.base_url, timeout=30) as c:
            body = http.body(max_tokens=50)
            with c.stream("POST", "/v1/chat/completions", json=body) as resp:
                lines = [line for line in resp.iter_lines() if line]
            results.append(lines[-1] == "data: [DONE]")

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 8


def test_slow_start_health_generate_503_then_200(start_sim):
    proc = start_sim("--time-scale", "10", "--sim-slow-start", "3")
    began = time.monotonic()
    assert httpx.get(f"{proc.base_url}/health_generate").status_code == 503
    assert httpx.get(f"{proc.base_url}/v1/models").status_code == 200  # up before warm-up
    proc.wait_ready()
    assert time.monotonic() - began >= 0.25  # 3 model s at scale 10 = 0.3 s wall


def test_large_prompt_is_tokenized_fast_and_counted(http):
    text = ("def handler(request, context):\n    return process(request.data, context)\n" * 6000)
    body = http.body(max_tokens=2, messages=[{"role": "user", "content": text}])
    began = time.perf_counter()
    s = http.chat(body)
    assert time.perf_counter() - began < 2.0
    prompt = s.chunks()[-1]["usage"]["prompt_tokens"]
    assert len(text) / 4.5 < prompt < len(text) / 3.0
    info = json.loads(http.get("/server_info").text)
    assert info["sim_lag_max_s"] < 5.0
