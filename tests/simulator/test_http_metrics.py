"""/metrics of the simulator: SGLang's names, labels and counting rules (sglang-facts.md 1)."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pytest_glmperf.scrape import GAUGES, HistogramDelta, MetricsSnapshot, counter_deltas

SCHED_LABELS = {"engine_type", "model_name", "moe_ep_rank", "pp_rank", "tp_rank"}
TOK_LABELS = {"engine_type", "model_name"}


def scrape(http) -> dict[str, list]:
    """Samples by sample name, parsed with prometheus_client's own parser."""
    resp = http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    return scrape_text(resp.text)


def scrape_text(text: str) -> dict[str, list]:
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples, name: str, **labels: str) -> float:
    return sum(s.value for s in samples[name]
               if all(s.labels.get(k) == v for k, v in labels.items()))


def test_scheduler_gauges_carry_scheduler_labels(http):
    samples = scrape(http)
    for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:gen_throughput",
                 "sglang:token_usage", "sglang:cache_hit_rate", "sglang:spec_accept_length",
                 "sglang:max_total_num_tokens", "sglang:kv_available_tokens",
                 "sglang:kv_evictable_tokens", "sglang:kv_used_tokens",
                 "sglang:decode_sum_seq_lens", "sglang:spec_accept_rate", "sglang:num_pages"):
        (sample,) = samples[name]
        assert set(sample.labels) == SCHED_LABELS, name
        assert sample.labels["model_name"] == "glm-5.1"
        assert sample.labels["engine_type"] == "unified"
    (retracted,) = samples["sglang:num_retracted_reqs"]
    assert set(retracted.labels) == SCHED_LABELS | {"pid"}
    for name in ("requests", "input_tokens", "output_tokens"):
        (counter,) = samples[f"sglang:num_retracted_{name}_total"]
        assert set(counter.labels) == SCHED_LABELS, name
    pool = [value(samples, f"sglang:kv_{part}_tokens") for part in ("available", "evictable", "used")]
    assert sum(pool) == value(samples, "sglang:max_total_num_tokens")


def test_queue_time_histogram_counts_each_request_once(http):
    """sglang:queue_time_seconds (scheduler labels, SGLang's buckets to 3000 s) gains one
    observation per request; the plugin reads the window's mean and quantiles from it."""
    before = http.get("/metrics").text
    for _ in range(2):
        assert http.chat(http.body(max_tokens=4)).done
    after = http.get("/metrics").text
    buckets = scrape_text(after)["sglang:queue_time_seconds_bucket"]
    assert {b.labels["le"] for b in buckets} >= {"0.0", "0.001", "3000.0", "+Inf"}
    assert all(set(b.labels) == SCHED_LABELS | {"le"} for b in buckets)
    delta = HistogramDelta.between(MetricsSnapshot.parse(before), MetricsSnapshot.parse(after))
    assert delta is not None and delta.count == 2
    summary = delta.summary()
    assert summary["mean_s"] == pytest.approx(delta.total / 2)
    assert 0 <= summary["p50_s"] <= summary["p95_s"] <= 0.5  # an idle server admits at once


