"""Prefill/decode disaggregation in the simulator (disaggregation.py, disaggregation_http.py).

The flags and the transfer model are checked in-process; the handshake, the KV wait and the
key property (a decode worker's streams never freeze for another request's long prefill)
between real prefill-mode and decode-mode simulator processes on loopback, driven the way
SGLang's router drives them: the same body to both, with bootstrap_host/port/room added.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pytest_glmperf.simulator.config import parse_server_args
from pytest_glmperf.simulator.disaggregation import (
    DecodeEngine,
    KVReady,
    PrefillEngine,
    kv_transfer_seconds,
)
from pytest_glmperf.simulator.engine import Engine
from pytest_glmperf.simulator.types import SimRequest
from tests.simulator.conftest import SimClient, SimProcess, Stream
from tests.simulator.test_engine import request, run

K = 10.0            # time scale of the PD workers: a 100k prefill (~10.5 model s) is ~1 s
COMMON = ["--served-model-name", "glm-5.1", "--enable-metrics", "--time-scale", f"{K:g}",
          "--sim-timer-spin-ms", "0"]
FP8_KV_BYTES = 61_464   # per token and TP rank: FP8 latent 51,168 + DSA indexer K 10,296
_rooms = itertools.count(1_000)


# ---- flags -------------------------------------------------------------------------------

def test_pd_flags_default_and_parse_like_sglang() -> None:
    """server_args.py: mode "null", mooncake, bootstrap port 8998, 512 reserved decode tokens."""
    config = parse_server_args([])
    assert (config.disaggregation_mode, config.disaggregation_transfer_backend,
            config.disaggregation_bootstrap_port, config.num_reserved_decode_tokens,
            config.disaggregation_decode_polling_interval) == ("null", "mooncake", 8998, 512, 1)
    assert not config.disaggregated and config.kv_link_gbps == 40.0 and config.kv_setup_ms == 1.0
    prefill = parse_server_args(["--disaggregation-mode", "prefill",
                                 "--disaggregation-bootstrap-port=9100",
                                 "--disaggregation-transfer-backend", "nixl",
                                 "--disaggregation-ib-device", "mlx5_0,mlx5_1",
                                 "--disaggregation-decode-tp", "8"])
    assert prefill.disaggregation_mode == "prefill" and prefill.disaggregation_bootstrap_port == 9100
    assert prefill.disaggregation_transfer_backend == "nixl"
    assert prefill.unmodelled_args == ("--disaggregation-ib-device", "mlx5_0,mlx5_1",
                                       "--disaggregation-decode-tp", "8")
    assert not prefill.disable_radix_cache          # the prefill worker keeps its prefix cache
    decode = parse_server_args(["--disaggregation-mode", "decode", "--num-reserved-decode-tokens",
                                "1024", "--disaggregation-decode-polling-interval", "2"])
    assert decode.disable_radix_cache               # "KV cache is forced as chunk cache"
    assert (decode.num_reserved_decode_tokens, decode.disaggregation_decode_polling_interval) == (1024, 2)
    # pd_disaggregation_hook: mooncake_tcp is mooncake over TCP; prefill refuses "fake"
    tcp = parse_server_args(["--disaggregation-mode", "decode", "--disaggregation-transfer-backend",
                             "mooncake_tcp"])
    assert tcp.disaggregation_transfer_backend == "mooncake"
    with pytest.raises(ValueError, match="Prefill server does not support 'fake'"):
        parse_server_args(["--disaggregation-mode", "prefill",
                           "--disaggregation-transfer-backend", "fake"])


@pytest.mark.parametrize(("flag", "value", "choices"), [
    ("--disaggregation-mode", "both", "'null', 'prefill', 'decode'"),
    ("--disaggregation-transfer-backend", "rdma",
     "'mooncake', 'nixl', 'ascend', 'fake', 'mori', 'mooncake_tcp'"),
])
def test_an_unknown_choice_is_refused_in_argparses_words(flag: str, value: str, choices: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_server_args([flag, value])
    assert str(info.value) == f"argument {flag}: invalid choice: '{value}' (choose from {choices})"


def test_an_unknown_choice_exits_2_on_the_command_line() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest_glmperf.simulator", "--port", "0",
                           "--disaggregation-mode", "prefil"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "argument --disaggregation-mode: invalid choice: 'prefil'" in done.stderr


# ---- the transfer model ------------------------------------------------------------------

def test_transfer_time_of_a_100k_prompt_at_the_default_link_rate() -> None:
    """6.146 GB of FP8 KV per rank; 0.154 s at 40 GB/s in one piece, but chunked prefill
    sends each chunk as it is computed, so only the last chunk (1,696 tokens) is exposed."""
    config = parse_server_args(["--disaggregation-mode", "prefill"])
    assert config.cell_bytes_per_token == FP8_KV_BYTES
    assert config.kv_link_bandwidth == 40e9
    assert kv_transfer_seconds(100_000, FP8_KV_BYTES, 40e9) == pytest.approx(0.15366)
    assert kv_transfer_seconds(100_000, FP8_KV_BYTES, 40e9, 1e-3) == pytest.approx(0.15466)
    ready, steps = _prefill_100k(config)
    assert [s.prefill_tokens for s in steps] == [8192] * 12 + [1696]
    assert ready.tokens == 100_000 and ready.bytes_per_rank == 6_146_400_000
    assert ready.last_chunk_s == steps[-1].end_s
    assert ready.ready_s - ready.last_chunk_s == pytest.approx(1696 * FP8_KV_BYTES / 40e9 + 1e-3)
    assert ready.ready_s - ready.last_chunk_s == pytest.approx(0.0036060736)


def test_a_link_slower_than_the_prefill_queues_the_chunks() -> None:
    """At 0.5 GB/s a chunk takes 1.0 s to send and 0.8 s to compute: the link is the
    bottleneck, and the KV is in one whole-prompt transfer after the first chunk's end."""
    config = parse_server_args(["--disaggregation-mode", "prefill", "--sim-kv-link-gbps", "0.5",
                                "--sim-kv-setup-ms", "0"])
    ready, steps = _prefill_100k(config)
    whole = kv_transfer_seconds(100_000, FP8_KV_BYTES, 0.5e9)
    assert whole == pytest.approx(12.2928)
    assert ready.ready_s == pytest.approx(steps[0].end_s + whole)


