"""/v1/completions, native /generate and /v1/loads on the real simulator over loopback.

The chunk shapes are SGLang's (sglang-facts.md 2.3, 2.4; serving_completions.py and
http_server.py of the 0.5.12 image): what vLLM's bench, guidellm and SGLang's bench_serving
parse when pointed at the simulator.
"""

from __future__ import annotations

import itertools
import json
import threading

from pytest_glmperf.simulator.sse import CompletionFormat


def _completion(**extra):
    body = {"model": "glm-5.1", "prompt": "def add(a, b):", "max_tokens": 12, "stream": True,
            "stream_options": {"include_usage": True}}
    body.update(extra)
    return body


def _texts(chunks):
    return [c["choices"][0] for c in chunks if c["choices"]]


def test_completion_stream_has_sglang_text_completion_shape(http):
    s = http.chat(_completion(), path="/v1/completions")
    assert s.status == 200 and s.done
    chunks = s.chunks()
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1
    choices = _texts(chunks)
    assert all(set(ch) == {"index", "text", "logprobs", "finish_reason", "matched_stop"}
               for ch in choices)
    assert all("usage" in c and c["usage"] is None for c in chunks[:-1])  # no role chunk
    assert [ch["finish_reason"] for ch in choices] == [None] * (len(choices) - 1) + ["length"]
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 12
    assert usage["usage"]["total_tokens"] == usage["usage"]["prompt_tokens"] + 12
    resp = http.post("/v1/completions", json=_completion(stream=False))
    data = resp.json()
    assert data["object"] == "text_completion" and data["metadata"] is None
    assert data["choices"][0]["text"] == "".join(ch["text"] for ch in choices)
    assert data["usage"]["completion_tokens"] == 12


def test_completion_defaults_and_continuous_usage(http):
    data = http.post("/v1/completions", json={"prompt": "x"}).json()
    assert data["usage"]["completion_tokens"] == 16   # CompletionRequest.max_tokens
    s = http.chat(_completion(stream_options={"continuous_usage_stats": True}),
                  path="/v1/completions")
    seen = [c["usage"]["completion_tokens"] for c in s.chunks()]
    assert seen == sorted(seen) and seen[-1] == 12
    assert all(c["choices"] for c in s.chunks())     # no usage chunk unless include_usage


def test_usage_chunk_drops_null_fields_like_exclude_none():
    fmt = CompletionFormat("r1", "m", prompt_tokens=7, cache_report=False)
    usage = json.loads(fmt.usage_chunk(3, 0).decode()[len("data: "):])["usage"]
    assert usage == {"prompt_tokens": 7, "total_tokens": 10, "completion_tokens": 3,
                     "reasoning_tokens": 0}
    token = json.loads(fmt.token(False, 0, 2, None, None).decode()[len("data: "):])
    assert token["usage"] is None and "prompt_tokens_details" not in token