def test_counters_and_histograms_move_with_a_request(http):
    before = scrape(http)
    s = http.chat(http.body(max_tokens=16))
    assert s.done
    after = scrape(http)
    for name in ("sglang:prompt_tokens_total", "sglang:generation_tokens_total",
                 "sglang:num_requests_total"):
        assert {frozenset(x.labels) for x in after[name]} == {frozenset(TOK_LABELS)}
    prompt = s.chunks()[-1]["usage"]["prompt_tokens"]
    assert value(after, "sglang:generation_tokens_total") - \
        value(before, "sglang:generation_tokens_total") == 16
    assert value(after, "sglang:prompt_tokens_total") - \
        value(before, "sglang:prompt_tokens_total") == prompt
    assert value(after, "sglang:num_requests_total") - \
        value(before, "sglang:num_requests_total") == 1
    ttft = "sglang:time_to_first_token_seconds_count"
    assert value(after, ttft) - value(before, ttft) == 1
    e2e = "sglang:e2e_request_latency_seconds_count"
    assert value(after, e2e) - value(before, e2e) == 1
    # ITL is per token: every output step after the first adds its token count.
    itl = "sglang:inter_token_latency_seconds_count"
    assert value(after, itl) - value(before, itl) == 15
    # Length histograms at the finish (TokenizerMetricsCollector.observe_one_finished_request).
    cached = s.chunks()[-1]["usage"].get("prompt_tokens_details", {}) or {}
    lengths = {"prompt": prompt, "uncached_prompt": prompt - cached.get("cached_tokens", 0),
               "generation": 16}
    for name, tokens in lengths.items():
        family = f"sglang:{name}_tokens_histogram"
        assert value(after, f"{family}_count") - value(before, f"{family}_count") == 1, name
        assert value(after, f"{family}_sum") - value(before, f"{family}_sum") == tokens, name
        les = {b.labels["le"] for b in after[f"{family}_bucket"]}
        assert {"100.0", "1.1e+06", "+Inf"} <= les, name
    buckets = [x for x in after["sglang:time_to_first_token_seconds_bucket"]]
    assert {b.labels["le"] for b in buckets} >= {"0.1", "400.0", "+Inf"}
    assert "sglang:time_to_first_token_seconds_created" not in after


def test_cache_counters_have_sglang_label_sets(http):
    samples = scrape(http)
    sources = {s.labels["cache_source"] for s in samples["sglang:cached_tokens_total"]}
    assert sources == {"device", "host"}
    (evicted,) = samples["sglang:evicted_tokens_total"]
    assert evicted.labels == {"cache_type": "RadixCache"}
    assert "sglang:load_back_tokens_total" not in samples  # no HiCache on this server
    assert "sglang:hicache_host_used_tokens" not in samples


def test_hicache_server_exports_host_tier_metrics(start_sim, client_for):
    proc = start_sim("--enable-metrics", "--enable-hierarchical-cache", "--hicache-size", "200",
                     "--served-model-name", "glm-5.1", "--time-scale", "50")
    proc.wait_ready()
    samples = scrape(client_for(proc))
    (load_back,) = samples["sglang:load_back_tokens_total"]
    assert load_back.labels == {"cache_type": "UnifiedRadixCache"}
    (evicted,) = samples["sglang:evicted_tokens_total"]
    assert evicted.labels == {"cache_type": "UnifiedRadixCache"}
    assert value(samples, "sglang:hicache_host_total_tokens") > 0
    assert "sglang:hicache_host_used_tokens" in samples