def _prefill_100k(config: Any) -> tuple[KVReady, list[Any]]:
    engine = PrefillEngine(config)
    ready: list[KVReady] = []
    engine.on_kv_ready = ready.append
    engine.add_request(request("b", 100_000, 1, ctx=7))
    steps = run(engine)
    assert len(ready) == 1
    return ready[0], steps


# ---- the engines in model time -----------------------------------------------------------

def test_the_decode_engine_prebuilds_and_never_prefills() -> None:
    """A new 100k request on a decode worker costs its running streams one prebuilt step
    (no forward pass): their worst gap stays a decode step, and nothing is prefilled."""
    engine = DecodeEngine(parse_server_args(["--disaggregation-mode", "decode"]))
    reserved: list[str] = []
    engine.on_preallocated = reserved.append
    engine.add_request(request("a", 1000, 400))
    engine.kv_arrives("a", 0.0, cached_tokens=0)
    steps = [engine.step() for _ in range(20)]
    engine.add_request(request("b", 100_000, 4))
    assert reserved == ["a", "b"] and "b" in engine.transfer
    arrival = engine.now + 10.5                  # its prefill runs on the prefill worker
    engine.kv_arrives("b", arrival, cached_tokens=4096)
    steps += run(engine, until="b")
    prebuilt = [s for s in steps if s.kind == "prebuilt"]
    assert len(prebuilt) == 2 and prebuilt[1].start_s == pytest.approx(arrival, abs=0.05)
    first_b = prebuilt[1].emissions[0]
    assert (first_b.rid, first_b.first, first_b.cached_tokens) == ("b", True, 4096)
    a_times = [s.end_s for s in steps for e in s.emissions if e.rid == "a"]
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(a_times)]
    assert max(gaps) < 0.06                      # decode steps only, ~23-45 ms
    assert engine.counters.prefill_compute_tokens == 0


def test_the_decode_engine_reserves_the_prompt_and_decode_tokens() -> None:
    """DecodePreallocQueue: a request is pre-allocated only while its prompt plus
    --num-reserved-decode-tokens fit beside 512 reserved tokens per request holding KV."""
    engine = DecodeEngine(parse_server_args(["--disaggregation-mode", "decode",
                                             "--max-total-tokens", "20480"]))
    engine.add_request(request("a", 15_000, 8))
    engine.add_request(request("b", 4_500, 8))     # 4,500 + 512 > 5,480 - 512 free
    assert list(engine.transfer) == ["a"] and [r.rid for r in engine.prealloc] == ["b"]
    assert engine.cache.free_tokens == 20_480 - 15_000
    engine.abort("a")
    engine.step()
    assert list(engine.transfer) == ["b"] and not engine.prealloc
    assert engine.counters.aborted_requests == 1