def test_token_id_prompts_count_and_hit_the_prefix_cache(http):
    ids = list(range(3, 203))   # 200 tokens: three full 64-token pages are cacheable
    http.post("/flush_cache")
    first = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 2}).json()
    again = http.post("/v1/completions", json={"prompt": [ids], "max_tokens": 2}).json()
    assert first["usage"]["prompt_tokens"] == 200
    assert first["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert again["usage"]["prompt_tokens_details"] == {"cached_tokens": 192}


def test_generate_streams_cumulative_text_ids_and_meta_info(http):
    body = {"text": "def add(a, b):", "sampling_params": {"max_new_tokens": 9}, "stream": True,
            "rid": "gen-1"}
    s = http.chat(body, path="/generate")
    assert s.status == 200 and s.done
    chunks = s.chunks()
    for prev, cur in itertools.pairwise(chunks):
        assert cur["text"].startswith(prev["text"])
        assert cur["output_ids"][:len(prev["output_ids"])] == prev["output_ids"]
    for chunk in chunks:
        meta = chunk["meta_info"]
        assert meta["id"] == "gen-1"
        assert meta["completion_tokens"] == len(chunk["output_ids"])
    last = chunks[-1]["meta_info"]
    assert last["finish_reason"] == {"type": "length", "length": 9}
    assert last["e2e_latency"] > 0
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    done = http.post("/generate", json={"input_ids": [1, 2, 3]}).json()
    assert done["meta_info"]["completion_tokens"] == 128   # SamplingParams.max_new_tokens
    assert done["meta_info"]["prompt_tokens"] == 3
    assert len(done["output_ids"]) == 128 and done["text"]


def test_bad_text_completion_bodies_are_400_naming_the_field(http):
    cases = [
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"max_tokens": 4}, "prompt"),
        ("/v1/completions", {"prompt": "a", "n": 2}, "n=1"),
        ("/v1/completions", {"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ("/generate", {"text": "a", "input_ids": [1]}, "input_ids"),
        ("/generate", {"input_ids": "abc"}, "input_ids"),
        ("/generate", {"text": "a", "sampling_params": {"max_new_tokens": "9"}}, "max_new_tokens"),
    ]
    for path, body, names in cases:
        resp = http.post(path, json=body)
        assert resp.status_code == 400, (path, body)
        assert names in resp.json()["message"], (path, body, resp.json())


def test_mid_stream_error_in_each_wire_format(http):
    fault = {"x-glmperf-fault": "mid_stream_error:after=2,code=503"}
    s = http.chat(_completion(), headers=fault, path="/v1/completions")
    texts = [c for c in s.chunks() if "error" not in c and c["choices"]]
    assert len(texts) == 2 and s.done
    assert next(c for c in s.chunks() if "error" in c)["error"]["code"] == 503
    body = {"text": "x", "sampling_params": {"max_new_tokens": 9}, "stream": True}
    s = http.chat(body, headers=fault, path="/generate")
    *tokens, last = s.chunks()
    assert len(tokens) == 2 and s.done   # a chunk may carry several tokens (coalesced)
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert last["meta_info"]["finish_reason"]["status_code"] == 503
    assert last["output_ids"] == tokens[-1]["output_ids"]


def test_loads_reports_the_running_request_live(http):
    idle = http.get("/v1/loads").json()
    load = idle["loads"][0]
    info = http.get("/server_info").json()
    assert load["dp_rank"] == 0 and idle["dp_rank_count"] == 1
    assert load["max_total_num_tokens"] == info["internal_states"][0]["memory_usage"][
        "token_capacity"]
    assert idle["aggregate"]["total_reqs"] == load["num_total_reqs"]
    seen: list[int] = []

    def read_while_streaming() -> None:
        with http.stream("POST", "/v1/completions", json=_completion(max_tokens=3000)) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: ") and not seen:
                    seen.append(http.get("/v1/loads").json()["loads"][0]["num_running_reqs"])

    reader = threading.Thread(target=read_while_streaming)
    reader.start()
    reader.join(timeout=30)
    assert seen and seen[0] >= 1


def test_stream_interval_sends_the_first_token_then_every_nth(start_sim, client_for):
    """SGLang's --stream-interval 4: outputs at lengths 1, 5, 9, ... and at the finish."""
    sim = start_sim("--stream-interval", "4", "--time-scale", "50")
    sim.wait_ready()
    http = client_for(sim)
    s = http.chat(_completion(max_tokens=14, stream_options={"continuous_usage_stats": True}),
                  path="/v1/completions")
    lengths = [c["usage"]["completion_tokens"] for c in s.chunks()]
    assert lengths[-1] == 14 and s.done
    # Every output but the last leaves 1 mod 4 tokens; a slow reader may merge outputs.
    assert all(n % 4 == 1 for n in lengths[:-1])
    assert len(lengths) <= 5


def test_incremental_generate_and_default_usage_flags(start_sim, client_for):
    """--incremental-streaming-output: /generate chunks carry only their own text and ids;
    --stream-response-default-include-usage: a usage chunk nobody asked for."""
    sim = start_sim("--incremental-streaming-output", "--stream-response-default-include-usage",
                    "--time-scale", "50")
    sim.wait_ready()
    http = client_for(sim)
    body = {"text": "def add(a, b):", "sampling_params": {"max_new_tokens": 9}, "stream": True}
    chunks = http.chat(body, path="/generate").chunks()
    whole = http.post("/generate", json={**body, "stream": False}).json()
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert [i for c in chunks for i in c["output_ids"]] == whole["output_ids"]
    assert chunks[-1]["meta_info"]["completion_tokens"] == 9
    s = http.chat({"prompt": "x", "max_tokens": 3, "stream": True}, path="/v1/completions")
    assert s.chunks()[-1]["choices"] == [] and s.chunks()[-1]["usage"]["completion_tokens"] == 3