def test_l3_storage_survives_flush_and_is_cleared_over_http(start_sim, client_for):
    """A prompt written through to L3 comes back from storage after /flush_cache, counted
    under SGLang's storage labels; POST /hicache/storage-backend/clear empties the tier."""
    proc = start_sim("--enable-metrics", "--enable-cache-report", "--enable-hierarchical-cache",
                     "--hicache-size", "200", "--hicache-storage-backend", "file",
                     "--served-model-name", "glm-5.1", "--time-scale", "100")
    proc.wait_ready()
    http = client_for(proc)
    prompt = [{"role": "user", "content": "def handler(event):\n    return event\n" * 2000}]

    def send() -> int:
        stream = http.chat(http.body(max_tokens=4, messages=prompt))
        assert stream.done
        return stream.chunks()[-1]["usage"]["prompt_tokens_details"]["cached_tokens"]

    def flush() -> None:   # refused while the L3 backup is still writing
        deadline = time.monotonic() + 10
        while http.post("/flush_cache").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)

    assert send() == 0
    flush()
    before = MetricsSnapshot.parse(http.get("/metrics").text)
    stored = send()
    assert stored > 15_000   # the whole prompt but its last partial page
    after = MetricsSnapshot.parse(http.get("/metrics").text)
    deltas = counter_deltas(before, after)   # what the plugin reports
    assert deltas["cached_storage_tokens"] == stored
    assert deltas["prefetched_tokens"] == 8 * stored          # eight ranks' series, summed
    assert deltas["cached_host_tokens"] == 0
    samples = scrape(http)
    assert value(samples, "sglang:cached_tokens_total", cache_source="storage_HiCacheFile") == stored
    prefetched = samples["sglang:prefetched_tokens_total"]
    assert {s.labels["tp_rank"] for s in prefetched} == {str(r) for r in range(8)}
    assert all(s.value == stored for s in prefetched)
    assert set(prefetched[0].labels) == {"storage_backend", "tp_rank", "dp_rank", "pp_rank",
                                         "pp_size", "attn_cp_rank", "attn_cp_size"}
    (backuped,) = samples["sglang:backuped_tokens_total"]   # MLA: only rank 0 writes
    assert backuped.labels["tp_rank"] == "0" and backuped.value >= stored

    assert http.post("/hicache/storage-backend/clear").status_code == 200
    flush()
    assert send() == 0


def test_clearing_storage_without_hicache_is_refused(http):
    assert http.post("/hicache/storage-backend/clear").status_code == 400
    assert http.get("/clear_hicache_storage_backend").status_code == 400


def test_simulator_lag_and_time_scale_are_exported(http):
    samples = scrape(http)
    stats = {s.labels["stat"]: s.value for s in samples["glmperf_sim_lag_seconds"]}
    assert set(stats) == {"current", "max"}
    assert stats["max"] >= stats["current"] >= 0.0
    assert value(samples, "glmperf_sim_time_scale") == 50.0


def test_metrics_404_without_enable_metrics(start_sim, client_for):
    proc = start_sim("--time-scale", "50")
    proc.wait_ready()
    assert client_for(proc).get("/metrics").status_code == 404


def test_the_gauge_samplers_filtered_parse_reads_what_a_full_parse_reads(start_sim, client_for):
    """The sampler parses only its gauges' lines (the full parse costs ~7 ms of client loop
    per scrape); on a real scrape that must give the same values and nothing else."""
    proc = start_sim("--enable-metrics", "--enable-hierarchical-cache", "--hicache-size", "200",
                     "--served-model-name", "glm-5.1", "--time-scale", "50")
    proc.wait_ready()
    http = client_for(proc)
    resp = http.post("/v1/chat/completions",
                     json={"messages": [{"role": "user", "content": "hello " * 200}], "max_tokens": 4})
    assert resp.status_code == 200
    text = http.get("/metrics").text
    full, only = MetricsSnapshot.parse(text), MetricsSnapshot.parse(text, only=GAUGES)
    assert set(only.series) == set(GAUGES)
    for name in GAUGES:
        assert only.series[name] == full.series[name], name
    assert full.value("token_usage") > 0 and full.value("hicache_host_used_tokens") > 0  # live values


def test_idle_gauges_hold_until_the_30_s_idle_log(start_sim, client_for):
    # SGLang logs metrics while idle only once 30 s have passed since the last log: a
    # scrape just after the last request still reads its last decode window.
    proc = start_sim("--enable-metrics", "--served-model-name", "glm-5.1", "--time-scale", "50")
    proc.wait_ready()
    client = client_for(proc)
    assert client.chat(client.body(max_tokens=100)).done  # 99 decode steps: 2 windows logged
    just_after = scrape(client)
    assert value(just_after, "sglang:gen_throughput") > 0
    assert value(just_after, "sglang:num_running_reqs") == 1
    time.sleep(0.9)  # 45 model seconds
    idle = scrape(client)
    assert value(idle, "sglang:gen_throughput") == 0
    assert value(idle, "sglang:num_running_reqs") == 0