# ---- two real workers on loopback --------------------------------------------------------

class PDPair:
    """A prefill-mode and a decode-mode simulator process, as the router sees them."""

    def __init__(self) -> None:
        self.prefill = SimProcess(["--disaggregation-mode", "prefill",
                                   "--disaggregation-bootstrap-port", "0", *COMMON])
        self.decode = SimProcess(["--disaggregation-mode", "decode", *COMMON])
        self.bootstrap_port = int(self.prefill.listening["bootstrap_port"])
        self.p = SimClient(base_url=self.prefill.base_url, timeout=60)
        self.d = SimClient(base_url=self.decode.base_url, timeout=60)
        self.prefill.wait_ready()
        self.decode.wait_ready()

    def body(self, prompt: Any, max_tokens: int, **extra: Any) -> dict[str, Any]:
        """What the router sends both workers: the request plus the bootstrap fields."""
        return {"model": "glm-5.1", "prompt": prompt, "max_tokens": max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "bootstrap_host": "127.0.0.1",
                "bootstrap_port": self.bootstrap_port, "bootstrap_room": next(_rooms), **extra}

    def send_both(self, body: dict[str, Any], path: str = "/v1/completions") -> tuple[Stream, Stream]:
        """The same body to both workers at once; (prefill's answer, decode's answer)."""
        out: dict[str, Stream] = {}

        def go(name: str, client: SimClient) -> None:
            out[name] = client.chat(body, path=path)

        threads = [threading.Thread(target=go, args=("p", self.p)),
                   threading.Thread(target=go, args=("d", self.d))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return out["p"], out["d"]

    def stop(self) -> None:
        self.p.close()
        self.d.close()
        self.prefill.stop()
        self.decode.stop()


@pytest.fixture(scope="module")
def pd() -> Iterator[PDPair]:
    pair = PDPair()
    pair.send_both(pair.body(list(range(64)), 2))   # first-request costs (lazy paths) go first
    yield pair
    pair.stop()


def metrics(client: httpx.Client) -> dict[str, list[Any]]:
    """A worker's /metrics samples by sample name."""
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    """The sum of a sample's series that carry ``labels``."""
    return sum(s.value for s in samples.get(name, [])
               if all(s.labels.get(k) == v for k, v in labels.items()))


def _prefill_seconds(prompt_tokens: int) -> float:
    """Model seconds a unified engine takes to the first token of a lone prompt."""
    engine = Engine(parse_server_args([]))
    engine.add_request(SimRequest("x", prompt_tokens, 1))
    return run(engine)[-1].end_s


def test_the_handshake_between_a_real_prefill_and_decode_worker(pd: PDPair) -> None:
    p0, d0 = metrics(pd.p), metrics(pd.d)
    body = pd.body(list(range(20_000, 36_000)), 24)     # 16,000 tokens: two chunks
    prefill, decode = pd.send_both(body)
    p1, d1 = metrics(pd.p), metrics(pd.d)
    # the decode worker streams the whole answer; the prefill worker answers its one token
    assert decode.status == 200 and decode.done
    assert decode.chunks()[-1]["usage"]["completion_tokens"] == 24
    assert decode.chunks()[-1]["usage"]["prompt_tokens"] == 16_000
    assert prefill.status == 200 and prefill.done
    assert prefill.chunks()[-1]["usage"]["completion_tokens"] == 1
    assert [c["choices"][0]["finish_reason"] for c in prefill.chunks() if c["choices"]][-1] == "length"
    # the prefill worker computed the prompt, the decode worker did not
    compute = "sglang:realtime_tokens_total"
    assert value(p1, compute, mode="prefill_compute") - value(p0, compute, mode="prefill_compute") == 16_000
    assert value(d1, compute, mode="prefill_compute") == 0
    assert value(d1, compute, mode="decode") - value(d0, compute, mode="decode") == 24
    # the decode TTFT (its arrival to its first token) spans the prefill and the transfer
    ttft = "sglang:time_to_first_token_seconds_sum"
    decode_ttft = value(d1, ttft) - value(d0, ttft)
    transfer = kv_transfer_seconds(16_000 - 8192, FP8_KV_BYTES, 40e9, 1e-3)
    expected = _prefill_seconds(16_000) + transfer
    assert expected - 0.02 < decode_ttft < expected + 0.6, (decode_ttft, expected)
    # SGLang's PD metrics, labelled with the worker's role
    latency = "sglang:kv_transfer_latency_ms_count"
    assert value(p1, latency, engine_type="prefill") - value(p0, latency) == 1
    for name in ("sglang:num_decode_prealloc_queue_reqs", "sglang:num_decode_transfer_queue_reqs",
                 "sglang:num_running_reqs"):
        assert [s.labels["engine_type"] for s in d1[name]] == ["decode"], name
    assert {s.labels["engine_type"] for s in d1["sglang:generation_tokens_total"]} == {"decode"}
    assert [s.labels["engine_type"] for s in p1["sglang:num_prefill_bootstrap_queue_reqs"]] == ["prefill"]


def test_server_info_and_the_bootstrap_server(pd: PDPair) -> None:
    info = pd.p.get("/server_info").json()
    assert info["disaggregation_mode"] == "prefill"
    assert info["disaggregation_bootstrap_port"] == pd.bootstrap_port
    assert pd.d.get("/server_info").json()["disaggregation_mode"] == "decode"
    with httpx.Client(base_url=f"http://127.0.0.1:{pd.bootstrap_port}", timeout=10) as boot:
        assert boot.get("/health").text == "OK"
        ranks = {"prefill_dp_rank": -1, "prefill_cp_rank": -1, "target_tp_rank": -1,
                 "target_pp_rank": -1}
        server = boot.get("/route", params=ranks).json()
        assert (server["attn_tp_size"], server["page_size"], server["pp_size"]) == (8, 64, 1)
        assert server["prefill_http_port"] == pd.prefill.listening["port"]
        rank = boot.get("/route", params={**ranks, "prefill_dp_rank": 0, "prefill_cp_rank": 0,
                                          "target_tp_rank": 3, "target_pp_rank": 0}).json()
        assert rank == {"rank_ip": "127.0.0.1", "rank_port": pd.bootstrap_port}
        assert boot.get("/route").status_code == 400
        assert boot.get("/v1/models").status_code == 404     # the API is on the other socket
    assert pd.p.get("/route").status_code == 404


@pytest.mark.parametrize("worker", ["p", "d"])
def test_a_request_without_a_bootstrap_room_is_refused(pd: PDPair, worker: str) -> None:
    """scheduler.py: a PD worker aborts it with 400, in-band on a stream."""
    client = getattr(pd, worker)
    body = {"model": "glm-5.1", "prompt": "hello", "max_tokens": 4}
    resp = client.post("/v1/completions", json=body)
    assert resp.status_code == 400
    assert "Disaggregated request received without bootstrap room id" in resp.json()["message"]
    stream = client.chat({**body, "stream": True}, path="/v1/completions")
    errors = [c["error"] for c in stream.chunks() if "error" in c]
    assert stream.status == 200 and stream.done and errors and errors[0]["code"] == 400


def test_a_decode_stream_is_not_frozen_by_another_100k_prefill(pd: PDPair) -> None:
    """The point of PD: request a decodes on the decode worker while b's 100k prompt (~10.5
    model s of prefill) runs on the prefill worker; a's worst chunk gap stays a fraction of
    a second. The same two requests on one unified server freeze a for the whole prefill."""
    gap, b_ttft = _gap_during_long_prefill(
        [pd.prefill.base_url, pd.decode.base_url],
        lambda prompt, max_tokens, rid: pd.body(prompt, max_tokens, rid=rid))
    assert b_ttft > 10.0, b_ttft                 # b really waited for its prefill + transfer
    assert gap < 3.0, gap
    unified = SimProcess(COMMON)
    try:
        unified.wait_ready()
        frozen, _ = _gap_during_long_prefill(
            [unified.base_url],
            lambda prompt, max_tokens, rid: {"model": "glm-5.1", "prompt": prompt, "rid": rid,
                                             "max_tokens": max_tokens, "stream": True})
    finally:
        unified.stop()
    assert frozen > 9.0, frozen


def _gap_during_long_prefill(urls: list[str], make: Any) -> tuple[float, float]:
    """Request a (max_tokens 800) goes to every worker in ``urls`` (the last one streams the
    answer); once a has 20 tokens out, b (100k prompt) goes to them all. Returns a's largest
    chunk gap over b's wait, in model seconds from the serving worker's own send stamps, and
    b's time to first token there."""
    a = make(list(range(500_000, 500_256)), 800, f"a-{next(_rooms)}")
    b = make(list(range(600_000, 700_000)), 4, f"b-{next(_rooms)}")
    started = threading.Event()
    answers: dict[str, Stream] = {}

    def watch_a() -> None:
        with httpx.Client(base_url=urls[-1], timeout=60) as client, \
                client.stream("POST", "/v1/completions", json=a) as resp:
            for lines, _ in enumerate(resp.iter_lines()):
                if lines >= 20:
                    started.set()
        started.set()

    def post(url: str, body: dict[str, Any]) -> None:
        with SimClient(base_url=url, timeout=60) as client:
            answers[f"{body['rid']}@{url}"] = client.chat(body, path="/v1/completions")

    first = [threading.Thread(target=post, args=(url, a)) for url in urls[:-1]]
    first.append(threading.Thread(target=watch_a))
    for thread in first:
        thread.start()
    assert started.wait(30)
    sent_b = time.perf_counter_ns()
    second = [threading.Thread(target=post, args=(url, b)) for url in urls]
    for thread in second:
        thread.start()
    for thread in first + second:
        thread.join(60)
    assert answers[f"{b['rid']}@{urls[-1]}"].done
    with SimClient(base_url=urls[-1], timeout=10) as client:
        a_sends, b_sends = client.sends(a["rid"]), client.sends(b["rid"])
    a_tokens = _token_stamps(a_sends)
    b_first = _token_stamps(b_sends)[0]
    window = [(t1, t2) for t1, t2 in itertools.pairwise(a_tokens) if t2 >= sent_b and t1 <= b_first]
    assert window and a_tokens[-1] > b_first, "a must decode throughout b's wait"
    return max(t2 - t1 for t1, t2 in window) / 1e9 * K, (b_first - sent_b) / 1e9 * K


def _token_stamps(record: dict[str, Any]) -> list[int]:
    return [ns for ns, kind in zip(record["send_ns"], record["kinds"], strict=True)
            if kind in ("content", "reasoning")]


# ---- failures, fake transfers, the real router ---------------------------------------------

def test_a_prefill_request_whose_decode_worker_never_comes_times_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT (model seconds here): 500, counted."""
    monkeypatch.setenv("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "2")
    proc = SimProcess(["--disaggregation-mode", "prefill", "--disaggregation-bootstrap-port", "0",
                       *COMMON])
    try:
        proc.wait_ready()
        with SimClient(base_url=proc.base_url, timeout=30) as client:
            body = {"prompt": "hello", "max_tokens": 4, "bootstrap_host": "127.0.0.1",
                    "bootstrap_port": proc.listening["bootstrap_port"], "bootstrap_room": 7}
            resp = client.post("/v1/completions", json=body)
            assert resp.status_code == 500
            message = resp.json()["message"]
            assert message.startswith("Prefill bootstrap failed for request rank=0")
            assert "timed out after 2.0s in KVPoll.Bootstrapping" in message
            assert value(metrics(client), "sglang:num_bootstrap_failed_reqs_total") == 1
    finally:
        proc.stop()


def test_a_decode_request_fails_when_its_kv_never_comes_or_cannot_come(
        pd: PDPair, monkeypatch: pytest.MonkeyPatch) -> None:
    """SGLANG_DISAGGREGATION_WAITING_TIMEOUT after the handshake, and a bootstrap_host off
    this host (the simulated transfer only works between processes of one host): in-band 500."""
    monkeypatch.setenv("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", "2")
    proc = SimProcess(["--disaggregation-mode", "decode", *COMMON])
    try:
        proc.wait_ready()
        with SimClient(base_url=proc.base_url, timeout=30) as client:
            body = pd.body("hello", 4)        # the prefill worker never gets this request
            errors = [c["error"] for c in client.chat(body, path="/v1/completions").chunks()
                      if "error" in c]
            assert errors and errors[0]["code"] == 500
            assert errors[0]["message"].startswith("Decode transfer failed for request rank=0")
            assert "timed out after 2.0s in KVPoll.WaitingForInput" in errors[0]["message"]
            elsewhere = client.post("/v1/completions", json={**pd.body("hello", 4, stream=False),
                                                              "bootstrap_host": "192.0.2.7"})
            assert elsewhere.status_code == 500
            assert "Decode handshake failed" in elsewhere.json()["message"]
            samples = metrics(client)
            assert value(samples, "sglang:num_transfer_failed_reqs_total") == 1
            assert value(samples, "sglang:num_bootstrap_failed_reqs_total") == 1
            assert value(samples, "sglang:kv_used_tokens") == 0     # their KV is freed
    finally:
        proc.stop()


def test_a_decode_worker_with_the_fake_backend_decodes_alone() -> None:
    """--disaggregation-transfer-backend fake: no prefill worker, no room needed (SGLang's
    decode-only benchmarking); the KV counts as in at once, nothing is prefilled."""
    proc = SimProcess(["--disaggregation-mode", "decode", "--disaggregation-transfer-backend",
                       "fake", *COMMON])
    try:
        proc.wait_ready()
        with SimClient(base_url=proc.base_url, timeout=30) as client:
            stream = client.chat({"prompt": list(range(5000)), "max_tokens": 6, "stream": True,
                                  "stream_options": {"include_usage": True}},
                                 path="/v1/completions")
            assert stream.done and stream.chunks()[-1]["usage"]["completion_tokens"] == 6
            compute = value(metrics(client), "sglang:realtime_tokens_total", mode="prefill_compute")
            assert compute == 0
    finally:
        proc.stop()


def test_a_decode_client_going_away_aborts_the_prefill(pd: PDPair) -> None:
    """The decode worker tells the prefill worker (SGLang: an abort for the room), which
    drops the request mid-prefill and frees its KV."""
    body = pd.body(list(range(800_000, 900_000)), 4)
    aborted = "sglang:num_aborted_requests_total"
    before = value(metrics(pd.p), aborted)
    prefill = threading.Thread(target=lambda: pd.p.chat(body, path="/v1/completions"))
    prefill.start()
    payload = json.dumps(body).encode()
    port = pd.decode.listening["port"]
    room = f"http://127.0.0.1:{pd.bootstrap_port}/glmperf/rooms/{body['bootstrap_room']}"
    with socket.create_connection(("127.0.0.1", port)) as conn:   # no answer is awaited
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
        deadline = time.monotonic() + 10  # until the decode worker's handshake is in
        while httpx.get(room, params={"wait": 0}).json()["state"] != "waiting_for_input":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.1)                   # ~1 model s into the ~10.5 s prefill
    prefill.join(30)
    deadline = time.monotonic() + 10
    while value(metrics(pd.p), aborted) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(metrics(pd.p), aborted) == before + 1


@pytest.mark.skipif(shutil.which("sglang-router") is None, reason="sglang-router is not installed")
def test_the_real_sglang_router_streams_a_chat_through_the_pair(pd: PDPair, tmp_path: Any) -> None:
    """``sglang-router launch --pd-disaggregation`` in front of the two workers: it adds the
    bootstrap fields, sends both, drains the prefill worker's answer and streams the decode
    worker's. Only loopback: anything else it tries (a tokenizer from the Hub) meets a dead
    proxy."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "ALL_PROXY": dead,
           "http_proxy": dead, "https_proxy": dead, "all_proxy": dead, "HF_HUB_OFFLINE": "1",
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    log = (tmp_path / "router.log").open("w")
    router = subprocess.Popen(
        ["sglang-router", "launch", "--pd-disaggregation",
         "--prefill", pd.prefill.base_url, str(pd.bootstrap_port), "--decode", pd.decode.base_url,
         "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        generated = "sglang:generation_tokens_total"
        before = value(metrics(pd.d), generated)
        body = {"model": "glm-5.1", "messages": [{"role": "user", "content": "Write a function."}],
                "max_tokens": 12, "stream": True, "stream_options": {"include_usage": True}}
        stream = _through_router(f"http://127.0.0.1:{port}", body)
        assert stream.done, (tmp_path / "router.log").read_text()[-3000:]
        assert stream.chunks()[-1]["usage"]["completion_tokens"] == 12
        assert value(metrics(pd.d), generated) == before + 12
    finally:
        router.terminate()
        router.wait(30)
        log.close()


def _through_router(url: str, body: dict[str, Any]) -> Stream:
    """Stream ``body`` through the router once it has registered both workers."""
    deadline = time.monotonic() + 60
    with SimClient(base_url=url, timeout=60) as client:
        while True:
            try:
                stream = client.chat(body)
                if stream.status == 200 or time.monotonic() > deadline:
                    return stream
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
